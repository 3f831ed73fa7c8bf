// The dot interaction's loops, written once and compiled per ISA (included inside each variant's
// namespace, after <cstdint> and <cstring>, with kVectorBytes: the width of one vector register of the
// variant's ISA).
//
// Forward, one example at a time: its F feature rows are loaded transposed into scratch, [D][padded]
// (converted to the compute type); rows i of the pair triangle are then, four at a time and for each
// block of one register's columns j, D broadcast multiply-adds of x[i][d] by the transposed row d
// (full-width vector FMAs, no horizontal sums) into a [F][padded] scratch, whose strict lower triangle is
// copied (and converted) to the output row by row.
// Backward, one example at a time: grad row i = sum over j of G[i][j] x[j], G the symmetric F x F matrix of the
// pair gradients (zero diagonal). For the common widths that product runs in tiles of rows by vectors of D with
// their accumulators in registers, reading the pair gradients where they are (gradient_from_pairs); other widths
// unfold G into scratch first.
// Every sum runs in a fixed order per example, so results do not depend on the batch or the thread count.

// Lanes of T in one register. Vectors wider than the ISA's registers are legal GCC but compile to spills
// and lane shuffles through the stack (16-float vectors under AVX2 ran the forward 2x slower than the
// scalar build), so every vector here is exactly one register.
template <typename T>
constexpr int64_t kLanes = kVectorBytes / int64_t(sizeof(T));
static_assert(kLanes<float> <= kInteractionLanes, "interaction_padded_columns pads to whole vectors");

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as torch's conversion; NaN stays NaN (quiet).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded);
}

inline float load_value(float v) { return v; }
inline double load_value(double v) { return v; }
inline float load_value(uint16_t v) { return bf16_to_float(v); }
inline void store_value(float v, float& o) { o = v; }
inline void store_value(double v, double& o) { o = v; }
inline void store_value(float v, uint16_t& o) { o = float_to_bf16(v); }

// Where feature 1 + j of an example starts in its rest: kOrdered loops follow InteractionArgs::rest_order, the
// others take the rows in place. Two instantiations rather than a test per row, so the in-order loops compile as
// they would in a kernel without orders (one contiguous copy of the rest, strided transposes).
template <bool kOrdered>
inline int64_t rest_offset(const InteractionArgs& a, int64_t j, int64_t dim) {
  if constexpr (kOrdered) return a.rest_order[j] * dim;
  return j * dim;
}

// Example b's F rows into xs [F][D] in the compute type T.
template <typename T, typename S0, typename S1, bool kOrdered>
inline void load_example(const InteractionArgs& a, int64_t b, int64_t dim, T* xs) {
  const S0* first = static_cast<const S0*>(a.first) + b * a.first_stride;
  const S1* rest = static_cast<const S1*>(a.rest) + b * a.rest_stride;
  const int64_t others = a.features - 1;
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) xs[d] = load_value(first[d]);
  if constexpr (kOrdered) {
    for (int64_t j = 0; j < others; ++j) {
      const S1* src = rest + rest_offset<true>(a, j, dim);
      T* dst = xs + (1 + j) * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) dst[d] = load_value(src[d]);
    }
  } else {
#pragma omp simd
    for (int64_t k = 0; k < others * dim; ++k) xs[dim + k] = load_value(rest[k]);
  }
}

// Rows of the pair triangle computed together: their accumulators are independent chains of FMAs, enough
// to cover the FMA latency (one row alone would wait on its previous FMA at every step).
constexpr int64_t kRowGroup = kInteractionRowGroup;
static_assert(kRowGroup == 4, "forward_fixed's accumulators a0..a3 are one row group");

// Loops over a tile's accumulators must unroll fully, or gcc keeps them on the stack.
#ifndef MPREC_UNROLL
#define MPREC_UNROLL _Pragma("GCC unroll 16")
#endif

// One register of T as a GCC vector (zmm, ymm or xmm). Arithmetic with a scalar operand broadcasts it.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
inline typename Lanes<T>::type load_lanes(const T* p) {
  typename Lanes<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store_lanes(T* p, typename Lanes<T>::type v) {
  std::memcpy(p, &v, sizeof v);
}

#if defined(__AVX2__)
// xt[d * padded + c] = rows[k][d] for an 8 x 8 block: rows k = 0..7 (columns d0..d0+7 of row k at row(k) + d0)
// become columns c..c+7 of xt's rows d0..d0+7. Eight loads, 24 shuffles and eight stores instead of 64 scalar
// moves, a third of the forward's time when done element by element. `row` is inlined: rows at a fixed stride
// compile to strided loads, as before rows could come in any order.
template <typename Row>
inline void transpose_8x8(Row row, int64_t d0, float* dst, int64_t padded) {
  const __m256 r0 = _mm256_loadu_ps(row(0) + d0), r1 = _mm256_loadu_ps(row(1) + d0);
  const __m256 r2 = _mm256_loadu_ps(row(2) + d0), r3 = _mm256_loadu_ps(row(3) + d0);
  const __m256 r4 = _mm256_loadu_ps(row(4) + d0), r5 = _mm256_loadu_ps(row(5) + d0);
  const __m256 r6 = _mm256_loadu_ps(row(6) + d0), r7 = _mm256_loadu_ps(row(7) + d0);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(dst + padded, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(dst + 2 * padded, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(dst + 3 * padded, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(dst + 4 * padded, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(dst + 5 * padded, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(dst + 6 * padded, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(dst + 7 * padded, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#endif

// Example b's F rows transposed into xt [D][padded] in the compute type T (columns F.. stay zero).
template <typename T, typename S0, typename S1, bool kOrdered>
inline void load_transposed(const InteractionArgs& a, int64_t b, int64_t dim, int64_t padded, T* xt) {
  const S0* first = static_cast<const S0*>(a.first) + b * a.first_stride;
  const S1* rest = static_cast<const S1*>(a.rest) + b * a.rest_stride;
  const int64_t others = a.features - 1;
  for (int64_t d = 0; d < dim; ++d) xt[d * padded] = load_value(first[d]);
  int64_t j0 = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4 && sizeof(S1) == 4) {  // float32 features: 8 x 8 blocks
    if (dim % 8 == 0) {
      const float* base = reinterpret_cast<const float*>(rest);
      for (; j0 + 8 <= others; j0 += 8) {
        float* dst = reinterpret_cast<float*>(xt) + 1 + j0;
        const auto row = [&](int k) { return base + rest_offset<kOrdered>(a, j0 + k, dim); };
        for (int64_t d0 = 0; d0 < dim; d0 += 8) transpose_8x8(row, d0, dst + d0 * padded, padded);
      }
    }
  }
#endif
  if constexpr (kOrdered) {
    for (int64_t j = j0; j < others; ++j) {
      const S1* src = rest + rest_offset<true>(a, j, dim);
      for (int64_t d = 0; d < dim; ++d) xt[d * padded + 1 + j] = load_value(src[d]);
    }
  } else {
    for (int64_t d = 0; d < dim; ++d) {
      T* dst = xt + d * padded;
      const S1* src = rest + d;
#pragma omp simd
      for (int64_t j = j0; j < others; ++j) dst[1 + j] = load_value(src[j * dim]);
    }
  }
}

template <typename A, typename B>
constexpr bool kSameType = false;
template <typename A>
constexpr bool kSameType<A, A> = true;

// The strict lower triangle of tri [F][padded] to out, row by row: row i's i values at out + i (i - 1) / 2.
// Without a conversion, rows go in whole vectors: a row shorter than a vector writes past its end into the rows
// after it, which are written later (the rows go in order), so long as that stays inside the triangle; a longer
// row ends with the vector that ends where it does. Copied element by element (rows of 1 to F - 1 values), the
// triangle took a sixth of the forward's time at D = 16; in vectors the forward ran 1.01-1.13x faster on a 2-core
// EPYC.
template <typename T, typename O>
inline void store_triangle(const T* tri, int64_t padded, int64_t features, O* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t pairs = features * (features - 1) / 2;
  for (int64_t i = 1; i < features; ++i) {
    O* dst = out + i * (i - 1) / 2;
    const T* src = tri + i * padded;
    if constexpr (kSameType<O, T>) {
      if (i >= L) {
        int64_t j = 0;
        for (; j + L <= i; j += L) store_lanes(dst + j, load_lanes(src + j));
        if (j < i) store_lanes(dst + i - L, load_lanes(src + i - L));
        continue;
      }
      if (i * (i - 1) / 2 + L <= pairs) {
        store_lanes(dst, load_lanes(src));
        continue;
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < i; ++j) store_value(src[j], dst[j]);
  }
}

template <typename T, typename S0, typename S1, typename O, int64_t kDim, bool kOrdered>
void forward_fixed(const InteractionArgs& a, int64_t b0, int64_t b1, T* scratch) {
  using VT = typename Lanes<T>::type;
  const int64_t dim = kDim > 0 ? kDim : a.dim, features = a.features;
  const int64_t padded = interaction_padded_columns(features);
  T* xt = scratch;              // [D][padded]: feature j's value d at xt[d * padded + j]
  T* tri = xt + dim * padded;   // [F][padded]: row i's dot products with columns j (those with j < i kept)
  for (int64_t d = 0; d < dim; ++d)
    for (int64_t j = features; j < padded; ++j) xt[d * padded + j] = T(0);
  for (int64_t b = b0; b < b1; ++b) {
    load_transposed<T, S0, S1, kOrdered>(a, b, dim, padded, xt);
    O* out = static_cast<O*>(a.out) + b * a.out_stride;
    if (a.copy_first) {
      const S0* first = static_cast<const S0*>(a.first) + b * a.first_stride;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) store_value(load_value(first[d]), out[d]);
      out += dim;
    }
    for (int64_t i0 = 1; i0 < features; i0 += kRowGroup) {
      // Rows i0..i0+3 against the columns they need (the longest, i0 + 3, needs 0..i0+2). Rows past F in a
      // short last group multiply zero columns and are never stored.
      const int64_t need = i0 + kRowGroup - 1 < features ? i0 + kRowGroup - 1 : features - 1;
      int64_t jb = 0;
      // Two blocks of columns at a time where both are needed: each broadcast serves two FMAs, and the loads
      // (a broadcast per row per d, one per block) bound this loop. Each dot product still sums over d in
      // order, so the bits are those of one block at a time.
      for (; jb + kLanes<T> < need; jb += 2 * kLanes<T>) {
        VT a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
        // Unrolled: the rows of xt are `padded` apart, an address computed per d in the rolled loop; four d per
        // iteration ran the forward 1.12-1.26x faster at D = 64 (1.01-1.07x at D = 16) on a 2-core EPYC, AVX-512 and
        // AVX2 kernels alike, and eight no faster than four.
#pragma GCC unroll 4
        for (int64_t d = 0; d < dim; ++d) {
          const T* col = xt + d * padded;
          const VT c = load_lanes(col + jb), e = load_lanes(col + jb + kLanes<T>);
          const T x0 = col[i0], x1 = col[i0 + 1], x2 = col[i0 + 2], x3 = col[i0 + 3];
          a0 += x0 * c;
          b0 += x0 * e;
          a1 += x1 * c;
          b1 += x1 * e;
          a2 += x2 * c;
          b2 += x2 * e;
          a3 += x3 * c;
          b3 += x3 * e;
        }
        T* t = tri + i0 * padded + jb;
        store_lanes(t, a0);
        store_lanes(t + kLanes<T>, b0);
        store_lanes(t + padded, a1);
        store_lanes(t + padded + kLanes<T>, b1);
        store_lanes(t + 2 * padded, a2);
        store_lanes(t + 2 * padded + kLanes<T>, b2);
        store_lanes(t + 3 * padded, a3);
        store_lanes(t + 3 * padded + kLanes<T>, b3);
      }
      for (; jb < need; jb += kLanes<T>) {
        VT a0 = {}, a1 = {}, a2 = {}, a3 = {};
        if constexpr (kDim > 0 && kDim % 2 == 0) {
          // One block's four chains of FMAs would each wait on its previous FMA: the even and odd d take chains of
          // their own, added at the end (a fixed order still). The forward of the common widths ran 1.04-1.30x
          // faster so on a 2-core EPYC, AVX-512 and AVX2 kernels alike.
          VT e0 = {}, e1 = {}, e2 = {}, e3 = {};
          for (int64_t d = 0; d < dim; d += 2) {
            const T* col = xt + d * padded;
            const T* odd = col + padded;
            const VT c = load_lanes(col + jb), e = load_lanes(odd + jb);
            a0 += col[i0] * c;
            e0 += odd[i0] * e;
            a1 += col[i0 + 1] * c;
            e1 += odd[i0 + 1] * e;
            a2 += col[i0 + 2] * c;
            e2 += odd[i0 + 2] * e;
            a3 += col[i0 + 3] * c;
            e3 += odd[i0 + 3] * e;
          }
          a0 += e0;
          a1 += e1;
          a2 += e2;
          a3 += e3;
        } else {
          for (int64_t d = 0; d < dim; ++d) {
            const T* col = xt + d * padded;
            const VT c = load_lanes(col + jb);
            a0 += col[i0] * c;
            a1 += col[i0 + 1] * c;
            a2 += col[i0 + 2] * c;
            a3 += col[i0 + 3] * c;
          }
        }
        T* t = tri + i0 * padded + jb;
        store_lanes(t, a0);
        store_lanes(t + padded, a1);
        store_lanes(t + 2 * padded, a2);
        store_lanes(t + 3 * padded, a3);
      }
    }
    store_triangle(tri, padded, features, out);
  }
}

// Rows i0..i0+R-1 of the gradient, columns c0..c0+C*lanes-1: sum over j of G[i][j] x[j], G the symmetric matrix of
// the pair gradients `pairs` (pair (i, j), j < i, at i (i - 1) / 2 + j; zero diagonal), read where they are: a
// column j < i0 is a run of each row's own pairs, a later one a run of row j's pairs, and the group's own columns
// take each pair from whichever row holds it. The tile is a small matrix product, R x C accumulators in registers,
// each column's C vectors of x loaded once for R broadcast weights: eight independent chains of FMAs.
// Every row takes its terms in the order of j, the diagonal's zero included, the order of an unfolded product.
// Computing each pair's two terms at once (to row i and row j, read and written back per group) ran at about a
// quarter of the FMA rate; tiles of the product were 1.3-1.8x faster on a 2-core EPYC at D = 16 and 64, AVX-512
// and AVX2 kernels alike, with the same bits.
template <typename T, typename O, int64_t kDim, int R, int C>
inline void gradient_tile(const O* pairs, int64_t features, const T* xs, int64_t i0, int64_t c0, T* rows) {
  using VT = typename Lanes<T>::type;
  constexpr int64_t L = kLanes<T>;
  VT acc[R][C];
  MPREC_UNROLL for (int r = 0; r < R; ++r)
    MPREC_UNROLL for (int c = 0; c < C; ++c) acc[r][c] = VT{};
  const O* own[R];  // row i0 + r of the triangle: its pairs with every j < i0 + r
  MPREC_UNROLL for (int r = 0; r < R; ++r) own[r] = pairs + (i0 + r) * (i0 + r - 1) / 2;
  const auto add_column = [&](int64_t j, const T (&w)[R]) __attribute__((always_inline)) {
    VT x[C];
    MPREC_UNROLL for (int c = 0; c < C; ++c) x[c] = load_lanes(xs + j * kDim + c0 + c * L);
    MPREC_UNROLL for (int r = 0; r < R; ++r)
      MPREC_UNROLL for (int c = 0; c < C; ++c) acc[r][c] += w[r] * x[c];
  };
  for (int64_t j = 0; j < i0; ++j) {
    T w[R];
    MPREC_UNROLL for (int r = 0; r < R; ++r) w[r] = load_value(own[r][j]);
    add_column(j, w);
  }
  MPREC_UNROLL for (int k = 0; k < R; ++k) {  // column i0 + k
    T w[R];
    MPREC_UNROLL for (int r = 0; r < R; ++r)
      w[r] = k < r ? load_value(own[r][i0 + k]) : (k == r ? T(0) : load_value(own[k][i0 + r]));
    add_column(i0 + k, w);
  }
  for (int64_t j = i0 + R; j < features; ++j) {
    const O* column = pairs + j * (j - 1) / 2 + i0;
    T w[R];
    MPREC_UNROLL for (int r = 0; r < R; ++r) w[r] = load_value(column[r]);
    add_column(j, w);
  }
  MPREC_UNROLL for (int r = 0; r < R; ++r)
    MPREC_UNROLL for (int c = 0; c < C; ++c)
      store_lanes(rows + (i0 + r) * kDim + c0 + c * L, acc[r][c]);
}

// Rows i0..i0+N-1 of the gradient, every column, in tiles of C vectors.
template <typename T, typename O, int64_t kDim, int N, int C>
inline void gradient_group(const O* pairs, int64_t features, const T* xs, int64_t i0, T* rows) {
  for (int64_t c0 = 0; c0 < kDim; c0 += C * kLanes<T>) gradient_tile<T, O, kDim, N, C>(pairs, features, xs, i0, c0, rows);
}

// Every gradient row of one example, in tiles of R rows by C vectors (eight accumulators: two vectors of four rows
// where a row is an even number of vectors, else one vector of eight rows), a short last group by its own count.
template <typename T, typename O, int64_t kDim>
inline void gradient_from_pairs(const O* pairs, const T* xs, int64_t features, T* rows) {
  constexpr int C = (kDim / kLanes<T>) % 2 == 0 ? 2 : 1;
  constexpr int R = 8 / C;
  int64_t i0 = 0;
  for (; i0 + R <= features; i0 += R) gradient_group<T, O, kDim, R, C>(pairs, features, xs, i0, rows);
  switch (features - i0) {
    case 1: return gradient_group<T, O, kDim, 1, C>(pairs, features, xs, i0, rows);
    case 2: return gradient_group<T, O, kDim, 2, C>(pairs, features, xs, i0, rows);
    case 3: return gradient_group<T, O, kDim, 3, C>(pairs, features, xs, i0, rows);
    case 4: if constexpr (R > 4) return gradient_group<T, O, kDim, 4, C>(pairs, features, xs, i0, rows); else return;
    case 5: if constexpr (R > 5) return gradient_group<T, O, kDim, 5, C>(pairs, features, xs, i0, rows); else return;
    case 6: if constexpr (R > 6) return gradient_group<T, O, kDim, 6, C>(pairs, features, xs, i0, rows); else return;
    case 7: if constexpr (R > 7) return gradient_group<T, O, kDim, 7, C>(pairs, features, xs, i0, rows); else return;
    default: return;
  }
}

template <typename T, typename S0, typename S1, typename O, int64_t kDim, bool kOrdered>
void backward_fixed(const InteractionGradArgs& ga, int64_t b0, int64_t b1, T* scratch) {
  const InteractionArgs& a = ga.fwd;
  const int64_t dim = kDim > 0 ? kDim : a.dim, features = a.features;
  // [F][D] features, then [F][F] pair gradients (unfolded for the widths without a kernel of their own), then
  // the gradient rows [F][D].
  T* xs = scratch;
  T* g = xs + features * dim;
  T* rows = g + features * features;
  for (int64_t b = b0; b < b1; ++b) {
    load_example<T, S0, S1, kOrdered>(a, b, dim, xs);
    const O* grad = static_cast<const O*>(ga.grad) + b * a.out_stride;
    const O* prefix = grad;
    if (a.copy_first) grad += dim;
    if constexpr (kDim > 0 && kDim % kLanes<T> == 0) {
      gradient_from_pairs<T, O, kDim>(grad, xs, features, rows);
    } else {
      int64_t p = 0;
      for (int64_t i = 0; i < features; ++i) {
        g[i * features + i] = T(0);
        for (int64_t j = 0; j < i; ++j, ++p) {
          const T v = load_value(grad[p]);
          g[i * features + j] = v;
          g[j * features + i] = v;
        }
      }
      for (int64_t i = 0; i < features; ++i) {
        T* acc = rows + i * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) acc[d] = T(0);
        for (int64_t j = 0; j < features; ++j) {
          const T gij = g[i * features + j];
          const T* xj = xs + j * dim;
#pragma omp simd
          for (int64_t d = 0; d < dim; ++d) acc[d] += gij * xj[d];
        }
      }
    }
    if (a.copy_first) {
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) rows[d] += load_value(prefix[d]);
    }
    S0* first = static_cast<S0*>(ga.grad_first) + b * a.first_stride;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) store_value(rows[d], first[d]);
    S1* rest = static_cast<S1*>(ga.grad_rest) + b * a.rest_stride;
    if constexpr (kOrdered) {
      for (int64_t j = 0; j + 1 < features; ++j) {
        S1* dst = rest + rest_offset<true>(a, j, dim);
        const T* src = rows + (1 + j) * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) store_value(src[d], dst[d]);
      }
    } else {
      const int64_t rest_len = (features - 1) * dim;
#pragma omp simd
      for (int64_t k = 0; k < rest_len; ++k) store_value(rows[dim + k], rest[k]);
    }
  }
}

// A call's loop shape as compile-time constants: the feature width for the common DLRM widths (the loops over D
// unroll and the accumulators stay in registers; 0: a run-time width) and whether the rest comes with an order.
template <int64_t D, bool Ordered>
struct Shape {
  static constexpr int64_t kDim = D;
  static constexpr bool kOrdered = Ordered;
};

template <bool kOrdered, typename Fn>
void dispatch_width(int64_t dim, Fn fn) {
  switch (dim) {
    case 16: return fn(Shape<16, kOrdered>{});
    case 32: return fn(Shape<32, kOrdered>{});
    case 64: return fn(Shape<64, kOrdered>{});
    case 128: return fn(Shape<128, kOrdered>{});
    default: return fn(Shape<0, kOrdered>{});
  }
}

template <typename Fn>
void dispatch_shape(const InteractionArgs& a, Fn fn) {
  if (a.rest_order) return dispatch_width<true>(a.dim, fn);
  return dispatch_width<false>(a.dim, fn);
}

template <typename T, typename S0, typename S1, typename O>
void forward_dims(const InteractionArgs& a, int64_t b0, int64_t b1, T* s) {
  dispatch_shape(a, [&](auto shape) {
    using Sh = decltype(shape);
    forward_fixed<T, S0, S1, O, Sh::kDim, Sh::kOrdered>(a, b0, b1, s);
  });
}

template <typename T, typename S0, typename S1, typename O>
void backward_dims(const InteractionGradArgs& a, int64_t b0, int64_t b1, T* s) {
  dispatch_shape(a.fwd, [&](auto shape) {
    using Sh = decltype(shape);
    backward_fixed<T, S0, S1, O, Sh::kDim, Sh::kOrdered>(a, b0, b1, s);
  });
}

// float compute over float32 / bfloat16 storage: the three operand types as template arguments.
#define MPREC_BF(x) ((x) == InteractionDtype::kBFloat16)
template <template <typename, typename, typename, typename> class Run, typename... Args>
void dispatch_f(const InteractionArgs& a, Args&&... args) {
  using f = float;
  using h = uint16_t;
  const int code = (MPREC_BF(a.first_dtype) ? 4 : 0) | (MPREC_BF(a.rest_dtype) ? 2 : 0) | (MPREC_BF(a.out_dtype) ? 1 : 0);
  switch (code) {
    case 0: return Run<f, f, f, f>::run(args...);
    case 1: return Run<f, f, f, h>::run(args...);
    case 2: return Run<f, f, h, f>::run(args...);
    case 3: return Run<f, f, h, h>::run(args...);
    case 4: return Run<f, h, f, f>::run(args...);
    case 5: return Run<f, h, f, h>::run(args...);
    case 6: return Run<f, h, h, f>::run(args...);
    default: return Run<f, h, h, h>::run(args...);
  }
}
#undef MPREC_BF

template <typename T, typename S0, typename S1, typename O>
struct ForwardRun {
  static void run(const InteractionArgs& a, int64_t b0, int64_t b1, T* s) { forward_dims<T, S0, S1, O>(a, b0, b1, s); }
};
template <typename T, typename S0, typename S1, typename O>
struct BackwardRun {
  static void run(const InteractionGradArgs& a, int64_t b0, int64_t b1, T* s) { backward_dims<T, S0, S1, O>(a, b0, b1, s); }
};

void interaction_forward_f(const InteractionArgs& a, int64_t b0, int64_t b1, float* s) {
  dispatch_f<ForwardRun>(a, a, b0, b1, s);
}
void interaction_forward_d(const InteractionArgs& a, int64_t b0, int64_t b1, double* s) {
  forward_dims<double, double, double, double>(a, b0, b1, s);
}
void interaction_backward_f(const InteractionGradArgs& a, int64_t b0, int64_t b1, float* s) {
  dispatch_f<BackwardRun>(a.fwd, a, b0, b1, s);
}
void interaction_backward_d(const InteractionGradArgs& a, int64_t b0, int64_t b1, double* s) {
  backward_dims<double, double, double, double>(a, b0, b1, s);
}
