// The DHE hashing loop, written once over a vector of doubles. Included by each ISA variant
// (dhe_encode_{avx512,avx2,scalar}.cpp) inside its own namespace, after it defines `struct VD`:
//
//   VD::W                       lanes
//   VD::D                       the vector type
//   set1, load, add, sub, mul, div, sqrt, floor
//   fmadd(a, b, c) = a*b + c,  fmsub(a, b, c) = a*b - c (one rounding: error-free products need it),
//   fnmadd(a, b, c) = c - a*b
//   add_if_lt(x, bound, y)      x < bound ? x + y : x
//   sub_if_ge(x, bound)         x >= bound ? x - bound : x
//   select_eq(x, v, a, b)       x == v ? a : b,   select_gt(x, v, a, b)  x > v ? a : b
//   exponent(x), mantissa(x)    x = mantissa * 2^exponent, mantissa in [1, 2), for positive normal x
//   deinterleave(lo, hi, even, odd) / interleave(even, odd, lo, hi)   over the 2W lanes of (lo, hi)
//   store(float*|bf16_t*|double*, D)
//
// Everything is computed in double: the hash is exact (see dhe_kernel.h) and the transforms are
// accurate to a few double ulps, far below float32 rounding, so every ISA gives the same float32
// encodings up to the last bit or two.
#pragma once

#ifndef MPREC_UNROLL
#define MPREC_UNROLL _Pragma("GCC unroll 16")
#endif

using D = VD::D;
constexpr int W = VD::W;
// Columns per step: two vectors, so the gaussian transform always has whole (2i, 2i+1) pairs.
constexpr int kStep = 2 * W;

struct HashConstants {
  D p, p_inverse, m, m_inverse, zero;
};

// h = ((a * x + b) mod p) mod m for x = id mod p, all lanes exact (dhe_kernel.h has the argument).
template <bool kPBelowTwoM>
static inline D dhe_hash(D a, D b, D x, const HashConstants& c) {
  const D product = VD::mul(a, x);
  const D product_error = VD::fmsub(a, x, product);  // a*x - product, exactly
  const D quotient = VD::floor(VD::mul(product, c.p_inverse));  // floor(a*x / p), off by at most one
  D r = VD::add(VD::fnmadd(quotient, c.p, product), product_error);  // a*x - quotient*p, in [-p, 2p)
  r = VD::add_if_lt(r, c.zero, c.p);
  r = VD::sub_if_ge(r, c.p);
  r = VD::sub_if_ge(VD::add(r, b), c.p);
  if (kPBelowTwoM) return VD::sub_if_ge(r, c.m);  // the usual case: p is the smallest prime above m
  const D q = VD::floor(VD::mul(r, c.m_inverse));
  r = VD::fnmadd(q, c.m, r);
  r = VD::add_if_lt(r, c.zero, c.m);
  return VD::sub_if_ge(r, c.m);
}

// log(x) for positive normal x: x = 2^e * f with f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t),
// t = (f - 1) / (f + 1), |t| < 0.172; the series to t^21 is below one double ulp.
static inline D log_positive(D x) {
  D e = VD::exponent(x);
  D f = VD::mantissa(x);
  const D one = VD::set1(1.0);
  const D big = VD::select_gt(f, VD::set1(1.4142135623730951), one, VD::set1(0.0));
  f = VD::select_gt(f, VD::set1(1.4142135623730951), VD::mul(f, VD::set1(0.5)), f);
  e = VD::add(e, big);
  const D t = VD::div(VD::sub(f, one), VD::add(f, one));
  const D z = VD::mul(t, t);
  D s = VD::set1(1.0 / 21);
  MPREC_UNROLL for (int n = 9; n >= 0; --n) s = VD::fmadd(s, z, VD::set1(1.0 / (2 * n + 1)));
  const D log_f = VD::mul(VD::add(t, t), s);
  return VD::fmadd(e, VD::set1(0.69314718055994530942), log_f);
}

// (sin 2*pi*t, cos 2*pi*t): reduce to theta in [-pi/4, pi/4] plus a quadrant, exactly (the reduction
// only subtracts integers and multiplies by 4), then Taylor series to theta^17 / theta^18.
static inline void sincos_two_pi(D t, D& sine, D& cosine) {
  const D half = VD::set1(0.5);
  const D r = VD::sub(t, VD::floor(VD::add(t, half)));  // [-1/2, 1/2)
  const D y = VD::mul(r, VD::set1(4.0));
  const D n = VD::floor(VD::add(y, half));               // -2 .. 2
  const D theta = VD::mul(VD::sub(y, n), VD::set1(1.57079632679489661923));
  const D z = VD::mul(theta, theta);
  D s = VD::set1(1.0 / 355687428096000.0);  // 1/17!
  D c = VD::set1(-1.0 / 6402373705728000.0); // -1/18!
  const double sin_coefficients[8] = {-1.0 / 1307674368000.0, 1.0 / 6227020800.0, -1.0 / 39916800.0,
                                      1.0 / 362880.0,         -1.0 / 5040.0,      1.0 / 120.0,
                                      -1.0 / 6.0,             1.0};
  const double cos_coefficients[9] = {1.0 / 20922789888000.0, -1.0 / 87178291200.0, 1.0 / 479001600.0,
                                      -1.0 / 3628800.0,       1.0 / 40320.0,        -1.0 / 720.0,
                                      1.0 / 24.0,             -1.0 / 2.0,           1.0};
  MPREC_UNROLL for (int i = 0; i < 8; ++i) s = VD::fmadd(s, z, VD::set1(sin_coefficients[i]));
  MPREC_UNROLL for (int i = 0; i < 9; ++i) c = VD::fmadd(c, z, VD::set1(cos_coefficients[i]));
  s = VD::mul(s, theta);
  // Quadrant q = n mod 4: (sin, cos) of theta + q*pi/2 is (s, c), (c, -s), (-s, -c), (-c, s).
  const D q = VD::add_if_lt(n, VD::set1(0.0), VD::set1(4.0));
  const D zero = VD::set1(0.0);
  const D neg_s = VD::sub(zero, s), neg_c = VD::sub(zero, c);
  const D one = VD::set1(1.0), two = VD::set1(2.0), three = VD::set1(3.0);
  sine = VD::select_eq(q, one, c, VD::select_eq(q, two, neg_s, VD::select_eq(q, three, neg_c, s)));
  cosine = VD::select_eq(q, one, neg_s, VD::select_eq(q, two, neg_c, VD::select_eq(q, three, s, c)));
}

struct Transform {
  D scale;        // uniform: 2 / (m - 1); gaussian: 1 / m
  D minus_one;
  D one;
  D minus_two;
};

// Columns [c, c + 2W) of one id: two hash vectors, then the transform.
template <bool kPBelowTwoM, bool kGaussian>
static inline void encode_step(const double* a, const double* b, D x, const HashConstants& hc, const Transform& tf,
                               D& out_lo, D& out_hi) {
  const D h_lo = dhe_hash<kPBelowTwoM>(VD::load(a), VD::load(b), x, hc);
  const D h_hi = dhe_hash<kPBelowTwoM>(VD::load(a + W), VD::load(b + W), x, hc);
  if (!kGaussian) {
    out_lo = VD::fmadd(h_lo, tf.scale, tf.minus_one);
    out_hi = VD::fmadd(h_hi, tf.scale, tf.minus_one);
    return;
  }
  // Box-Muller on pairs (2i, 2i+1): U = (h + 1) / m; z_2i = R cos(2 pi U_2i+1), z_2i+1 = R sin(2 pi U_2i+1),
  // R = sqrt(-2 log U_2i).
  D u_even, u_odd;
  VD::deinterleave(VD::mul(VD::add(h_lo, tf.one), tf.scale), VD::mul(VD::add(h_hi, tf.one), tf.scale), u_even, u_odd);
  const D radius = VD::sqrt(VD::mul(tf.minus_two, log_positive(u_even)));
  D sine, cosine;
  sincos_two_pi(u_odd, sine, cosine);
  VD::interleave(VD::mul(radius, cosine), VD::mul(radius, sine), out_lo, out_hi);
}

template <bool kPBelowTwoM, bool kGaussian, typename Id, typename Out>
static int64_t encode_rows(const DheEncodeArgs& args, int64_t row_begin, int64_t row_end, int64_t col_begin,
                           int64_t col_end, Out* out, int64_t out_stride) {
  const Id* ids = static_cast<const Id*>(args.ids);
  const HashConstants hc{VD::set1(static_cast<double>(args.p)), VD::set1(1.0 / static_cast<double>(args.p)),
                         VD::set1(static_cast<double>(args.m)), VD::set1(1.0 / static_cast<double>(args.m)),
                         VD::set1(0.0)};
  const Transform tf{VD::set1(kGaussian ? 1.0 / static_cast<double>(args.m) : 2.0 / static_cast<double>(args.m - 1)),
                     VD::set1(-1.0), VD::set1(1.0), VD::set1(-2.0)};
  const double* a = args.hash_a;
  const double* b = args.hash_b;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t id = static_cast<int64_t>(ids[row]);
    if (id < 0) return row;
    const D x = VD::set1(static_cast<double>(id % args.p));
    Out* o = out + (row - row_begin) * out_stride - col_begin;
    int64_t col = col_begin;
    for (; col + kStep <= col_end; col += kStep) {
      D lo, hi;
      encode_step<kPBelowTwoM, kGaussian>(a + col, b + col, x, hc, tf, lo, hi);
      VD::store(o + col, lo);
      VD::store(o + col + W, hi);
    }
    if (col < col_end) {  // the hash arrays are padded (kDhePadding), so a whole step can be computed
      Out tail[kStep];
      D lo, hi;
      encode_step<kPBelowTwoM, kGaussian>(a + col, b + col, x, hc, tf, lo, hi);
      VD::store(tail, lo);
      VD::store(tail + W, hi);
      for (int64_t i = 0; col + i < col_end; ++i) o[col + i] = tail[i];
    }
  }
  return -1;
}

template <bool kPBelowTwoM, bool kGaussian, typename Id>
static int64_t encode_out(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                          DheOutType type, int64_t stride) {
  switch (type) {
    case DheOutType::kBFloat16:
      return encode_rows<kPBelowTwoM, kGaussian, Id>(args, r0, r1, c0, c1, static_cast<bf16_t*>(out), stride);
    case DheOutType::kDouble:
      return encode_rows<kPBelowTwoM, kGaussian, Id>(args, r0, r1, c0, c1, static_cast<double*>(out), stride);
    default:
      return encode_rows<kPBelowTwoM, kGaussian, Id>(args, r0, r1, c0, c1, static_cast<float*>(out), stride);
  }
}

template <bool kPBelowTwoM, bool kGaussian>
static int64_t encode_ids(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                          DheOutType type, int64_t stride) {
  return args.ids_are_64bit ? encode_out<kPBelowTwoM, kGaussian, int64_t>(args, r0, r1, c0, c1, out, type, stride)
                            : encode_out<kPBelowTwoM, kGaussian, int32_t>(args, r0, r1, c0, c1, out, type, stride);
}

static int64_t encode(const DheEncodeArgs& args, int64_t r0, int64_t r1, int64_t c0, int64_t c1, void* out,
                   DheOutType type, int64_t stride) {
  const bool p_below_two_m = args.p < 2 * args.m;
  const bool gaussian = args.transform == DheTransform::kGaussian;
  if (p_below_two_m) {
    return gaussian ? encode_ids<true, true>(args, r0, r1, c0, c1, out, type, stride)
                    : encode_ids<true, false>(args, r0, r1, c0, c1, out, type, stride);
  }
  return gaussian ? encode_ids<false, true>(args, r0, r1, c0, c1, out, type, stride)
                  : encode_ids<false, false>(args, r0, r1, c0, c1, out, type, stride);
}
