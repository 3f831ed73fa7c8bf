// What the CUDA ops' torch glue (csrc/cuda/*_cuda.cpp) takes from torch's CUDA runtime, in one place: the
// device a call runs on, the device guard, the current stream, a host-to-device copy ordered on that stream,
// and the launch status check. Everything else in the glue (argument checks, allocation through ATen, the
// launch, the error readback) is device-neutral.
//
// The glue includes this header as "mprec/cuda/torch_runtime.h", found through the include path. The CUDA
// emulator of the tests (tests/cuda_emulator) puts its own header of that name first on the path, in which
// CPU tensors stand for device memory; the glue and the kernels then run, unchanged, on the CPU.
//
// Unlike the kernels' headers beside it, this one includes torch: only the glue includes it.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstring>

namespace mprec {
namespace cuda {
namespace runtime {

// The device a call's tensors must be on: the given tensor's, or any CUDA device when that tensor is
// elsewhere, so that the checks name the misplaced tensor instead of accepting, say, a CPU weight.
inline c10::Device kernel_device_of(const at::Tensor& tensor) {
  return tensor.is_cuda() ? tensor.device() : c10::Device(c10::DeviceType::CUDA);
}

// The device of a call with no tensor to take it from (a batched call with no tables).
inline c10::Device any_kernel_device() { return c10::Device(c10::DeviceType::CUDA); }

using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// `bytes` bytes of host memory copied to `device` on the current stream: through pinned memory, so that the
// copy is asynchronous and ordered with the kernels, and the caller's buffer can be reused at once. The
// returned tensor keeps the device copy alive; the caching allocator keeps the pinned buffer until the
// copy has run.
inline at::Tensor copy_to_device(const void* data, int64_t bytes, c10::Device device) {
  at::Tensor pinned = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(pinned.data_ptr(), data, static_cast<size_t>(bytes));
  at::Tensor on_device = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  on_device.copy_(pinned, /*non_blocking=*/true);
  return on_device;
}

inline void check_launch(cudaError_t status) { C10_CUDA_CHECK(status); }

}  // namespace runtime
}  // namespace cuda
}  // namespace mprec
