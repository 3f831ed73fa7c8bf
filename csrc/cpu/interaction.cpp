// CPU implementation of mprec::dot_interaction (DLRM's feature interaction) and its backward: for each
// example, the dot products of every pair of its F feature vectors, strictly lower triangle, row by row.
// torch's formulation (bmm of [B, F, D] by its transpose, then an index of the lower triangle) computes
// the whole F x F Gram matrix with small batched GEMMs and materialises it twice in the backward (a
// zero-filled [B, F * F] and an index_put); here each pair is computed once, examples lane-parallel, with
// no intermediate larger than a block's scratch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mprec/interaction_kernel.h"
#include "mprec/isa.h"

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

constexpr int64_t kBlocksPerTask = 4;

at::ScalarType compute_dtype(const char* op, const Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
                    ": x must be float32, float64, bfloat16 or float16, got ", dt);
  return dt == at::kDouble ? at::kDouble : at::kFloat;  // half types are computed in float32
}

void check_x(const char* op, const Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be [B, F, D], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 2, op, ": x needs at least 2 features to interact, got ", x.size(1));
}

template <typename T, typename Fn>
void run_blocks(int64_t batch, int64_t features, int64_t dim, Fn fn) {
  const int64_t grain = kBlocksPerTask * kInteractionLanes;
  at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
    std::vector<T> scratch(interaction_scratch(features, dim));
    fn(b0, b1, scratch.data());
  });
}

Tensor dot_interaction_cpu(const Tensor& x_in) {
  constexpr const char* op = "mprec::dot_interaction";
  check_x(op, x_in);
  const at::ScalarType acc = compute_dtype(op, x_in);
  const Tensor x = x_in.to(acc).contiguous();
  const int64_t batch = x.size(0), features = x.size(1), dim = x.size(2);
  const int64_t pairs = features * (features - 1) / 2;
  Tensor out = at::empty({batch, pairs}, x.options());
  const InteractionKernels k = interaction_kernels(active_isa());
  if (acc == at::kDouble) {
    run_blocks<double>(batch, features, dim, [&](int64_t b0, int64_t b1, double* s) {
      k.forward_d(x.data_ptr<double>(), out.data_ptr<double>(), b0, b1, features, dim, s);
    });
  } else {
    run_blocks<float>(batch, features, dim, [&](int64_t b0, int64_t b1, float* s) {
      k.forward_f(x.data_ptr<float>(), out.data_ptr<float>(), b0, b1, features, dim, s);
    });
  }
  return out.to(x_in.scalar_type());
}

Tensor dot_interaction_backward_cpu(const Tensor& grad_in, const Tensor& x_in) {
  constexpr const char* op = "mprec::dot_interaction_backward";
  check_x(op, x_in);
  const at::ScalarType acc = compute_dtype(op, x_in);
  const int64_t batch = x_in.size(0), features = x_in.size(1), dim = x_in.size(2);
  const int64_t pairs = features * (features - 1) / 2;
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == batch && grad_in.size(1) == pairs, op,
                    ": grad must have shape [", batch, ", ", pairs, "], got ", grad_in.sizes());
  const Tensor x = x_in.to(acc).contiguous();
  const Tensor grad = grad_in.to(acc).contiguous();
  Tensor grad_x = at::empty({batch, features, dim}, x.options());
  const InteractionKernels k = interaction_kernels(active_isa());
  if (acc == at::kDouble) {
    run_blocks<double>(batch, features, dim, [&](int64_t b0, int64_t b1, double* s) {
      k.backward_d(grad.data_ptr<double>(), x.data_ptr<double>(), grad_x.data_ptr<double>(), b0, b1, features, dim, s);
    });
  } else {
    run_blocks<float>(batch, features, dim, [&](int64_t b0, int64_t b1, float* s) {
      k.backward_f(grad.data_ptr<float>(), x.data_ptr<float>(), grad_x.data_ptr<float>(), b0, b1, features, dim, s);
    });
  }
  return grad_x.to(x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CPU, m) {
  m.impl("dot_interaction", &dot_interaction_cpu);
  m.impl("dot_interaction_backward", &dot_interaction_backward_cpu);
}

}  // namespace cpu
}  // namespace mprec
