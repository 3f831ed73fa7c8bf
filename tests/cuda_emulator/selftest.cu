// Kernels that check the CUDA emulator itself (tests/test_cuda_emulator.py): what it computes, and that it
// refuses what a GPU would leave undefined. Valid CUDA; the test compiles it through the emulator.
// Usage: selftest <case>; prints the results, or the launch's error and the emulator's detail.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

constexpr unsigned kFull = 0xffffffffu;

__global__ void shuffle_kernel(int* out) {
  const int lane = threadIdx.x;
  out[lane] = __shfl_sync(kFull, lane * 10, (lane + 1) % 32);
}

__global__ void vote_kernel(int* out) {
  const int lane = threadIdx.x;
  out[0] = __any_sync(kFull, lane == 17);
  out[1] = __all_sync(kFull, lane < 31);
  out[2] = static_cast<int>(__ballot_sync(kFull, lane % 3 == 0));
  out[3] = __popc(__ballot_sync(kFull, lane >= 4));
}

template <typename T, int N>
struct Pair {
  T value[N];
};

// A template-id with nested template arguments, and per-warp sums across a block through shared memory.
template <typename T, typename P>
__global__ void block_sum_kernel(const T* in, T* out) {
  __shared__ T partial[32];
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  T x = in[blockIdx.x * blockDim.x * blockDim.y + tid];
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_sync(kFull, x, (tid + offset) % 32);
  if (tid % 32 == 0) partial[tid / 32] = x;
  __syncthreads();
  if (tid == 0) {
    T sum = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x * blockDim.y) / 32; ++w) sum += partial[w];
    P pair{{sum, static_cast<T>(blockIdx.x)}};
    out[blockIdx.x] = pair.value[0];
  }
}

__global__ void no_argument_kernel() {}

__global__ void divergent_kernel(int* out) {
  const int lane = threadIdx.x;
  if (lane % 2 == 0) {
    out[lane] = __any_sync(kFull, 1);
  } else {
    out[lane] = __any_sync(kFull, 0);
  }
}

__global__ void exited_lane_kernel(int* out) {
  const int lane = threadIdx.x;
  if (lane == 5) return;
  out[lane] = __shfl_sync(kFull, lane, 0);
}

__global__ void mask_leaves_out_kernel(int* out) {
  const int lane = threadIdx.x;
  out[lane] = __any_sync(0x0000ffffu, 1);  // lanes 16..31 call it too
}

__global__ void shuffle_outside_mask_kernel(int* out) {
  const int lane = threadIdx.x;
  if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, lane, 20);
}

__global__ void partial_warp_kernel(int* out) { out[threadIdx.x] = __any_sync(kFull, 1); }

__global__ void barrier_skipped_kernel(int* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Lane 32 onwards read past `in`: under AddressSanitizer the emulated read is reported like any host read.
__global__ void read_past_kernel(const int* in, int* out) { out[threadIdx.x] = in[threadIdx.x]; }

static int report(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
#ifdef CUDA_EMULATOR
    std::printf("%s: error %d: %s\n", what, static_cast<int>(status), cuda_emulator::last_error_detail().c_str());
#else
    std::printf("%s: error %d: %s\n", what, static_cast<int>(status), cudaGetErrorString(status));
#endif
    return 1;
  }
  return 0;
}

static void print(const std::vector<int>& v, int n) {
  for (int i = 0; i < n; ++i) std::printf("%d%c", v[i], i + 1 < n ? ' ' : '\n');
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const char* c = argv[1];
  std::vector<int> out(64, -1);
  if (!std::strcmp(c, "shuffle")) {
    shuffle_kernel<<<1, 32>>>(out.data());
    if (report(c)) return 1;
    print(out, 32);
  } else if (!std::strcmp(c, "vote")) {
    vote_kernel<<<dim3(1), dim3(32), 0, nullptr>>>(out.data());
    if (report(c)) return 1;
    print(out, 4);
  } else if (!std::strcmp(c, "block_sum")) {
    std::vector<double> in(3 * 96), sums(3);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<double>(i);
    block_sum_kernel<double, Pair<double, 2>><<<3, dim3(32, 3)>>>(in.data(), sums.data());
    if (report(c)) return 1;
    std::printf("%.0f %.0f %.0f\n", sums[0], sums[1], sums[2]);
  } else if (!std::strcmp(c, "no_arguments")) {
    no_argument_kernel<<<2, 64>>>();
    if (report(c)) return 1;
    std::printf("ok\n");
  } else if (!std::strcmp(c, "divergent")) {
    divergent_kernel<<<1, 32>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "exited_lane")) {
    exited_lane_kernel<<<1, 32>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "mask_leaves_out")) {
    mask_leaves_out_kernel<<<1, 32>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "shuffle_outside_mask")) {
    shuffle_outside_mask_kernel<<<1, 32>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "partial_warp")) {
    partial_warp_kernel<<<1, 48>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "barrier_skipped")) {
    barrier_skipped_kernel<<<1, 64>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "read_past_the_end")) {
    std::vector<int> in(32, 1);
    read_past_kernel<<<1, 64>>>(in.data(), out.data());
    return report(c);
  } else if (!std::strcmp(c, "block_too_large")) {
    shuffle_kernel<<<1, 2048>>>(out.data());
    return report(c);
  } else if (!std::strcmp(c, "grid_too_tall")) {
    shuffle_kernel<<<dim3(1, 70000), 32>>>(out.data());
    return report(c);
  } else {
    return 2;
  }
  return 0;
}
