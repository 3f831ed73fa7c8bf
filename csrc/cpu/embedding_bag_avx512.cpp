// AVX-512 (F, BW, VL, DQ) variant of the embedding-bag pooling loop. Compiled with -mavx512* only for this
// file; chosen at run time by csrc/cpu/isa.cpp. 16 fp32 lanes; row tails use lane masks, so any D works
// without a scalar remainder loop.
#include <immintrin.h>
#include <cstdint>

#include "mprec/embedding_bag_kernel.h"

namespace mprec {
namespace cpu {
namespace avx512 {

struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

struct V {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;  // row indices as int32 lanes; the op routes tables of >= 2^31 rows in max mode to scalar
  using M = __mmask16;
  static M mask(int n) { return n >= 16 ? static_cast<M>(0xFFFF) : static_cast<M>((1u << n) - 1u); }
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F neg_inf() { return _mm512_set1_ps(-__builtin_inff()); }
  static I arg_init() { return _mm512_set1_epi32(-1); }
  static F load(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static F load(const f16_t* p, M m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
  static F load(const bf16_t* p, M m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
  static F load(const uint8_t* p, M m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p)));
  }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static F loadu(const f16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F loadu(const bf16_t* p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static F loadu(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static constexpr int kRegisters = 32;
  static constexpr int kSumVectors = 8;  // 128 floats a pass already
  // Converted rows: 128 elements a pass, narrowed to two lines of 16-bit rows under whole-slice prefetch (see
  // kNarrowSliceBytes in embedding_bag_pool_impl.h).
  static constexpr int kConvertedVectors = 8;
  static constexpr bool kNarrow16BitSlices = true;
  static constexpr bool kWholeConvertedBlocks = false;  // slower for 16-bit rows (whole_variants)
  static constexpr bool kCachedLoops = true;  // loops of their own for tables in the cache (whole_variants_when_cached)
  static constexpr bool kCachedPrefetchFp16Line = false;
  // bf16 rows of one pass from a table that stays in the cache pool two vectors from each 64-byte load
  // (pool_bf16_pairs in embedding_bag_pool_impl.h): a shift and an and, where converting each vector takes a
  // widening load and a shift.
  static constexpr bool kBf16Pairs = true;
  static I bf16_odd_mask() { return _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u)); }
  static void load_bf16_pair(const bf16_t* p, I odd_mask, F& even, F& odd) {
    split_bf16_pair(_mm512_loadu_si512(p), odd_mask, even, odd);
  }
  // A pair of at most 2W elements, the first n of the row's 2W (pair_mask(n)): a masked load of 16-bit lanes, which
  // reads nothing past them.
  static constexpr bool kBf16PairTails = true;
  using PM = __mmask32;
  static PM pair_mask(int n) { return n >= 32 ? static_cast<PM>(0xFFFFFFFFu) : static_cast<PM>((1u << n) - 1u); }
  static void load_bf16_pair(const bf16_t* p, PM m, I odd_mask, F& even, F& odd) {
    split_bf16_pair(_mm512_maskz_loadu_epi16(m, p), odd_mask, even, odd);
  }
  // 32 bf16 as float32: the even elements shifted into the upper halves of the lanes, the odd ones with their lower
  // halves cleared.
  static void split_bf16_pair(__m512i x, I odd_mask, F& even, F& odd) {
    even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(x, odd_mask));
  }
  // The 2W elements in order (first: 0-15, second: 16-31) from load_bf16_pair's even and odd ones.
  static void interleave(F even, F odd, F& first, F& second) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    first = _mm512_permutex2var_ps(even, lo, odd);
    second = _mm512_permutex2var_ps(even, hi, odd);
  }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  // max_ps returns its second operand where the first is NaN or they are equal (+0 against -0): acc stays
  // unless x is greater.
  static constexpr int kMaxVectors = 8;
  static F max(F x, F acc) { return _mm512_max_ps(x, acc); }
  static constexpr int kArgVectors = 8;
  static void arg_update(I& arg, F best, F x, int64_t row) {
    arg = _mm512_mask_mov_epi32(arg, _mm512_cmp_ps_mask(x, best, _CMP_EQ_OQ),
                                _mm512_set1_epi32(static_cast<int32_t>(row)));
  }
  static I arg_unset(I arg, F best) {
    return _mm512_mask_mov_epi32(arg, _mm512_cmp_ps_mask(best, neg_inf(), _CMP_EQ_OQ), arg_init());
  }
  // The broadcast is kept in a register (the empty asm): gcc otherwise folded it into every masked move, as one
  // general-register-to-vector broadcast per vector of every row, which ran the max pass 5% slower.
  static I arg_row(int64_t row) {
    I r = _mm512_set1_epi32(static_cast<int32_t>(row));
    asm("" : "+v"(r));
    return r;
  }
  // acc's dependency chain is the max alone; the compare is off it.
  static void max_update(F& acc, I& arg, F x, I row) {
    const M greater = _mm512_cmp_ps_mask(x, acc, _CMP_GT_OQ);
    acc = _mm512_max_ps(x, acc);
    arg = _mm512_mask_mov_epi32(arg, greater, row);
  }
  static void store(float* p, F v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static void storeu(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store(f16_t* p, F v, M m) {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store(bf16_t* p, F v, M m) {
    // Round to nearest even, NaN kept quiet: the same rounding as torch's float -> bfloat16.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    const M nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
  }
  static void store_arg(int64_t* p, I arg, M m) {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(m & 0xFF), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(arg)));
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(m >> 8),
                             _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(arg, 1)));
  }
  // Into L2 and into L1: see kPrefetchLines and kWideRowPrefetchDistance in embedding_bag_pool_impl.h.
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
  static void prefetch_l1(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};

#include "embedding_bag_pool_impl.h"

}  // namespace avx512
}  // namespace cpu
}  // namespace mprec
