// Autograd of the DLRM interaction ops, mprec::dot_interaction and mprec::dlrm_interaction, for every device
// (the pattern of csrc/autograd/embedding_bag.cpp: below autograd at once where no gradient is wanted).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "mprec/autograd.h"

namespace mprec::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using DotFn = Tensor(const Tensor&);
using DotBackwardFn = Tensor(const Tensor&, const Tensor&);
using Order = at::OptionalIntArrayRef;
using DlrmFn = Tensor(const Tensor&, const Tensor&, int64_t, Order);
using DlrmBackwardFn = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, Order);

const c10::TypedOperatorHandle<DotFn>& dot_op() {
  static const auto handle = op<DotFn>("mprec::dot_interaction");
  return handle;
}

const c10::TypedOperatorHandle<DlrmFn>& dlrm_op() {
  static const auto handle = op<DlrmFn>("mprec::dlrm_interaction");
  return handle;
}

struct DotInteractionFunction : torch::autograd::Function<DotInteractionFunction> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const Tensor& x) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x});
    return {dot_op().call(x)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {op<DotBackwardFn>("mprec::dot_interaction_backward").call(grads[0], saved[0])};
  }
};

Tensor dot_interaction_autograd(const Tensor& x) {
  if (!wants_gradient(x)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return dot_op().call(x);
  }
  return DotInteractionFunction::apply(x)[0];
}

struct DlrmInteractionFunction : torch::autograd::Function<DlrmInteractionFunction> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const Tensor& dense, const Tensor& sparse, int64_t pad_to,
                               Order order) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({dense, sparse});
    ctx->saved_data["pad_to"] = pad_to;
    if (order.has_value()) ctx->saved_data["order"] = order->vec();
    return {dlrm_op().call(dense, sparse, pad_to, order)};
  }

  // One gradient per forward argument: dense, sparse, pad_to, order.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    std::optional<std::vector<int64_t>> order;
    if (ctx->saved_data.count("order")) order = ctx->saved_data["order"].toIntVector();
    auto [grad_dense, grad_sparse] =
        op<DlrmBackwardFn>("mprec::dlrm_interaction_backward")
            .call(grads[0], saved[0], saved[1], ctx->saved_data["pad_to"].toInt(),
                  order ? Order(*order) : Order());
    return {grad_dense, grad_sparse, Tensor(), Tensor()};
  }
};

Tensor dlrm_interaction_autograd(const Tensor& dense, const Tensor& sparse, int64_t pad_to, Order order) {
  if (!wants_gradient(dense, sparse)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return dlrm_op().call(dense, sparse, pad_to, order);
  }
  return DlrmInteractionFunction::apply(dense, sparse, pad_to, order)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, Autograd, m) {
  m.impl("dot_interaction", &dot_interaction_autograd);
  m.impl("dlrm_interaction", &dlrm_interaction_autograd);
}

}  // namespace mprec::autograd
