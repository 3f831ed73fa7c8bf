// CUDA implementations of mprec::embedding_bag, mprec::batched_embedding_bag and their dense backward ops: the
// torch side (argument checks shared with the CPU kernels, allocation, device guard, stream, the table array,
// reading back and raising kernel errors). The kernels are in embedding_bag_kernels.cu. What it needs of torch's
// CUDA runtime comes through mprec/cuda/torch_runtime.h, which lets the tests' CUDA emulator run this file on
// the CPU. Compiled into mprec._C only with MPREC_WITH_CUDA, against a CUDA build of torch.
#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "mprec/cuda/embedding_bag_cuda.h"
#include "mprec/cuda/torch_runtime.h"
#include "mprec/embedding_bag_checks.h"

namespace mprec {
namespace cuda {
namespace {

using at::Tensor;

using runtime::kernel_device_of;

// Descriptors of a call's tables. One table travels inside the kernel arguments; several go to the device as
// an array, copied on the current stream from pinned memory, so the copy is ordered with the kernels and the
// host buffer is not reused before the copy has run.
struct DeviceTables {
  std::vector<TableDescriptor> host;
  Tensor device;  // keeps the array alive until the call returns
};

// The kernels put tables on the grid's y dimension.
constexpr size_t kMaxTables = 65535;

void place_tables(DeviceTables& tables, BagLayout& layout, c10::Device device) {
  layout.num_tables = static_cast<int64_t>(tables.host.size());
  layout.table0 = tables.host[0];
  layout.tables = nullptr;
  if (tables.host.size() == 1) return;
  const int64_t bytes = static_cast<int64_t>(tables.host.size() * sizeof(TableDescriptor));
  tables.device = runtime::copy_to_device(tables.host.data(), bytes, device);
  layout.tables = static_cast<const TableDescriptor*>(tables.device.data_ptr());
}

BagLayout make_layout(const Tensor& indices, const Tensor& offsets, int64_t bags, int64_t total_dim,
                      const Tensor& errors) {
  BagLayout layout{};
  layout.bags = bags;
  layout.indices = indices.data_ptr();
  layout.offsets = offsets.data_ptr();
  layout.index_is_64bit = indices.scalar_type() == at::kLong;
  layout.num_indices = indices.numel();
  layout.num_offsets = offsets.numel();
  layout.total_dim = total_dim;
  layout.errors = static_cast<BagErrorState*>(errors.data_ptr());
  return layout;
}

Tensor error_buffer(c10::Device device) {
  return at::empty({static_cast<int64_t>(sizeof(BagErrorState))}, at::TensorOptions().dtype(at::kByte).device(device));
}

// Waits for the call's kernels (the copy synchronises with the current stream) and raises the error they found,
// in the CPU kernels' words. The wait is the price of raising bad indices where they are passed in; without it
// a bad input would surface as garbage or a later, unrelated failure.
void raise_kernel_error(const char* op, const Tensor& errors, const std::vector<TableDescriptor>& tables,
                        int64_t num_indices) {
  const Tensor host = errors.cpu();
  BagErrorState state;
  std::memcpy(&state, host.data_ptr(), sizeof(state));
  if (state.report.kind == BagError::kNone) return;
  const int64_t t = state.report.table;
  const bool known_table = t >= 0 && t < static_cast<int64_t>(tables.size());
  TORCH_CHECK(false, bag_error_message(op, state.report, num_indices, known_table ? tables[t].num_rows : 0));
}

std::tuple<Tensor, Tensor> pool(const char* op, const std::vector<Tensor>& weights, const std::vector<int64_t>& pads,
                                const Tensor& indices, const Tensor& offsets, int64_t bags, PoolMode mode,
                                const Tensor& per_sample_weights, bool return_max_indices, c10::Device device) {
  const runtime::DeviceGuard guard(device);
  DeviceTables tables;
  int64_t total_dim = 0;
  for (const auto t : c10::irange(weights.size())) {
    tables.host.push_back({weights[t].data_ptr(), nullptr, weights[t].size(0), weights[t].size(1), total_dim,
                           pads[t] >= 0 ? pads[t] : kNoPaddingRow});
    total_dim += weights[t].size(1);
  }
  const at::TensorOptions options = weights[0].options();
  Tensor output = at::empty({bags, total_dim}, options);
  const bool args = mode == PoolMode::kMax && return_max_indices;
  Tensor max_indices = at::empty({args ? bags : 0, args ? total_dim : 0}, options.dtype(at::kLong));
  const Tensor errors = error_buffer(device);

  PoolParams params{};
  params.layout = make_layout(indices, offsets, bags, total_dim, errors);
  place_tables(tables, params.layout, device);
  params.weight_type = float_weight_type(weights[0].scalar_type());
  params.mode = mode;
  params.per_sample_weights = per_sample_weights.defined() ? per_sample_weights.data_ptr() : nullptr;
  params.output = output.data_ptr();
  params.max_indices = args ? max_indices.data_ptr<int64_t>() : nullptr;
  params.max_dim = 0;
  params.packet_rows = true;
  for (const auto& weight : weights) {
    params.max_dim = std::max(params.max_dim, weight.size(1));
    params.packet_rows = params.packet_rows && weight.size(1) * weight.element_size() % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0;
  }
  runtime::check_launch(launch_embedding_bag_pool(params, runtime::current_stream()));
  raise_kernel_error(op, errors, tables.host, indices.numel());
  return {output, max_indices};
}

std::vector<Tensor> dense_backward(const char* op, const Tensor& grad, at::TensorList weights,
                                   const std::vector<int64_t>& pads, const Tensor& indices, const Tensor& offsets,
                                   int64_t bags, PoolMode mode, const Tensor& per_sample_weights,
                                   const Tensor& max_indices, c10::Device device) {
  const runtime::DeviceGuard guard(device);
  const at::ScalarType acc = accumulation_dtype(weights[0]);
  const Tensor g = grad.to(acc).contiguous();
  DeviceTables tables;
  std::vector<Tensor> sums;
  int64_t total_dim = 0;
  for (const auto t : c10::irange(weights.size())) {
    sums.push_back(at::zeros({weights[t].size(0), weights[t].size(1)}, g.options()));
    tables.host.push_back({nullptr, sums[t].data_ptr(), weights[t].size(0), weights[t].size(1), total_dim,
                           pads[t] >= 0 ? pads[t] : kNoPaddingRow});
    total_dim += weights[t].size(1);
  }
  const bool is_max = mode == PoolMode::kMax;
  const Tensor winners = is_max ? max_indices.contiguous() : Tensor();
  const Tensor errors = error_buffer(device);

  DenseBackwardParams params{};
  params.layout = make_layout(indices, offsets, bags, total_dim, errors);
  place_tables(tables, params.layout, device);
  params.double_precision = acc == at::kDouble;
  params.mode = mode;
  params.per_sample_weights = per_sample_weights.defined() ? per_sample_weights.data_ptr() : nullptr;
  params.grad = g.data_ptr();
  params.max_indices = is_max ? winners.data_ptr<int64_t>() : nullptr;
  runtime::check_launch(launch_embedding_bag_dense_backward(params, runtime::current_stream()));
  raise_kernel_error(op, errors, tables.host, indices.numel());
  std::vector<Tensor> grads;
  for (const auto t : c10::irange(weights.size())) grads.push_back(sums[t].to(weights[t].scalar_type()));
  return grads;
}

// --- the ops, with the CPU kernels' checks in the CPU kernels' order -------------------------------------------
// Differences: offsets[0] != 0 is found by the kernels (reading it on the host would cost a second wait), so an
// input with that and another bad argument reports the other one first; uint8 tables are refused with the Triton
// kernels' message (mprec/ops/embedding_bag/gpu.py), and the backward ops also check the weights' dtype and device, as those do.

std::tuple<Tensor, Tensor> embedding_bag_cuda(const Tensor& weight, const Tensor& indices, const Tensor& offsets,
                                              int64_t mode, const c10::optional<Tensor>& per_sample_weights,
                                              int64_t padding_idx, bool include_last_offset,
                                              const c10::optional<Tensor>& scale_bias, bool /*sparse*/,
                                              bool scale_grad_by_freq, bool return_max_indices) {
  const char* op = "mprec::embedding_bag";
  const c10::Device device = kernel_device_of(weight);
  const PoolMode pool_mode = checked_mode(op, mode);
  check_scale_grad_by_freq(op, scale_grad_by_freq, pool_mode);
  const Tensor sb = scale_bias.has_value() ? *scale_bias : Tensor();
  checked_weight(op, weight, &sb, "weight", device, /*allow_quantized=*/false);
  check_indices_offsets(op, indices, offsets, device);
  const int64_t bags = single_bags(op, offsets, include_last_offset);
  check_padding_idx(op, padding_idx, weight.size(0), "");
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(weight), device);
  return pool(op, {weight.contiguous()}, {padding_idx}, indices.contiguous(), offsets.contiguous(), bags, pool_mode,
              psw, return_max_indices, device);
}

std::tuple<Tensor, Tensor> batched_embedding_bag_cuda(at::TensorList weights, const Tensor& indices,
                                                      const Tensor& offsets, int64_t mode,
                                                      const c10::optional<Tensor>& per_sample_weights,
                                                      at::IntArrayRef padding_idx,
                                                      const c10::optional<at::TensorList>& scale_bias,
                                                      bool /*sparse*/, bool return_max_indices) {
  const char* op = "mprec::batched_embedding_bag";
  const c10::Device device = weights.empty() ? runtime::any_kernel_device() : kernel_device_of(weights[0]);
  const PoolMode pool_mode = checked_mode(op, mode);
  check_batched_tables(op, weights, padding_idx, scale_bias, true, device, /*allow_quantized=*/false);
  TORCH_CHECK_VALUE(weights.size() <= kMaxTables, op, ": at most ", kMaxTables, " tables per call on CUDA, got ",
                    weights.size());
  check_indices_offsets(op, indices, offsets, device);
  const int64_t bags = batched_bags(op, offsets, static_cast<int64_t>(weights.size()));
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(weights[0]), device);
  std::vector<Tensor> tables;
  std::vector<int64_t> pads;
  for (const auto t : c10::irange(weights.size())) {
    tables.push_back(weights[t].contiguous());
    pads.push_back(padding_idx.empty() ? -1 : padding_idx[t]);
  }
  return pool(op, tables, pads, indices.contiguous(), offsets.contiguous(), bags, pool_mode, psw, return_max_indices,
              device);
}

Tensor embedding_bag_backward_cuda(const Tensor& grad, const Tensor& weight, const Tensor& indices,
                                   const Tensor& offsets, const Tensor& max_indices, int64_t mode,
                                   const c10::optional<Tensor>& per_sample_weights, int64_t padding_idx,
                                   bool include_last_offset) {
  const char* op = "mprec::embedding_bag_backward";
  const c10::Device device = kernel_device_of(grad);
  const PoolMode pool_mode = checked_mode(op, mode);
  check_indices_offsets(op, indices, offsets, device);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D, got shape ", weight.sizes());
  const int64_t bags = single_bags(op, offsets, include_last_offset);
  check_padding_idx(op, padding_idx, weight.size(0), "");
  check_grad(op, grad, bags, weight.size(1), device);
  check_max_indices(op, max_indices, grad, pool_mode, device);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(weight), device);
  // The backward reads only the weight's shape, but the gradient takes its dtype (and uint8 has no gradient).
  checked_weight(op, weight, nullptr, "weight", device, /*allow_quantized=*/false);
  return dense_backward(op, grad, {weight}, {padding_idx}, indices.contiguous(), offsets.contiguous(), bags,
                        pool_mode, psw, max_indices, device)[0];
}

std::vector<Tensor> batched_embedding_bag_backward_cuda(const Tensor& grad, at::TensorList weights,
                                                        const Tensor& indices, const Tensor& offsets,
                                                        const Tensor& max_indices, int64_t mode,
                                                        const c10::optional<Tensor>& per_sample_weights,
                                                        at::IntArrayRef padding_idx) {
  const char* op = "mprec::batched_embedding_bag_backward";
  const c10::Device device = kernel_device_of(grad);
  const PoolMode pool_mode = checked_mode(op, mode);
  for (const auto t : c10::irange(weights.size()))
    TORCH_CHECK_VALUE(weights[t].dim() == 2, op, ": weights[", t, "] must be 2-D, got shape ", weights[t].sizes());
  // As in the single-table op, the weights' dtypes are checked too: the gradients take them.
  check_batched_tables(op, weights, padding_idx, c10::nullopt, true, device, /*allow_quantized=*/false);
  TORCH_CHECK_VALUE(weights.size() <= kMaxTables, op, ": at most ", kMaxTables, " tables per call on CUDA, got ",
                    weights.size());
  check_indices_offsets(op, indices, offsets, device);
  const int64_t bags = batched_bags(op, offsets, static_cast<int64_t>(weights.size()));
  int64_t total_dim = 0;
  for (const auto t : c10::irange(weights.size())) total_dim += weights[t].size(1);
  check_grad(op, grad, bags, total_dim, device);
  check_max_indices(op, max_indices, grad, pool_mode, device);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(weights[0]), device);
  std::vector<int64_t> pads;
  for (const auto t : c10::irange(weights.size())) pads.push_back(padding_idx.empty() ? -1 : padding_idx[t]);
  return dense_backward(op, grad, weights, pads, indices.contiguous(), offsets.contiguous(), bags, pool_mode, psw,
                        max_indices, device);
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CUDA, m) {
  m.impl("embedding_bag", &embedding_bag_cuda);
  m.impl("embedding_bag_backward", &embedding_bag_backward_cuda);
  m.impl("batched_embedding_bag", &batched_embedding_bag_cuda);
  m.impl("batched_embedding_bag_backward", &batched_embedding_bag_backward_cuda);
}

}  // namespace cuda
}  // namespace mprec
