// Autograd of the DHE ops with gradients, mprec::dhe_encode_linear and mprec::rowwise_linear, for every device
// (the pattern of csrc/autograd/embedding_bag.cpp: below autograd at once where no gradient is wanted).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "mprec/autograd.h"

namespace mprec::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using OptionalTensor = std::optional<Tensor>;
using EncodeLinearFn = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, c10::string_view,
                              const Tensor&, const OptionalTensor&, c10::string_view);
using EncodeLinearBackwardFn = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                          const Tensor&, int64_t, int64_t, c10::string_view,
                                                          const Tensor&, const OptionalTensor&, c10::string_view);
using RowwiseLinearFn = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, c10::string_view);

const c10::TypedOperatorHandle<EncodeLinearFn>& encode_linear_op() {
  static const auto handle = op<EncodeLinearFn>("mprec::dhe_encode_linear");
  return handle;
}

const c10::TypedOperatorHandle<RowwiseLinearFn>& rowwise_linear_op() {
  static const auto handle = op<RowwiseLinearFn>("mprec::rowwise_linear");
  return handle;
}

struct DheEncodeLinearFunction : torch::autograd::Function<DheEncodeLinearFunction> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const Tensor& ids, const Tensor& hash_a, const Tensor& hash_b,
                               int64_t p, int64_t m, c10::string_view transform, const Tensor& weight,
                               const OptionalTensor& bias, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor output = encode_linear_op().call(ids, hash_a, hash_b, p, m, transform, weight, bias, activation);
    ctx->save_for_backward({ids, hash_a, hash_b, weight, bias.value_or(Tensor()), output});
    ctx->saved_data["p"] = p;
    ctx->saved_data["m"] = m;
    ctx->saved_data["transform"] = std::string(transform);
    ctx->saved_data["activation"] = std::string(activation);
    return {output};
  }

  // One gradient per forward argument; the differentiable ones are the weight (6) and the bias (7). ids and the
  // hash parameters are integers.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const OptionalTensor bias = saved[4].defined() ? OptionalTensor(saved[4]) : std::nullopt;
    auto [grad_weight, grad_bias] =
        op<EncodeLinearBackwardFn>("mprec::dhe_encode_linear_backward")
            .call(grads[0], saved[5], saved[0], saved[1], saved[2], ctx->saved_data["p"].toInt(),
                  ctx->saved_data["m"].toInt(), ctx->saved_data["transform"].toStringRef(), saved[3], bias,
                  ctx->saved_data["activation"].toStringRef());
    variable_list result(9);
    result[6] = grad_weight;
    if (bias) result[7] = grad_bias;
    return result;
  }
};

Tensor dhe_encode_linear_autograd(const Tensor& ids, const Tensor& hash_a, const Tensor& hash_b, int64_t p,
                                  int64_t m, c10::string_view transform, const Tensor& weight,
                                  const OptionalTensor& bias, c10::string_view activation) {
  if (!wants_gradient(weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return encode_linear_op().call(ids, hash_a, hash_b, p, m, transform, weight, bias, activation);
  }
  return DheEncodeLinearFunction::apply(ids, hash_a, hash_b, p, m, transform, weight, bias, activation)[0];
}

struct RowwiseLinearFunction : torch::autograd::Function<RowwiseLinearFunction> {
  static constexpr bool is_traceable = true;

  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                               const OptionalTensor& bias, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor output = rowwise_linear_op().call(input, weight, bias, activation);
    // mish' needs the pre-activation: recomputed here, from inputs saved anyway, rather than in the backward.
    Tensor pre = activation == "mish" ? at::linear(input, weight, bias) : Tensor();
    ctx->save_for_backward({input, weight, output, pre});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["activation"] = std::string(activation);
    return {output};
  }

  // One gradient per forward argument: input, weight, bias, activation. Edges: input, weight, then the bias.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1], &output = saved[2], &pre = saved[3];
    const std::string& activation = ctx->saved_data["activation"].toStringRef();
    Tensor grad = grads[0];
    if (activation == "relu") grad = at::threshold_backward(grad, output, 0);
    else if (activation == "mish") grad = at::mish_backward(grad, pre);
    variable_list result(4);
    if (ctx->needs_input_grad(0)) result[0] = at::matmul(grad, weight);
    const Tensor flat_grad = grad.reshape_symint({-1, grad.sym_size(-1)});
    if (ctx->needs_input_grad(1))
      result[1] = at::mm(flat_grad.t(), input.reshape_symint({-1, input.sym_size(-1)}));
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) result[2] = flat_grad.sum(0);
    return result;
  }
};

Tensor rowwise_linear_autograd(const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                               c10::string_view activation) {
  if (!wants_gradient(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return rowwise_linear_op().call(input, weight, bias, activation);
  }
  return RowwiseLinearFunction::apply(input, weight, bias, activation)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, Autograd, m) {
  m.impl("dhe_encode_linear", &dhe_encode_linear_autograd);
  m.impl("rowwise_linear", &rowwise_linear_autograd);
}

}  // namespace mprec::autograd
