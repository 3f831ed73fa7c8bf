// Autograd of the embedding-bag ops, mprec::embedding_bag and mprec::batched_embedding_bag, for every device
// (see README.md): a call that wants no gradient goes below autograd at once; any other records a node whose
// backward calls the family's backward ops through the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "mprec/autograd.h"

namespace mprec::autograd {
namespace {

using at::Tensor;
using at::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using OptionalTensor = std::optional<Tensor>;
using Pooled = std::tuple<Tensor, Tensor>;

// -- one table --------------------------------------------------------------------------------------------

using SingleFn = Pooled(const Tensor&, const Tensor&, const Tensor&, int64_t, const OptionalTensor&, int64_t, bool,
                        const OptionalTensor&, bool, bool, bool);
using SingleBackwardFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                const OptionalTensor&, int64_t, bool);
using SingleSparseBackwardFn = Pooled(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                      const OptionalTensor&, int64_t, bool);
using SinglePswBackwardFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t,
                                   bool);

// The COO gradient of one table from its (row per lookup, values) pair, uncoalesced as torch's sparse=True
// gradient. The rows were range-checked by the backward kernel, so no invariant pass runs.
Tensor sparse_rows(const Tensor& rows, const Tensor& values, const Tensor& weight) {
  return at::_sparse_coo_tensor_unsafe_symint(rows.unsqueeze(0), values, weight.sym_sizes());
}

// 1 for each index that belongs to a bag, 0 for those past the last offset (include_last_offset).
Tensor bag_lookups(const Tensor& indices, const Tensor& offsets, bool include_last_offset) {
  const auto positions = at::arange(indices.sym_size(0), indices.options().dtype(at::kLong));
  const bool no_bags = offsets.sym_size(0) == 0;
  Tensor end;
  if (include_last_offset)
    end = no_bags ? at::zeros({1}, offsets.options()) : offsets.slice(0, -1);
  else
    end = at::full({1}, no_bags ? c10::Scalar(0) : c10::Scalar(indices.sym_size(0)), positions.options());
  return positions.lt(end).to(at::kLong);
}

// The second output as the caller asked for it: max mode's argmaxes, which the backward always needs and so the
// forward always finds, or [0, 0] where return_max_indices is false (as the kernels give it).
Tensor returned_max_indices(const Tensor& max_indices, bool return_max_indices) {
  return return_max_indices ? max_indices : at::empty({0, 0}, max_indices.options());
}

const c10::TypedOperatorHandle<SingleFn>& single_op() {
  static const auto handle = op<SingleFn>("mprec::embedding_bag");
  return handle;
}

struct EmbeddingBagFunction : torch::autograd::Function<EmbeddingBagFunction> {
  // The backward reads only saved tensors and saved_data, so compiled autograd may trace it.
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const Tensor& weight, const Tensor& indices,
                               const Tensor& offsets, int64_t mode, const OptionalTensor& per_sample_weights,
                               int64_t padding_idx, bool include_last_offset, const OptionalTensor& scale_bias,
                               bool sparse, bool scale_grad_by_freq, bool return_max_indices) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, max_indices] = single_op().call(weight, indices, offsets, mode, per_sample_weights, padding_idx,
                                               include_last_offset, scale_bias, sparse, scale_grad_by_freq, true);
    ctx->save_for_backward({weight, indices, offsets, per_sample_weights.value_or(Tensor()), max_indices});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["include_last_offset"] = include_last_offset;
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["scale_grad_by_freq"] = scale_grad_by_freq;
    // max_indices is int64, so never differentiable, and is not marked so: compiled autograd traces no function
    // that marks outputs. Undefined gradients stay undefined, so no zeros of its size are made for it.
    ctx->set_materialize_grads(false);
    return {out, returned_max_indices(max_indices, return_max_indices)};
  }

  // One gradient per forward argument; the differentiable ones are the weight (0) and per_sample_weights (4).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(11);
    const Tensor& grad = grads[0];
    if (!grad.defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Tensor &weight = saved[0], &indices = saved[1], &offsets = saved[2], &max_indices = saved[4];
    const OptionalTensor psw = saved[3].defined() ? OptionalTensor(saved[3]) : std::nullopt;
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    const bool include_last_offset = ctx->saved_data["include_last_offset"].toBool();
    const bool scale_grad_by_freq = ctx->saved_data["scale_grad_by_freq"].toBool();
    // Edges are the tensor arguments present: weight, indices, offsets, then per_sample_weights.
    if (ctx->needs_input_grad(0)) {
      if (ctx->saved_data["sparse"].toBool()) {
        auto [rows, values] = op<SingleSparseBackwardFn>("mprec::embedding_bag_sparse_backward")
                                  .call(grad, weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
        if (scale_grad_by_freq) {
          // One row per lookup of a bag (padding left out, which changes no other row's count).
          const auto [unique, inverse, counts] = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true,
                                                              /*return_counts=*/true);
          values = values / counts.index_select(0, inverse).unsqueeze(1).to(values.scalar_type());
        }
        result[0] = sparse_rows(rows, values, weight);
      } else {
        Tensor grad_weight = op<SingleBackwardFn>("mprec::embedding_bag_backward")
                                 .call(grad, weight, indices, offsets, max_indices, mode, psw, padding_idx,
                                       include_last_offset);
        if (scale_grad_by_freq) {
          // Every contribution to a row is divided by the same count, so the row's sum is divided once.
          const Tensor counts =
              at::zeros_symint({weight.sym_size(0)}, grad_weight.options().dtype(at::kLong))
                  .index_add_(0, indices.to(at::kLong), bag_lookups(indices, offsets, include_last_offset));
          grad_weight = grad_weight / counts.clamp_min(1).unsqueeze(1).to(grad_weight.scalar_type());
        }
        result[0] = grad_weight;
      }
    }
    if (psw && ctx->needs_input_grad(3))
      result[4] = op<SinglePswBackwardFn>("mprec::embedding_bag_per_sample_weights_backward")
                      .call(grad, weight, indices, offsets, mode, padding_idx, include_last_offset)
                      .to(psw->scalar_type());
    return result;
  }
};

Pooled embedding_bag_autograd(const Tensor& weight, const Tensor& indices, const Tensor& offsets, int64_t mode,
                              const OptionalTensor& per_sample_weights, int64_t padding_idx,
                              bool include_last_offset, const OptionalTensor& scale_bias, bool sparse,
                              bool scale_grad_by_freq, bool return_max_indices) {
  if (!wants_gradient(weight, per_sample_weights)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return single_op().call(weight, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset,
                            scale_bias, sparse, scale_grad_by_freq, return_max_indices);
  }
  auto outputs = EmbeddingBagFunction::apply(weight, indices, offsets, mode, per_sample_weights, padding_idx,
                                             include_last_offset, scale_bias, sparse, scale_grad_by_freq,
                                             return_max_indices);
  return {outputs[0], outputs[1]};
}

// -- T tables in one call -----------------------------------------------------------------------------------

using OptionalTensorList = std::optional<TensorList>;
using BatchedFn = Pooled(TensorList, const Tensor&, const Tensor&, int64_t, const OptionalTensor&, at::IntArrayRef,
                         const OptionalTensorList&, bool, bool);
using BatchedBackwardFn = std::vector<Tensor>(const Tensor&, TensorList, const Tensor&, const Tensor&, const Tensor&,
                                              int64_t, const OptionalTensor&, at::IntArrayRef);
using BatchedSparseBackwardFn = std::tuple<std::vector<Tensor>, std::vector<Tensor>>(
    const Tensor&, TensorList, const Tensor&, const Tensor&, int64_t, const OptionalTensor&, at::IntArrayRef);
using BatchedPswBackwardFn = Tensor(const Tensor&, TensorList, const Tensor&, const Tensor&, int64_t,
                                    at::IntArrayRef);

const c10::TypedOperatorHandle<BatchedFn>& batched_op() {
  static const auto handle = op<BatchedFn>("mprec::batched_embedding_bag");
  return handle;
}

struct BatchedEmbeddingBagFunction : torch::autograd::Function<BatchedEmbeddingBagFunction> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, TensorList weights, const Tensor& indices,
                               const Tensor& offsets, int64_t mode, const OptionalTensor& per_sample_weights,
                               at::IntArrayRef padding_idx, const OptionalTensorList& scale_bias, bool sparse,
                               bool return_max_indices) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, max_indices] = batched_op().call(weights, indices, offsets, mode, per_sample_weights, padding_idx,
                                                scale_bias, sparse, true);
    variable_list to_save{indices, offsets, per_sample_weights.value_or(Tensor()), max_indices};
    to_save.insert(to_save.end(), weights.begin(), weights.end());
    ctx->save_for_backward(std::move(to_save));
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding_idx"] = padding_idx.vec();
    ctx->saved_data["sparse"] = sparse;
    ctx->set_materialize_grads(false);
    return {out, returned_max_indices(max_indices, return_max_indices)};
  }

  // One gradient per forward argument, a table list counting one per table: the T weights, indices, offsets,
  // mode, per_sample_weights (T + 3), padding_idx, scale_bias, sparse, return_max_indices.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<Tensor> weights(saved.begin() + 4, saved.end());
    const size_t tables = weights.size();
    variable_list result(tables + 8);
    const Tensor& grad = grads[0];
    if (!grad.defined()) return result;
    const Tensor &indices = saved[0], &offsets = saved[1], &max_indices = saved[3];
    const OptionalTensor psw = saved[2].defined() ? OptionalTensor(saved[2]) : std::nullopt;
    const int64_t mode = ctx->saved_data["mode"].toInt();
    const std::vector<int64_t> padding_idx = ctx->saved_data["padding_idx"].toIntVector();
    // Edges: one per table, then indices, offsets and per_sample_weights.
    bool any_weight = false;
    for (size_t t = 0; t < tables; ++t) any_weight = any_weight || ctx->needs_input_grad(t);
    if (any_weight) {
      std::vector<Tensor> table_grads;
      if (ctx->saved_data["sparse"].toBool()) {
        auto [rows, values] = op<BatchedSparseBackwardFn>("mprec::batched_embedding_bag_sparse_backward")
                                  .call(grad, weights, indices, offsets, mode, psw, padding_idx);
        for (size_t t = 0; t < tables; ++t) table_grads.push_back(sparse_rows(rows[t], values[t], weights[t]));
      } else {
        table_grads = op<BatchedBackwardFn>("mprec::batched_embedding_bag_backward")
                          .call(grad, weights, indices, offsets, max_indices, mode, psw, padding_idx);
      }
      for (size_t t = 0; t < tables; ++t)
        if (ctx->needs_input_grad(t)) result[t] = std::move(table_grads[t]);
    }
    if (psw && ctx->needs_input_grad(tables + 2))
      result[tables + 3] = op<BatchedPswBackwardFn>("mprec::batched_embedding_bag_per_sample_weights_backward")
                               .call(grad, weights, indices, offsets, mode, padding_idx)
                               .to(psw->scalar_type());
    return result;
  }
};

Pooled batched_embedding_bag_autograd(TensorList weights, const Tensor& indices, const Tensor& offsets, int64_t mode,
                                      const OptionalTensor& per_sample_weights, at::IntArrayRef padding_idx,
                                      const OptionalTensorList& scale_bias, bool sparse, bool return_max_indices) {
  if (!wants_gradient(weights, per_sample_weights)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return batched_op().call(weights, indices, offsets, mode, per_sample_weights, padding_idx, scale_bias, sparse,
                             return_max_indices);
  }
  auto outputs = BatchedEmbeddingBagFunction::apply(weights, indices, offsets, mode, per_sample_weights,
                                                    padding_idx, scale_bias, sparse, return_max_indices);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, Autograd, m) {
  m.impl("embedding_bag", &embedding_bag_autograd);
  m.impl("batched_embedding_bag", &batched_embedding_bag_autograd);
}

}  // namespace mprec::autograd
