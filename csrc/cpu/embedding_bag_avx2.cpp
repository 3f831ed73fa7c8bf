// AVX2 + FMA + F16C variant of the embedding-bag pooling loop. Compiled with -mavx2 -mfma -mf16c only for
// this file; chosen at run time by csrc/cpu/isa.cpp. 8 fp32 lanes; AVX2 has no lane masks for 16- and
// 8-bit loads, so a row's last partial vector goes through a small stack buffer.
#include <immintrin.h>
#include <cstdint>

#include "mprec/embedding_bag_kernel.h"

namespace mprec {
namespace cpu {
namespace avx2 {

struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

struct V {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;  // int32 lanes, as in the AVX-512 variant
  using M = int;      // number of valid lanes
  static M mask(int n) { return n >= 8 ? 8 : n; }
  static __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F neg_inf() { return _mm256_set1_ps(-__builtin_inff()); }
  static I arg_init() { return _mm256_set1_epi32(-1); }
  static F load(const float* p, M n) {
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n));
  }
  template <typename T>
  static __m128i load_128(const T* p, M n) {
    if (n == 8) return sizeof(T) == 2 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                                      : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    if constexpr (sizeof(T) == 2) {
      // Fewer than 8 16-bit elements: their pairs as masked 32-bit lanes, and an odd last one blended in from a
      // broadcast, nothing read past the row. A copy through a buffer had cost a call to memcpy a row: bf16 D=4 with
      // the caches warm pooled at 0.12x torch's embedding_bag so.
      const __m128i pairs = _mm_cmpgt_epi32(_mm_set1_epi32(n / 2), _mm_setr_epi32(0, 1, 2, 3));
      __m128i v = _mm_maskload_epi32(reinterpret_cast<const int*>(p), pairs);
      if (n & 1) {
        const __m128i last = _mm_set1_epi16(static_cast<short>(p[n - 1].bits));
        const __m128i at = _mm_cmpeq_epi16(_mm_set1_epi16(static_cast<short>(n - 1)),
                                           _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
        v = _mm_blendv_epi8(v, last, at);
      }
      return v;
    } else {
      // Fewer than 8 bytes: two loads that overlap within the row, ORed (the bytes they share are the same), where a
      // copy through a buffer had cost a call to memcpy a row (int8 D=4 warm at 0.19x torch's embedding_bag).
      const uint8_t* b = reinterpret_cast<const uint8_t*>(p);
      uint64_t x = 0;
      if (n >= 4) {
        uint32_t lo, hi;
        __builtin_memcpy(&lo, b, 4);
        __builtin_memcpy(&hi, b + n - 4, 4);
        x = lo | (static_cast<uint64_t>(hi) << (8 * (n - 4)));
      } else if (n >= 2) {
        uint16_t lo, hi;
        __builtin_memcpy(&lo, b, 2);
        __builtin_memcpy(&hi, b + n - 2, 2);
        x = lo | (static_cast<uint64_t>(hi) << (8 * (n - 2)));
      } else if (n == 1) {
        x = b[0];
      }
      return _mm_cvtsi64_si128(static_cast<long long>(x));
    }
  }
  static F load(const f16_t* p, M n) { return _mm256_cvtph_ps(load_128(p, n)); }
  static F load(const bf16_t* p, M n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_128(p, n)), 16));
  }
  static F load(const uint8_t* p, M n) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(load_128(p, n))); }
  template <typename T>
  static F loadu(const T* p) { return load(p, 8); }
  static constexpr int kRegisters = 16;
  // float32 sum/mean passes keep 16 accumulators: all 16 ymm registers, the rows' loads folded into the adds
  // (a D=128 row in one pass over the bag, as FBGEMM's generated kernels do, instead of two).
  static constexpr int kSumVectors = 16;
  // Converted rows (16-bit, int8) likewise: 16 accumulators, a D=128 row in one pass, though the conversion's
  // register (and a weighted sum's weight) spill one or two of them to the stack (bf16 rows of several passes
  // pool in pairs instead: kBf16Pairs); and not narrowed (see kNarrowSliceBytes in embedding_bag_pool_impl.h).
  static constexpr int kConvertedVectors = 16;
  static constexpr bool kNarrow16BitSlices = false;
  // Whole blocks of converted rows take the kWhole variants too (whole_variants in embedding_bag_pool_impl.h): the
  // general one decides per row whether to mask the last vector.
  static constexpr bool kWholeConvertedBlocks = true;
  static constexpr bool kCachedLoops = true;  // loops of their own for tables in the cache (whole_variants_when_cached)
  static constexpr bool kCachedPrefetchFp16Line = true;  // fp16 rows of a line prefetched when cached (cached_prefetch)
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  // max_ps returns its second operand where the first is NaN or they are equal (+0 against -0), so acc stays
  // unless x is greater. That order keeps the row's load out of the instruction, so a max pass of 16
  // accumulators spills one to the stack; it still ran as fast as a sum of the same rows, and faster than 15
  // with a second pass for the last vector.
  static constexpr int kMaxVectors = 16;
  static F max(F x, F acc) { return _mm256_max_ps(x, acc); }
  // A chunk of 6 argmax vectors and its 6 maxima leave registers for the row broadcast, the row's vector and a
  // compare's result (an int8 row's scale and bias spill); 16, spilling, ran slower.
  static constexpr int kArgVectors = 6;
  static void arg_update(I& arg, F best, F x, int64_t row) {
    arg = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(arg),
                                               _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(row))),
                                               _mm256_cmp_ps(x, best, _CMP_EQ_OQ)));
  }
  static I arg_unset(I arg, F best) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(arg), _mm256_castsi256_ps(arg_init()),
                                                _mm256_cmp_ps(best, neg_inf(), _CMP_EQ_OQ)));
  }
  static I arg_row(int64_t row) { return _mm256_set1_epi32(static_cast<int32_t>(row)); }
  static void max_update(F& acc, I& arg, F x, I row) {
    const F greater = _mm256_cmp_ps(x, acc, _CMP_GT_OQ);
    acc = _mm256_max_ps(x, acc);
    arg = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(arg), _mm256_castsi256_ps(row), greater));
  }
  static void store(float* p, F v, M n) {
    if (n == 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, lane_mask(n), v);
  }
  static void storeu(float* p, F v) { _mm256_storeu_ps(p, v); }
  // bf16 rows of several passes pool two vectors from each 32-byte load (pool_bf16_pairs in
  // embedding_bag_pool_impl.h): a bf16 is the upper half of a float32, so the 32-bit lanes shifted up by 16 bits
  // are the even elements and the lanes with their lower halves cleared are the odd ones.
  static constexpr bool kBf16Pairs = true;
  static constexpr bool kBf16PairTails = false;  // masked 16-bit loads copy through a buffer (see bf16_tail_pairs)
  static I bf16_odd_mask() { return _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u)); }
  static void load_bf16_pair(const bf16_t* p, I odd_mask, F& even, F& odd) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(x, odd_mask));
  }
  // The 2W elements in order (first: 0-7, second: 8-15) from load_bf16_pair's even and odd ones. unpacklo/hi
  // interleave within each 128-bit half: lo holds 0-3 and 8-11, hi 4-7 and 12-15.
  static void interleave(F even, F odd, F& first, F& second) {
    const F lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    first = _mm256_permute2f128_ps(lo, hi, 0x20);
    second = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
  static void store_16(uint16_t* p, __m128i h, M n) {
    if (n == 8) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h); return; }
    alignas(16) uint16_t buf[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), h);
    __builtin_memcpy(p, buf, static_cast<unsigned>(n) * 2u);
  }
  static void store(f16_t* p, F v, M n) {
    store_16(reinterpret_cast<uint16_t*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), n);
  }
  static void store(bf16_t* p, F v, M n) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
    // Values are < 2^16, so an unsigned saturating pack keeps them; the pack interleaves 128-bit halves.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    store_16(reinterpret_cast<uint16_t*>(p), _mm256_castsi256_si128(packed), n);
  }
  static void store_arg(int64_t* p, I arg, M n) {
    alignas(32) int64_t buf[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(arg)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(arg, 1)));
    for (int i = 0; i < n; ++i) p[i] = buf[i];
  }
  // Into L2 and into L1: see kPrefetchLines and kWideRowPrefetchDistance in embedding_bag_pool_impl.h.
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
  static void prefetch_l1(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};

#include "embedding_bag_pool_impl.h"

}  // namespace avx2
}  // namespace cpu
}  // namespace mprec
