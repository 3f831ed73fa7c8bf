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
  static uint64_t sum(A acc) { return static_cast<uint64_t>(_mm512_reduce_add_epi64(acc)); }
};

#include "gather_probe_impl.h"

}  // namespace avx512
}  // namespace cpu
}  // namespace mprec
