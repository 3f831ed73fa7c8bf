// The DLRM dot interaction's inner loops, shared by the ATen side (csrc/cpu/interaction.cpp) and the ISA
// variants (csrc/cpu/interaction_{avx512,avx2,scalar}.cpp). Plain types only (see embedding_bag_kernel.h).
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

// Examples handled together, one per vector lane: the pairwise dot products of a block are computed
// lane-parallel over examples, so every multiply-add is a full-width vector operation whatever D is.
constexpr int64_t kInteractionLanes = 16;

// Scratch floats (or doubles) one thread needs: the block's features transposed, and its pairs.
inline int64_t interaction_scratch(int64_t features, int64_t dim) {
  const int64_t pairs = features * (features - 1) / 2;
  return (2 * features * dim + pairs) * kInteractionLanes;
}

// out[b, p] for examples [b0, b1): p runs over pairs (i, j), j < i, row by row. x [B, F, D], out [B, P].
using InteractionForwardF = void (*)(const float* x, float* out, int64_t b0, int64_t b1, int64_t features,
                                     int64_t dim, float* scratch);
using InteractionForwardD = void (*)(const double* x, double* out, int64_t b0, int64_t b1, int64_t features,
                                     int64_t dim, double* scratch);
// grad_x[b] = sum over pairs (i, j) of grad[b, p] * (x[b, j] into row i, x[b, i] into row j).
using InteractionBackwardF = void (*)(const float* grad, const float* x, float* grad_x, int64_t b0, int64_t b1,
                                      int64_t features, int64_t dim, float* scratch);
using InteractionBackwardD = void (*)(const double* grad, const double* x, double* grad_x, int64_t b0, int64_t b1,
                                      int64_t features, int64_t dim, double* scratch);

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
