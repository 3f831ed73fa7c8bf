// scalar variant of the MLP backward's loop (mlp_impl.h; the vector width comes from this file's compile
// flags). Chosen at run time by csrc/cpu/isa.cpp.
#include <cstdint>

#include "mprec/mlp_kernel.h"

namespace mprec {
namespace cpu {
namespace scalar {
namespace {
#include "mlp_impl.h"
}  // namespace

MlpKernels mlp_kernels() { return {&relu_backward_bias_f, &relu_backward_bias_d, &relu_backward_bias_h}; }

}  // namespace scalar
}  // namespace cpu
}  // namespace mprec
