// CPU implementations of the DHE op family: mprec::dhe_encode, mprec::dhe_encode_linear (fused hash +
// first decoder layer + activation) and its backward, and mprec::rowwise_linear (the decoder's other
// layers). This file validates, allocates, splits work over threads and calls ATen's GEMM; the hashing
// loop is an ISA variant chosen at run time (isa.cpp, dhe_encode_*.cpp).
//
// Row blocks. Every GEMM here multiplies a block of at most kRowBlock rows on one thread, and never
// fewer than kMinGemmRows rows (short blocks are zero-padded): BLAS libraries pick a different code path
// (and so a different summation order) for very short matrices and split long ones across threads.
// Within that range a row is computed the same way whatever the block's height, so each output row is
// the same wherever it sits in the batch and whatever the thread count (tests check this bit for bit),
// which is what lets MP-Cache (mprec/nn/cache.py) serve cached vectors bit-identical to recomputed ones.
// It also bounds the encoding buffer to kRowBlock x k, so [N, k] never exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>

#include "mprec/checks.h"
#include "mprec/dhe_kernel.h"
#include "mprec/isa.h"

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

constexpr int64_t kRowBlock = 128;
constexpr int64_t kMinGemmRows = 16;
// Column chunk of the weight gradient owned by one task (even, for gaussian pairs).
constexpr int64_t kGradColumnChunk = 128;
// p^2 must fit int64 for the reference's arithmetic, and p < 2^32 for the kernels' exactness argument.
constexpr int64_t kMaxPrime = 3037000499LL;  // floor(sqrt(2^63 - 1))

enum class Activation { kNone, kRelu, kMish };

// Rows per block for n rows: at most kRowBlock, with the block count rounded up to a multiple of the
// thread count, so that a short batch (a cache's misses: a few hundred rows) keeps every thread busy
// rather than leaving one a whole block behind.
int64_t row_block(int64_t n) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  blocks = (blocks + threads - 1) / threads * threads;
  return std::max<int64_t>(kMinGemmRows, std::min<int64_t>(kRowBlock, (n + blocks - 1) / std::max<int64_t>(blocks, 1)));
}

bool is_prime(uint64_t n) {
  if (n < 2) return false;
  for (uint64_t q : {2ULL, 3ULL, 5ULL, 7ULL}) {
    if (n % q == 0) return n == q;
  }
  // Deterministic Miller-Rabin: bases 2, 3, 5, 7 decide every n < 3,215,031,751 > kMaxPrime.
  uint64_t d = n - 1;
  int s = 0;
  while ((d & 1) == 0) { d >>= 1; ++s; }
  auto mul_mod = [n](uint64_t a, uint64_t b) { return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) % n); };
  for (uint64_t base : {2ULL, 3ULL, 5ULL, 7ULL}) {
    uint64_t x = 1, e = d, b = base % n;
    while (e) { if (e & 1) x = mul_mod(x, b); b = mul_mod(b, b); e >>= 1; }
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s; ++r) {
      x = mul_mod(x, x);
      if (x == n - 1) { composite = false; break; }
    }
    if (composite) return false;
  }
  return true;
}

DheTransform checked_transform(const char* op, const std::string& transform) {
  if (transform == "uniform") return DheTransform::kUniform;
  if (transform == "gaussian") return DheTransform::kGaussian;
  TORCH_CHECK_VALUE(false, op, ": transform must be 'uniform' or 'gaussian', got '", transform, "'");
}

Activation checked_activation(const char* op, const std::string& activation) {
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  if (activation == "mish") return Activation::kMish;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu' or 'mish', got '", activation, "'");
}

// The hash parameters as padded double arrays, checked against p on the way.
struct Hashes {
  Tensor a, b;  // float64 [k + kDhePadding]
  DheEncodeArgs args;
  int64_t k;
};

Hashes checked_hashes(const char* op, const Tensor& ids_contiguous, const Tensor& hash_a, const Tensor& hash_b,
                      int64_t p, int64_t m, const std::string& transform) {
  TORCH_CHECK_VALUE(ids_contiguous.scalar_type() == at::kLong || ids_contiguous.scalar_type() == at::kInt, op,
                    ": ids must be int32 or int64, got ", ids_contiguous.scalar_type());
  TORCH_CHECK_VALUE(m >= 2, op, ": m (the hash range) must be >= 2, got ", m);
  TORCH_CHECK_VALUE(p > m, op, ": p must be a prime greater than m = ", m, ", got p = ", p);
  TORCH_CHECK_VALUE(p <= kMaxPrime, op, ": p = ", p, " is too large; p (and so m) must be at most ", kMaxPrime,
                    " so that every hash intermediate fits int64");
  TORCH_CHECK_VALUE(is_prime(static_cast<uint64_t>(p)), op, ": p must be a prime greater than m = ", m, ", but p = ",
                    p, " is not prime");
  for (const auto* t : {&hash_a, &hash_b}) {
    const char* name = t == &hash_a ? "hash_a" : "hash_b";
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->dim() == 1, op, ": ", name,
                      " must be a 1-D int64 tensor, got ", t->scalar_type(), " of shape ", t->sizes());
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, ": ", name, " is on ", t->device(), ", expected cpu");
  }
  const int64_t k = hash_a.size(0);
  TORCH_CHECK_VALUE(hash_b.size(0) == k, op, ": hash_a and hash_b must have the same length, got ", k, " and ",
                    hash_b.size(0));
  TORCH_CHECK_VALUE(k >= 1, op, ": k (the number of hash functions) must be >= 1, got 0");
  const DheTransform tf = checked_transform(op, transform);
  TORCH_CHECK_VALUE(tf != DheTransform::kGaussian || k % 2 == 0, op,
                    ": the gaussian transform pairs hashes (Box-Muller), so k must be even, got k = ", k);
  Hashes h;
  h.k = k;
  // a and b in one buffer, b half a page (mod 4096 bytes) after a. The loop reads a[j] and b[j] together. As two
  // allocations they sometimes both began a page, and on a 2-core AMD EPYC dhe_encode then took 4-5x as long
  // (4096 ids, k = 1024), in whichever processes the allocator had placed them so; of the placements a sweep of
  // both arrays' offsets in a page tried, every one with the two half a page apart ran at full speed.
  const int64_t padded = k + kDhePadding;
  constexpr int64_t kPage = 4096 / sizeof(double);
  int64_t b_start = kPage / 2;
  while (b_start < padded) b_start += kPage;
  const Tensor buffer = at::empty({b_start + padded}, at::kDouble);
  h.a = buffer.narrow(0, 0, padded).fill_(1.0);
  h.b = buffer.narrow(0, b_start, padded).zero_();
  const Tensor a64 = hash_a.contiguous(), b64 = hash_b.contiguous();
  const int64_t* a_in = a64.data_ptr<int64_t>();
  const int64_t* b_in = b64.data_ptr<int64_t>();
  double* a_out = h.a.data_ptr<double>();
  double* b_out = h.b.data_ptr<double>();
  for (int64_t j = 0; j < k; ++j) {
    TORCH_CHECK_VALUE(a_in[j] >= 1 && a_in[j] < p, op, ": hash_a[", j, "] = ", a_in[j], " is outside [1, p - 1] for p = ", p);
    TORCH_CHECK_VALUE(b_in[j] >= 0 && b_in[j] < p, op, ": hash_b[", j, "] = ", b_in[j], " is outside [0, p - 1] for p = ", p);
    a_out[j] = static_cast<double>(a_in[j]);
    b_out[j] = static_cast<double>(b_in[j]);
  }
  h.args = DheEncodeArgs{ids_contiguous.data_ptr(), ids_contiguous.scalar_type() == at::kLong, k, a_out, b_out,
                         p, m, tf};
  return h;
}

DheOutType out_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return DheOutType::kBFloat16;
    case at::kDouble: return DheOutType::kDouble;
    default: return DheOutType::kFloat;
  }
}

// The smallest negative-id row any thread met; reported after the parallel loop.
struct FirstNegativeId {
  std::atomic<int64_t> row{std::numeric_limits<int64_t>::max()};
  void record(int64_t r) {
    int64_t cur = row.load();
    while (r < cur && !row.compare_exchange_weak(cur, r)) {}
  }
  bool any() const { return row.load() != std::numeric_limits<int64_t>::max(); }
  void throw_if_any(const char* op, const Tensor& ids) const {
    if (!any()) return;
    const int64_t r = row.load();
    const int64_t value = ids.scalar_type() == at::kLong ? ids.data_ptr<int64_t>()[r] : ids.data_ptr<int32_t>()[r];
    TORCH_CHECK_VALUE(false, op, ": ids[", r, "] = ", value, " is negative; DHE ids must be >= 0");
  }
};

void check_float_weight(const char* op, const Tensor& weight, const c10::optional<Tensor>& bias, int64_t in_features,
                        const char* in_name) {
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D [out_features, ", in_name, "], got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16 ||
                        weight.scalar_type() == at::kDouble,
                    op, ": weight must be float32, bfloat16 or float64, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.size(1) == in_features, op, ": weight has shape ", weight.sizes(), " but ", in_name, " = ",
                    in_features, "; expected [out_features, ", in_features, "]");
  TORCH_CHECK_VALUE(weight.device().is_cpu(), op, ": weight is on ", weight.device(), ", expected cpu");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape [",
                      weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == weight.scalar_type(), op, ": bias (", bias->scalar_type(),
                      ") must have the weight's dtype (", weight.scalar_type(), ")");
  }
}

// Applies the activation to a [rows, H] block in place. Called inside at::parallel_for, so ATen runs it on
// this thread. relu is exact anywhere; mish is not: ATen computes it with vector code plus a scalar loop
// for the last few elements of a call, which round differently, so mish runs over a copy whose rows are
// padded to a multiple of 64 elements, where every element takes the vector path whatever its row.
void apply_activation(Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::kRelu: at::relu_(x); break;
    case Activation::kMish: {
      const int64_t h = x.size(1), padded_h = (h + 63) / 64 * 64;
      if (padded_h == h && x.is_contiguous()) {
        at::mish_(x);
      } else {
        Tensor padded = at::zeros({x.size(0), padded_h}, x.options());
        padded.narrow(1, 0, h).copy_(x);
        at::mish_(padded);
        x.copy_(padded.narrow(1, 0, h));
      }
      break;
    }
    case Activation::kNone: break;
  }
}

// out2d[r0 : r0 + rows] = act(a[:rows] @ weight^T + bias). `a` has max(rows, kMinGemmRows) rows, the ones
// past `rows` zero, so the GEMM always takes the same path.
void block_linear(const Tensor& a, int64_t rows, const Tensor& weight_t, const c10::optional<Tensor>& bias,
                  Activation activation, Tensor& out2d, int64_t r0) {
  const int64_t gemm_rows = a.size(0);
  Tensor dst = gemm_rows == rows ? out2d.narrow(0, r0, rows) : at::empty({gemm_rows, weight_t.size(1)}, out2d.options());
  if (bias.has_value() && bias->defined()) {
    at::addmm_out(dst, *bias, a, weight_t);
  } else {
    at::mm_out(dst, a, weight_t);
  }
  apply_activation(dst, activation);
  if (gemm_rows != rows) out2d.narrow(0, r0, rows).copy_(dst.narrow(0, 0, rows));
}

// act(encode(ids) @ weight^T + bias) -> out2d [N, H1], in row blocks.
void encode_linear_into(const char* op, const Tensor& ids, const Hashes& h, const Tensor& weight,
                        const c10::optional<Tensor>& bias, Activation activation, Tensor& out2d) {
  const int64_t n = ids.numel();
  const int64_t block_rows = row_block(n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const Tensor weight_t = weight.t();
  const DheEncodeFn encode = dhe_encode_kernel(active_isa());
  const DheOutType type = out_type(weight.scalar_type());
  FirstNegativeId negative;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: worker threads need their own
    Tensor block = at::empty({std::max(block_rows, kMinGemmRows), h.k}, weight.options());
    for (int64_t blk = b0; blk < b1 && !negative.any(); ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      const int64_t bad = encode(h.args, r0, r0 + rows, 0, h.k, block.data_ptr(), type, h.k);
      if (bad >= 0) {
        negative.record(bad);
        return;
      }
      const int64_t gemm_rows = std::max(rows, kMinGemmRows);
      if (gemm_rows > rows) block.narrow(0, rows, gemm_rows - rows).zero_();
      block_linear(block.narrow(0, 0, gemm_rows), rows, weight_t, bias, activation, out2d, r0);
    }
  });
  negative.throw_if_any(op, ids);
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.push_back(last);
  return out;
}

// --- ops --------------------------------------------------------------------------------------------------

Tensor dhe_encode_cpu(const Tensor& ids, const Tensor& hash_a, const Tensor& hash_b, int64_t p, int64_t m,
                      c10::string_view transform) {
  constexpr const char* op = "mprec::dhe_encode";
  check_defined(op, {{"ids", &ids}, {"hash_a", &hash_a}, {"hash_b", &hash_b}});
  // The kernels call ATen ops (GEMMs) on tensors that may require grad; autograd is this op's business
  // (mprec/ops/dhe/__init__.py), so those calls must not be recorded, whatever the caller's grad mode.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor ids_c = ids.contiguous();
  const Hashes h = checked_hashes(op, ids_c, hash_a, hash_b, p, m, std::string(transform));
  const int64_t n = ids_c.numel();
  Tensor out = at::empty(with_last(ids.sizes(), h.k), ids.options().dtype(at::kFloat));
  const DheEncodeFn encode = dhe_encode_kernel(active_isa());
  float* dst = out.data_ptr<float>();
  FirstNegativeId negative;
  const int64_t grain = std::max<int64_t>(1, 16384 / h.k);
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    const int64_t bad = encode(h.args, r0, r1, 0, h.k, dst + r0 * h.k, DheOutType::kFloat, h.k);
    if (bad >= 0) negative.record(bad);
  });
  negative.throw_if_any(op, ids_c);
  return out;
}

Tensor dhe_encode_linear_cpu(const Tensor& ids, const Tensor& hash_a, const Tensor& hash_b, int64_t p, int64_t m,
                             c10::string_view transform, const Tensor& weight, const c10::optional<Tensor>& bias,
                             c10::string_view activation) {
  constexpr const char* op = "mprec::dhe_encode_linear";
  check_defined(op, {{"ids", &ids}, {"hash_a", &hash_a}, {"hash_b", &hash_b}, {"weight", &weight}});
  // The kernels call ATen ops (GEMMs) on tensors that may require grad; autograd is this op's business
  // (mprec/ops/dhe/__init__.py), so those calls must not be recorded, whatever the caller's grad mode.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor ids_c = ids.contiguous();
  const Hashes h = checked_hashes(op, ids_c, hash_a, hash_b, p, m, std::string(transform));
  check_float_weight(op, weight, bias, h.k, "k");
  const Activation act = checked_activation(op, std::string(activation));
  Tensor out = at::empty({ids_c.numel(), weight.size(0)}, weight.options());
  encode_linear_into(op, ids_c, h, weight, bias, act, out);
  return out.view(with_last(ids.sizes(), weight.size(0)));
}

std::tuple<Tensor, Tensor> dhe_encode_linear_backward_cpu(
    const Tensor& grad, const Tensor& output, const Tensor& ids, const Tensor& hash_a, const Tensor& hash_b,
    int64_t p, int64_t m, c10::string_view transform, const Tensor& weight, const c10::optional<Tensor>& bias,
    c10::string_view activation) {
  constexpr const char* op = "mprec::dhe_encode_linear_backward";
  check_defined(op, {{"grad", &grad}, {"output", &output}, {"ids", &ids}, {"hash_a", &hash_a}, {"hash_b", &hash_b},
                     {"weight", &weight}});
  // The kernels call ATen ops (GEMMs) on tensors that may require grad; autograd is this op's business
  // (mprec/ops/dhe/__init__.py), so those calls must not be recorded, whatever the caller's grad mode.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor ids_c = ids.contiguous();
  const Hashes h = checked_hashes(op, ids_c, hash_a, hash_b, p, m, std::string(transform));
  check_float_weight(op, weight, bias, h.k, "k");
  const Activation act = checked_activation(op, std::string(activation));
  const int64_t n = ids_c.numel();
  const int64_t out_features = weight.size(0);
  TORCH_CHECK_VALUE(grad.numel() == n * out_features && output.numel() == n * out_features, op,
                    ": grad and output must have shape [..., ", out_features, "] with ", n, " rows, got ", grad.sizes(),
                    " and ", output.sizes());
  // Gradients are computed in float32 (float64 for float64 weights) and returned in the weight's dtype.
  const at::ScalarType acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor grad2d = grad.reshape({n, out_features}).to(acc).contiguous();
  Tensor pre_grad;  // d loss / d (pre-activation)
  switch (act) {
    case Activation::kNone: pre_grad = grad2d; break;
    case Activation::kRelu:
      pre_grad = at::threshold_backward(grad2d, output.reshape({n, out_features}).to(acc), 0).contiguous();
      break;
    case Activation::kMish: {
      // mish' needs the pre-activation, which the forward did not keep: recompute it (one more GEMM).
      Tensor pre = at::empty({n, out_features}, weight.options().dtype(acc));
      const c10::optional<Tensor> bias_acc =
          bias.has_value() && bias->defined() ? c10::optional<Tensor>(bias->to(acc)) : c10::nullopt;
      encode_linear_into(op, ids_c, h, weight.to(acc), bias_acc, Activation::kNone, pre);
      pre_grad = at::mish_backward(grad2d, pre).contiguous();
      break;
    }
  }
  // Bias gradient: a fixed-order column sum, so the result does not depend on the thread count.
  Tensor grad_bias;
  if (bias.has_value() && bias->defined()) {
    Tensor sum = at::zeros({out_features}, weight.options().dtype(at::kDouble));
    double* s = sum.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(acc, "dhe_encode_linear_backward_bias", [&] {
      const scalar_t* g = pre_grad.data_ptr<scalar_t>();
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < out_features; ++c) s[c] += static_cast<double>(g[r * out_features + c]);
    });
    grad_bias = sum.to(weight.scalar_type());
  } else {
    grad_bias = at::empty({0}, weight.options());
  }
  // Weight gradient: pre_grad^T @ encode(ids), each task owning a chunk of the k columns and walking the
  // rows in fixed blocks, so no [N, k] encoding exists and the sum order never depends on the threads.
  Tensor grad_weight = at::empty({out_features, h.k}, weight.options().dtype(acc));
  const DheEncodeFn encode = dhe_encode_kernel(active_isa());
  const DheOutType type = out_type(acc);
  const int64_t chunks = (h.k + kGradColumnChunk - 1) / kGradColumnChunk;
  FirstNegativeId negative;
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: worker threads need their own
    Tensor block = at::empty({kRowBlock, kGradColumnChunk}, weight.options().dtype(acc));
    for (int64_t chunk = c_begin; chunk < c_end && !negative.any(); ++chunk) {
      const int64_t c0 = chunk * kGradColumnChunk;
      const int64_t cols = std::min(kGradColumnChunk, h.k - c0);
      Tensor dst = grad_weight.narrow(1, c0, cols);
      Tensor partial = at::zeros({out_features, cols}, dst.options());
      for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, n - r0);
        const int64_t bad = encode(h.args, r0, r0 + rows, c0, c0 + cols, block.data_ptr(), type, cols);
        if (bad >= 0) {
          negative.record(bad);
          return;
        }
        const Tensor enc = block.view({-1}).narrow(0, 0, kRowBlock * cols).view({kRowBlock, cols}).narrow(0, 0, rows);
        partial.addmm_(pre_grad.narrow(0, r0, rows).t(), enc);
      }
      dst.copy_(partial);
    }
  });
  negative.throw_if_any(op, ids_c);
  return {grad_weight.to(weight.scalar_type()), grad_bias};
}

Tensor rowwise_linear_cpu(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                          c10::string_view activation) {
  constexpr const char* op = "mprec::rowwise_linear";
  check_defined(op, {{"input", &input}, {"weight", &weight}});
  // The kernels call ATen ops (GEMMs) on tensors that may require grad; autograd is this op's business
  // (mprec/ops/dhe/__init__.py), so those calls must not be recorded, whatever the caller's grad mode.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(input.dim() >= 1, op, ": input must have at least one dimension, got a scalar");
  check_float_weight(op, weight, bias, input.size(-1), "in_features");
  TORCH_CHECK_VALUE(input.scalar_type() == weight.scalar_type(), op, ": input (", input.scalar_type(),
                    ") must have the weight's dtype (", weight.scalar_type(), ")");
  const Activation act = checked_activation(op, std::string(activation));
  const int64_t in_features = weight.size(1);
  const Tensor x = input.reshape({-1, in_features}).contiguous();
  const int64_t n = x.size(0);
  Tensor out = at::empty({n, weight.size(0)}, weight.options());
  const Tensor weight_t = weight.t();
  const int64_t block_rows = row_block(n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: worker threads need their own
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      Tensor a = x.narrow(0, r0, rows);
      if (rows < kMinGemmRows) {  // only a last block can be this short
        Tensor padded = at::zeros({kMinGemmRows, in_features}, x.options());
        padded.narrow(0, 0, rows).copy_(a);
        a = padded;
      }
      block_linear(a, rows, weight_t, bias, act, out, r0);
    }
  });
  return out.view(with_last(input.sizes().slice(0, input.dim() - 1), weight.size(0)));
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CPU, m) {
  m.impl("dhe_encode", &dhe_encode_cpu);
  m.impl("dhe_encode_linear", &dhe_encode_linear_cpu);
  m.impl("dhe_encode_linear_backward", &dhe_encode_linear_backward_cpu);
  m.impl("rowwise_linear", &rowwise_linear_cpu);
}

}  // namespace cpu
}  // namespace mprec
