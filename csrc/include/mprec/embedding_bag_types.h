// Plain types every embedding-bag implementation shares: the CPU operators (csrc/cpu/embedding_bag.cpp), their
// ISA variants, the CUDA kernels (csrc/cuda/embedding_bag_kernels.cu, compiled by nvcc without torch) and the
// CUDA operators. It stays free of ATen, c10 and standard-library templates so that all of them can include
// it (see embedding_bag_kernel.h for why the ISA variants need that).
#pragma once
#include <cstdint>

namespace mprec {

// kDouble tables are pooled by the portable loop in csrc/cpu/embedding_bag.cpp on the CPU (float64
// accumulation, for gradcheck and exact references); they never reach a CPU ISA variant.
enum class WeightType : int32_t { kFloat = 0, kHalf = 1, kBFloat16 = 2, kUInt8RowwiseQuantized = 3, kDouble = 4 };
enum class PoolMode : int32_t { kSum = 0, kMean = 1, kMax = 2 };

// What went wrong inside a kernel loop. Each backend fills a BagErrorReport, and bag_error_message
// (embedding_bag_checks.h) turns it into the one message every backend raises.
enum class BagError : int32_t {
  kNone = 0,
  kIndexOutOfRange = 1,
  kOffsetDecreasing = 2,
  kOffsetPastEnd = 3,
  kFirstOffsetNotZero = 4,
  kMaxIndexOutOfRange = 5,
  // A device kernel abandoned a bag whose re-reading found nothing wrong: a bug in that kernel, raised rather
  // than returning a partly written result.
  kUnexplained = 6,
};

struct BagErrorReport {
  BagError kind = BagError::kNone;
  int64_t position = -1;  // index position (kIndexOutOfRange), offset (offset errors), bag (kMaxIndexOutOfRange,
                          // kUnexplained)
  int64_t value = 0;      // the offending index, offset or max index
  int64_t table = 0;      // table of a batched call
  int64_t previous = 0;   // kOffsetDecreasing: offsets[position - 1], which a device buffer cannot be asked for later
  int64_t column = 0;     // kMaxIndexOutOfRange: the output column
};

}  // namespace mprec
