// The embedding-bag operators' argument checks and kernel-error messages (include/mprec/embedding_bag_checks.h).
// They live here, in a file every build compiles, because the CUDA operators raise the same errors as the CPU
// ones and a build without CUDA must still have them.
#include "mprec/embedding_bag_checks.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <sstream>

namespace mprec {

using at::Tensor;

PoolMode checked_mode(const char* op, int64_t mode) {
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": mode must be 0 (sum), 1 (mean) or 2 (max), got ", mode);
  return static_cast<PoolMode>(mode);
}

void check_scale_grad_by_freq(const char* op, bool scale_grad_by_freq, PoolMode mode) {
  // A max bag's gradient goes to one row per column, whatever the frequencies: torch refuses the pair too.
  TORCH_CHECK_VALUE(!(scale_grad_by_freq && mode == PoolMode::kMax), op,
                    ": scale_grad_by_freq is not supported in max mode (mode 2)");
}

WeightType float_weight_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return WeightType::kDouble;
    case at::kHalf: return WeightType::kHalf;
    case at::kBFloat16: return WeightType::kBFloat16;
    case at::kByte: return WeightType::kUInt8RowwiseQuantized;
    default: return WeightType::kFloat;
  }
}

at::ScalarType accumulation_dtype(const Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

bool on_device(const Tensor& tensor, c10::Device device) {
  return device.has_index() ? tensor.device() == device : tensor.device().type() == device.type();
}

void check_device(const char* op, const std::string& name, const Tensor& tensor, c10::Device device) {
  TORCH_CHECK_VALUE(on_device(tensor, device), op, ": ", name, " is on ", tensor.device(), ", expected ", device);
}

WeightType checked_weight(const char* op, const Tensor& weight, const Tensor* scale_bias, const std::string& name,
                          c10::Device device, bool allow_quantized) {
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": ", name, " must be 2-D [num_embeddings, embedding_dim], got shape ",
                    weight.sizes());
  check_device(op, name, weight, device);
  switch (weight.scalar_type()) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
      TORCH_CHECK_VALUE(scale_bias == nullptr || !scale_bias->defined(), op, ": scale_bias is only for uint8 ",
                        "(row-wise quantized) weights, but ", name, " is ", weight.scalar_type());
      return float_weight_type(weight.scalar_type());
    case at::kByte: {
      TORCH_CHECK_VALUE(allow_quantized, op, ": ", name, " is uint8 (row-wise quantized); quantized tables are pooled ",
                        "on the CPU only: dequantize them (mprec::dequantize_rowwise_int8) to run on the GPU");
      TORCH_CHECK_VALUE(scale_bias != nullptr && scale_bias->defined(), op, ": ", name,
                        " is uint8 (row-wise quantized) and needs scale_bias [num_embeddings, 2] from "
                        "mprec::quantize_rowwise_int8");
      const Tensor& sb = *scale_bias;
      TORCH_CHECK_VALUE(sb.scalar_type() == at::kFloat && sb.dim() == 2 && sb.size(0) == weight.size(0) &&
                            sb.size(1) == 2,
                        op, ": scale_bias for ", name, " must be float32 [", weight.size(0), ", 2], got ",
                        sb.scalar_type(), " ", sb.sizes());
      return WeightType::kUInt8RowwiseQuantized;
    }
    default:
      TORCH_CHECK_VALUE(false, op, ": ", name, " has dtype ", weight.scalar_type(),
                        "; expected float32, float64, float16, bfloat16 or uint8 (row-wise quantized)");
  }
}

std::vector<WeightType> check_batched_tables(const char* op, at::TensorList weights, at::IntArrayRef padding_idx,
                                             const std::optional<at::TensorList>& scale_bias, bool check_weights,
                                             c10::Device device, bool allow_quantized) {
  TORCH_CHECK_VALUE(!weights.empty(), op, ": needs at least one table");
  TORCH_CHECK_VALUE(padding_idx.empty() || padding_idx.size() == weights.size(), op, ": padding_idx has ",
                    padding_idx.size(), " entries for ", weights.size(), " tables (give one per table, or none)");
  if (scale_bias.has_value())
    TORCH_CHECK_VALUE(scale_bias->size() == weights.size(), op, ": scale_bias has ", scale_bias->size(),
                      " entries for ", weights.size(), " tables");
  std::vector<WeightType> types;
  for (const auto t : c10::irange(weights.size())) {
    const std::string name = "weights[" + std::to_string(t) + "]";
    const Tensor sb = scale_bias.has_value() ? (*scale_bias)[t] : Tensor();
    types.push_back(check_weights ? checked_weight(op, weights[t], &sb, name, device, allow_quantized)
                                  : float_weight_type(weights[t].scalar_type()));
    TORCH_CHECK_VALUE(weights[t].scalar_type() == weights[0].scalar_type(), op, ": every table must have the same ",
                      "dtype; weights[0] is ", weights[0].scalar_type(), " but ", name, " is ",
                      weights[t].scalar_type());
    const int64_t pad = padding_idx.empty() ? -1 : padding_idx[t];
    check_padding_idx(op, pad, weights[t].size(0), " of table " + std::to_string(t));
  }
  return types;
}

void check_indices_offsets(const char* op, const Tensor& indices, const Tensor& offsets, c10::Device device) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong, op,
                    ": indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(offsets.scalar_type() == indices.scalar_type(), op, ": offsets (", offsets.scalar_type(),
                    ") must have the same dtype as indices (", indices.scalar_type(), ")");
  TORCH_CHECK_VALUE(indices.dim() == 1, op, ": indices must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1, op, ": offsets must be 1-D, got shape ", offsets.sizes());
  TORCH_CHECK_VALUE(on_device(indices, device) && on_device(offsets, device), op, ": indices (", indices.device(),
                    ") and offsets (", offsets.device(), ") must be on ", device);
}

int64_t single_bags(const char* op, const Tensor& offsets, bool include_last_offset) {
  TORCH_CHECK_VALUE(!include_last_offset || offsets.numel() >= 1, op,
                    ": include_last_offset=True needs at least one offset");
  return include_last_offset ? offsets.numel() - 1 : offsets.numel();
}

int64_t batched_bags(const char* op, const Tensor& offsets, int64_t num_tables) {
  TORCH_CHECK_VALUE(offsets.numel() >= 1 && (offsets.numel() - 1) % num_tables == 0, op,
                    ": offsets must have T * B + 1 entries (TBE layout) for T = ", num_tables, " tables, got ",
                    offsets.numel());
  return (offsets.numel() - 1) / num_tables;
}

void check_padding_idx(const char* op, int64_t padding_idx, int64_t num_rows, const std::string& where) {
  TORCH_CHECK_VALUE(padding_idx >= -1 && padding_idx < std::max<int64_t>(num_rows, 0), op, ": padding_idx ",
                    padding_idx, where, " must be -1 (none) or in [0, ", num_rows, ")");
}

Tensor checked_per_sample_weights(const char* op, const std::optional<Tensor>& psw, PoolMode mode,
                                  int64_t num_indices, at::ScalarType acc_dtype, c10::Device device) {
  if (!psw.has_value() || !psw->defined()) return Tensor();
  TORCH_CHECK_VALUE(mode == PoolMode::kSum, op, ": per_sample_weights are only supported with mode sum (0), got ",
                    mode == PoolMode::kMean ? "mean (1)" : "max (2)");
  TORCH_CHECK_VALUE(psw->dim() == 1 && psw->numel() == num_indices, op,
                    ": per_sample_weights must be 1-D with one weight per index (", num_indices, "), got shape ",
                    psw->sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(psw->scalar_type()), op, ": per_sample_weights must be floating point, got ",
                    psw->scalar_type());
  check_device(op, "per_sample_weights", *psw, device);
  return psw->to(acc_dtype).contiguous();
}

void check_grad(const char* op, const Tensor& grad, int64_t bags, int64_t total_dim, c10::Device device) {
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == bags && grad.size(1) == total_dim, op,
                    ": grad must have shape [", bags, ", ", total_dim, "], got ", grad.sizes());
  check_device(op, "grad", grad, device);
}

void check_max_indices(const char* op, const Tensor& max_indices, const Tensor& grad, PoolMode mode,
                       c10::Device device) {
  if (mode != PoolMode::kMax) return;
  TORCH_CHECK_VALUE(max_indices.sizes() == grad.sizes(), op, ": max_indices must have the shape of grad ",
                    grad.sizes(), ", got ", max_indices.sizes());
  TORCH_CHECK_VALUE(max_indices.scalar_type() == at::kLong, op, ": max_indices must be int64, got ",
                    max_indices.scalar_type());
  check_device(op, "max_indices", max_indices, device);
}

std::string bag_error_message(const char* op, const BagErrorReport& e, int64_t num_indices, int64_t table_rows) {
  std::ostringstream msg;
  msg << op << ": ";
  const bool batched = std::string(op).find("batched") != std::string::npos;
  switch (e.kind) {
    case BagError::kIndexOutOfRange:
      msg << "index " << e.value << " at position " << e.position;
      if (e.value < 0) msg << " is negative";
      else msg << " is out of range";
      msg << " for " << (batched ? "table " + std::to_string(e.table) + " " : std::string("the table "))
          << "with " << table_rows << " rows (valid indices: 0.." << table_rows - 1 << ")";
      break;
    case BagError::kOffsetPastEnd:
      msg << "offsets[" << e.position << "] = " << e.value << " is past the end of indices (" << num_indices
          << " entries)";
      break;
    case BagError::kOffsetDecreasing:
      msg << "offsets[" << e.position << "] = " << e.value << " is smaller than offsets[" << e.position - 1
          << "] = " << e.previous << "; offsets must be non-decreasing";
      break;
    case BagError::kFirstOffsetNotZero:
      msg << "offsets[0] must be 0, got " << e.value;
      break;
    case BagError::kMaxIndexOutOfRange:
      msg << "max_indices[" << e.position << ", " << e.column << "] = " << e.value
          << " is out of range for a table of " << table_rows << " rows";
      break;
    case BagError::kUnexplained:
      msg << "internal error: the kernel abandoned bag " << e.position
          << (batched ? " of table " + std::to_string(e.table) : std::string()) << " but found no bad input in it";
      break;
    case BagError::kNone:
      msg << "internal error";
      break;
  }
  return msg.str();
}

}  // namespace mprec
