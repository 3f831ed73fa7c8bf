// The dot interaction's loops, written once and compiled per ISA (included inside each variant's
// namespace).
//
// Forward: examples in blocks of L = kInteractionLanes, transposed so that lane l is example l; each
// pair's dot product is then D lane-parallel multiply-adds (`omp simd` turns them into full-width vector
// FMAs) with no horizontal sums.
// Backward: one example at a time, vectorised over the feature width D (contiguous): row i of the
// gradient accumulates g(i, j) * x[j] over j in registers, with g(i, j) broadcast.
// Every sum runs in a fixed order per example, so results do not depend on the batch or the thread count.

constexpr int64_t L = kInteractionLanes;

template <typename T>
void transpose_in(const T* x, T* t, int64_t b0, int64_t n, int64_t fd) {
  for (int64_t l = 0; l < L; ++l) {
    if (l < n) {
      const T* row = x + (b0 + l) * fd;
      for (int64_t k = 0; k < fd; ++k) t[k * L + l] = row[k];
    } else {
      for (int64_t k = 0; k < fd; ++k) t[k * L + l] = T(0);
    }
  }
}

template <typename T>
void forward_impl(const T* x, T* out, int64_t b0, int64_t b1, int64_t features, int64_t dim, T* scratch) {
  const int64_t fd = features * dim, pairs = features * (features - 1) / 2;
  T* t = scratch;                // [F * D][L]
  T* o = scratch + 2 * fd * L;   // [P][L]
  for (int64_t start = b0; start < b1; start += L) {
    const int64_t n = b1 - start < L ? b1 - start : L;
    transpose_in(x, t, start, n, fd);
    int64_t p = 0;
    for (int64_t i = 1; i < features; ++i) {
      for (int64_t j = 0; j < i; ++j, ++p) {
        T acc[L];
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[l] = T(0);
        for (int64_t d = 0; d < dim; ++d) {
          const T* xi = t + (i * dim + d) * L;
          const T* xj = t + (j * dim + d) * L;
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) acc[l] += xi[l] * xj[l];
        }
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) o[p * L + l] = acc[l];
      }
    }
    for (int64_t l = 0; l < n; ++l) {
      T* row = out + (start + l) * pairs;
      for (int64_t q = 0; q < pairs; ++q) row[q] = o[q * L + l];
    }
  }
}

template <typename T, int64_t kDim>
void backward_fixed(const T* grad, const T* x, T* grad_x, int64_t b0, int64_t b1, int64_t features,
                    int64_t runtime_dim) {
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
  // grad_x[i] = sum over j != i of g(i, j) x[j], with g symmetric: g(i, j) = grad[pair(max, min)].
  const int64_t fd = features * dim, pairs = features * (features - 1) / 2;
  for (int64_t b = b0; b < b1; ++b) {
    const T* e = x + b * fd;
    const T* g = grad + b * pairs;
    T* gx = grad_x + b * fd;
    for (int64_t i = 0; i < features; ++i) {
      // The row's sum stays in registers across j (a running sum in memory would wait on each store).
      T acc[kDim > 0 ? kDim : 1];
      T* sum = kDim > 0 ? acc : gx + i * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) sum[d] = T(0);
      for (int64_t j = 0; j < features; ++j) {
        if (j == i) continue;
        const T gij = g[j < i ? i * (i - 1) / 2 + j : j * (j - 1) / 2 + i];
        const T* xj = e + j * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) sum[d] += gij * xj[d];
      }
      if (kDim > 0) {
        T* gi = gx + i * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) gi[d] = acc[d];
      }
    }
  }
}

template <typename T>
void backward_impl(const T* grad, const T* x, T* grad_x, int64_t b0, int64_t b1, int64_t features, int64_t dim, T*) {
  switch (dim) {
    case 16: return backward_fixed<T, 16>(grad, x, grad_x, b0, b1, features, dim);
    case 32: return backward_fixed<T, 32>(grad, x, grad_x, b0, b1, features, dim);
    case 64: return backward_fixed<T, 64>(grad, x, grad_x, b0, b1, features, dim);
    case 128: return backward_fixed<T, 128>(grad, x, grad_x, b0, b1, features, dim);
    default: return backward_fixed<T, 0>(grad, x, grad_x, b0, b1, features, dim);
  }
}

void interaction_forward_f(const float* x, float* out, int64_t b0, int64_t b1, int64_t features, int64_t dim,
                           float* scratch) {
  forward_impl(x, out, b0, b1, features, dim, scratch);
}
void interaction_forward_d(const double* x, double* out, int64_t b0, int64_t b1, int64_t features, int64_t dim,
                           double* scratch) {
  forward_impl(x, out, b0, b1, features, dim, scratch);
}
void interaction_backward_f(const float* grad, const float* x, float* grad_x, int64_t b0, int64_t b1,
                            int64_t features, int64_t dim, float* scratch) {
  backward_impl(grad, x, grad_x, b0, b1, features, dim, scratch);
}
void interaction_backward_d(const double* grad, const double* x, double* grad_x, int64_t b0, int64_t b1,
                            int64_t features, int64_t dim, double* scratch) {
  backward_impl(grad, x, grad_x, b0, b1, features, dim, scratch);
}
