// Argument checks and error messages of the embedding-bag operators, shared by the CPU operators
// (csrc/cpu/embedding_bag.cpp) and the CUDA ones (csrc/cuda/embedding_bag_cuda.cpp), so that every backend
// rejects the same inputs with the same words. Defined in csrc/cpu/embedding_bag_checks.cpp, which is
// compiled in every build. `device` is where the operator's tensors must live: cpu for the CPU kernels,
// the weights' (or grad's) CUDA device for the CUDA ones.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>
#include <vector>

#include "mprec/embedding_bag_types.h"

namespace mprec {

PoolMode checked_mode(const char* op, int64_t mode);
void check_scale_grad_by_freq(const char* op, bool scale_grad_by_freq, PoolMode mode);

// The WeightType of a float or uint8 dtype (float32 for anything else; checked_weight rejects those).
WeightType float_weight_type(at::ScalarType dtype);

// float64 for float64 tables, else float32: the dtype of sums, per_sample_weights and dense gradients.
at::ScalarType accumulation_dtype(const at::Tensor& weight);

// Whether `tensor` is on `device`; a device without an index accepts any device of its type.
bool on_device(const at::Tensor& tensor, c10::Device device);
void check_device(const char* op, const std::string& name, const at::Tensor& tensor, c10::Device device);

// Shape, device and dtype of a table, and scale_bias for uint8 (row-wise quantized) ones; uint8 tables are
// refused where the backend has no kernel for them (allow_quantized false).
WeightType checked_weight(const char* op, const at::Tensor& weight, const at::Tensor* scale_bias,
                          const std::string& name, c10::Device device, bool allow_quantized = true);

// The tables of a batched call, in order: count, padding_idx and scale_bias lengths, then per table its
// weight (when check_weights), its dtype against weights[0] and its padding_idx. Returns each table's type.
std::vector<WeightType> check_batched_tables(const char* op, at::TensorList weights, at::IntArrayRef padding_idx,
                                             const std::optional<at::TensorList>& scale_bias, bool check_weights,
                                             c10::Device device, bool allow_quantized = true);

void check_indices_offsets(const char* op, const at::Tensor& indices, const at::Tensor& offsets, c10::Device device);

// Bags of a single-table call (offsets has B entries, or B + 1 with include_last_offset).
int64_t single_bags(const char* op, const at::Tensor& offsets, bool include_last_offset);
// Bags per table of a batched call (offsets has T * B + 1 entries).
int64_t batched_bags(const char* op, const at::Tensor& offsets, int64_t num_tables);

void check_padding_idx(const char* op, int64_t padding_idx, int64_t num_rows, const std::string& where);

// per_sample_weights converted to acc_dtype and made contiguous; undefined when absent.
at::Tensor checked_per_sample_weights(const char* op, const std::optional<at::Tensor>& per_sample_weights,
                                      PoolMode mode, int64_t num_indices, at::ScalarType acc_dtype,
                                      c10::Device device);

void check_grad(const char* op, const at::Tensor& grad, int64_t bags, int64_t total_dim, c10::Device device);
// max_indices of a backward call; only read (and so only checked) in max mode.
void check_max_indices(const char* op, const at::Tensor& max_indices, const at::Tensor& grad, PoolMode mode,
                       c10::Device device);

// The message for an error found inside a kernel loop. num_indices: the length of indices; table_rows: the
// rows of table e.table. Batched ops (op names containing "batched") name the table.
std::string bag_error_message(const char* op, const BagErrorReport& e, int64_t num_indices, int64_t table_rows);

}  // namespace mprec
