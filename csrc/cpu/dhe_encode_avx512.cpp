// AVX-512 (F, DQ, VL) variant of the DHE hashing loop: 8 double lanes. Compiled with -mavx512* only for
// this file; chosen at run time by csrc/cpu/isa.cpp.
#include <immintrin.h>
#include <cstdint>

#include "mprec/dhe_kernel.h"

namespace mprec {
namespace cpu {
namespace avx512 {
namespace {

struct bf16_t { uint16_t bits; };

struct VD {
  static constexpr int W = 8;
  using D = __m512d;
  static D set1(double x) { return _mm512_set1_pd(x); }
  static D load(const double* p) { return _mm512_loadu_pd(p); }
  static D add(D a, D b) { return _mm512_add_pd(a, b); }
  static D sub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D div(D a, D b) { return _mm512_div_pd(a, b); }
  static D sqrt(D a) { return _mm512_sqrt_pd(a); }
  static D floor(D a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static D fmadd(D a, D b, D c) { return _mm512_fmadd_pd(a, b, c); }
  static D fmsub(D a, D b, D c) { return _mm512_fmsub_pd(a, b, c); }
  static D fnmadd(D a, D b, D c) { return _mm512_fnmadd_pd(a, b, c); }
  static D add_if_lt(D x, D bound, D y) { return _mm512_mask_add_pd(x, _mm512_cmp_pd_mask(x, bound, _CMP_LT_OQ), x, y); }
  static D sub_if_ge(D x, D bound) {
    return _mm512_mask_sub_pd(x, _mm512_cmp_pd_mask(x, bound, _CMP_GE_OQ), x, bound);
  }
  static D select_eq(D x, D v, D a, D b) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, v, _CMP_EQ_OQ), b, a); }
  static D select_gt(D x, D v, D a, D b) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, v, _CMP_GT_OQ), b, a); }
  static D exponent(D x) { return _mm512_getexp_pd(x); }
  static D mantissa(D x) { return _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src); }
  static void deinterleave(D lo, D hi, D& even, D& odd) {
    even = _mm512_permutex2var_pd(lo, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), hi);
    odd = _mm512_permutex2var_pd(lo, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), hi);
  }
  static void interleave(D even, D odd, D& lo, D& hi) {
    lo = _mm512_permutex2var_pd(even, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), odd);
    hi = _mm512_permutex2var_pd(even, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), odd);
  }
  static void store(double* p, D v) { _mm512_storeu_pd(p, v); }
  static void store(float* p, D v) { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)); }
  static void store(bf16_t* p, D v) {
    // float32 round to nearest even, then to bfloat16 the same way torch does (encodings are finite).
    const __m256i u = _mm256_castps_si256(_mm512_cvtpd_ps(v));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtepi32_epi16(r));
  }
};

#include "dhe_encode_impl.h"

}  // namespace

int64_t dhe_encode(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                   DheOutType type, int64_t stride) {
  return encode(args, r0, r1, c0, c1, out, type, stride);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace mprec
