// The machine's random-row gather limit, for the benchmarks: how fast the rows of a table at given indices
// can be read into the cores when that is all a loop does. Each lookup reads every byte of its row with the
// active ISA's widest loads (gather_probe_impl.h says why every byte) and prefetches the first `prefetch_lines`
// lines of the row `distance` lookups ahead, into L1 or L2, over torch's threads. Which setting is fastest differs
// between CPUs (as the pooling loop's does: RowPrefetch in embedding_bag_kernel.h), so the embedding-bag benchmark
// tries several, times the best beside the kernels and reports them as a fraction of it: a reference, not a bound
// (a kernel that schedules its reads better can exceed it).
#include "mprec/gather_probe.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

#include "mprec/isa.h"

namespace mprec {
namespace cpu {

uint64_t gather_probe(const void* table, int64_t row_bytes, const int64_t* indices, int64_t count,
                      int64_t distance, int64_t prefetch_lines, bool into_l2) {
  const char* base = static_cast<const char*>(table);
  const int64_t lines = (row_bytes + 63) / 64;
  // Lines prefetched: the first prefetch_lines of the row, none without a distance.
  const int64_t prefetched = distance <= 0 ? 0 : prefetch_lines < lines ? prefetch_lines : lines;
  const GatherProbeFn probe = gather_probe_kernel(active_isa());
  std::atomic<uint64_t> total{0};
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    total += probe(base, row_bytes, indices, begin, end, distance, prefetched, into_l2);
  });
  return total.load();
}

}  // namespace cpu
}  // namespace mprec
