// AVX2 + FMA variant of the DHE hashing loop: 4 double lanes. Compiled with -mavx2 -mfma only for this
// file; chosen at run time by csrc/cpu/isa.cpp.
#include <immintrin.h>
#include <cstdint>

#include "mprec/dhe_kernel.h"

namespace mprec {
namespace cpu {
namespace avx2 {
namespace {

struct bf16_t { uint16_t bits; };

struct VD {
  static constexpr int W = 4;
  using D = __m256d;
  static D set1(double x) { return _mm256_set1_pd(x); }
  static D load(const double* p) { return _mm256_loadu_pd(p); }
  static D add(D a, D b) { return _mm256_add_pd(a, b); }
  static D sub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D div(D a, D b) { return _mm256_div_pd(a, b); }
  static D sqrt(D a) { return _mm256_sqrt_pd(a); }
  static D floor(D a) { return _mm256_floor_pd(a); }
  static D fmadd(D a, D b, D c) { return _mm256_fmadd_pd(a, b, c); }
  static D fmsub(D a, D b, D c) { return _mm256_fmsub_pd(a, b, c); }
  static D fnmadd(D a, D b, D c) { return _mm256_fnmadd_pd(a, b, c); }
  static D add_if_lt(D x, D bound, D y) { return _mm256_add_pd(x, _mm256_and_pd(_mm256_cmp_pd(x, bound, _CMP_LT_OQ), y)); }
  static D sub_if_ge(D x, D bound) {
    return _mm256_sub_pd(x, _mm256_and_pd(_mm256_cmp_pd(x, bound, _CMP_GE_OQ), bound));
  }
  static D select_eq(D x, D v, D a, D b) { return _mm256_blendv_pd(b, a, _mm256_cmp_pd(x, v, _CMP_EQ_OQ)); }
  static D select_gt(D x, D v, D a, D b) { return _mm256_blendv_pd(b, a, _mm256_cmp_pd(x, v, _CMP_GT_OQ)); }
  static D exponent(D x) {
    // Biased exponent bits as a double through the 2^52 trick (AVX2 has no int64 -> double conversion).
    const __m256i e = _mm256_srli_epi64(_mm256_castpd_si256(x), 52);
    const D biased = _mm256_castsi256_pd(_mm256_or_si256(e, _mm256_set1_epi64x(0x4330000000000000LL)));
    return _mm256_sub_pd(biased, _mm256_set1_pd(4503599627370496.0 + 1023.0));
  }
  static D mantissa(D x) {
    const __m256i bits = _mm256_and_si256(_mm256_castpd_si256(x), _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL));
    return _mm256_castsi256_pd(_mm256_or_si256(bits, _mm256_set1_epi64x(0x3FF0000000000000LL)));
  }
  static void deinterleave(D lo, D hi, D& even, D& odd) {
    even = _mm256_permute4x64_pd(_mm256_unpacklo_pd(lo, hi), 0xD8);
    odd = _mm256_permute4x64_pd(_mm256_unpackhi_pd(lo, hi), 0xD8);
  }
  static void interleave(D even, D odd, D& lo, D& hi) {
    const D e = _mm256_permute4x64_pd(even, 0xD8), o = _mm256_permute4x64_pd(odd, 0xD8);
    lo = _mm256_unpacklo_pd(e, o);
    hi = _mm256_unpackhi_pd(e, o);
  }
  static void store(double* p, D v) { _mm256_storeu_pd(p, v); }
  static void store(float* p, D v) { _mm_storeu_ps(p, _mm256_cvtpd_ps(v)); }
  static void store(bf16_t* p, D v) {
    const __m128i u = _mm_castps_si128(_mm256_cvtpd_ps(v));
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    const __m128i r = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(u, _mm_set1_epi32(0x7FFF)), lsb), 16);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(r, r));
  }
};

#include "dhe_encode_impl.h"

}  // namespace

int64_t dhe_encode(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                   DheOutType type, int64_t stride) {
  return encode(args, r0, r1, c0, c1, out, type, stride);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace mprec
