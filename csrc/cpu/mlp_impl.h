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

// bfloat16: the gradient's bits pass or become +0 (no rounding), and each passed value adds to a float sum. An
// output is above zero when its bits are in [0x0001, 0x7f80]: sign clear, not +0, at most +inf (NaN is above).
void relu_backward_bias_h(uint16_t* grad, const uint16_t* output, int64_t r0, int64_t r1, int64_t cols,
                          float* sums) {
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* g = grad + r * cols;
    const uint16_t* y = output + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t keep = static_cast<uint32_t>(y[c]) - 1u < 0x7f80u ? 0xffffu : 0u;
      const uint32_t v = g[c] & keep;
      g[c] = static_cast<uint16_t>(v);
      sums[c] += __builtin_bit_cast(float, v << 16);
    }
  }
}
