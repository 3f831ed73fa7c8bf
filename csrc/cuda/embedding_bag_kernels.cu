// CUDA kernels of the embedding-bag op family and their launchers (interface and call layout:
// include/mprec/cuda/embedding_bag_cuda.h). Nothing from torch is included, so that nvcc can compile this
// file on a machine without a CUDA build of torch (CI does, for sm_90); csrc/cuda/README.md says more.
//
// Forward: one warp per bag. The warp reads 32 of the bag's indices at once (one per lane), validates them
// all before any row is touched, then walks them with shuffles; lanes own columns, in 16-byte packets
// when the call's tables allow it (the launcher picks the kernel's shape). Values are accumulated in float
// (double for float64 tables), in lookup order, and max keeps the first lookup that reaches the maximum, as
// the CPU kernels do.
// Backward (dense): one warp per bag adds its scaled grad row to each looked-up row with atomics into an
// accumulation-type buffer, which the caller casts to the table's dtype.
//
// Bad inputs never cause an out-of-bounds read: a bag whose offsets or indices are bad is abandoned and
// its number recorded (atomicMin), and a one-thread pass then describes the first error of the first bad
// bag, which is the error a sequential CPU loop meets first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "mprec/cuda/embedding_bag_cuda.h"

namespace mprec {
namespace cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// One warp per bag and few bags per block: the block size matters little for a gather, and small blocks
// spread short launches (a few hundred bags) over more SMs.
constexpr int kBagsPerBlock = 4;
// Rows of a bag loaded before any of them is accumulated. The rows are random reads from tables far larger
// than L2, so a warp that waits for each row in turn is bound by latency, not bandwidth.
constexpr int kRowsInFlight = 4;
constexpr int kPacketBytes = 16;
constexpr unsigned long long kNoError = ~0ull;

template <typename WT> struct Accumulate { using type = float; };
template <> struct Accumulate<double> { using type = double; };

__device__ __forceinline__ float to_accumulate(float x) { return x; }
__device__ __forceinline__ float to_accumulate(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_accumulate(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double to_accumulate(double x) { return x; }

// Round to nearest even, as the CPU kernels and torch convert.
__device__ __forceinline__ void store_value(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_value(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store_value(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void store_value(double* p, double x) { *p = x; }

__device__ __forceinline__ float negative_infinity(float) { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ double negative_infinity(double) { return -__longlong_as_double(0x7ff0000000000000ll); }

// Fused, as the CPU kernels' fmadd.
__device__ __forceinline__ float multiply_add(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double multiply_add(double a, double b, double c) { return __fma_rn(a, b, c); }

// The CPU kernels' mean: a float reciprocal multiplied in for float accumulators, a division for double.
__device__ __forceinline__ float mean_of(float sum, int64_t count) { return sum * (1.f / static_cast<float>(count)); }
__device__ __forceinline__ double mean_of(double sum, int64_t count) { return sum / static_cast<double>(count); }

__device__ __forceinline__ void atomic_add(float* p, float x) { atomicAdd(p, x); }
__device__ __forceinline__ void atomic_add(double* p, double x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
  // No native double atomicAdd before sm_60.
  unsigned long long* address = reinterpret_cast<unsigned long long*>(p);
  unsigned long long old = *address, assumed;
  do {
    assumed = old;
    old = atomicCAS(address, assumed, __double_as_longlong(__longlong_as_double(assumed) + x));
  } while (assumed != old);
#else
  atomicAdd(p, x);
#endif
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Packet {
  T v[N];
};

template <typename P>
__device__ __forceinline__ P load_packet(const P* p) {
  if constexpr (sizeof(P) == kPacketBytes) {
    // Through the read-only cache in one 16-byte transaction per lane.
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    P out;
    memcpy(&out, &raw, sizeof(P));
    return out;
  } else {
    return *p;
  }
}

__device__ __forceinline__ TableDescriptor table_of(const BagLayout& layout, int64_t t) {
  return layout.tables != nullptr ? layout.tables[t] : layout.table0;
}

// The bag of this warp: table t (grid y), its bag b (grid x, and the warp's row of the block) and the bag's
// number g in the TBE layout; false for the warps of a table's last block that are past its bags.
__device__ __forceinline__ bool warp_bag(const BagLayout& layout, int64_t& t, int64_t& b, int64_t& g) {
  t = blockIdx.y;
  b = static_cast<int64_t>(blockIdx.x) * kBagsPerBlock + threadIdx.y;
  g = t * layout.bags + b;
  return b < layout.bags;
}

// Bag g's index range; false when its offsets are bad (then nothing of the bag may be read).
template <typename IT>
__device__ __forceinline__ bool bag_bounds(const BagLayout& layout, int64_t g, int64_t& start, int64_t& end) {
  const IT* offsets = static_cast<const IT*>(layout.offsets);
  start = static_cast<int64_t>(offsets[g]);
  end = g + 1 < layout.num_offsets ? static_cast<int64_t>(offsets[g + 1]) : layout.num_indices;
  return start >= 0 && start <= end && end <= layout.num_indices;
}

__device__ __forceinline__ bool is_bad_row(int64_t row, const TableDescriptor& table) {
  // A table with no padding row (kNoPaddingRow < 0) skips nothing: every out-of-range index is an error.
  return (row != table.padding_idx || table.padding_idx < 0) &&
         static_cast<uint64_t>(row) >= static_cast<uint64_t>(table.num_rows);
}

__device__ __forceinline__ void record_error(const BagLayout& layout, int64_t g) {
  atomicMin(&layout.errors->first_bag, static_cast<unsigned long long>(g));
}

// One pass of a bag over columns [pass, pass + 32 * VEC * NV) for every pass the table's width needs. Lane l
// owns packets l, l + 32, ... of the pass. Returns false when an index is bad. kArgs (max mode, where the call
// wants max_indices): each column's maximum is tracked with the row it came from. Without it the kernel keeps no
// row numbers at all: they are 64-bit, a pair of registers per column a lane owns, and registers cap the warps
// an SM keeps in flight (see launch_pool_shaped).
template <typename WT, typename IT, bool kMax, bool kArgs, int VEC, int NV>
__device__ __forceinline__ bool pool_bag(const PoolParams& p, const TableDescriptor& table, int64_t b,
                                         int64_t start, int64_t end) {
  using acc_t = typename Accumulate<WT>::type;
  using P = Packet<WT, VEC>;
  constexpr int64_t kPassColumns = static_cast<int64_t>(kWarpSize) * VEC * NV;
  const int lane = static_cast<int>(threadIdx.x);
  const WT* weight = static_cast<const WT*>(table.weight);
  const IT* indices = static_cast<const IT*>(p.layout.indices);
  const acc_t* per_sample_weights = static_cast<const acc_t*>(p.per_sample_weights);
  WT* out = static_cast<WT*>(p.output) + b * p.layout.total_dim + table.col;
  static_assert(kMax || !kArgs, "only max mode has an argmax");
  int64_t* arg_out = kArgs ? p.max_indices + b * p.layout.total_dim + table.col : nullptr;
  const int64_t dim = table.dim;

  for (int64_t pass = 0; pass < dim; pass += kPassColumns) {
    acc_t acc[NV][VEC];
    int64_t arg[NV][VEC];
#pragma unroll
    for (int q = 0; q < NV; ++q) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        acc[q][e] = kMax ? negative_infinity(acc_t()) : acc_t(0);
        arg[q][e] = -1;
      }
    }
    int64_t count = 0;
    for (int64_t chunk = start; chunk < end; chunk += kWarpSize) {
      const int n = end - chunk < kWarpSize ? static_cast<int>(end - chunk) : kWarpSize;
      // Lanes past the bag hold the padding row, which every step below skips.
      int64_t my_row = table.padding_idx;
      acc_t my_weight = acc_t(1);
      bool bad = false;
      if (lane < n) {
        my_row = static_cast<int64_t>(indices[chunk + lane]);
        bad = is_bad_row(my_row, table);
        if (per_sample_weights != nullptr) my_weight = per_sample_weights[chunk + lane];
      }
      if (__any_sync(kFullMask, bad)) return false;
      for (int j = 0; j < n; j += kRowsInFlight) {
        int64_t row[kRowsInFlight];
        acc_t w[kRowsInFlight];
        P x[kRowsInFlight][NV];
#pragma unroll
        for (int k = 0; k < kRowsInFlight; ++k) {
          const int source = (j + k) & (kWarpSize - 1);
          row[k] = __shfl_sync(kFullMask, my_row, source);
          w[k] = __shfl_sync(kFullMask, my_weight, source);
          if (j + k >= n) row[k] = table.padding_idx;
        }
#pragma unroll
        for (int k = 0; k < kRowsInFlight; ++k) {
          if (row[k] == table.padding_idx) continue;
          const WT* src = weight + row[k] * dim + pass;
#pragma unroll
          for (int q = 0; q < NV; ++q) {
            const int64_t c = static_cast<int64_t>(q * kWarpSize + lane) * VEC;
            if (pass + c < dim) x[k][q] = load_packet(reinterpret_cast<const P*>(src + c));
          }
        }
#pragma unroll
        for (int k = 0; k < kRowsInFlight; ++k) {
          if (row[k] == table.padding_idx) continue;
          ++count;
#pragma unroll
          for (int q = 0; q < NV; ++q) {
            const int64_t c = static_cast<int64_t>(q * kWarpSize + lane) * VEC;
            if (pass + c >= dim) continue;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              const acc_t v = to_accumulate(x[k][q].v[e]);
              if constexpr (kMax) {
                // Strictly greater: the first lookup reaching the maximum keeps it, and NaN never wins.
                if (v > acc[q][e]) {
                  acc[q][e] = v;
                  if constexpr (kArgs) arg[q][e] = row[k];
                }
              } else {
                acc[q][e] = multiply_add(v, w[k], acc[q][e]);
              }
            }
          }
        }
      }
    }
    const bool mean = !kMax && p.mode == PoolMode::kMean && count > 0;
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      const int64_t c = pass + static_cast<int64_t>(q * kWarpSize + lane) * VEC;
      if (c >= dim) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        acc_t v = acc[q][e];
        if constexpr (kMax) {
          if (count == 0) v = acc_t(0);
          if constexpr (kArgs) arg_out[c + e] = arg[q][e];
        } else if (mean) {
          v = mean_of(v, count);
        }
        store_value(out + c + e, v);
      }
    }
  }
  return true;
}

// VEC values a packet, NV packets a lane in each pass over the columns: chosen by the launcher for the call.
template <typename WT, typename IT, bool kMax, bool kArgs, int VEC, int NV>
__global__ void __launch_bounds__(kWarpSize * kBagsPerBlock) embedding_bag_pool_kernel(const PoolParams p) {
  int64_t t, b, g;
  if (!warp_bag(p.layout, t, b, g)) return;
  const TableDescriptor table = table_of(p.layout, t);
  int64_t start = 0, end = 0;
  bool ok = bag_bounds<IT>(p.layout, g, start, end);
  if (ok) ok = pool_bag<WT, IT, kMax, kArgs, VEC, NV>(p, table, b, start, end);
  if (!ok && threadIdx.x == 0) record_error(p.layout, g);
}

// Sum, mean and weighted sum: grad_weight[row] += scale * grad[b] for every lookup. Lane l owns columns
// l, l + 32, ... of a pass of 32 * NV columns, so the atomics of a row are coalesced.
template <typename acc_t, typename IT, int NV>
__device__ __forceinline__ bool dense_backward_bag(const DenseBackwardParams& p, const TableDescriptor& table,
                                                   int64_t b, int64_t start, int64_t end) {
  constexpr int64_t kPassColumns = static_cast<int64_t>(kWarpSize) * NV;
  const int lane = static_cast<int>(threadIdx.x);
  const IT* indices = static_cast<const IT*>(p.layout.indices);
  const acc_t* per_sample_weights = static_cast<const acc_t*>(p.per_sample_weights);
  const acc_t* grad = static_cast<const acc_t*>(p.grad) + b * p.layout.total_dim + table.col;
  acc_t* grad_weight = static_cast<acc_t*>(table.grad_weight);
  const int64_t dim = table.dim;

  // Mean scales by 1 / (non-padding lookups), known only after a first pass over the bag's indices.
  acc_t mean_scale = acc_t(0);
  if (p.mode == PoolMode::kMean) {
    int64_t count = 0;
    for (int64_t chunk = start; chunk < end; chunk += kWarpSize) {
      const int n = end - chunk < kWarpSize ? static_cast<int>(end - chunk) : kWarpSize;
      // Lanes past the bag hold the padding row, which is neither counted nor checked: with no padding row
      // (kNoPaddingRow) it is out of range.
      int64_t my_row = table.padding_idx;
      bool bad = false;
      if (lane < n) {
        my_row = static_cast<int64_t>(indices[chunk + lane]);
        bad = is_bad_row(my_row, table);
      }
      if (__any_sync(kFullMask, bad)) return false;
      count += __popc(__ballot_sync(kFullMask, my_row != table.padding_idx));
    }
    if (count > 0) mean_scale = acc_t(1) / static_cast<acc_t>(count);
  }

  for (int64_t pass = 0; pass < dim; pass += kPassColumns) {
    acc_t grad_column[NV];
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      const int64_t c = pass + q * kWarpSize + lane;
      grad_column[q] = c < dim ? grad[c] : acc_t(0);
    }
    for (int64_t chunk = start; chunk < end; chunk += kWarpSize) {
      const int n = end - chunk < kWarpSize ? static_cast<int>(end - chunk) : kWarpSize;
      int64_t my_row = table.padding_idx;
      acc_t my_weight = acc_t(1);
      bool bad = false;
      if (lane < n) {
        my_row = static_cast<int64_t>(indices[chunk + lane]);
        bad = is_bad_row(my_row, table);
        if (per_sample_weights != nullptr) my_weight = per_sample_weights[chunk + lane];
      }
      if (__any_sync(kFullMask, bad)) return false;
      for (int j = 0; j < n; ++j) {
        const int64_t row = __shfl_sync(kFullMask, my_row, j);
        const acc_t w = __shfl_sync(kFullMask, my_weight, j);
        if (row == table.padding_idx) continue;
        const acc_t scale = p.mode == PoolMode::kMean ? mean_scale : w;
        acc_t* dst = grad_weight + row * dim;
#pragma unroll
        for (int q = 0; q < NV; ++q) {
          const int64_t c = pass + q * kWarpSize + lane;
          if (c < dim) atomic_add(dst + c, scale * grad_column[q]);
        }
      }
    }
  }
  return true;
}

template <typename acc_t, typename IT>
__global__ void __launch_bounds__(kWarpSize * kBagsPerBlock) dense_backward_kernel(const DenseBackwardParams p) {
  int64_t t, b, g;
  if (!warp_bag(p.layout, t, b, g)) return;
  const TableDescriptor table = table_of(p.layout, t);
  int64_t start = 0, end = 0;
  bool ok = bag_bounds<IT>(p.layout, g, start, end);
  if (ok) {
    if (table.dim <= kWarpSize) ok = dense_backward_bag<acc_t, IT, 1>(p, table, b, start, end);
    else if (table.dim <= 2 * kWarpSize) ok = dense_backward_bag<acc_t, IT, 2>(p, table, b, start, end);
    else ok = dense_backward_bag<acc_t, IT, 4>(p, table, b, start, end);
  }
  if (!ok && threadIdx.x == 0) record_error(p.layout, g);
}

// Max: each column's gradient goes to the row that won it in the forward (max_indices; -1: none). The
// indices are not read, as on the CPU.
template <typename acc_t>
__global__ void __launch_bounds__(kWarpSize * kBagsPerBlock) max_backward_kernel(const DenseBackwardParams p) {
  int64_t t, b, g;
  if (!warp_bag(p.layout, t, b, g)) return;
  const TableDescriptor table = table_of(p.layout, t);
  const int64_t* winners = p.max_indices + b * p.layout.total_dim + table.col;
  const acc_t* grad = static_cast<const acc_t*>(p.grad) + b * p.layout.total_dim + table.col;
  acc_t* grad_weight = static_cast<acc_t*>(table.grad_weight);
  bool bad = false;
  for (int64_t d = threadIdx.x; d < table.dim; d += kWarpSize) {
    const int64_t row = winners[d];
    if (row < -1 || row >= table.num_rows) {
      bad = true;
    } else if (row >= 0) {
      atomic_add(grad_weight + row * table.dim + d, grad[d]);
    }
  }
  if (__any_sync(kFullMask, bad) && threadIdx.x == 0) record_error(p.layout, g);
}

// Describes the first error of the first bad bag (or offsets[0] != 0, which the CPU checks before any
// bag), re-reading the inputs in the order a sequential loop would. One thread: it runs once per call
// and touches one bag.
template <typename IT>
__global__ void describe_bag_error_kernel(const BagLayout layout, const int64_t* max_indices) {
  const IT* offsets = static_cast<const IT*>(layout.offsets);
  const IT* indices = static_cast<const IT*>(layout.indices);
  BagErrorReport report;
  const unsigned long long first_bag = layout.errors->first_bag;
  if (layout.num_offsets > 0 && offsets[0] != 0) {
    report.kind = BagError::kFirstOffsetNotZero;
    report.position = 0;
    report.value = static_cast<int64_t>(offsets[0]);
  } else if (first_bag != kNoError) {
    const int64_t g = static_cast<int64_t>(first_bag);
    const int64_t t = g / layout.bags;
    const int64_t b = g - t * layout.bags;
    const TableDescriptor table = table_of(layout, t);
    report.table = t;
    if (max_indices != nullptr) {
      const int64_t* winners = max_indices + b * layout.total_dim + table.col;
      for (int64_t d = 0; d < table.dim; ++d) {
        if (winners[d] < -1 || winners[d] >= table.num_rows) {
          report.kind = BagError::kMaxIndexOutOfRange;
          report.position = b;
          report.column = table.col + d;
          report.value = winners[d];
          break;
        }
      }
    } else {
      const int64_t start = static_cast<int64_t>(offsets[g]);
      const int64_t end = g + 1 < layout.num_offsets ? static_cast<int64_t>(offsets[g + 1]) : layout.num_indices;
      if (end > layout.num_indices) {
        report.kind = BagError::kOffsetPastEnd;
        report.position = g + 1;
        report.value = end;
      } else if (end < start || start < 0) {
        report.kind = BagError::kOffsetDecreasing;
        report.position = g + 1;
        report.value = end;
        report.previous = start;
      } else {
        for (int64_t i = start; i < end; ++i) {
          const int64_t row = static_cast<int64_t>(indices[i]);
          if (is_bad_row(row, table)) {
            report.kind = BagError::kIndexOutOfRange;
            report.position = i;
            report.value = row;
            break;
          }
        }
      }
    }
    // The bag was abandoned, so its output is incomplete, yet its inputs are good: never return that.
    if (report.kind == BagError::kNone) {
      report.kind = BagError::kUnexplained;
      report.position = b;
    }
  }
  layout.errors->report = report;
}

cudaError_t reset_errors(const BagLayout& layout, cudaStream_t stream) {
  return cudaMemsetAsync(&layout.errors->first_bag, 0xFF, sizeof(layout.errors->first_bag), stream);
}

cudaError_t launch_describe(const BagLayout& layout, const int64_t* max_indices, cudaStream_t stream) {
  if (layout.index_is_64bit) {
    describe_bag_error_kernel<int64_t><<<1, 1, 0, stream>>>(layout, max_indices);
  } else {
    describe_bag_error_kernel<int32_t><<<1, 1, 0, stream>>>(layout, max_indices);
  }
  return cudaGetLastError();
}

// x: the bags of a table, y: the tables (so no kernel divides a 64-bit bag number); false when the call
// exceeds the grid's limits.
bool bag_grid(const BagLayout& layout, dim3& grid) {
  const int64_t blocks = (layout.bags + kBagsPerBlock - 1) / kBagsPerBlock;
  if (blocks > 0x7fffffffll || layout.num_tables > 65535) return false;
  grid = dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(layout.num_tables));
  return true;
}

// The kernel's shape for the call, picked here rather than per table inside the kernel: a kernel that held
// every shape would be allocated the registers of the largest (it was 91 a thread for float sums and 162 for
// bfloat16 max, against 32 to 70 for one shape), and registers cap the warps an SM keeps in flight, which a
// gather needs to hide the latency of its random row reads. Packets need every table's rows to be whole
// aligned packets; the widest table sizes the lanes' packets (the fewest that cover it in one pass, up to
// two; wider tables take several passes), and narrower tables of the call leave the extra lanes idle.
template <typename WT, typename IT, bool kMax, bool kArgs>
void launch_pool_shaped(const PoolParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kVec = kPacketBytes / static_cast<int>(sizeof(WT));
  const dim3 block(kWarpSize, kBagsPerBlock);
  if (p.packet_rows && p.max_dim <= kWarpSize * kVec) {
    embedding_bag_pool_kernel<WT, IT, kMax, kArgs, kVec, 1><<<grid, block, 0, stream>>>(p);
  } else if (p.packet_rows) {
    embedding_bag_pool_kernel<WT, IT, kMax, kArgs, kVec, 2><<<grid, block, 0, stream>>>(p);
  } else if (p.max_dim <= kWarpSize) {
    embedding_bag_pool_kernel<WT, IT, kMax, kArgs, 1, 1><<<grid, block, 0, stream>>>(p);
  } else if (p.max_dim <= 2 * kWarpSize) {
    embedding_bag_pool_kernel<WT, IT, kMax, kArgs, 1, 2><<<grid, block, 0, stream>>>(p);
  } else {
    embedding_bag_pool_kernel<WT, IT, kMax, kArgs, 1, 4><<<grid, block, 0, stream>>>(p);
  }
}

template <typename WT, typename IT>
void launch_pool_typed(const PoolParams& p, dim3 grid, cudaStream_t stream) {
  if (p.mode != PoolMode::kMax) {
    launch_pool_shaped<WT, IT, false, false>(p, grid, stream);
  } else if (p.max_indices != nullptr) {
    launch_pool_shaped<WT, IT, true, true>(p, grid, stream);
  } else {  // the maxima alone (return_max_indices=False)
    launch_pool_shaped<WT, IT, true, false>(p, grid, stream);
  }
}

template <typename WT>
void launch_pool_weight(const PoolParams& p, dim3 grid, cudaStream_t stream) {
  if (p.layout.index_is_64bit) {
    launch_pool_typed<WT, int64_t>(p, grid, stream);
  } else {
    launch_pool_typed<WT, int32_t>(p, grid, stream);
  }
}

template <typename acc_t>
void launch_dense_backward_typed(const DenseBackwardParams& p, dim3 grid, cudaStream_t stream) {
  const dim3 block(kWarpSize, kBagsPerBlock);
  if (p.mode == PoolMode::kMax) {
    max_backward_kernel<acc_t><<<grid, block, 0, stream>>>(p);
  } else if (p.layout.index_is_64bit) {
    dense_backward_kernel<acc_t, int64_t><<<grid, block, 0, stream>>>(p);
  } else {
    dense_backward_kernel<acc_t, int32_t><<<grid, block, 0, stream>>>(p);
  }
}

}  // namespace

cudaError_t launch_embedding_bag_pool(const PoolParams& p, cudaStream_t stream) {
  cudaError_t status = reset_errors(p.layout, stream);
  if (status != cudaSuccess) return status;
  if (p.layout.num_tables * p.layout.bags > 0) {
    dim3 grid;
    if (!bag_grid(p.layout, grid)) return cudaErrorInvalidConfiguration;
    switch (p.weight_type) {
      case WeightType::kFloat: launch_pool_weight<float>(p, grid, stream); break;
      case WeightType::kHalf: launch_pool_weight<__half>(p, grid, stream); break;
      case WeightType::kBFloat16: launch_pool_weight<__nv_bfloat16>(p, grid, stream); break;
      case WeightType::kDouble: launch_pool_weight<double>(p, grid, stream); break;
      case WeightType::kUInt8RowwiseQuantized: return cudaErrorInvalidValue;
    }
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return launch_describe(p.layout, nullptr, stream);
}

cudaError_t launch_embedding_bag_dense_backward(const DenseBackwardParams& p, cudaStream_t stream) {
  cudaError_t status = reset_errors(p.layout, stream);
  if (status != cudaSuccess) return status;
  if (p.layout.num_tables * p.layout.bags > 0) {
    dim3 grid;
    if (!bag_grid(p.layout, grid)) return cudaErrorInvalidConfiguration;
    if (p.double_precision) {
      launch_dense_backward_typed<double>(p, grid, stream);
    } else {
      launch_dense_backward_typed<float>(p, grid, stream);
    }
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return launch_describe(p.layout, p.mode == PoolMode::kMax ? p.max_indices : nullptr, stream);
}

}  // namespace cuda
}  // namespace mprec
