// The DLRM dot interaction's inner loops, shared by the ATen side (csrc/cpu/interaction.cpp) and the ISA
// variants (csrc/cpu/interaction_{avx512,avx2,scalar}.cpp). Plain types only (see embedding_bag_kernel.h).
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

// Storage types of the operands: the float kernels read and write float32 or bfloat16 (converted in
// registers, so a bf16 bottom MLP and fp32 tables meet with no cast pass); the double kernel is all double.
enum class InteractionDtype : int { kFloat = 0, kBFloat16 = 1, kDouble = 2 };

// One call's operands. Example b's F features are row `first + b * first_stride` (feature 0) and the F - 1
// rows of D values at `rest + b * rest_stride` (features 1..F-1): x [B, F, D] is first = x, rest = x + D,
// both strides F * D; DLRM's (dense [B, D], tables [B, T * D]) is first = dense, rest = tables.
// out [B, out_stride]: when `copy_first`, feature 0 is copied to out[b, 0:D] and the pairs follow at
// out[b, D:]; otherwise the pairs start at out[b, 0]. Pairs (i, j), j < i, row by row.
// `rest_order` (F - 1 entries, a permutation, or null for 0, 1, ...): feature 1 + j is the rest's row
// rest_order[j], so vectors that arrive in another order (a sharded collection's, rank by rank) are read
// where they are, with no reordering copy; the backward writes their gradients to the same places.
struct InteractionArgs {
  const void* first;
  const void* rest;
  void* out;
  int64_t first_stride, rest_stride, out_stride;
  int64_t features, dim;
  bool copy_first;
  InteractionDtype first_dtype, rest_dtype, out_dtype;
  const int64_t* rest_order;
};

// The backward: grad [B, out_stride] (out_dtype) -> grad_first (first_dtype, stride first_stride) and
// grad_rest (rest_dtype, stride rest_stride); with copy_first, grad[b, 0:D] adds to feature 0's gradient.
struct InteractionGradArgs {
  InteractionArgs fwd;
  const void* grad;
  void* grad_first;
  void* grad_rest;
};

// The most float lanes of one vector register of any variant (a zmm), and rows of the pair triangle (or of
// the gradient) computed together; the scratch below leaves room for a short last group to run past F.
constexpr int64_t kInteractionLanes = 16;
constexpr int64_t kInteractionRowGroup = 4;

// Columns of an example's transposed features: F rounded up to the lanes, plus one lane block for a short
// last row group to read (zeros).
inline int64_t interaction_padded_columns(int64_t features) {
  return (features + kInteractionLanes - 1) / kInteractionLanes * kInteractionLanes + kInteractionLanes;
}

// Scratch elements (float or double) one thread needs, forward or backward: [D][padded] transposed
// features and [F + group][padded] dot products, or [F][D] features, [F][F] pair gradients and [F][D]
// gradient rows.
inline int64_t interaction_scratch(int64_t features, int64_t dim) {
  const int64_t padded = interaction_padded_columns(features);
  const int64_t forward = (dim + features + kInteractionRowGroup) * padded;
  const int64_t backward = features * dim + features * (features + dim);
  return forward > backward ? forward : backward;
}

using InteractionForwardF = void (*)(const InteractionArgs& a, int64_t b0, int64_t b1, float* scratch);
using InteractionForwardD = void (*)(const InteractionArgs& a, int64_t b0, int64_t b1, double* scratch);
using InteractionBackwardF = void (*)(const InteractionGradArgs& a, int64_t b0, int64_t b1, float* scratch);
using InteractionBackwardD = void (*)(const InteractionGradArgs& a, int64_t b0, int64_t b1, double* scratch);

struct InteractionKernels {
  InteractionForwardF forward_f;
  InteractionForwardD forward_d;
  InteractionBackwardF backward_f;
  InteractionBackwardD backward_d;
};

namespace avx512 { InteractionKernels interaction_kernels(); }
namespace avx2 { InteractionKernels interaction_kernels(); }
namespace scalar { InteractionKernels interaction_kernels(); }

}  // namespace cpu
}  // namespace mprec
