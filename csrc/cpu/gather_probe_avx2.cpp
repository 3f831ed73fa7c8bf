// AVX2 variant of the gather probe's loop (gather_probe_impl.h): rows read by 32-byte loads.
#include <immintrin.h>
#include <cstdint>

#include "mprec/gather_probe.h"

namespace mprec {
namespace cpu {
namespace avx2 {

struct P {
  static constexpr int kBytes = 32;
  using A = __m256i;
  static A zero() { return _mm256_setzero_si256(); }
  static A add(A acc, const char* p) {
    return _mm256_add_epi64(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static uint64_t sum(A acc) {
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
};

#include "gather_probe_impl.h"

}  // namespace avx2
}  // namespace cpu
}  // namespace mprec
