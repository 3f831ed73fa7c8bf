// AVX-512 variant of the gather probe's loop (gather_probe_impl.h): rows read by 64-byte loads.
#include <immintrin.h>
#include <cstdint>

#include "mprec/gather_probe.h"

namespace mprec {
namespace cpu {
namespace avx512 {

struct P {
  static constexpr int kBytes = 64;
  using A = __m512i;
  static A zero() { return _mm512_setzero_si512(); }
  static A add(A acc, const char* p) { return _mm512_add_epi64(acc, _mm512_loadu_si512(p)); }
  // The lanes added as unsigned words: _mm512_reduce_add_epi64 adds them as signed ones, whose wrap is undefined.
  static uint64_t sum(A acc) {
    alignas(64) uint64_t lanes[8];
    _mm512_store_si512(lanes, acc);
    uint64_t total = 0;
    for (int l = 0; l < 8; ++l) total += lanes[l];
    return total;
  }
};

#include "gather_probe_impl.h"

}  // namespace avx512
}  // namespace cpu
}  // namespace mprec
