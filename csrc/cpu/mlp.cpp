// CPU implementation of the MLP's fused backward pass (mprec.ops.mlp, the backward of its Linear + ReLU
// layers):
//   mprec::relu_backward_bias_(grad [B, N], output [B, N]) -> [N]
// grad becomes grad * (output > 0) in place (ReLU's backward, from the layer's output), and the result is its
// column sums (the bias gradient). Rows are summed in fixed blocks, in order, so the sums do not depend on
// the thread count. float32, float64 and bfloat16 (summed in float32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "mprec/checks.h"
#include "mprec/isa.h"
#include "mprec/mlp_kernel.h"

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

// Rows per block of the column sums: the blocks' partial sums are added in order at the end.
constexpr int64_t kRowsPerBlock = 64;

Tensor relu_backward_bias_cpu(Tensor& grad, const Tensor& output_in) {
  constexpr const char* op = "mprec::relu_backward_bias_";
  check_defined(op, {{"grad", &grad}, {"output", &output_in}});
  TORCH_CHECK_VALUE(grad.device().is_cpu() && output_in.device().is_cpu(), op,
                    ": grad and output must be CPU tensors, got ", grad.device(), " and ", output_in.device());
  const auto dtype = grad.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16, op,
                    ": grad must be float32, float64 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(output_in.scalar_type() == dtype, op, ": output's dtype ", output_in.scalar_type(),
                    " differs from grad's ", dtype);
  TORCH_CHECK_VALUE(grad.dim() == 2, op, ": grad must be [B, N], got shape ", grad.sizes());
  TORCH_CHECK_VALUE(output_in.sizes() == grad.sizes(), op, ": output's shape ", output_in.sizes(),
                    " differs from grad's ", grad.sizes());
  const int64_t rows = grad.size(0), cols = grad.size(1);
  const Tensor output = output_in.contiguous();
  Tensor work = grad.is_contiguous() ? grad : grad.contiguous();
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  // bfloat16 sums in float32, rounded once at the end, as aten's sum accumulates them.
  Tensor partial = at::zeros({blocks, cols}, grad.options().dtype(dtype == at::kBFloat16 ? at::kFloat : dtype));
  const MlpKernels k = mlp_kernels(active_isa());
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowsPerBlock, r1 = std::min(rows, r0 + kRowsPerBlock);
      if (dtype == at::kFloat) {
        k.relu_backward_bias_f(work.data_ptr<float>(), output.data_ptr<float>(), r0, r1, cols,
                               partial.data_ptr<float>() + b * cols);
      } else if (dtype == at::kDouble) {
        k.relu_backward_bias_d(work.data_ptr<double>(), output.data_ptr<double>(), r0, r1, cols,
                               partial.data_ptr<double>() + b * cols);
      } else {
        k.relu_backward_bias_h(reinterpret_cast<uint16_t*>(work.data_ptr<at::BFloat16>()),
                               reinterpret_cast<const uint16_t*>(output.data_ptr<at::BFloat16>()), r0, r1, cols,
                               partial.data_ptr<float>() + b * cols);
      }
    }
  });
  if (!work.is_same(grad)) grad.copy_(work);
  // The blocks' sums added in block order, in a plain loop: a tensor op per block cost more than the pass itself.
  Tensor sums = at::zeros({cols}, partial.options());
  const auto add_blocks = [&](auto* total, const auto* parts) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t c = 0; c < cols; ++c) total[c] += parts[b * cols + c];
  };
  if (partial.scalar_type() == at::kDouble) add_blocks(sums.data_ptr<double>(), partial.data_ptr<double>());
  else add_blocks(sums.data_ptr<float>(), partial.data_ptr<float>());
  return sums.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CPU, m) { m.impl("relu_backward_bias_", &relu_backward_bias_cpu); }

}  // namespace cpu
}  // namespace mprec
