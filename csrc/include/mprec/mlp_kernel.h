// The interface between the MLP backward op (csrc/cpu/mlp.cpp: checks, row blocks, threads) and the ISA
// variants of its loop (csrc/cpu/mlp_{avx512,avx2,scalar}.cpp). Plain types only (see embedding_bag_kernel.h).
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

// ReLU's backward and the bias gradient of a Linear + ReLU layer in one pass over rows [r0, r1) of
// grad [rows, cols] (row-major): grad[r][c] = output[r][c] > 0 ? grad[r][c] : 0, in place, and
// sums[c] = the sum of the new grad[r][c] over those rows, in row order (sums starts at zero).
using ReluBackwardBiasF = void (*)(float* grad, const float* output, int64_t r0, int64_t r1, int64_t cols,
                                   float* sums);
using ReluBackwardBiasD = void (*)(double* grad, const double* output, int64_t r0, int64_t r1, int64_t cols,
                                   double* sums);
// bfloat16 grad and output (their bits), float sums.
using ReluBackwardBiasH = void (*)(uint16_t* grad, const uint16_t* output, int64_t r0, int64_t r1, int64_t cols,
                                   float* sums);

struct MlpKernels {
  ReluBackwardBiasF relu_backward_bias_f;
  ReluBackwardBiasD relu_backward_bias_d;
  ReluBackwardBiasH relu_backward_bias_h;
};

namespace avx512 { MlpKernels mlp_kernels(); }
namespace avx2 { MlpKernels mlp_kernels(); }
namespace scalar { MlpKernels mlp_kernels(); }

}  // namespace cpu
}  // namespace mprec
