// Portable variant of the embedding-bag pooling loop: one lane, no intrinsics, compiled with the
// baseline flags. It runs where neither AVX2 nor AVX-512 is available (and on non-x86 machines), and is
// the variant used for max mode on tables of 2^31 rows or more, since it keeps row indices in 64 bits.
#include <cstdint>

#include "mprec/embedding_bag_kernel.h"

namespace mprec {
namespace cpu {
namespace scalar {

struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

static inline float bits_to_float(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact (normals, subnormals, inf, NaN).
static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // Subnormal: normalise.
    int e = -1;
    do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
    man &= 0x3FFu;
    return bits_to_float(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (man << 13));
  }
  return bits_to_float(sign | (exp + (127 - 15)) << 23 | (man << 13));
}

// float -> IEEE half, round to nearest even, overflow to inf, NaN kept.
static inline uint16_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): shift the mantissa with the implicit bit, round to nearest even.
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
    const uint32_t e = abs >> 23;                    // 102..112
    const uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t s = 126 - e;                      // right shift to units of 2^-24 (14..24)
    const uint32_t q = m >> s;
    const uint32_t rem = m & ((1u << s) - 1u);
    const uint32_t halfway = 1u << (s - 1);
    const uint32_t r = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xFFFu + ((r >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  return static_cast<uint16_t>(sign | (r >> 13));
}

static inline uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

struct V {
  static constexpr int W = 1;
  using F = float;
  using I = int64_t;
  using M = int;
  static M mask(int n) { return n; }
  static F zero() { return 0.f; }
  static F set1(float x) { return x; }
  static F neg_inf() { return -__builtin_inff(); }
  static I arg_init() { return -1; }
  static F load(const float* p, M) { return *p; }
  static F load(const f16_t* p, M) { return half_to_float(p->bits); }
  static F load(const bf16_t* p, M) { return bits_to_float(static_cast<uint32_t>(p->bits) << 16); }
  static F load(const uint8_t* p, M) { return static_cast<float>(*p); }
  template <typename T>
  static F loadu(const T* p) { return load(p, 1); }
  static constexpr int kRegisters = 16;  // xmm
  static constexpr int kSumVectors = 8;
  static constexpr int kConvertedVectors = 8;
  static constexpr bool kNarrow16BitSlices = false;
  static constexpr bool kWholeConvertedBlocks = false;  // one lane: no vector is partial
  static constexpr bool kCachedLoops = false;  // a fallback: the general loops serve tables in the cache too
  static constexpr bool kCachedPrefetchFp16Line = false;
  static constexpr bool kBf16Pairs = false;  // one lane: nothing to pair
  static constexpr bool kBf16PairTails = false;
  static F add(F a, F b) { return a + b; }
  static F fmadd(F a, F b, F c) { return a * b + c; }
  static F mul(F a, F b) { return a * b; }
  static constexpr int kMaxVectors = 8;
  static F max(F x, F acc) { return x > acc ? x : acc; }
  static constexpr int kArgVectors = 8;
  static void arg_update(I& arg, F best, F x, int64_t row) {
    if (x == best) arg = row;
  }
  static I arg_unset(I arg, F best) { return best == neg_inf() ? arg_init() : arg; }
  static I arg_row(int64_t row) { return row; }
  static void max_update(F& acc, I& arg, F x, I row) {
    const bool greater = x > acc;
    acc = greater ? x : acc;
    arg = greater ? row : arg;
  }
  static void store(float* p, F v, M) { *p = v; }
  static void storeu(float* p, F v) { *p = v; }
  static void store(f16_t* p, F v, M) { p->bits = float_to_half(v); }
  static void store(bf16_t* p, F v, M) { p->bits = float_to_bfloat16(v); }
  static void store_arg(int64_t* p, I arg, M) { *p = arg; }
  // Into L2 and into L1: see kPrefetchLines and kWideRowPrefetchDistance in embedding_bag_pool_impl.h.
  static void prefetch(const void* p) { __builtin_prefetch(p, 0, 2); }
  static void prefetch_l1(const void* p) { __builtin_prefetch(p); }
};

#include "embedding_bag_pool_impl.h"

}  // namespace scalar
}  // namespace cpu
}  // namespace mprec
