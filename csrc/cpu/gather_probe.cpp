// The machine's random-row gather limit, for the benchmarks: how fast the rows of a table at given indices
// can be brought into the cores when that is all a loop does. Each lookup reads the first byte of every 64-byte
// line of its row (enough to bring the line in, and never past the row's end, however narrow) and prefetches the
// first `prefetch_lines` lines of the row `distance` lookups ahead, into L1 or L2, over torch's threads. Which
// setting is fastest differs between CPUs (as the pooling loop's does: RowPrefetch in embedding_bag_kernel.h), so
// the embedding-bag benchmark tries several, times the best beside the kernels and reports them as a fraction of
// it: a reference, not a bound (a kernel that schedules its reads better can exceed it).
//
// The loop is compiled per row width (in lines, up to kMaxFixedLines) and per prefetch setting, with every
// per-line loop unrolled and no branch in the loop but its own: a runtime loop over each row's lines and
// prefetches ran a standard float32 row (8 lines) at 0.7x the pooling kernel's rate, which measures the probe's
// instructions rather than the machine. Where fewer instructions stand between two lookups, more of them fit
// the out-of-order window, and more rows are in flight.
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "mprec/gather_probe.h"

namespace mprec {
namespace cpu {
namespace {

constexpr int kMaxFixedLines = 16;

// The first byte of each of the row's kLines lines.
template <int kLines>
__attribute__((always_inline)) inline uint64_t read_row(const char* row) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(row);
  uint64_t acc = 0;
#pragma GCC unroll 16
  for (int line = 0; line < kLines; ++line) acc += bytes[64 * line];
  return acc;
}

template <int kPrefetched, int kHint>
__attribute__((always_inline)) inline void prefetch_row(const char* row) {
#pragma GCC unroll 16
  for (int line = 0; line < kPrefetched; ++line) __builtin_prefetch(row + 64 * line, 0, kHint);
}

template <int kLines, int kPrefetched, int kHint>
uint64_t probe_range(const char* base, int64_t row_bytes, const int64_t* indices, int64_t begin, int64_t end,
                     int64_t distance) {
  uint64_t acc = 0;
  int64_t i = begin;
  // The lookups with a row `distance` ahead in the range, then the rest, so that neither loop tests for the end.
  for (; i + distance < end; ++i) {
    prefetch_row<kPrefetched, kHint>(base + indices[i + distance] * row_bytes);
    acc += read_row<kLines>(base + indices[i] * row_bytes);
  }
  for (; i < end; ++i) acc += read_row<kLines>(base + indices[i] * row_bytes);
  return acc;
}

// Rows wider than kMaxFixedLines lines: the same loop with runtime line counts.
uint64_t probe_range_wide(const char* base, int64_t row_bytes, const int64_t* indices, int64_t begin, int64_t end,
                          int64_t distance, int64_t prefetch_bytes, bool into_l2) {
  uint64_t acc = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (i + distance < end) {
      const char* ahead = base + indices[i + distance] * row_bytes;
      for (int64_t line = 0; line < prefetch_bytes; line += 64) {
        if (into_l2) __builtin_prefetch(ahead + line, 0, 2);
        else __builtin_prefetch(ahead + line, 0, 3);
      }
    }
    const auto* row = reinterpret_cast<const uint8_t*>(base + indices[i] * row_bytes);
    for (int64_t line = 0; line < row_bytes; line += 64) acc += row[line];
  }
  return acc;
}

using RangeFn = uint64_t (*)(const char*, int64_t, const int64_t*, int64_t, int64_t, int64_t);

// probe_range<kLines, prefetched, hint> for prefetched in [0, kLines] (0: no prefetch).
template <int kLines, int kHint, int... kPrefetched>
RangeFn pick_prefetched(int64_t prefetched, std::integer_sequence<int, kPrefetched...>) {
  RangeFn fn = nullptr;
  ((fn = kPrefetched == prefetched ? &probe_range<kLines, kPrefetched, kHint> : fn), ...);
  return fn;
}

template <int kLines>
RangeFn pick_for_lines(int64_t prefetched, bool into_l2) {
  return into_l2 ? pick_prefetched<kLines, 2>(prefetched, std::make_integer_sequence<int, kLines + 1>())
                 : pick_prefetched<kLines, 3>(prefetched, std::make_integer_sequence<int, kLines + 1>());
}

template <int... kLines>
RangeFn pick(int64_t lines, int64_t prefetched, bool into_l2, std::integer_sequence<int, kLines...>) {
  RangeFn fn = nullptr;
  ((fn = kLines + 1 == lines ? pick_for_lines<kLines + 1>(prefetched, into_l2) : fn), ...);
  return fn;
}

}  // namespace

uint64_t gather_probe(const void* table, int64_t row_bytes, const int64_t* indices, int64_t count,
                      int64_t distance, int64_t prefetch_lines, bool into_l2) {
  const char* base = static_cast<const char*>(table);
  const int64_t lines = (row_bytes + 63) / 64;
  // Lines prefetched: the first prefetch_lines of the row, none without a distance.
  const int64_t prefetched = distance <= 0 ? 0 : prefetch_lines < lines ? prefetch_lines : lines;
  const RangeFn fixed =
      lines <= kMaxFixedLines ? pick(lines, prefetched, into_l2, std::make_integer_sequence<int, kMaxFixedLines>())
                              : nullptr;
  std::atomic<uint64_t> total{0};
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    const uint64_t acc = fixed ? fixed(base, row_bytes, indices, begin, end, distance)
                               : probe_range_wide(base, row_bytes, indices, begin, end, distance, prefetched * 64,
                                                  into_l2);
    total += acc;
  });
  return total.load();
}

}  // namespace cpu
}  // namespace mprec
