// The random-row gather limit probe (csrc/cpu/gather_probe.cpp), bound in mprec._C for the benchmarks.
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

// Reads rows indices[0..count) of `table` (rows of row_bytes, valid indices only: the caller checks), every byte,
// prefetching the first `prefetch_lines` lines of the row `distance` lookups ahead (0: no prefetch) into L1, or
// into L2 where `into_l2`, with the active ISA's loads; returns the sum of the rows' little-endian 64-bit words
// (each row's last word zero-padded), wrapping.
uint64_t gather_probe(const void* table, int64_t row_bytes, const int64_t* indices, int64_t count,
                      int64_t distance, int64_t prefetch_lines, bool into_l2);

// One ISA variant's probe of lookups [begin, end) (csrc/cpu/gather_probe_{avx512,avx2,scalar}.cpp), prefetching
// `prefetched` lines (at most the row's) from `distance` ahead within the range.
using GatherProbeRange = uint64_t(const char* table, int64_t row_bytes, const int64_t* indices, int64_t begin,
                                  int64_t end, int64_t distance, int64_t prefetched, bool into_l2);
using GatherProbeFn = GatherProbeRange*;
namespace avx512 { GatherProbeRange gather_probe_range; }
namespace avx2 { GatherProbeRange gather_probe_range; }
namespace scalar { GatherProbeRange gather_probe_range; }

}  // namespace cpu
}  // namespace mprec
