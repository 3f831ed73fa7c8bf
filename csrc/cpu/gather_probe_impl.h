// The random-row gather probe's loop (gather_probe.cpp), written once over a load type `P` and included by each
// ISA variant (gather_probe_avx512.cpp, gather_probe_avx2.cpp, gather_probe_scalar.cpp) inside that variant's own
// namespace, after it has defined `P`. Deliberately no #include here: see embedding_bag_kernel.h for why these
// files stay free of shared inline code.
//
// P provides: kBytes (its ISA's widest load: 64, 32 or 8 bytes), A (lanes of 64-bit words), zero(),
// add(A, const char*) (the kBytes at the address added to A as little-endian 64-bit words) and sum(A) (of its
// lanes, wrapping).
//
// Every byte of each row is read, with this ISA's widest loads, as a gather must. A load of one byte of each line
// brings the line in too, but is not the same work: on an AMD EPYC (AVX-512, caches flushed, float32 rows of D=128, the
// same prefetches), loops that read one byte, or the first 16 or 32 bytes, of each line took 0.84-0.92x the time of
// loops that read whole lines with 64-byte loads, with or without adds or stores after them. The pooling kernel lagged
// behind a probe of one byte per line by as much. Such a probe measures a rate no kernel that reads its rows can reach.
//
// Rows of whole lines, up to kMaxFixedLines of them, have a loop of their own per width and prefetch setting,
// with every per-row loop unrolled and no branch in the loop but its own: a runtime loop over each row's lines and
// prefetches ran a standard float32 row (8 lines) at 0.7x the pooling kernel's rate, which measures the probe's
// instructions rather than the machine. Where fewer instructions stand between two lookups, more of them fit the
// out-of-order window, and more rows are in flight. Other rows take a general loop, which reads what no whole
// load covers by 8-byte words and then bytes, never past the row's end.

// Fixed loops for rows of up to 16 lines, or up to 32 loads per row where the loads are narrower.
constexpr int kMaxFixedLines = 32 * P::kBytes / 64 < 16 ? 32 * P::kBytes / 64 : 16;
// Independent sums, so that no one chain of adds orders a row's loads.
constexpr int kAccumulators = 4;

using RangeFn = uint64_t (*)(const char*, int64_t, const int64_t*, int64_t, int64_t, int64_t);

// The sum of the little-endian 64-bit words of `bytes` bytes at p, the last word zero-padded.
static inline uint64_t word_sum(const char* p, int64_t bytes) {
  uint64_t sum = 0;
  int64_t b = 0;
  for (; b + 8 <= bytes; b += 8) {
    uint64_t word;
    __builtin_memcpy(&word, p + b, 8);
    sum += word;
  }
  uint64_t last = 0;
  for (int64_t k = 0; b + k < bytes; ++k) last |= static_cast<uint64_t>(static_cast<uint8_t>(p[b + k])) << (8 * k);
  return sum + last;
}

template <int kPrefetched, int kHint>
__attribute__((always_inline)) static inline void prefetch_row(const char* row) {
#pragma GCC unroll 16
  for (int line = 0; line < kPrefetched; ++line) __builtin_prefetch(row + 64 * line, 0, kHint);
}

template <int kLines, int kPrefetched, int kHint>
static uint64_t probe_range(const char* base, int64_t row_bytes, const int64_t* indices, int64_t begin, int64_t end,
                            int64_t distance) {
  constexpr int kLoads = 64 * kLines / P::kBytes;
  typename P::A acc[kAccumulators];
  for (int k = 0; k < kAccumulators; ++k) acc[k] = P::zero();
  const auto read_row = [&](const char* row) __attribute__((always_inline)) {
#pragma GCC unroll 32
    for (int l = 0; l < kLoads; ++l) acc[l % kAccumulators] = P::add(acc[l % kAccumulators], row + l * P::kBytes);
  };
  int64_t i = begin;
  // The lookups with a row `distance` ahead in the range, then the rest, so that neither loop tests for the end.
  for (; i + distance < end; ++i) {
    prefetch_row<kPrefetched, kHint>(base + indices[i + distance] * row_bytes);
    read_row(base + indices[i] * row_bytes);
  }
  for (; i < end; ++i) read_row(base + indices[i] * row_bytes);
  uint64_t sum = 0;
  for (int k = 0; k < kAccumulators; ++k) sum += P::sum(acc[k]);
  return sum;
}

// Any row: whole loads as far as they go, then word_sum; runtime prefetches.
static uint64_t probe_range_any(const char* base, int64_t row_bytes, const int64_t* indices, int64_t begin,
                                int64_t end, int64_t distance, int64_t prefetched, bool into_l2) {
  const int64_t whole = row_bytes / P::kBytes * P::kBytes;
  typename P::A acc = P::zero();
  uint64_t rest = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (i + distance < end) {
      const char* ahead = base + indices[i + distance] * row_bytes;
      for (int64_t line = 0; line < prefetched; ++line) {
        if (into_l2) __builtin_prefetch(ahead + 64 * line, 0, 2);
        else __builtin_prefetch(ahead + 64 * line, 0, 3);
      }
    }
    const char* row = base + indices[i] * row_bytes;
    for (int64_t b = 0; b < whole; b += P::kBytes) acc = P::add(acc, row + b);
    rest += word_sum(row + whole, row_bytes - whole);
  }
  return P::sum(acc) + rest;
}

// probe_range<kLines, prefetched, kHint> for prefetched in [kPrefetched, kLines] (0: no prefetch).
template <int kLines, int kHint, int kPrefetched = 0>
static RangeFn pick_prefetched(int64_t prefetched) {
  if (prefetched == kPrefetched) return &probe_range<kLines, kPrefetched, kHint>;
  if constexpr (kPrefetched < kLines) return pick_prefetched<kLines, kHint, kPrefetched + 1>(prefetched);
  else return nullptr;
}

// The fixed loop of rows of `lines` lines, for lines in [kLines, kMaxFixedLines].
template <int kLines = 1>
static RangeFn pick(int64_t lines, int64_t prefetched, bool into_l2) {
  if (lines == kLines) return into_l2 ? pick_prefetched<kLines, 2>(prefetched) : pick_prefetched<kLines, 3>(prefetched);
  if constexpr (kLines < kMaxFixedLines) return pick<kLines + 1>(lines, prefetched, into_l2);
  else return nullptr;
}

uint64_t gather_probe_range(const char* base, int64_t row_bytes, const int64_t* indices, int64_t begin, int64_t end,
                            int64_t distance, int64_t prefetched, bool into_l2) {
  const RangeFn fixed = row_bytes % 64 == 0 && row_bytes > 0 ? pick(row_bytes / 64, prefetched, into_l2) : nullptr;
  if (distance <= 0) distance = end - begin;  // no prefetch: the first loop never runs
  return fixed ? fixed(base, row_bytes, indices, begin, end, distance)
               : probe_range_any(base, row_bytes, indices, begin, end, distance, prefetched, into_l2);
}
