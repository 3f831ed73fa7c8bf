// The interface between the CUDA embedding-bag operators (csrc/cuda/embedding_bag_cuda.cpp: checks, allocation,
// streams, errors, all through torch) and their kernels (csrc/cuda/embedding_bag_kernels.cu). The kernels file
// includes only this header, the CUDA runtime and embedding_bag_types.h, so nvcc compiles it on any machine,
// with or without a CUDA build of torch; only plain structs, raw device pointers and a stream cross this line.
//
// Layout of a call (FBGEMM's TBE layout; one table is T = 1): table t owns the global bags g = t * bags + b,
// b in [0, bags); bag g covers indices [offsets[g], end) with end = offsets[g + 1] when g + 1 < num_offsets,
// else num_indices. Output row b holds table t's D_t columns from column `col` of that table.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mprec/embedding_bag_types.h"

namespace mprec {
namespace cuda {

// padding_idx of a table with no padding row. The kernels also use the table's padding_idx to mark lanes
// past the end of a bag, which is why "none" is not -1 here: an index of -1 must be an error, not a lane to
// skip, and no index is skipped unless the table really has a padding row (see is_bad_row).
constexpr int64_t kNoPaddingRow = INT64_MIN;

struct TableDescriptor {
  const void* weight;     // forward: [num_rows, dim], rows contiguous, in the call's weight type
  void* grad_weight;      // dense backward: [num_rows, dim] accumulation-type buffer (float, double for
                          // float64 tables), zero-filled by the caller
  int64_t num_rows;
  int64_t dim;
  int64_t col;            // first column of this table in the output (forward) or grad (backward)
  int64_t padding_idx;    // kNoPaddingRow when the table has none (see below)
};

// The device-side record of the first bad input. The kernels atomicMin the failing bag into first_bag; a
// one-thread pass then re-reads that bag in order and fills `report` exactly as the sequential CPU kernel
// would meet the error, so both backends raise the same message for the same input.
struct BagErrorState {
  unsigned long long first_bag;  // ~0ull: none
  BagErrorReport report;
};

struct BagLayout {
  // Table descriptors: a device array of num_tables entries, or null when num_tables == 1 and table0 holds
  // the only table (a single-table call then needs no host-to-device copy).
  const TableDescriptor* tables;
  TableDescriptor table0;
  int64_t num_tables;
  int64_t bags;            // per table
  const void* indices;     // int32 or int64, [num_indices]
  const void* offsets;     // same dtype, [num_offsets]
  bool index_is_64bit;
  int64_t num_indices;
  int64_t num_offsets;
  int64_t total_dim;       // columns of the output / grad: sum of the tables' dims
  BagErrorState* errors;   // device memory; the launchers initialise it
};

struct PoolParams {
  BagLayout layout;
  WeightType weight_type;          // kFloat, kHalf, kBFloat16 or kDouble
  PoolMode mode;
  const void* per_sample_weights;  // [num_indices] in the accumulation type (sum mode only), or null
  void* output;                    // [bags, total_dim] in the weight type
  int64_t* max_indices;            // [bags, total_dim] for kMax (the row of each column's max, -1 if none), or
                                   // null where the call wants no argmax
  // The launcher picks the kernel's per-lane registers from these (as FBGEMM's TBE picks by max_D):
  int64_t max_dim;                 // the widest table's dim
  bool packet_rows;                // every table's rows are whole 16-byte packets and its weight 16-byte aligned
};

struct DenseBackwardParams {
  BagLayout layout;        // tables[t].grad_weight receive the gradient; weight is not read
  bool double_precision;   // accumulation type: double (float64 tables) or float
  PoolMode mode;
  const void* per_sample_weights;  // [num_indices] in the accumulation type, or null
  const void* grad;                // [bags, total_dim] in the accumulation type
  const int64_t* max_indices;      // [bags, total_dim] for kMax
};

// Both launchers enqueue their work on `stream` and return the launch status; errors in the inputs are
// not launch errors: they land in layout.errors, which the caller reads back after the stream has run.
cudaError_t launch_embedding_bag_pool(const PoolParams& params, cudaStream_t stream);
cudaError_t launch_embedding_bag_dense_backward(const DenseBackwardParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace mprec
