// The MLP backward's loop, written once and compiled per ISA (included inside each variant's namespace,
// after <cstdint>): one pass over a row block reads the gradient and the layer's output, writes the masked
// gradient over the one it read (its lines are in cache: no second buffer to fill) and adds it to the column
// sums, where ReLU's backward and the bias gradient were two passes over [rows, cols] plus a fresh output.

template <typename T>
void relu_backward_bias_rows(T* grad, const T* output, int64_t r0, int64_t r1, int64_t cols, T* sums) {
  for (int64_t r = r0; r < r1; ++r) {
    T* g = grad + r * cols;
    const T* y = output + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const T v = y[c] > T(0) ? g[c] : T(0);
      g[c] = v;
      sums[c] += v;
    }
  }
}

void relu_backward_bias_f(float* grad, const float* output, int64_t r0, int64_t r1, int64_t cols, float* sums) {
  relu_backward_bias_rows(grad, output, r0, r1, cols, sums);
}
void relu_backward_bias_d(double* grad, const double* output, int64_t r0, int64_t r1, int64_t cols, double* sums) {
  relu_backward_bias_rows(grad, output, r0, r1, cols, sums);
}
