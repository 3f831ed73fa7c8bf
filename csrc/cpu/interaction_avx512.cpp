// avx512 variant of the DLRM dot interaction (the loops are in interaction_impl.h; the vector width comes
// from this file's compile flags). Chosen at run time by csrc/cpu/isa.cpp.
#include <cstdint>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "mprec/interaction_kernel.h"

namespace mprec {
namespace cpu {
namespace avx512 {
namespace {
constexpr int64_t kVectorBytes = 64;  // a zmm register
#include "interaction_impl.h"
}  // namespace

InteractionKernels interaction_kernels() {
  return {&interaction_forward_f, &interaction_forward_d, &interaction_backward_f, &interaction_backward_d};
}

}  // namespace avx512
}  // namespace cpu
}  // namespace mprec
