// The embedding-bag pooling loop, written once over a vector type `V` and included by each ISA variant
// (embedding_bag_avx512.cpp, embedding_bag_avx2.cpp, embedding_bag_scalar.cpp) inside that variant's own
// namespace, after it has defined `V`, `f16_t` and `bf16_t`. Deliberately no #include here: see
// embedding_bag_kernel.h for why these files stay free of shared inline code.
//
// V provides: W (lanes), F (float vector), I (row-index vector), M (lane mask) and
//   mask(n), zero(), set1(x), neg_inf(), load(const T*, M) for float/f16_t/bf16_t/uint8_t,
//   fmadd(a, b, c), mul(a, b), max_update(acc, arg, x, row), arg_init(),
//   store(float*/f16_t*/bf16_t*, F, M), store_arg(int64_t*, I, M), prefetch(const void*).

// How many lookups ahead the loop prefetches rows. The rows of a bag are random reads from a table much
// larger than the caches, so the loop is bound by memory latency unless several rows are in flight; this
// distance keeps ~16 rows in flight, enough to cover DRAM latency at two threads.
constexpr int64_t kPrefetchDistance = 16;
// Vectors of accumulators kept in registers per pass over a bag's rows; wider rows take several passes.
constexpr int kMaxVectors = 8;

template <typename WT> struct OutputOf { using type = WT; };
template <> struct OutputOf<uint8_t> { using type = float; };

template <typename WT, typename IT, bool kMax, int NV>
static bool pool_block(const PoolArgs& a, const WT* weight, const IT* indices, int64_t col, int64_t bag,
                       int64_t start, int64_t end, typename OutputOf<WT>::type* out, int64_t* arg_out,
                       BagErrorReport* error) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::W;
  const int64_t dim = a.dim;
  const int64_t num_rows = a.num_rows;
  const int64_t cols = (dim - col < NV * W) ? dim - col : NV * W;
  const typename V::M tail = V::mask(static_cast<int>(cols - (NV - 1) * W));
  const typename V::M full = V::mask(W);
  const int64_t row_bytes_here = cols * static_cast<int64_t>(sizeof(WT));

  F acc[NV];
  I arg[NV];
  for (int v = 0; v < NV; ++v) {
    acc[v] = kMax ? V::neg_inf() : V::zero();
    if (kMax) arg[v] = V::arg_init();
  }
  float bias_sum = 0.f;  // uint8 rows in sum/mean mode: sum of w * bias, added once at the end
  int64_t count = 0;
  for (int64_t i = start; i < end; ++i) {
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (idx == a.padding_idx) continue;
    if (static_cast<uint64_t>(idx) >= static_cast<uint64_t>(num_rows)) {
      error->kind = BagError::kIndexOutOfRange;
      error->position = i;
      error->value = idx;
      return false;
    }
    const int64_t ahead = i + kPrefetchDistance;
    if (ahead < a.num_indices) {
      const int64_t next = static_cast<int64_t>(indices[ahead]);
      if (static_cast<uint64_t>(next) < static_cast<uint64_t>(num_rows)) {
        const char* p = reinterpret_cast<const char*>(weight + next * dim + col);
        for (int64_t b = 0; b < row_bytes_here; b += 64) V::prefetch(p + b);
      }
    }
    const WT* row = weight + idx * dim + col;
    const float w = a.per_sample_weights ? a.per_sample_weights[i] : 1.f;
    if constexpr (sizeof(WT) == 1) {
      // Row-wise int8: x = q * scale + bias.
      const float scale = a.scale_bias[2 * idx];
      const float bias = a.scale_bias[2 * idx + 1];
      if (kMax) {
        const F s = V::set1(scale), b = V::set1(bias);
        for (int v = 0; v < NV; ++v)
          V::max_update(acc[v], arg[v], V::fmadd(V::load(row + v * W, v == NV - 1 ? tail : full), s, b),
                        idx);
      } else {
        const F s = V::set1(w * scale);
        for (int v = 0; v < NV; ++v)
          acc[v] = V::fmadd(V::load(row + v * W, v == NV - 1 ? tail : full), s, acc[v]);
        bias_sum += w * bias;
      }
    } else {
      if (kMax) {
        for (int v = 0; v < NV; ++v)
          V::max_update(acc[v], arg[v], V::load(row + v * W, v == NV - 1 ? tail : full), idx);
      } else {
        const F wv = V::set1(w);
        for (int v = 0; v < NV; ++v)
          acc[v] = V::fmadd(V::load(row + v * W, v == NV - 1 ? tail : full), wv, acc[v]);
      }
    }
    ++count;
  }
  if (kMax) {
    if (count == 0) {
      for (int v = 0; v < NV; ++v) acc[v] = V::zero();
    }
    for (int v = 0; v < NV; ++v) V::store_arg(arg_out + v * W, arg[v], v == NV - 1 ? tail : full);
  } else {
    if (sizeof(WT) == 1 && bias_sum != 0.f) {
      const F b = V::set1(bias_sum);
      const F one = V::set1(1.f);
      for (int v = 0; v < NV; ++v) acc[v] = V::fmadd(b, one, acc[v]);
    }
    if (a.mode == PoolMode::kMean && count > 0) {
      const F s = V::set1(1.f / static_cast<float>(count));
      for (int v = 0; v < NV; ++v) acc[v] = V::mul(acc[v], s);
    }
  }
  for (int v = 0; v < NV; ++v) V::store(out + v * W, acc[v], v == NV - 1 ? tail : full);
  return true;
}

template <typename WT, typename IT, bool kMax>
static bool pool_typed(const PoolArgs& a, int64_t bag_begin, int64_t bag_end, int64_t output_bag_base,
                       BagErrorReport* error) {
  using OT = typename OutputOf<WT>::type;
  const WT* weight = static_cast<const WT*>(a.weight);
  const IT* indices = static_cast<const IT*>(a.indices);
  const IT* offsets = static_cast<const IT*>(a.offsets);
  constexpr int64_t kBlock = static_cast<int64_t>(kMaxVectors) * V::W;
  for (int64_t bag = bag_begin; bag < bag_end; ++bag) {
    const int64_t start = static_cast<int64_t>(offsets[bag]);
    const int64_t end = bag + 1 < a.num_offsets ? static_cast<int64_t>(offsets[bag + 1]) : a.num_indices;
    // Offsets are checked here, bag by bag, rather than in a pass of their own.
    if (end > a.num_indices) {
      error->kind = BagError::kOffsetPastEnd;
      error->position = bag + 1;
      error->value = end;
      return false;
    }
    if (end < start || start < 0) {
      error->kind = BagError::kOffsetDecreasing;
      error->position = bag + 1;
      error->value = end;
      return false;
    }
    OT* out = static_cast<OT*>(a.output) + (bag - output_bag_base) * a.output_stride;
    int64_t* arg_out = kMax ? a.max_indices + (bag - output_bag_base) * a.max_indices_stride : nullptr;
    for (int64_t col = 0; col < a.dim; col += kBlock) {
      const int64_t cols = a.dim - col < kBlock ? a.dim - col : kBlock;
      const int nv = static_cast<int>((cols + V::W - 1) / V::W);
      bool ok = true;
      OT* o = out + col;
      int64_t* ao = kMax ? arg_out + col : nullptr;
      switch (nv) {
#define MPREC_POOL_CASE(N) \
  case N: ok = pool_block<WT, IT, kMax, N>(a, weight, indices, col, bag, start, end, o, ao, error); break;
        MPREC_POOL_CASE(1) MPREC_POOL_CASE(2) MPREC_POOL_CASE(3) MPREC_POOL_CASE(4)
        MPREC_POOL_CASE(5) MPREC_POOL_CASE(6) MPREC_POOL_CASE(7) MPREC_POOL_CASE(8)
#undef MPREC_POOL_CASE
        default: ok = false; break;
      }
      if (!ok) return false;
    }
  }
  return true;
}

template <typename WT>
static bool pool_weight(const PoolArgs& a, int64_t b0, int64_t b1, int64_t base, BagErrorReport* e) {
  const bool is_max = a.mode == PoolMode::kMax;
  if (a.index_is_64bit)
    return is_max ? pool_typed<WT, int64_t, true>(a, b0, b1, base, e) : pool_typed<WT, int64_t, false>(a, b0, b1, base, e);
  return is_max ? pool_typed<WT, int32_t, true>(a, b0, b1, base, e) : pool_typed<WT, int32_t, false>(a, b0, b1, base, e);
}

bool pool(const PoolArgs& a, int64_t bag_begin, int64_t bag_end, int64_t output_bag_base,
          BagErrorReport* error) {
  switch (a.weight_type) {
    case WeightType::kFloat: return pool_weight<float>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kHalf: return pool_weight<f16_t>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kBFloat16: return pool_weight<bf16_t>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kUInt8RowwiseQuantized:
      return pool_weight<uint8_t>(a, bag_begin, bag_end, output_bag_base, error);
  }
  return false;
}
