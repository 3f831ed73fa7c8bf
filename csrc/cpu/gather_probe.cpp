// The machine's random-row gather limit, for the benchmarks: how fast the rows of a table at given indices
// can be brought into the cores when that is all a loop does. Each lookup reads one word of every 64-byte
// line of its row (enough to bring the line in) and prefetches the first `prefetch_lines` lines of the row
// `distance` lookups ahead, into L1 or L2, over torch's threads. Which setting is fastest differs between CPUs
// (as the pooling loop's does: RowPrefetch in embedding_bag_kernel.h), so the embedding-bag benchmark tries
// several, times the best beside the kernels and reports them as a fraction of it: a reference, not a bound
// (a kernel that schedules its reads better can exceed it).
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "mprec/gather_probe.h"

namespace mprec {
namespace cpu {

uint64_t gather_probe(const void* table, int64_t row_bytes, const int64_t* indices, int64_t count,
                      int64_t distance, int64_t prefetch_lines, bool into_l2) {
  const char* base = static_cast<const char*>(table);
  const int64_t prefetch_bytes = prefetch_lines * 64 < row_bytes ? prefetch_lines * 64 : row_bytes;
  std::atomic<uint64_t> total{0};
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    uint64_t acc = 0;
    for (int64_t i = begin; i < end; ++i) {
      if (distance > 0 && i + distance < end) {
        const char* ahead = base + indices[i + distance] * row_bytes;
        if (into_l2) {
          for (int64_t line = 0; line < prefetch_bytes; line += 64) __builtin_prefetch(ahead + line, 0, 2);
        } else {
          for (int64_t line = 0; line < prefetch_bytes; line += 64) __builtin_prefetch(ahead + line, 0, 3);
        }
      }
      const char* row = base + indices[i] * row_bytes;
      for (int64_t line = 0; line < row_bytes; line += 64) {
        uint64_t word;
        std::memcpy(&word, row + line, sizeof word);
        acc += word;
      }
    }
    total += acc;
  });
  return total.load();
}

}  // namespace cpu
}  // namespace mprec
