// The interface between the embedding-bag operators (csrc/cpu/embedding_bag.cpp, which validate, allocate
// and parallelise with ATen) and their ISA variants (csrc/cpu/embedding_bag_{avx512,avx2,scalar}.cpp).
//
// The variants are compiled with different -m flags, so this header and everything they include must be
// free of ATen, c10 and standard-library templates: an inline function instantiated in two files with
// different flags is merged by the linker, and the AVX-512 copy could then run on a CPU without AVX-512.
// Only plain structs and function pointers cross this line.
#pragma once
#include <cstdint>

#include "mprec/embedding_bag_types.h"

namespace mprec {
namespace cpu {

// The shared enums and the error report (embedding_bag_types.h), under the names the variants use.
using ::mprec::BagError;
using ::mprec::BagErrorReport;
using ::mprec::PoolMode;
using ::mprec::WeightType;

// How the pooling loop prefetches the rows of a table that does not stay in the cache. Which is faster depends on
// the CPU's own prefetchers, so the default is chosen by the CPU (csrc/cpu/embedding_bag.cpp; the measurements:
// embedding_bag_pool_impl.h):
//   kLeadingLines:     the first lines of a wide slice of a row, the CPU's prefetchers fetching the rest (Intel);
//   kWholeSlices:      every line of the slice, from further ahead the narrower it is (AMD with AVX-512, and CPUs
//                      not measured);
//   kWholeSlicesNear:  every line of the slice, from the same distance at every width (kNearPrefetchDistance;
//                      AMD without AVX-512); float32 rows of several wide slices, the first one's first lines only.
// kNone: a table that stays in the cache: no prefetch from memory (wide rows are prefetched from L2 into L1:
// kCachedPrefetchDistance in embedding_bag_pool_impl.h).
enum class RowPrefetch : int { kNone = 0, kLeadingLines = 1, kWholeSlices = 2, kWholeSlicesNear = 3 };

// One table, a range of bags. Bag b (global bag number, so that the batched op can point every table at
// the same indices/offsets arrays) covers indices [offsets[b], offsets[b+1]), except that when
// b + 1 == num_offsets the bag ends at num_indices (torch's include_last_offset=False convention).
struct PoolArgs {
  const void* weight;              // [num_rows, dim], rows contiguous
  const float* scale_bias;         // [num_rows, 2] (scale, bias) for kUInt8RowwiseQuantized, else null
  WeightType weight_type;
  int64_t num_rows;
  int64_t dim;
  const void* indices;             // int32 or int64, [num_indices]
  const void* offsets;             // same dtype as indices, [num_offsets]
  bool index_is_64bit;
  int64_t num_indices;
  int64_t num_offsets;
  const float* per_sample_weights; // [num_indices] or null
  PoolMode mode;
  int64_t padding_idx;             // -1: none
  void* output;                    // fp32 for fp32 and uint8 weights, else the weight's type
  int64_t output_stride;           // elements between consecutive bags' output rows
  int64_t* max_indices;            // kMax: [bags, max_indices_stride], or null for no argmax (the maxima alone)
  int64_t max_indices_stride;
  RowPrefetch prefetch;            // how rows are prefetched; kNone for a table that stays in the cache
  bool burst;                      // whether bag loops may prefetch a bag's rows in one burst (burst_table_bytes)
};

// Tables of at most this many bytes are pooled without prefetching their rows (RowPrefetch::kNone; the default
// and why: csrc/cpu/embedding_bag.cpp). set_cached_table_bytes overrides it for this process and returns the
// previous value: the tests run both loops on tables of any size with it.
int64_t cached_table_bytes();
int64_t set_cached_table_bytes(int64_t bytes);
// Tables of at most this many bytes, if prefetched at all, are prefetched row by row, ahead of the row pooled; larger
// ones may have each bag's rows prefetched in one burst as the bag starts, where the bag loop would otherwise hold
// too few rows in flight (kBurstPrefetch; the default and why: csrc/cpu/embedding_bag.cpp).
// set_burst_table_bytes overrides it for this process and returns the previous value.
int64_t burst_table_bytes();
int64_t set_burst_table_bytes(int64_t bytes);
// How larger tables' rows are prefetched: by default the CPU vendor's (RowPrefetch above). set_row_prefetch
// overrides it for this process and returns the previous value (kNone is not a choice here).
RowPrefetch row_prefetch();
RowPrefetch set_row_prefetch(RowPrefetch policy);

// Pools bags [bag_begin, bag_end) of `args`, writing bag b's output row at
// output + (b - output_bag_base) * output_stride. Returns false and fills `error` with the first bad
// position it met (the loop stops at it); results for other bags of the range are then unspecified.
using PoolFn = bool (*)(const PoolArgs& args, int64_t bag_begin, int64_t bag_end, int64_t output_bag_base,
                        BagErrorReport* error);

namespace avx512 { bool pool(const PoolArgs&, int64_t, int64_t, int64_t, BagErrorReport*); }
namespace avx2 { bool pool(const PoolArgs&, int64_t, int64_t, int64_t, BagErrorReport*); }
namespace scalar { bool pool(const PoolArgs&, int64_t, int64_t, int64_t, BagErrorReport*); }

}  // namespace cpu
}  // namespace mprec
