// CPU implementation of DLRM's dot interaction: for each example, the dot products of every pair of its
// F feature vectors, strictly lower triangle, row by row.
//   mprec::dot_interaction(x [B, F, D]) -> [B, P]
//   mprec::dlrm_interaction(dense [B, D], sparse [B, T * D], pad_to, order) -> [B, D + P rounded up to pad_to]:
//     the features are the dense vector and the T pooled tables (table t at sparse's vector order[t] when
//     an order is given: a sharded collection's vectors, read where they arrive, with no reordering copy),
//     and the output is DLRM's top-MLP input, cat([dense, pairs]), written in one pass, zero-padded to a
//     width the next GEMM runs faster on (367 columns, the Kaggle config's, cost that GEMM's three products
//     10-25% more than 368 here). The two inputs may have different dtypes (a bf16 bottom MLP, fp32
//     tables): each is read in its own, and the output has the dense input's.
// torch's formulation (cat, bmm of [B, F, D] by its transpose, an index of the lower triangle, cat again)
// computes the whole F x F Gram matrix and materialises it twice in the backward (a zero-filled [B, F * F]
// and an index_put); here each pair is computed once, with nothing larger than one example in scratch.
// float32 and bfloat16 are computed in float32 without a conversion pass; float16 is converted to float32
// and back; float64 is computed in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "mprec/checks.h"
#include "mprec/interaction_kernel.h"
#include "mprec/isa.h"

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

constexpr int64_t kExamplesPerTask = 64;

void check_float(const char* op, const char* name, const Tensor& t) {
  check_defined(op, {{name, &t}});
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  const auto dt = t.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op, ": ",
                    name, " must be float32, float64, bfloat16 or float16, got ", dt);
}

// The tensor as the kernels read it: float32 and bfloat16 as they are, float16 as float32, and everything
// as float64 when any operand is float64.
Tensor readable(const Tensor& t, bool dbl) {
  if (dbl) return t.to(at::kDouble).contiguous();
  if (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) return t.contiguous();
  return t.to(at::kFloat).contiguous();
}

InteractionDtype code(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return InteractionDtype::kBFloat16;
    case at::kDouble: return InteractionDtype::kDouble;
    default: return InteractionDtype::kFloat;
  }
}

// The kernels' output dtype for a wanted dtype (float16 is written as float32, then converted).
at::ScalarType writable(at::ScalarType want, bool dbl) {
  if (dbl) return at::kDouble;
  return want == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

template <typename Fn>
void run_examples(int64_t batch, int64_t features, int64_t dim, bool dbl, Fn fn) {
  at::parallel_for(0, batch, kExamplesPerTask, [&](int64_t b0, int64_t b1) {
    if (dbl) {
      std::vector<double> scratch(interaction_scratch(features, dim));
      fn(b0, b1, static_cast<float*>(nullptr), scratch.data());
    } else {
      std::vector<float> scratch(interaction_scratch(features, dim));
      fn(b0, b1, scratch.data(), static_cast<double*>(nullptr));
    }
  });
}

// out [B, out_width]; columns past the features and pairs (padding) are zero.
Tensor forward(const Tensor& first, const Tensor& rest, bool copy_first, int64_t batch, int64_t features,
               int64_t dim, int64_t first_stride, int64_t rest_stride, int64_t out_width, at::ScalarType out_type,
               bool dbl, const int64_t* rest_order = nullptr) {
  const int64_t pairs = features * (features - 1) / 2;
  const int64_t width = (copy_first ? dim : 0) + pairs;
  Tensor out = at::empty({batch, out_width}, first.options().dtype(writable(out_type, dbl)));
  if (out_width > width) out.narrow(1, width, out_width - width).zero_();
  const InteractionArgs a{first.data_ptr(), rest.data_ptr(), out.data_ptr(),
                          first_stride, rest_stride, out_width, features, dim, copy_first,
                          code(first), code(rest), code(out), rest_order};
  const InteractionKernels k = interaction_kernels(active_isa());
  run_examples(batch, features, dim, dbl, [&](int64_t b0, int64_t b1, float* sf, double* sd) {
    if (dbl) k.forward_d(a, b0, b1, sd); else k.forward_f(a, b0, b1, sf);
  });
  return out.to(out_type);
}

// ---- dot_interaction(x [B, F, D]) ------------------------------------------------------------------------

void check_x(const char* op, const Tensor& x) {
  check_float(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be [B, F, D], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 2, op, ": x needs at least 2 features to interact, got ", x.size(1));
}

Tensor dot_interaction_cpu(const Tensor& x_in) {
  constexpr const char* op = "mprec::dot_interaction";
  check_x(op, x_in);
  const bool dbl = x_in.scalar_type() == at::kDouble;
  const Tensor x = readable(x_in, dbl);
  const int64_t batch = x.size(0), features = x.size(1), dim = x.size(2);
  // Feature 0 and features 1.. of the same rows: `rest` starts D elements in.
  const Tensor rest = x.view({batch, features * dim}).narrow(1, dim, (features - 1) * dim);
  return forward(x, rest, false, batch, features, dim, features * dim, features * dim,
                 features * (features - 1) / 2, x_in.scalar_type(), dbl);
}

Tensor dot_interaction_backward_cpu(const Tensor& grad_in, const Tensor& x_in) {
  constexpr const char* op = "mprec::dot_interaction_backward";
  check_defined(op, {{"grad", &grad_in}, {"x", &x_in}});  // every None first, in argument order, as the wrappers do
  check_x(op, x_in);
  check_float(op, "grad", grad_in);
  const int64_t batch = x_in.size(0), features = x_in.size(1), dim = x_in.size(2);
  const int64_t pairs = features * (features - 1) / 2;
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == batch && grad_in.size(1) == pairs, op,
                    ": grad must have shape [", batch, ", ", pairs, "], got ", grad_in.sizes());
  const bool dbl = x_in.scalar_type() == at::kDouble || grad_in.scalar_type() == at::kDouble;
  const Tensor x = readable(x_in, dbl);
  const Tensor grad = readable(grad_in, dbl);
  Tensor grad_x = at::empty({batch, features, dim}, x.options());
  const int64_t fd = features * dim;
  const InteractionArgs a{x.data_ptr(), static_cast<const char*>(x.data_ptr()) + dim * x.element_size(), nullptr,
                          fd, fd, pairs, features, dim, false, code(x), code(x), code(grad), nullptr};
  const InteractionGradArgs ga{a, grad.data_ptr(), grad_x.data_ptr(),
                               static_cast<char*>(grad_x.data_ptr()) + dim * grad_x.element_size()};
  const InteractionKernels k = interaction_kernels(active_isa());
  run_examples(batch, features, dim, dbl, [&](int64_t b0, int64_t b1, float* sf, double* sd) {
    if (dbl) k.backward_d(ga, b0, b1, sd); else k.backward_f(ga, b0, b1, sf);
  });
  return grad_x.to(x_in.scalar_type());
}

// ---- dlrm_interaction(dense [B, D], sparse [B, T * D] or [B, T, D]) --------------------------------------

// (batch, tables, dim) after the checks.
std::tuple<int64_t, int64_t, int64_t> check_dlrm(const char* op, const Tensor& dense, const Tensor& sparse) {
  check_float(op, "dense", dense);
  check_float(op, "sparse", sparse);
  TORCH_CHECK_VALUE(dense.dim() == 2, op, ": dense must be [B, D], got shape ", dense.sizes());
  const int64_t batch = dense.size(0), dim = dense.size(1);
  TORCH_CHECK_VALUE(dim >= 1, op, ": dense must have at least one column, got shape ", dense.sizes());
  TORCH_CHECK_VALUE(sparse.dim() == 2 || sparse.dim() == 3, op,
                    ": sparse must be [B, T * D] or [B, T, D], got shape ", sparse.sizes());
  TORCH_CHECK_VALUE(sparse.size(0) == batch, op, ": sparse has ", sparse.size(0), " rows but dense has ", batch);
  if (sparse.dim() == 3) {
    TORCH_CHECK_VALUE(sparse.size(2) == dim, op, ": sparse's feature width ", sparse.size(2),
                      " differs from dense's ", dim);
  } else {
    TORCH_CHECK_VALUE(sparse.size(1) % dim == 0, op, ": sparse's width ", sparse.size(1),
                      " is not a multiple of dense's width ", dim);
  }
  const int64_t tables = sparse.dim() == 3 ? sparse.size(1) : sparse.size(1) / dim;
  TORCH_CHECK_VALUE(tables >= 1, op, ": sparse needs at least one table, got shape ", sparse.sizes());
  return {batch, tables, dim};
}

// The kernels' rest_order: null without an order, else the order, checked to list each of the T vectors once.
const int64_t* checked_order(const char* op, at::OptionalIntArrayRef order, int64_t tables) {
  if (!order.has_value()) return nullptr;
  const at::IntArrayRef o = *order;
  TORCH_CHECK_VALUE(static_cast<int64_t>(o.size()) == tables, op, ": order must list each of sparse's ", tables,
                    " vectors once, got ", o.size(), " entries");
  std::vector<bool> seen(tables, false);
  for (size_t t = 0; t < o.size(); ++t) {
    TORCH_CHECK_VALUE(o[t] >= 0 && o[t] < tables, op, ": order[", t, "] is ", o[t], ", not one of sparse's ",
                      tables, " vectors");
    TORCH_CHECK_VALUE(!seen[o[t]], op, ": order[", t, "] repeats vector ", o[t],
                      " (order must list each vector once)");
    seen[o[t]] = true;
  }
  return o.data();
}

// Padding is for GEMM alignment (DLRM pads to 8); a multiple past this would only allocate zeros.
constexpr int64_t kMaxPadTo = 1024;

int64_t padded_width(const char* op, int64_t width, int64_t pad_to) {
  TORCH_CHECK_VALUE(pad_to >= 1 && pad_to <= kMaxPadTo, op, ": pad_to must be in [1, ", kMaxPadTo, "], got ",
                    pad_to);
  return (width + pad_to - 1) / pad_to * pad_to;
}

Tensor dlrm_interaction_cpu(const Tensor& dense_in, const Tensor& sparse_in, int64_t pad_to,
                            at::OptionalIntArrayRef order) {
  constexpr const char* op = "mprec::dlrm_interaction";
  check_defined(op, {{"dense", &dense_in}, {"sparse", &sparse_in}});
  const auto [batch, tables, dim] = check_dlrm(op, dense_in, sparse_in);
  const int64_t features = tables + 1, width = dim + features * (features - 1) / 2;
  const int64_t padded = padded_width(op, width, pad_to);
  const int64_t* rest_order = checked_order(op, order, tables);
  const bool dbl = dense_in.scalar_type() == at::kDouble || sparse_in.scalar_type() == at::kDouble;
  const Tensor dense = readable(dense_in, dbl);
  const Tensor sparse = readable(sparse_in, dbl);
  return forward(dense, sparse, true, batch, features, dim, dim, tables * dim, padded, dense_in.scalar_type(), dbl,
                 rest_order);
}

std::tuple<Tensor, Tensor> dlrm_interaction_backward_cpu(const Tensor& grad_in, const Tensor& dense_in,
                                                         const Tensor& sparse_in, int64_t pad_to,
                                                         at::OptionalIntArrayRef order) {
  constexpr const char* op = "mprec::dlrm_interaction_backward";
  check_defined(op, {{"grad", &grad_in}, {"dense", &dense_in}, {"sparse", &sparse_in}});
  const auto [batch, tables, dim] = check_dlrm(op, dense_in, sparse_in);
  check_float(op, "grad", grad_in);
  const int64_t features = tables + 1;
  const int64_t width = padded_width(op, dim + features * (features - 1) / 2, pad_to);  // the padding's grad is unused
  const int64_t* rest_order = checked_order(op, order, tables);
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == batch && grad_in.size(1) == width, op,
                    ": grad must have shape [", batch, ", ", width, "], got ", grad_in.sizes());
  const bool dbl = dense_in.scalar_type() == at::kDouble || sparse_in.scalar_type() == at::kDouble ||
                   grad_in.scalar_type() == at::kDouble;
  const Tensor dense = readable(dense_in, dbl);
  const Tensor sparse = readable(sparse_in, dbl);
  const Tensor grad = readable(grad_in, dbl);
  Tensor grad_dense = at::empty_like(dense);
  Tensor grad_sparse = at::empty_like(sparse);
  const InteractionArgs a{dense.data_ptr(), sparse.data_ptr(), nullptr, dim, tables * dim, width, features, dim,
                          true, code(dense), code(sparse), code(grad), rest_order};
  const InteractionGradArgs ga{a, grad.data_ptr(), grad_dense.data_ptr(), grad_sparse.data_ptr()};
  const InteractionKernels k = interaction_kernels(active_isa());
  run_examples(batch, features, dim, dbl, [&](int64_t b0, int64_t b1, float* sf, double* sd) {
    if (dbl) k.backward_d(ga, b0, b1, sd); else k.backward_f(ga, b0, b1, sf);
  });
  return {grad_dense.to(dense_in.scalar_type()), grad_sparse.to(sparse_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CPU, m) {
  m.impl("dot_interaction", &dot_interaction_cpu);
  m.impl("dot_interaction_backward", &dot_interaction_backward_cpu);
  m.impl("dlrm_interaction", &dlrm_interaction_cpu);
  m.impl("dlrm_interaction_backward", &dlrm_interaction_backward_cpu);
}

}  // namespace cpu
}  // namespace mprec
