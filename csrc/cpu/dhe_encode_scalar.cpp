// Portable variant of the DHE hashing loop: one double lane, no intrinsics, baseline flags. std::fma is
// a correctly rounded fused multiply-add on every platform (in software where the CPU lacks one), which
// the exact hash needs.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "mprec/dhe_kernel.h"

namespace mprec {
namespace cpu {
namespace scalar {
namespace {

struct bf16_t { uint16_t bits; };

struct VD {
  static constexpr int W = 1;
  using D = double;
  static D set1(double x) { return x; }
  static D load(const double* p) { return *p; }
  static D add(D a, D b) { return a + b; }
  static D sub(D a, D b) { return a - b; }
  static D mul(D a, D b) { return a * b; }
  static D div(D a, D b) { return a / b; }
  static D sqrt(D a) { return std::sqrt(a); }
  static D floor(D a) { return std::floor(a); }
  static D fmadd(D a, D b, D c) { return std::fma(a, b, c); }
  static D fmsub(D a, D b, D c) { return std::fma(a, b, -c); }
  static D fnmadd(D a, D b, D c) { return std::fma(-a, b, c); }
  static D add_if_lt(D x, D bound, D y) { return x < bound ? x + y : x; }
  static D sub_if_ge(D x, D bound) { return x >= bound ? x - bound : x; }
  static D select_eq(D x, D v, D a, D b) { return x == v ? a : b; }
  static D select_gt(D x, D v, D a, D b) { return x > v ? a : b; }
  static D exponent(D x) { int e; std::frexp(x, &e); return static_cast<double>(e - 1); }
  static D mantissa(D x) { int e; return 2.0 * std::frexp(x, &e); }
  static void deinterleave(D lo, D hi, D& even, D& odd) { even = lo; odd = hi; }
  static void interleave(D even, D odd, D& lo, D& hi) { lo = even; hi = odd; }
  static void store(double* p, D v) { *p = v; }
  static void store(float* p, D v) { *p = static_cast<float>(v); }
  static void store(bf16_t* p, D v) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    p->bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
};

#include "dhe_encode_impl.h"

}  // namespace

int64_t dhe_encode(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                   DheOutType type, int64_t stride) {
  return encode(args, r0, r1, c0, c1, out, type, stride);
}

}  // namespace scalar
}  // namespace cpu
}  // namespace mprec
