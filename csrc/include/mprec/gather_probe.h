// The random-row gather limit probe (csrc/cpu/gather_probe.cpp), bound in mprec._C for the benchmarks.
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

// Reads rows indices[0..count) of `table` (rows of row_bytes, valid indices only: the caller checks), the first
// byte of each 64-byte line, prefetching the first `prefetch_lines` lines of the row `distance` lookups ahead (0: no
// prefetch) into L1, or into L2 where `into_l2`; returns the sum of the bytes read.
uint64_t gather_probe(const void* table, int64_t row_bytes, const int64_t* indices, int64_t count,
                      int64_t distance, int64_t prefetch_lines, bool into_l2);

}  // namespace cpu
}  // namespace mprec
