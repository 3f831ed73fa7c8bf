// scalar variant of the DLRM dot interaction (the loops are in interaction_impl.h; the vector width comes
// from this file's compile flags). Chosen at run time by csrc/cpu/isa.cpp.
#include <cstdint>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "mprec/interaction_kernel.h"

namespace mprec {
namespace cpu {
namespace scalar {
namespace {
constexpr int64_t kVectorBytes = 16;  // an SSE register (the x86-64 baseline)
#include "interaction_impl.h"
}  // namespace

InteractionKernels interaction_kernels() {
  return {&interaction_forward_f, &interaction_forward_d, &interaction_backward_f, &interaction_backward_d};
}

}  // namespace scalar
}  // namespace cpu
}  // namespace mprec
