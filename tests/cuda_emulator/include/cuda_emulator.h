// A CPU emulator of the parts of CUDA that mprec's kernels use, so that the kernels of csrc/cuda/*.cu run
// on a machine without a GPU: compiled by the host compiler, against the references, in CI. It is what
// TRITON_INTERPRET=1 is for the Triton kernels.
//
// Execution model. A launch runs at once, block after block. The threads of a block are fibers
// (ucontext) on the calling thread, each with its own stack; a thread runs until it reaches a warp
// collective (__shfl_sync, __any_sync, __all_sync, __ballot_sync) or __syncthreads, or returns. When every
// lane of a warp waits at the same collective, the emulator computes it and the lanes go on. So warps run
// in lockstep where the kernel relies on it, and nowhere else.
//
// What it checks that a GPU would leave undefined or silent: a collective whose mask leaves out a lane
// that reaches it, lanes of one warp waiting at different collectives (divergence), a lane that returns
// while others wait for it, a __syncthreads that some threads never reach, and launch configurations
// over the hardware's limits (cudaErrorInvalidConfiguration, as on a GPU). A failed launch is reported by
// cudaGetLastError, and cuda_emulator::last_error_detail() says what and where.
//
// What it does not model: timing, memory coalescing, the memory model between blocks (blocks run one
// after another; atomics are plain read-modify-writes), warp-synchronous code without collectives,
// dynamic shared memory, textures, cooperative groups. Device memory is host memory: every pointer a
// kernel gets is a host pointer.
//
// Kernel launches (`kernel<<<grid, block, shared, stream>>>(args)`) are not C++: tests/cuda_emulator
// rewrites them into cuda_emulator::launch(&kernel, {grid, block, shared, stream}, args) before compiling.
#pragma once

// Code that needs to know (a test printing the emulator's diagnostics) can ask.
#define CUDA_EMULATOR 1

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMULATOR_ASAN 1
#endif

// --- qualifiers ----------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
// Blocks run one after another, so one static object per declaration is one per block at a time.
#define __shared__ static

// --- vector types and built-in variables -----------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};

inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// --- runtime API -------------------------------------------------------------------------------------------
// The values are the CUDA runtime's.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cuda_emulator {

struct State {
  cudaError_t last_error = cudaSuccess;
  std::string detail;  // what the last failed launch did wrong
};

inline State& state() {
  static State s;
  return s;
}

inline void fail(cudaError_t error, std::string detail) {
  if (state().last_error == cudaSuccess) {
    state().last_error = error;
    state().detail = std::move(detail);
  }
}

inline const std::string& last_error_detail() { return state().detail; }

}  // namespace cuda_emulator

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = cuda_emulator::state().last_error;
  cuda_emulator::state().last_error = cudaSuccess;
  return error;
}

inline cudaError_t cudaPeekAtLastError() { return cuda_emulator::state().last_error; }

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int /*kind*/, cudaStream_t = nullptr) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

// --- half and bfloat16 ---------------------------------------------------------------------------------------
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof f);
  return static_cast<float>(f);
}

// GCC's float -> _Float16 conversion rounds to nearest even, as __float2half_rn.
inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);
  __half h;
  std::memcpy(&h.bits, &f, sizeof f);
  return h;
}

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  __nv_bfloat16 h;
  if (std::isnan(x)) {
    h.bits = static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN of the same sign
  } else {
    bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
    h.bits = static_cast<uint16_t>(bits >> 16);
  }
  return h;
}

// --- arithmetic intrinsics -------------------------------------------------------------------------------
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, sizeof d);
  return d;
}
inline long long __double_as_longlong(double x) {
  long long i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

template <typename T>
inline T __ldg(const T* p) {
  T value;
  std::memcpy(static_cast<void*>(&value), static_cast<const void*>(p), sizeof(T));
  return value;
}

// --- atomics: blocks and threads never run at the same time ---------------------------------------------------
template <typename T>
inline T atomicAdd(T* p, T x) {
  const T old = *p;
  *p = old + x;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T x) {
  const T old = *p;
  if (x < old) *p = x;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T x) {
  const T old = *p;
  if (x > old) *p = x;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T x) {
  const T old = *p;
  *p = x;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T x) {
  const T old = *p;
  if (old == compare) *p = x;
  return old;
}

// --- the scheduler ----------------------------------------------------------------------------------------------
namespace cuda_emulator {

enum class Wait { kNone, kShuffle, kAny, kAll, kBallot, kBarrier };

inline const char* wait_name(Wait wait) {
  switch (wait) {
    case Wait::kNone: return "nothing";
    case Wait::kShuffle: return "__shfl_sync";
    case Wait::kAny: return "__any_sync";
    case Wait::kAll: return "__all_sync";
    case Wait::kBallot: return "__ballot_sync";
    case Wait::kBarrier: return "__syncthreads";
  }
  return "?";
}

struct Thread {
  ucontext_t context;
  uint3 index;
  bool done = false;
  Wait wait = Wait::kNone;
  unsigned mask = 0;
  uint64_t value = 0;   // the lane's contribution: a shuffled value's bits, or a predicate
  int source = 0;       // __shfl_sync: the lane read
  const char* file = "";
  unsigned line = 0;
  uint64_t result = 0;
};

// Every thread's stack: kernels keep small frames, and a sanitizer's frames are larger.
constexpr size_t kStackBytes = 256 * 1024;

struct Block {
  std::vector<Thread> threads;
  std::unique_ptr<char[]> stacks;
  size_t stack_count = 0;
  ucontext_t scheduler;
  Thread* current = nullptr;
  void (*body)(void*) = nullptr;
  void* body_argument = nullptr;
  std::string error;
#if CUDA_EMULATOR_ASAN
  void* fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

inline Block*& current_block() {
  static Block* block = nullptr;
  return block;
}

inline std::string where(const Thread& t) {
  return std::string(t.file) + ":" + std::to_string(t.line);
}

inline std::string thread_name(const Thread& t) {
  return "thread (" + std::to_string(t.index.x) + ", " + std::to_string(t.index.y) + ", " +
         std::to_string(t.index.z) + ") of block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) +
         ", " + std::to_string(blockIdx.z) + ")";
}

// From a thread to the scheduler, and back when the scheduler resumes it.
inline void yield_to_scheduler() {
  Block& block = *current_block();
  Thread& self = *block.current;
#if CUDA_EMULATOR_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, block.scheduler_stack_bottom, block.scheduler_stack_size);
#endif
  swapcontext(&self.context, &block.scheduler);
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

inline void thread_entry() {
  Block& block = *current_block();
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &block.scheduler_stack_bottom, &block.scheduler_stack_size);
#endif
  block.body(block.body_argument);
  block.current->done = true;
#if CUDA_EMULATOR_ASAN
  // This fiber's stack is done with: tell the sanitizer so that it frees its fake stack.
  __sanitizer_start_switch_fiber(nullptr, block.scheduler_stack_bottom, block.scheduler_stack_size);
#endif
  setcontext(&block.scheduler);
}

inline void resume(Block& block, Thread& t) {
  block.current = &t;
  threadIdx = t.index;
#if CUDA_EMULATOR_ASAN
  const size_t i = static_cast<size_t>(&t - block.threads.data());
  __sanitizer_start_switch_fiber(&block.fake_stack, block.stacks.get() + i * kStackBytes, kStackBytes);
#endif
  swapcontext(&block.scheduler, &t.context);
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(block.fake_stack, nullptr, nullptr);
#endif
  block.current = nullptr;
}

// All lanes of a warp wait at a collective, or have returned: computes it, or describes why it cannot be.
inline bool resolve_warp(Thread* lanes, int count, std::string& error) {
  Thread* first = nullptr;
  unsigned waiting = 0, done = 0;
  for (int l = 0; l < count; ++l) {
    if (lanes[l].done) {
      done |= 1u << l;
    } else if (lanes[l].wait != Wait::kNone && lanes[l].wait != Wait::kBarrier) {
      waiting |= 1u << l;
      if (first == nullptr) first = &lanes[l];
    }
  }
  if (first == nullptr) return true;
  for (int l = 0; l < count; ++l) {
    const Thread& t = lanes[l];
    if (!(waiting >> l & 1u)) {
      if (!t.done && t.wait == Wait::kBarrier) {
        error = thread_name(t) + " waits at __syncthreads (" + where(t) + ") while lane " +
                std::to_string(first - lanes) + " of its warp waits at " + wait_name(first->wait) + " (" +
                where(*first) + ")";
        return false;
      }
      continue;
    }
    if (t.wait != first->wait || t.line != first->line || std::strcmp(t.file, first->file) != 0) {
      error = "divergent warp: " + thread_name(t) + " waits at " + wait_name(t.wait) + " (" + where(t) +
              ") and lane " + std::to_string(first - lanes) + " at " + wait_name(first->wait) + " (" +
              where(*first) + ")";
      return false;
    }
    if (t.mask != first->mask) {
      error = thread_name(t) + ": lanes of one " + wait_name(t.wait) + " (" + where(t) + ") pass different masks";
      return false;
    }
    if (!(t.mask >> l & 1u)) {
      error = thread_name(t) + " calls " + wait_name(t.wait) + " (" + where(t) + ") with a mask that leaves it out";
      return false;
    }
  }
  const unsigned mask = first->mask;
  const unsigned lanes_present = count == 32 ? ~0u : (1u << count) - 1u;
  if ((mask & ~lanes_present) != 0 || (mask & done) != 0 || (mask & ~waiting) != 0) {
    int missing = 0;
    while (!((mask & ~waiting) >> missing & 1u)) ++missing;
    error = wait_name(first->wait) + std::string(" (") + where(*first) + ", mask 0x" +
            [&] { char s[16]; std::snprintf(s, sizeof s, "%08x", mask); return std::string(s); }() + ") waits for lane " +
            std::to_string(missing) + ", which " +
            (missing >= count ? "does not exist" : (done >> missing & 1u) ? "has returned" : "is elsewhere");
    return false;
  }
  uint64_t any = 0, all = 1, ballot = 0;
  for (int l = 0; l < count; ++l) {
    if (!(mask >> l & 1u)) continue;
    const bool predicate = lanes[l].value != 0;
    any |= predicate;
    all &= predicate;
    ballot |= static_cast<uint64_t>(predicate) << l;
  }
  for (int l = 0; l < count; ++l) {
    Thread& t = lanes[l];
    if (!(waiting >> l & 1u)) continue;
    switch (t.wait) {
      case Wait::kShuffle: {
        const int source = t.source & 31;
        // A source outside the mask or the warp reads an unspecified value on a GPU; here it is an error.
        if (!(mask >> source & 1u)) {
          error = thread_name(t) + " shuffles from lane " + std::to_string(source) + " outside the mask (" +
                  where(t) + ")";
          return false;
        }
        t.result = lanes[source].value;
        break;
      }
      case Wait::kAny: t.result = any; break;
      case Wait::kAll: t.result = all; break;
      case Wait::kBallot: t.result = ballot; break;
      default: break;
    }
    t.wait = Wait::kNone;
  }
  return true;
}

// Apart from run_block: getcontext returns twice, which would make every local of its caller suspect.
__attribute__((noinline)) inline void make_thread(Thread& t, uint3 index, char* stack) {
  t.index = index;
  getcontext(&t.context);
  t.context.uc_stack.ss_sp = stack;
  t.context.uc_stack.ss_size = kStackBytes;
  t.context.uc_link = nullptr;
  makecontext(&t.context, &thread_entry, 0);
}

inline void run_block(Block& block, size_t thread_count) {
  block.threads.assign(thread_count, Thread{});
  if (block.stack_count < thread_count) {
    block.stacks.reset(new char[thread_count * kStackBytes]);
    block.stack_count = thread_count;
  }
  size_t i = 0;
  for (unsigned z = 0; z < blockDim.z; ++z) {
    for (unsigned y = 0; y < blockDim.y; ++y) {
      for (unsigned x = 0; x < blockDim.x; ++x, ++i) {
        make_thread(block.threads[i], uint3{x, y, z}, block.stacks.get() + i * kStackBytes);
      }
    }
  }
  for (;;) {
    bool ran = false;
    for (Thread& t : block.threads) {
      if (!t.done && t.wait == Wait::kNone) {
        resume(block, t);
        ran = true;
      }
    }
    if (!block.error.empty()) return;
    for (size_t w = 0; w < thread_count; w += 32) {
      const int count = static_cast<int>(std::min<size_t>(32, thread_count - w));
      if (!resolve_warp(&block.threads[w], count, block.error)) return;
    }
    // __syncthreads: every thread of the block waits at one, or it is an error.
    size_t at_barrier = 0, done = 0;
    const Thread* barrier = nullptr;
    for (const Thread& t : block.threads) {
      if (t.done) {
        ++done;
      } else if (t.wait == Wait::kBarrier) {
        ++at_barrier;
        if (barrier == nullptr) barrier = &t;
      }
    }
    if (done == thread_count) return;
    if (at_barrier + done == thread_count) {
      if (done > 0) {
        block.error = "__syncthreads (" + where(*barrier) + ") waits for threads that have returned";
        return;
      }
      for (Thread& t : block.threads) t.wait = Wait::kNone;
    } else if (!ran) {
      bool any_ready = false;
      for (const Thread& t : block.threads) any_ready |= !t.done && t.wait == Wait::kNone;
      if (!any_ready) {
        block.error = "deadlock: threads wait at __syncthreads (" + where(*barrier) + ") and at warp collectives";
        return;
      }
    }
  }
}

// Called by a thread at a warp collective: records its part, waits for the warp, returns the result.
inline uint64_t collective(Wait kind, unsigned mask, uint64_t value, int source, const std::source_location& at) {
  Block* block = current_block();
  if (block == nullptr || block->current == nullptr) {
    std::fprintf(stderr, "cuda_emulator: %s called outside a kernel (%s:%u)\n", wait_name(kind), at.file_name(),
                 static_cast<unsigned>(at.line()));
    std::abort();
  }
  Thread& self = *block->current;
  self.wait = kind;
  self.mask = mask;
  self.value = value;
  self.source = source;
  self.file = at.file_name();
  self.line = static_cast<unsigned>(at.line());
  yield_to_scheduler();
  return self.result;
}

template <typename T>
uint64_t bits_of(T x) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &x, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T x;
  std::memcpy(&x, &bits, sizeof(T));
  return x;
}

struct Config {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
};

template <typename Tuple, typename Kernel>
struct Call {
  Kernel kernel;
  Tuple arguments;
  static void run(void* self) {
    auto* call = static_cast<Call*>(self);
    std::apply(call->kernel, call->arguments);
  }
};

// The limits of every GPU since sm_30; a launch over them fails as on a GPU, and runs nothing.
inline bool valid_configuration(const Config& c, std::string& why) {
  const unsigned long long threads = static_cast<unsigned long long>(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0) {
    why = "an empty grid or block";
  } else if (c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
    why = "grid (" + std::to_string(c.grid.x) + ", " + std::to_string(c.grid.y) + ", " + std::to_string(c.grid.z) +
          ") over the limits (2^31 - 1, 65535, 65535)";
  } else if (c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64 || threads > 1024) {
    why = "block (" + std::to_string(c.block.x) + ", " + std::to_string(c.block.y) + ", " + std::to_string(c.block.z) +
          ") over 1024 threads or a dimension's limit";
  } else if (c.shared_bytes > 0) {
    why = "dynamic shared memory, which the emulator does not provide";
  } else {
    return true;
  }
  return false;
}

// kernel<<<config>>>(arguments): runs every block of the grid before returning.
template <typename... Parameters, typename... Arguments>
void launch(void (*kernel)(Parameters...), const Config& config, Arguments&&... arguments) {
  static_assert(sizeof...(Parameters) == sizeof...(Arguments), "a kernel launch with the wrong number of arguments");
  std::string why;
  if (!valid_configuration(config, why)) {
    fail(cudaErrorInvalidConfiguration, "launch configuration: " + why);
    return;
  }
  using Tuple = std::tuple<std::decay_t<Parameters>...>;
  Call<Tuple, void (*)(Parameters...)> call{kernel, Tuple(std::forward<Arguments>(arguments)...)};
  Block block;
  block.body = &decltype(call)::run;
  block.body_argument = &call;
  Block* outer = current_block();
  if (outer != nullptr) {
    fail(cudaErrorLaunchFailure, "a kernel launched from a kernel");
    return;
  }
  current_block() = &block;
  gridDim = config.grid;
  blockDim = config.block;
  const size_t threads = static_cast<size_t>(config.block.x) * config.block.y * config.block.z;
  for (unsigned z = 0; z < config.grid.z && block.error.empty(); ++z) {
    for (unsigned y = 0; y < config.grid.y && block.error.empty(); ++y) {
      for (unsigned x = 0; x < config.grid.x && block.error.empty(); ++x) {
        blockIdx = uint3{x, y, z};
        run_block(block, threads);
      }
    }
  }
  current_block() = nullptr;
  if (!block.error.empty()) fail(cudaErrorLaunchFailure, block.error);
}

}  // namespace cuda_emulator

// --- warp collectives -------------------------------------------------------------------------------------------
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int source_lane, int width = warpSize,
                     const std::source_location at = std::source_location::current()) {
  if (width != warpSize) {
    std::fprintf(stderr, "cuda_emulator: __shfl_sync with width %d is not emulated (%s:%u)\n", width, at.file_name(),
                 static_cast<unsigned>(at.line()));
    std::abort();
  }
  return cuda_emulator::from_bits<T>(cuda_emulator::collective(cuda_emulator::Wait::kShuffle, mask,
                                                               cuda_emulator::bits_of(var), source_lane, at));
}

inline int __any_sync(unsigned mask, int predicate, const std::source_location at = std::source_location::current()) {
  return static_cast<int>(cuda_emulator::collective(cuda_emulator::Wait::kAny, mask, predicate != 0, 0, at));
}

inline int __all_sync(unsigned mask, int predicate, const std::source_location at = std::source_location::current()) {
  return static_cast<int>(cuda_emulator::collective(cuda_emulator::Wait::kAll, mask, predicate != 0, 0, at));
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              const std::source_location at = std::source_location::current()) {
  return static_cast<unsigned>(cuda_emulator::collective(cuda_emulator::Wait::kBallot, mask, predicate != 0, 0, at));
}

inline void __syncthreads(const std::source_location at = std::source_location::current()) {
  cuda_emulator::collective(cuda_emulator::Wait::kBarrier, 0, 0, 0, at);
}
