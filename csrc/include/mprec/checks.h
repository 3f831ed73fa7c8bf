// Checks every op family makes.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>

namespace mprec {

// torch hands a kernel None, given for a Tensor argument, as an undefined tensor: refused first, by name, before
// anything asks it for a device or dtype (which would fail without naming the op).
inline void check_defined(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK_VALUE(tensor->defined(), op, ": ", name, " must be a tensor, got None");
  }
}

}  // namespace mprec
