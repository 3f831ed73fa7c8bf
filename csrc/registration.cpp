// The whole mprec op surface: every schema is defined here, once. Kernels (csrc/cpu, csrc/cuda) only
// register implementations with TORCH_LIBRARY_IMPL, as do the autograd kernels (csrc/autograd); Python
// (mprec/ops) adds fake kernels and typed wrappers. Conventions shared by all ops:
//   mode: 0 sum, 1 mean, 2 max (torch's numbering); padding_idx: -1 for none, else a row in [0, rows).
//   Index tensors are int32 or int64, offsets of the same dtype.
//   Sparse gradients cross the op boundary as dense (row numbers, values) pairs; mprec.ops builds the COO
//   tensor, so every op here takes and returns strided tensors only.
// set_python_module applies to the defs that follow it: each op family names the mprec.ops module that
// holds its fake kernels, so torch can say where to look when one is missing.
#include <torch/library.h>

TORCH_LIBRARY(mprec, m) {
  m.set_python_module("mprec.ops.embedding_bag");
  // -- embedding bag: one table ------------------------------------------------------------------------
  // Returns (output [B, D], max_indices [B, D] in max mode, else [0, 0]). Output dtype: the weight's,
  // float32 for uint8 (row-wise quantized) weights, which take their scale_bias [rows, 2].
  // `sparse` (the gradient's layout) and `scale_grad_by_freq` (divide each row's gradient by how often its
  // index occurs in the bags; not in max mode) only change what autograd computes.
  // return_max_indices=False: max_indices is [0, 0] in max mode too, and the kernels skip the argmax (a second
  // look at every row, or compares and blends in the pass); autograd still finds it where a gradient will need it.
  // The Python wrappers and modules pass False, as they return the output alone.
  m.def(
      "embedding_bag(Tensor weight, Tensor indices, Tensor offsets, int mode=0, Tensor? per_sample_weights=None, "
      "int padding_idx=-1, bool include_last_offset=False, Tensor? scale_bias=None, bool sparse=False, "
      "bool scale_grad_by_freq=False, bool return_max_indices=True) -> (Tensor, Tensor)");
  m.def(
      "embedding_bag_backward(Tensor grad, Tensor weight, Tensor indices, Tensor offsets, Tensor max_indices, "
      "int mode, Tensor? per_sample_weights, int padding_idx, bool include_last_offset) -> Tensor");
  m.def(
      "embedding_bag_sparse_backward(Tensor grad, Tensor weight, Tensor indices, Tensor offsets, int mode, "
      "Tensor? per_sample_weights, int padding_idx, bool include_last_offset) -> (Tensor, Tensor)");
  m.def(
      "embedding_bag_per_sample_weights_backward(Tensor grad, Tensor weight, Tensor indices, Tensor offsets, "
      "int mode, int padding_idx, bool include_last_offset) -> Tensor");

  // -- embedding bag: T tables in one call, FBGEMM's TBE layout ----------------------------------------
  // indices of all tables concatenated table by table; offsets [T * B + 1]; output [B, sum D_t].
  // padding_idx: one per table, or empty for none. scale_bias: one per table for uint8 weights.
  // return_max_indices: as in embedding_bag.
  m.def(
      "batched_embedding_bag(Tensor[] weights, Tensor indices, Tensor offsets, int mode=0, "
      "Tensor? per_sample_weights=None, int[] padding_idx=[], Tensor[]? scale_bias=None, bool sparse=False, "
      "bool return_max_indices=True) -> (Tensor, Tensor)");
  m.def(
      "batched_embedding_bag_backward(Tensor grad, Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor max_indices, int mode, Tensor? per_sample_weights, int[] padding_idx) -> Tensor[]");
  m.def(
      "batched_embedding_bag_sparse_backward(Tensor grad, Tensor[] weights, Tensor indices, Tensor offsets, "
      "int mode, Tensor? per_sample_weights, int[] padding_idx) -> (Tensor[], Tensor[])");
  m.def(
      "batched_embedding_bag_per_sample_weights_backward(Tensor grad, Tensor[] weights, Tensor indices, "
      "Tensor offsets, int mode, int[] padding_idx) -> Tensor");

  // Fused backward + optimizer step, in place, with no [rows, D] gradient (FBGEMM's TBE training):
  // optimizer 'sgd' (w -= lr * g; state empty) or 'rowwise_adagrad' (state: one accumulator per row,
  // float32, float64 for float64 tables; s += mean(g^2), w -= lr * g / (sqrt(s) + eps)). Modes sum, mean.
  // The mode is named pooling_mode (FBGEMM's name) because torch.compile functionalizes a mutating op through a
  // function that has a parameter of its own named mode.
  m.def(
      "batched_embedding_bag_update(Tensor(a!)[] weights, Tensor(b!)[] state, Tensor grad, Tensor indices, "
      "Tensor offsets, int pooling_mode=0, Tensor? per_sample_weights=None, int[] padding_idx=[], str optimizer='sgd', "
      "float lr=0.01, float eps=1e-8) -> ()");

  // -- row-wise int8 quantization -------------------------------------------------------------------------
  // (qweight uint8 [rows, D], scale_bias float32 [rows, 2]); x ~= q * scale + bias.
  m.def("quantize_rowwise_int8(Tensor weight) -> (Tensor, Tensor)");
  m.def("dequantize_rowwise_int8(Tensor qweight, Tensor scale_bias) -> Tensor");

  // -- DHE: deep hash embedding ---------------------------------------------------------------------------
  // h_j(x) = ((hash_a[j] * (x mod p) + hash_b[j]) mod p) mod m for ids x >= 0 (docs/architecture.md); p a
  // prime, m < p <= 3037000499. transform: 'uniform' (h / (m - 1) * 2 - 1) or 'gaussian' (Box-Muller on
  // pairs (2i, 2i+1) of U = (h + 1) / m; k even). activation: 'none', 'relu' or 'mish'.
  m.set_python_module("mprec.ops.dhe");
  // ids [*] -> float32 [*, k].
  m.def("dhe_encode(Tensor ids, Tensor hash_a, Tensor hash_b, int p, int m, str transform='uniform') -> Tensor");
  // act(dhe_encode(ids) @ weight^T + bias) -> [*, H1] in the weight's dtype (float32, bfloat16, float64),
  // encoding in row blocks so [N, k] never exists.
  m.def(
      "dhe_encode_linear(Tensor ids, Tensor hash_a, Tensor hash_b, int p, int m, str transform, Tensor weight, "
      "Tensor? bias=None, str activation='none') -> Tensor");
  // (grad_weight, grad_bias); grad_bias is empty when bias is None.
  m.def(
      "dhe_encode_linear_backward(Tensor grad, Tensor output, Tensor ids, Tensor hash_a, Tensor hash_b, int p, "
      "int m, str transform, Tensor weight, Tensor? bias, str activation) -> (Tensor, Tensor)");
  // act(input @ weight^T + bias), each row computed independently of the others and of the thread count
  // (fixed row blocks), so per-id vectors can be cached bit-exactly. The DHE decoder's later layers.
  m.def("rowwise_linear(Tensor input, Tensor weight, Tensor? bias=None, str activation='none') -> Tensor");

  // -- MLP: mprec.nn.MLP's Linear + ReLU layers -------------------------------------------------------------
  m.set_python_module("mprec.ops.mlp");
  // activation(a @ b^T + bias) [M, N] for a [M, K], b [N, K] (either may be a strided view): one of a layer's
  // products ('forward', 'input_grad', or 'weight_grad', which takes no activation or bias), on the GEMM library
  // measured fastest for it. Its CPU kernel is mprec.ops.mlp's (Python: the choice is made there); an op so that
  // torch.compile keeps the product and its choice rather than lowering a GEMM of its own.
  m.def("mlp_product(Tensor a, Tensor b, Tensor? bias, str product, str activation) -> Tensor");
  // grad [B, N] *= (output > 0) in place (ReLU's backward from the layer's output); returns the column sums of
  // the result [N] (the layer's bias gradient), summed over fixed row blocks in order. float32, float64, bfloat16.
  m.def("relu_backward_bias_(Tensor(a!) grad, Tensor output) -> Tensor");

  // -- cache: the index structures of MP-Cache (mprec/nn/cache.py) ------------------------------------------
  // table: int64 [C, 2] (key, entry) pairs, C a power of two, key -1 for empty: open addressing with linear
  // probing. Ids are int64 >= 0. sketch: int64 [R, B] count-min sketch, B a power of two, R <= 8.
  m.set_python_module("mprec.ops.cache");
  // (values[entry of each cached id] [U, W], zero rows for misses; positions of the missed ids [M]); adds the hits' occurrences
  // to counts[entry]. ids distinct.
  m.def(
      "cache_lookup(Tensor table, Tensor values, Tensor(a!) counts, Tensor ids, Tensor occurrences) "
      "-> (Tensor, Tensor)");
  // Maps ids (distinct, absent) to entries.
  m.def("cache_insert(Tensor(a!) table, Tensor ids, Tensor entries) -> ()");
  // Removes ids; returns the entries they mapped to (-1 where absent).
  m.def("cache_erase(Tensor(a!) table, Tensor ids) -> Tensor");
  // LFU replacement in a full cache of `size` entries (keys/values/counts rows): candidates seen at least
  // min_count times, best first, replace the least-used entries of a window of the cache (window_per_candidate
  // entries per such candidate, at least 64) while their score is higher than the entry's count. Returns
  // the number replaced.
  m.def(
      "cache_replace(Tensor(a!) table, Tensor(b!) keys, Tensor(c!) values, Tensor(d!) counts, int size, Tensor ids, "
      "Tensor new_values, Tensor scores, int min_count, int window_start, int window_per_candidate) -> int");
  // Adds occurrences to the sketch; returns each id's estimate afterwards.
  m.def("count_min_add(Tensor(a!) sketch, Tensor ids, Tensor occurrences) -> Tensor");
  // (distinct values in order of first occurrence, inverse [ids.shape] int64, counts int64): torch.unique
  // without the sort. ids int32 or int64, any values.
  m.def("unique_ids(Tensor ids) -> (Tensor, Tensor, Tensor)");

  // -- DLRM's dot interaction -------------------------------------------------------------------------------
  // x [B, F, D] -> [B, F (F - 1) / 2]: the dot products of each example's feature pairs (i, j), j < i, row by
  // row (the strict lower triangle of x x^T). float32, float64; bfloat16 and float16 computed in float32.
  m.set_python_module("mprec.ops.interaction");
  m.def("dot_interaction(Tensor x) -> Tensor");
  m.def("dot_interaction_backward(Tensor grad, Tensor x) -> Tensor");
  // dense [B, D], sparse [B, T * D] or [B, T, D] -> [B, W] = cat([dense, dot_interaction of the T + 1
  // features], zeros), W = D + (T + 1) T / 2 rounded up to a multiple of pad_to: DLRM's top-MLP input in
  // one pass. Each input is read in its own dtype (bfloat16 from a bf16 bottom MLP, float32 from the
  // tables); the output has dense's. With an order (a permutation of 0..T-1), table t is sparse's vector
  // order[t], and the backward writes its gradient there.
  m.def("dlrm_interaction(Tensor dense, Tensor sparse, int pad_to=1, int[]? order=None) -> Tensor");
  m.def("dlrm_interaction_backward(Tensor grad, Tensor dense, Tensor sparse, int pad_to=1, int[]? order=None) -> "
        "(Tensor, Tensor)");

  // -- data: the Criteo TSV format ----------------------------------------------------------------------------
  // (labels float32 [N], dense float32 [N, num_dense] = log(1 + max(x, 0)), sparse int64 [N, num_sparse] from
  // hex (missing_id where empty), bad int64 [M, 3] = (line in chunk, reason 1 field count | 2 label |
  // 3 integer | 4 hex, field)) for a chunk of whole lines.
  m.set_python_module("mprec.data.criteo");
  m.def("parse_criteo(Tensor data, int num_dense=13, int num_sparse=26, int missing_id=0) -> (Tensor, Tensor, Tensor, Tensor)");
}
