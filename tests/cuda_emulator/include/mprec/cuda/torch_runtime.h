// The CUDA emulator's version of csrc/include/mprec/cuda/torch_runtime.h, first on the include path when the
// emulator compiles the glue: CPU tensors stand for device memory, there are no streams, and a launch has
// run by the time it returns (cuda_emulator.h).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "cuda_emulator.h"

namespace mprec {
namespace cuda {
namespace runtime {

inline c10::Device kernel_device_of(const at::Tensor&) { return c10::Device(c10::DeviceType::CPU); }

inline c10::Device any_kernel_device() { return c10::Device(c10::DeviceType::CPU); }

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

inline cudaStream_t current_stream() { return nullptr; }

inline at::Tensor copy_to_device(const void* data, int64_t bytes, c10::Device) {
  at::Tensor copy = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  std::memcpy(copy.data_ptr(), data, static_cast<size_t>(bytes));
  return copy;
}

inline void check_launch(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "CUDA error: ", cudaGetErrorString(status), " (emulated: ",
              cuda_emulator::last_error_detail(), ")");
}

}  // namespace runtime
}  // namespace cuda
}  // namespace mprec
