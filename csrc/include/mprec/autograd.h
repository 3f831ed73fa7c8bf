// What the ops' autograd kernels (csrc/autograd) share.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>

#include <optional>

namespace mprec::autograd {

// The typed handle of an op (its default overload). A lookup is a hash-map read: the forward kernels, called
// every step, keep theirs in a static; backwards look theirs up per call.
template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }
inline bool requires_grad(at::TensorList tensors) {
  for (const auto& t : tensors)
    if (requires_grad(t)) return true;
  return false;
}

// Whether a call records an autograd node: grad mode on and one of the op's differentiable arguments requiring a
// gradient. Every other call goes below autograd at once, as torch's own autograd kernels do.
template <typename... Args>
bool wants_gradient(const Args&... differentiable) {
  return c10::GradMode::is_enabled() && (requires_grad(differentiable) || ...);
}

}  // namespace mprec::autograd
