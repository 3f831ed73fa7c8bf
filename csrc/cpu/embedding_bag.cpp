// CPU implementations of the embedding-bag op family: mprec::embedding_bag, mprec::batched_embedding_bag,
// their backward ops, and the row-wise int8 quantization used by the quantized tables.
//
// Both forward ops are the same computation: a list of tables, each reading a run of bags out of one pair
// of indices/offsets arrays (one table and B bags for embedding_bag; T tables and T*B bags in FBGEMM's
// TBE layout for batched_embedding_bag). This file validates arguments, allocates, and splits bags over
// threads; the pooling loop itself is an ISA variant chosen at run time (isa.cpp). Index and offset
// checks happen inside the loops, never as a separate pass over the data.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "mprec/checks.h"
#include "mprec/embedding_bag_checks.h"
#include "mprec/embedding_bag_kernel.h"
#include "mprec/isa.h"

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

constexpr const char* kSingleOp = "mprec::embedding_bag";
constexpr const char* kBatchedOp = "mprec::batched_embedding_bag";
// Where every tensor of these kernels must be (the shared checks take the device).
const c10::Device kCpu(c10::DeviceType::CPU);

// One table of a call: its weight, its place in the output's columns, and its padding row.
struct Table {
  Tensor weight;      // contiguous [num_rows, dim]
  Tensor scale_bias;  // contiguous float32 [num_rows, 2] for uint8 weights, else undefined
  WeightType type;
  int64_t num_rows;
  int64_t dim;
  int64_t col;          // first output column
  int64_t padding_idx;  // -1: none
};

// Where the bags are. Table t owns the global bags [t * bags, (t + 1) * bags); global bag b covers
// indices [offsets[b], offsets[b + 1]), or [offsets[b], num_indices) when b is the last offset.
struct Layout {
  Tensor indices;  // contiguous int32/int64
  Tensor offsets;  // contiguous, same dtype
  int64_t num_indices;
  int64_t num_offsets;
  int64_t bags;  // per table
  bool index_is_64bit() const { return indices.scalar_type() == at::kLong; }
  int64_t offset_at(int64_t i) const {
    return index_is_64bit() ? offsets.data_ptr<int64_t>()[i] : offsets.data_ptr<int32_t>()[i];
  }
};

Layout make_layout(const char* op, const Tensor& indices, const Tensor& offsets, int64_t bags) {
  Layout layout{indices.contiguous(), offsets.contiguous(), indices.numel(), offsets.numel(), bags};
  if (layout.num_offsets > 0 && layout.offset_at(0) != 0) {
    BagErrorReport e;
    e.kind = BagError::kFirstOffsetNotZero;
    e.position = 0;
    e.value = layout.offset_at(0);
    TORCH_CHECK(false, bag_error_message(op, e, layout.num_indices, 0));
  }
  return layout;
}

[[noreturn]] void throw_bag_error(const char* op, BagErrorReport e, const Layout& layout,
                                  const std::vector<Table>& tables) {
  if (e.kind == BagError::kOffsetDecreasing && e.position >= 1) e.previous = layout.offset_at(e.position - 1);
  const bool known_table = e.table >= 0 && e.table < static_cast<int64_t>(tables.size());
  TORCH_CHECK(false, bag_error_message(op, e, layout.num_indices, known_table ? tables[e.table].num_rows : 0));
}

template <typename IT>
struct BagReader {
  const char* op;
  const Layout& layout;
  const std::vector<Table>& tables;
  const IT* indices;
  const IT* offsets;

  BagReader(const char* op_, const Layout& l, const std::vector<Table>& t)
      : op(op_), layout(l), tables(t), indices(l.indices.data_ptr<IT>()), offsets(l.offsets.data_ptr<IT>()) {}

  std::pair<int64_t, int64_t> bounds(int64_t bag) const {
    const int64_t start = offsets[bag];
    const int64_t end = bag + 1 < layout.num_offsets ? static_cast<int64_t>(offsets[bag + 1]) : layout.num_indices;
    BagErrorReport e;
    if (end > layout.num_indices) e = {BagError::kOffsetPastEnd, bag + 1, end, 0};
    else if (end < start || start < 0) e = {BagError::kOffsetDecreasing, bag + 1, end, 0};
    if (e.kind != BagError::kNone) throw_bag_error(op, e, layout, tables);
    return {start, end};
  }
  // The row of lookup i, or -1 for the padding row.
  int64_t row(int64_t i, int64_t t) const {
    const int64_t idx = indices[i];
    // -1 means no padding row, not a row to skip: index -1 is then out of range like any other.
    if (idx == tables[t].padding_idx && idx >= 0) return -1;
    if (static_cast<uint64_t>(idx) >= static_cast<uint64_t>(tables[t].num_rows))
      throw_bag_error(op, {BagError::kIndexOutOfRange, i, idx, t}, layout, tables);
    return idx;
  }
  // Non-padding lookups of a bag.
  int64_t count(int64_t bag, int64_t t) const {
    const auto [start, end] = bounds(bag);
    int64_t n = 0;
    for (int64_t i = start; i < end; ++i) n += row(i, t) >= 0;
    return n;
  }
};

#define MPREC_DISPATCH_INDEX(layout, FN, ...) \
  ((layout).index_is_64bit() ? FN<int64_t>(__VA_ARGS__) : FN<int32_t>(__VA_ARGS__))

// Instantiates FN for the index dtype and the accumulation type (double for float64 tables, else float).
#define MPREC_DISPATCH_INDEX_ACC(layout, is_double, FN, ...)                                              \
  ((layout).index_is_64bit() ? ((is_double) ? FN<int64_t, double>(__VA_ARGS__) : FN<int64_t, float>(__VA_ARGS__)) \
                             : ((is_double) ? FN<int32_t, double>(__VA_ARGS__) : FN<int32_t, float>(__VA_ARGS__)))

// float64 tables: a portable loop accumulating in double. Not a fast path; it gives gradcheck and
// float64 users exact results with the same semantics and checks as the vector kernels.
template <typename IT>
void pool_float64(const char* op, const std::vector<Table>& tables, const Layout& layout, PoolMode mode,
                  const Tensor& psw, Tensor& output, Tensor& max_indices) {
  BagReader<IT> reader(op, layout, tables);
  const int64_t total_dim = output.size(1);
  double* out = output.data_ptr<double>();
  int64_t* mi = max_indices.numel() > 0 ? max_indices.data_ptr<int64_t>() : nullptr;
  const double* psw_ptr = psw.defined() ? psw.data_ptr<double>() : nullptr;
  const int64_t total_bags = static_cast<int64_t>(tables.size()) * layout.bags;
  at::parallel_for(0, total_bags, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> acc;
    for (int64_t bag = begin; bag < end; ++bag) {
      const int64_t t = bag / layout.bags;
      const Table& table = tables[t];
      const double* w = table.weight.data_ptr<double>();
      const int64_t row_out = bag - t * layout.bags;
      double* o = out + row_out * total_dim + table.col;
      int64_t* a = mi ? mi + row_out * total_dim + table.col : nullptr;
      acc.assign(table.dim, mode == PoolMode::kMax ? -std::numeric_limits<double>::infinity() : 0.0);
      if (a) std::fill(a, a + table.dim, -1);
      const auto [start, stop] = reader.bounds(bag);
      int64_t count = 0;
      for (int64_t i = start; i < stop; ++i) {
        const int64_t r = reader.row(i, t);
        if (r < 0) continue;
        ++count;
        const double s = psw_ptr ? psw_ptr[i] : 1.0;
        for (int64_t d = 0; d < table.dim; ++d) {
          const double x = w[r * table.dim + d];
          if (mode != PoolMode::kMax) acc[d] += s * x;
          else if (x > acc[d]) {
            acc[d] = x;
            if (a) a[d] = r;
          }
        }
      }
      for (int64_t d = 0; d < table.dim; ++d) {
        if (count == 0) o[d] = 0.0;
        else o[d] = mode == PoolMode::kMean ? acc[d] / static_cast<double>(count) : acc[d];
      }
    }
  });
}

// Collects the earliest error the threads met, so the message does not depend on the thread count.
struct FirstError {
  std::mutex mutex;
  bool failed = false;
  BagErrorReport report;
  void offer(const BagErrorReport& e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!failed || e.position < report.position) report = e;
    failed = true;
  }
};

// The largest table whose rows the pooling loop does not prefetch from memory (RowPrefetch::kNone; its wide rows are
// prefetched from L2 into L1, see kCachedPrefetchDistance in embedding_bag_pool_impl.h): by default twice this CPU's
// L2 (at least 128 KiB where the system does not say). Such a table stays in the cache after its rows' first reads, and
// each prefetch from memory is then an instruction and a load for nothing. Warm, one thread, B=4096, L=40, on a 2 MiB
// L2: without prefetching, a 64 KiB table (D=16) pooled 20-50% faster and a 1 MiB one 7-20% faster, on the AVX-512 and
// AVX2 kernels. On an AVX-512 EPYC (1 MiB L2, 32 MiB L3; warm, two threads, each setting in its own process, both
// kernel sets), tables of 1 MiB took 14-21% less time so (0.81-0.84x torch's embedding_bag to 0.99-1.07x), of 1.5 and
// 2 MiB 7-16% less (bf16 D=64 of 2 MiB 0.90-0.95x to 1.19x); of 4 MiB about the same (float32 within 3% either way,
// bf16 D=64 0.91x to 1.17-1.19x), of 8 MiB up to 6% slower and of 16 MiB 5-11% slower. Larger tables keep
// prefetching, which hides most of their memory latency.
std::atomic<int64_t>& cached_table_bytes_setting() {
  static std::atomic<int64_t> bytes{[] {
#ifdef _SC_LEVEL2_CACHE_SIZE  // glibc's; elsewhere the floor applies
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
    const long l2 = 0;
#endif
    return std::max<int64_t>(int64_t{128} << 10, l2 > 0 ? 2 * static_cast<int64_t>(l2) : 0);
  }()};
  return bytes;
}

// The largest table whose rows are prefetched row by row rather than in bursts: by default half of the L3 this core
// shares (l3_cache_bytes; 0, bursts on every table, where the system does not say). A bag's burst prefetches its rows
// all at once, dozens of instructions in a row with nothing to wait on when the rows come from L3. With the AVX2
// kernels on an AVX-512 EPYC (32 MiB L3, D=128, B=4096, L=40, the two alternated in one process), tables of 4 to
// 10 MiB took 9-27% less time row by row than in bursts with the caches flushed before each call, and 3-21% less
// warm (float32, bf16, fp16 and int8): in bursts, several had run slower than torch's embedding_bag (0.76-0.99x
// flushed). Tables of 20 MiB took 2-9% less time in bursts flushed, 3-13% less warm, and the far larger ones of
// the bursts' own measurements (kBurstPrefetch in embedding_bag_pool_impl.h) less still.
std::atomic<int64_t>& burst_table_bytes_setting() {
  static std::atomic<int64_t> bytes{l3_cache_bytes() / 2};
  return bytes;
}

// How the rows of larger tables are prefetched (RowPrefetch): only the first lines of a wide slice on Intel, whose
// L2 streamer fetches the rest of a row once its first lines are requested, so that more rows are in flight;
// every line on AMD, whose prefetchers did not, from the distances measured on each kind of EPYC (the
// measurements: embedding_bag_pool_impl.h), which AVX-512 tells apart (the EPYC with it, Zen 4, and the one
// without, Zen 3). A CPU of another vendor gets every line too: it cannot be slower for lack of lines prefetched.
std::atomic<RowPrefetch>& row_prefetch_setting() {
  static std::atomic<RowPrefetch> policy{cpu_vendor() == "intel"              ? RowPrefetch::kLeadingLines
                                         : cpu_vendor() == "amd" && best_supported_isa() != Isa::kAvx512
                                             ? RowPrefetch::kWholeSlicesNear
                                             : RowPrefetch::kWholeSlices};
  return policy;
}

// Bags per parallel task: enough work per task to pay for a thread hand-off (~16K pooled elements).
int64_t bag_grain(const Layout& layout, int64_t total_bags, int64_t total_dim) {
  const int64_t per_bag = std::max<int64_t>(1, layout.num_indices / std::max<int64_t>(1, total_bags)) *
                          std::max<int64_t>(1, total_dim);
  return std::max<int64_t>(1, 16384 / per_bag);
}

// max_indices is [bags, total_dim] in max mode where `return_max_indices`, else [0, 0].
std::tuple<Tensor, Tensor> pool_tables(const char* op, const std::vector<Table>& tables, const Layout& layout,
                                       PoolMode mode, const Tensor& psw, bool return_max_indices) {
  const int64_t num_tables = static_cast<int64_t>(tables.size());
  int64_t total_dim = 0;
  for (const auto& t : tables) total_dim += t.dim;
  const auto in_dtype = tables[0].weight.scalar_type();
  const auto out_dtype = in_dtype == at::kByte ? at::kFloat : in_dtype;
  Tensor output = at::empty({layout.bags, total_dim}, tables[0].weight.options().dtype(out_dtype));
  const bool want_args = mode == PoolMode::kMax && return_max_indices;
  Tensor max_indices = at::empty({want_args ? layout.bags : 0, want_args ? total_dim : 0},
                                 tables[0].weight.options().dtype(at::kLong));
  const int64_t total_bags = num_tables * layout.bags;
  if (total_bags == 0) return {output, max_indices};

  if (tables[0].type == WeightType::kDouble) {
    MPREC_DISPATCH_INDEX(layout, pool_float64, op, tables, layout, mode, psw, output, max_indices);
    return {output, max_indices};
  }
  const PoolFn kernel = pool_kernel(active_isa());
  const float* psw_ptr = psw.defined() ? psw.data_ptr<float>() : nullptr;
  FirstError first_error;
  const auto pool_range = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin / layout.bags; t < num_tables && t * layout.bags < end; ++t) {
      const Table& table = tables[t];
      const int64_t base = t * layout.bags;
      const int64_t b0 = std::max(begin, base);
      const int64_t b1 = std::min(end, base + layout.bags);
      if (b0 >= b1) continue;
      PoolArgs args;
      args.weight = table.weight.data_ptr();
      args.scale_bias = table.scale_bias.defined() ? table.scale_bias.data_ptr<float>() : nullptr;
      args.weight_type = table.type;
      args.num_rows = table.num_rows;
      args.dim = table.dim;
      args.indices = layout.indices.data_ptr();
      args.offsets = layout.offsets.data_ptr();
      args.index_is_64bit = layout.index_is_64bit();
      args.num_indices = layout.num_indices;
      args.num_offsets = layout.num_offsets;
      args.per_sample_weights = psw_ptr;
      args.mode = mode;
      args.padding_idx = table.padding_idx;
      args.output = static_cast<char*>(output.data_ptr()) + table.col * output.element_size();
      args.output_stride = total_dim;
      args.max_indices = want_args ? max_indices.data_ptr<int64_t>() + table.col : nullptr;
      args.max_indices_stride = total_dim;
      const int64_t table_bytes = table.num_rows * table.dim * table.weight.element_size();
      args.prefetch = table_bytes > cached_table_bytes() ? row_prefetch() : RowPrefetch::kNone;
      args.burst = table_bytes > burst_table_bytes();
      // The vector variants hold max-mode row numbers in int32 lanes.
      const bool wide_rows = table.num_rows > std::numeric_limits<int32_t>::max();
      const PoolFn fn = (want_args && wide_rows) ? &scalar::pool : kernel;
      BagErrorReport error;
      if (!fn(args, b0, b1, base, &error)) {
        error.table = t;
        first_error.offer(error);
        return;
      }
    }
  };
  const int64_t grain = bag_grain(layout, total_bags, total_dim);
  const int64_t lookups_per_table = layout.num_indices / std::max<int64_t>(1, num_tables);
  if (num_tables > 1 && lookups_per_table * (total_dim / num_tables) >= (int64_t{1} << 20)) {
    // Large tables: all threads work on one table at a time, as T separate calls would. One contiguous
    // range of the T*B bags per thread puts the threads on different tables, each with its own TLB and
    // page-walk working set; with 8 tables of 512 MB, one table at a time measured 0-5% faster.
    for (int64_t t = 0; t < num_tables; ++t) at::parallel_for(t * layout.bags, (t + 1) * layout.bags, grain, pool_range);
  } else {
    at::parallel_for(0, total_bags, grain, pool_range);
  }
  if (first_error.failed) throw_bag_error(op, first_error.report, layout, tables);
  return {output, max_indices};
}

// --- forward ops -------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> embedding_bag_cpu(const Tensor& weight, const Tensor& indices, const Tensor& offsets,
                                             int64_t mode, const c10::optional<Tensor>& per_sample_weights,
                                             int64_t padding_idx, bool include_last_offset,
                                             const c10::optional<Tensor>& scale_bias, bool /*sparse*/,
                                             bool scale_grad_by_freq, bool return_max_indices) {
  const char* op = kSingleOp;
  check_defined(op, {{"weight", &weight}, {"indices", &indices}, {"offsets", &offsets}});
  const PoolMode pool_mode = checked_mode(op, mode);
  check_scale_grad_by_freq(op, scale_grad_by_freq, pool_mode);
  const Tensor sb = scale_bias.has_value() ? *scale_bias : Tensor();
  const WeightType type = checked_weight(op, weight, &sb, "weight", kCpu);
  check_indices_offsets(op, indices, offsets, kCpu);
  const int64_t bags = single_bags(op, offsets, include_last_offset);
  check_padding_idx(op, padding_idx, weight.size(0), "");
  const Layout layout = make_layout(op, indices, offsets, bags);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(weight), kCpu);
  std::vector<Table> tables{{weight.contiguous(), sb.defined() ? sb.contiguous() : Tensor(), type, weight.size(0),
                             weight.size(1), 0, padding_idx}};
  return pool_tables(op, tables, layout, pool_mode, psw, return_max_indices);
}

std::vector<Table> batched_tables(const char* op, at::TensorList weights, at::IntArrayRef padding_idx,
                                  const c10::optional<at::TensorList>& scale_bias, bool check_weights = true) {
  const std::vector<WeightType> types = check_batched_tables(op, weights, padding_idx, scale_bias, check_weights, kCpu);
  std::vector<Table> tables;
  int64_t col = 0;
  for (const auto t : c10::irange(weights.size())) {
    const Tensor sb = scale_bias.has_value() ? (*scale_bias)[t] : Tensor();
    const int64_t pad = padding_idx.empty() ? -1 : padding_idx[t];
    tables.push_back({weights[t].contiguous(), sb.defined() ? sb.contiguous() : Tensor(), types[t], weights[t].size(0),
                      weights[t].size(1), col, pad});
    col += weights[t].size(1);
  }
  return tables;
}

std::tuple<Tensor, Tensor> batched_embedding_bag_cpu(at::TensorList weights, const Tensor& indices,
                                                     const Tensor& offsets, int64_t mode,
                                                     const c10::optional<Tensor>& per_sample_weights,
                                                     at::IntArrayRef padding_idx,
                                                     const c10::optional<at::TensorList>& scale_bias,
                                                     bool /*sparse*/, bool return_max_indices) {
  const char* op = kBatchedOp;
  check_defined(op, {{"indices", &indices}, {"offsets", &offsets}});
  const PoolMode pool_mode = checked_mode(op, mode);
  const std::vector<Table> tables = batched_tables(op, weights, padding_idx, scale_bias);
  check_indices_offsets(op, indices, offsets, kCpu);
  const Layout layout = make_layout(op, indices, offsets, batched_bags(op, offsets, tables.size()));
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, pool_mode, indices.numel(),
                                                accumulation_dtype(tables[0].weight), kCpu);
  return pool_tables(op, tables, layout, pool_mode, psw, return_max_indices);
}

// --- backward ---------------------------------------------------------------------------------------
// The backward loops need the same bag bounds and index checks as the forward kernels (they can be
// called directly, with inputs the forward never saw), written once here.

// Scale of lookup i's contribution: per_sample_weights for sum, 1/count for mean.
template <typename acc_t>
inline acc_t lookup_scale(PoolMode mode, const acc_t* psw, int64_t i, int64_t count) {
  if (mode == PoolMode::kMean) return count > 0 ? acc_t(1) / static_cast<acc_t>(count) : acc_t(0);
  return psw ? psw[i] : acc_t(1);
}

// Dense weight gradients. Threads own disjoint row ranges and each scans every lookup in order, so no
// two threads write the same row and every row sums its contributions in the same order at any thread
// count: the result is bitwise independent of the number of threads.
template <typename IT, typename acc_t>
std::vector<Tensor> dense_backward(const char* op, const Tensor& grad, const std::vector<Table>& tables,
                                   const Layout& layout, PoolMode mode, const Tensor& psw, const Tensor& max_indices) {
  const Tensor g = grad.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* gp = g.data_ptr<acc_t>();
  const int64_t total_dim = g.size(1);
  const acc_t* psw_ptr = psw.defined() ? psw.data_ptr<acc_t>() : nullptr;
  BagReader<IT> reader(op, layout, tables);
  std::vector<Tensor> grads;
  for (const auto t : c10::irange(tables.size())) {
    const Table& table = tables[t];
    Tensor gw = at::zeros({table.num_rows, table.dim}, g.options());
    acc_t* gwp = gw.data_ptr<acc_t>();
    const int64_t dim = table.dim;
    const int64_t base = static_cast<int64_t>(t) * layout.bags;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t grain = std::max<int64_t>(1, (table.num_rows + threads - 1) / threads);
    if (mode == PoolMode::kMax) {
      const int64_t* mi = max_indices.data_ptr<int64_t>();
      at::parallel_for(0, table.num_rows, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t b = 0; b < layout.bags; ++b) {
          for (int64_t d = 0; d < dim; ++d) {
            const int64_t r = mi[b * total_dim + table.col + d];
            if (r < -1 || r >= table.num_rows) {
              BagErrorReport e;
              e.kind = BagError::kMaxIndexOutOfRange;
              e.position = b;
              e.column = table.col + d;
              e.value = r;
              e.table = static_cast<int64_t>(t);
              throw_bag_error(op, e, layout, tables);
            }
            if (r >= r0 && r < r1) gwp[r * dim + d] += gp[b * total_dim + table.col + d];
          }
        }
      });
    } else {
      at::parallel_for(0, table.num_rows, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t b = 0; b < layout.bags; ++b) {
          const auto [start, end] = reader.bounds(base + b);
          const int64_t count = mode == PoolMode::kMean ? reader.count(base + b, t) : 0;
          const acc_t* grow = gp + b * total_dim + table.col;
          for (int64_t i = start; i < end; ++i) {
            const int64_t r = reader.row(i, t);
            if (r < r0 || r >= r1) continue;
            const acc_t s = lookup_scale(mode, psw_ptr, i, count);
            acc_t* dst = gwp + r * dim;
            for (int64_t d = 0; d < dim; ++d) dst[d] += s * grow[d];
          }
        }
      });
    }
    grads.push_back(gw.to(table.weight.scalar_type()));
  }
  return grads;
}

// Sparse (COO) weight gradients as torch's sparse=True produces them: one row per non-padding lookup,
// uncoalesced. Returned as (row numbers, values) per table; the Python layer builds the sparse tensor.
template <typename IT, typename acc_t>
std::pair<std::vector<Tensor>, std::vector<Tensor>> sparse_backward(const char* op, const Tensor& grad,
                                                                    const std::vector<Table>& tables,
                                                                    const Layout& layout, PoolMode mode,
                                                                    const Tensor& psw) {
  TORCH_CHECK_VALUE(mode != PoolMode::kMax, op, ": sparse gradients are not supported with mode max (as in torch)");
  const Tensor g = grad.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* gp = g.data_ptr<acc_t>();
  const int64_t total_dim = g.size(1);
  const acc_t* psw_ptr = psw.defined() ? psw.data_ptr<acc_t>() : nullptr;
  BagReader<IT> reader(op, layout, tables);
  std::vector<Tensor> rows_out, values_out;
  for (const auto t : c10::irange(tables.size())) {
    const Table& table = tables[t];
    const int64_t base = static_cast<int64_t>(t) * layout.bags;
    std::vector<int64_t> first(layout.bags + 1, 0);
    at::parallel_for(0, layout.bags, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) first[b + 1] = reader.count(base + b, t);
    });
    for (int64_t b = 0; b < layout.bags; ++b) first[b + 1] += first[b];
    Tensor rows = at::empty({first[layout.bags]}, g.options().dtype(at::kLong));
    Tensor values = at::empty({first[layout.bags], table.dim}, g.options());
    int64_t* rp = rows.data_ptr<int64_t>();
    acc_t* vp = values.data_ptr<acc_t>();
    at::parallel_for(0, layout.bags, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [start, end] = reader.bounds(base + b);
        const int64_t count = first[b + 1] - first[b];
        const acc_t* grow = gp + b * total_dim + table.col;
        int64_t out = first[b];
        for (int64_t i = start; i < end; ++i) {
          const int64_t r = reader.row(i, t);
          if (r < 0) continue;
          const acc_t s = lookup_scale(mode, psw_ptr, i, count);
          rp[out] = r;
          for (int64_t d = 0; d < table.dim; ++d) vp[out * table.dim + d] = s * grow[d];
          ++out;
        }
      }
    });
    rows_out.push_back(rows);
    values_out.push_back(values.to(table.weight.scalar_type()));
  }
  return {rows_out, values_out};
}

// d output / d per_sample_weights[i] = <grad[bag(i)], weight[indices[i]]>; 0 for padding lookups and for
// lookups that belong to no bag (after the last offset with include_last_offset).
template <typename IT, typename acc_t>
Tensor per_sample_weights_backward(const char* op, const Tensor& grad, const std::vector<Table>& tables,
                                   const Layout& layout, PoolMode mode) {
  TORCH_CHECK_VALUE(mode == PoolMode::kSum, op, ": per_sample_weights are only supported with mode sum (0)");
  const Tensor g = grad.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* gp = g.data_ptr<acc_t>();
  const int64_t total_dim = g.size(1);
  Tensor out = at::zeros({layout.num_indices}, g.options());
  acc_t* op_ = out.data_ptr<acc_t>();
  BagReader<IT> reader(op, layout, tables);
  for (const auto t : c10::irange(tables.size())) {
    const Table& table = tables[t];
    const int64_t base = static_cast<int64_t>(t) * layout.bags;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.weight.scalar_type(), "psw_backward", [&] {
      const scalar_t* w = table.weight.data_ptr<scalar_t>();
      at::parallel_for(0, layout.bags, 64, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const auto [start, end] = reader.bounds(base + b);
          const acc_t* grow = gp + b * total_dim + table.col;
          for (int64_t i = start; i < end; ++i) {
            const int64_t r = reader.row(i, t);
            if (r < 0) continue;
            acc_t acc = 0;
            for (int64_t d = 0; d < table.dim; ++d) acc += grow[d] * static_cast<acc_t>(w[r * table.dim + d]);
            op_[i] = acc;
          }
        }
      });
    });
  }
  return out;
}

template <typename Call>
bool weight_is_double(const Call& c) {
  return c.tables[0].weight.scalar_type() == at::kDouble;
}

// Argument handling shared by the single-table backward ops.
struct SingleCall {
  std::vector<Table> tables;
  Layout layout;
  PoolMode mode;
};

// The backward ops (and the fused update) take float tables only: a quantized table has no gradient.
void check_backward_weight(const char* op, const std::string& name, const Tensor& weight) {
  const auto dt = weight.scalar_type();
  TORCH_CHECK_VALUE(dt != at::kByte, op, ": ", name,
                    " is uint8 (row-wise quantized): quantized tables are inference only");
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                    op, ": ", name, " has dtype ", dt, "; expected float32, float64, float16 or bfloat16");
}

SingleCall single_call(const char* op, const Tensor& weight, const Tensor& indices, const Tensor& offsets,
                       int64_t mode, int64_t padding_idx, bool include_last_offset) {
  const PoolMode pool_mode = checked_mode(op, mode);
  check_indices_offsets(op, indices, offsets, kCpu);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D, got shape ", weight.sizes());
  check_backward_weight(op, "weight", weight);
  const int64_t bags = single_bags(op, offsets, include_last_offset);
  check_padding_idx(op, padding_idx, weight.size(0), "");
  const WeightType type = float_weight_type(weight.scalar_type());
  return {{{weight.contiguous(), Tensor(), type, weight.size(0), weight.size(1), 0, padding_idx}},
          make_layout(op, indices, offsets, bags),
          pool_mode};
}

Tensor embedding_bag_backward_cpu(const Tensor& grad, const Tensor& weight, const Tensor& indices,
                                  const Tensor& offsets, const Tensor& max_indices, int64_t mode,
                                  const c10::optional<Tensor>& per_sample_weights, int64_t padding_idx,
                                  bool include_last_offset) {
  const char* op = "mprec::embedding_bag_backward";
  check_defined(op, {{"grad", &grad}, {"weight", &weight}, {"indices", &indices}, {"offsets", &offsets},
                     {"max_indices", &max_indices}});
  SingleCall c = single_call(op, weight, indices, offsets, mode, padding_idx, include_last_offset);
  check_grad(op, grad, c.layout.bags, weight.size(1), kCpu);
  check_max_indices(op, max_indices, grad, c.mode, kCpu);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, c.mode, indices.numel(),
                                                accumulation_dtype(c.tables[0].weight), kCpu);
  const Tensor mi = c.mode == PoolMode::kMax ? max_indices.contiguous() : max_indices;
  return MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), dense_backward, op, grad, c.tables, c.layout, c.mode, psw, mi)[0];
}

std::tuple<Tensor, Tensor> embedding_bag_sparse_backward_cpu(const Tensor& grad, const Tensor& weight,
                                                             const Tensor& indices, const Tensor& offsets,
                                                             int64_t mode,
                                                             const c10::optional<Tensor>& per_sample_weights,
                                                             int64_t padding_idx, bool include_last_offset) {
  const char* op = "mprec::embedding_bag_sparse_backward";
  check_defined(op, {{"grad", &grad}, {"weight", &weight}, {"indices", &indices}, {"offsets", &offsets}});
  SingleCall c = single_call(op, weight, indices, offsets, mode, padding_idx, include_last_offset);
  check_grad(op, grad, c.layout.bags, weight.size(1), kCpu);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, c.mode, indices.numel(),
                                                accumulation_dtype(c.tables[0].weight), kCpu);
  auto [rows, values] = MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), sparse_backward, op, grad, c.tables, c.layout, c.mode, psw);
  return {rows[0], values[0]};
}

Tensor embedding_bag_per_sample_weights_backward_cpu(const Tensor& grad, const Tensor& weight,
                                                     const Tensor& indices, const Tensor& offsets, int64_t mode,
                                                     int64_t padding_idx, bool include_last_offset) {
  const char* op = "mprec::embedding_bag_per_sample_weights_backward";
  check_defined(op, {{"grad", &grad}, {"weight", &weight}, {"indices", &indices}, {"offsets", &offsets}});
  SingleCall c = single_call(op, weight, indices, offsets, mode, padding_idx, include_last_offset);
  check_grad(op, grad, c.layout.bags, weight.size(1), kCpu);
  return MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), per_sample_weights_backward, op, grad, c.tables, c.layout, c.mode);
}

struct BatchedCall {
  std::vector<Table> tables;
  Layout layout;
  PoolMode mode;
  int64_t total_dim;
};

BatchedCall batched_call(const char* op, at::TensorList weights, const Tensor& indices, const Tensor& offsets,
                         int64_t mode, at::IntArrayRef padding_idx) {
  const PoolMode pool_mode = checked_mode(op, mode);
  for (const auto t : c10::irange(weights.size())) {
    TORCH_CHECK_VALUE(weights[t].dim() == 2, op, ": weights[", t, "] must be 2-D, got shape ", weights[t].sizes());
    check_backward_weight(op, "weights[" + std::to_string(t) + "]", weights[t]);
  }
  std::vector<Table> tables = batched_tables(op, weights, padding_idx, c10::nullopt, false);
  check_indices_offsets(op, indices, offsets, kCpu);
  Layout layout = make_layout(op, indices, offsets, batched_bags(op, offsets, tables.size()));
  int64_t total_dim = 0;
  for (auto& t : tables) {
    total_dim += t.dim;
    t.type = float_weight_type(t.weight.scalar_type());
  }
  return {std::move(tables), std::move(layout), pool_mode, total_dim};
}

std::vector<Tensor> batched_embedding_bag_backward_cpu(const Tensor& grad, at::TensorList weights,
                                                       const Tensor& indices, const Tensor& offsets,
                                                       const Tensor& max_indices, int64_t mode,
                                                       const c10::optional<Tensor>& per_sample_weights,
                                                       at::IntArrayRef padding_idx) {
  const char* op = "mprec::batched_embedding_bag_backward";
  check_defined(op, {{"grad", &grad}, {"indices", &indices}, {"offsets", &offsets}, {"max_indices", &max_indices}});
  BatchedCall c = batched_call(op, weights, indices, offsets, mode, padding_idx);
  check_grad(op, grad, c.layout.bags, c.total_dim, kCpu);
  check_max_indices(op, max_indices, grad, c.mode, kCpu);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, c.mode, indices.numel(),
                                                accumulation_dtype(c.tables[0].weight), kCpu);
  const Tensor mi = c.mode == PoolMode::kMax ? max_indices.contiguous() : max_indices;
  return MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), dense_backward, op, grad, c.tables, c.layout, c.mode, psw, mi);
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>> batched_embedding_bag_sparse_backward_cpu(
    const Tensor& grad, at::TensorList weights, const Tensor& indices, const Tensor& offsets, int64_t mode,
    const c10::optional<Tensor>& per_sample_weights, at::IntArrayRef padding_idx) {
  const char* op = "mprec::batched_embedding_bag_sparse_backward";
  check_defined(op, {{"grad", &grad}, {"indices", &indices}, {"offsets", &offsets}});
  BatchedCall c = batched_call(op, weights, indices, offsets, mode, padding_idx);
  check_grad(op, grad, c.layout.bags, c.total_dim, kCpu);
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, c.mode, indices.numel(),
                                                accumulation_dtype(c.tables[0].weight), kCpu);
  auto [rows, values] = MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), sparse_backward, op, grad, c.tables, c.layout, c.mode, psw);
  return {rows, values};
}

Tensor batched_embedding_bag_per_sample_weights_backward_cpu(const Tensor& grad, at::TensorList weights,
                                                             const Tensor& indices, const Tensor& offsets,
                                                             int64_t mode, at::IntArrayRef padding_idx) {
  const char* op = "mprec::batched_embedding_bag_per_sample_weights_backward";
  check_defined(op, {{"grad", &grad}, {"indices", &indices}, {"offsets", &offsets}});
  BatchedCall c = batched_call(op, weights, indices, offsets, mode, padding_idx);
  check_grad(op, grad, c.layout.bags, c.total_dim, kCpu);
  return MPREC_DISPATCH_INDEX_ACC(c.layout, weight_is_double(c), per_sample_weights_backward, op, grad, c.tables, c.layout, c.mode);
}

// --- row-wise int8 quantization ---------------------------------------------------------------------
// Per row: bias = min, scale = (max - min) / 255, q = round((x - bias) / scale) (ties to even), as
// FBGEMM's 8-bit row-wise format, with scale and bias kept in a separate float32 [rows, 2] tensor.

std::tuple<Tensor, Tensor> quantize_rowwise_int8_cpu(const Tensor& weight) {
  const char* op = "mprec::quantize_rowwise_int8";
  check_defined(op, {{"weight", &weight}});
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(weight.scalar_type()), op, ": weight must be floating point, got ",
                    weight.scalar_type());
  const Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t rows = w.size(0), dim = w.size(1);
  Tensor q = at::empty({rows, dim}, w.options().dtype(at::kByte));
  Tensor sb = at::empty({rows, 2}, w.options());
  const float* wp = w.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sbp = sb.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = wp + r * dim;
      float lo = dim > 0 ? x[0] : 0.f, hi = lo;
      for (int64_t d = 0; d < dim; ++d) {
        TORCH_CHECK(std::isfinite(x[d]), op, ": weight[", r, ", ", d, "] = ", x[d], " is not finite");
        lo = std::min(lo, x[d]);
        hi = std::max(hi, x[d]);
      }
      const float scale = (hi - lo) / 255.f;
      for (int64_t d = 0; d < dim; ++d) {
        const float v = scale > 0.f ? std::nearbyint((x[d] - lo) / scale) : 0.f;
        qp[r * dim + d] = static_cast<uint8_t>(std::min(255.f, std::max(0.f, v)));
      }
      sbp[2 * r] = scale;
      sbp[2 * r + 1] = lo;
    }
  });
  return {q, sb};
}

Tensor dequantize_rowwise_int8_cpu(const Tensor& qweight, const Tensor& scale_bias) {
  const char* op = "mprec::dequantize_rowwise_int8";
  check_defined(op, {{"qweight", &qweight}, {"scale_bias", &scale_bias}});
  TORCH_CHECK_VALUE(qweight.dim() == 2 && qweight.scalar_type() == at::kByte, op,
                    ": qweight must be a 2-D uint8 tensor, got ", qweight.scalar_type(), " ", qweight.sizes());
  TORCH_CHECK_VALUE(scale_bias.scalar_type() == at::kFloat && scale_bias.dim() == 2 &&
                        scale_bias.size(0) == qweight.size(0) && scale_bias.size(1) == 2,
                    op, ": scale_bias must be float32 [", qweight.size(0), ", 2], got ", scale_bias.scalar_type(),
                    " ", scale_bias.sizes());
  return at::addcmul(scale_bias.select(1, 1).unsqueeze(1), qweight.to(at::kFloat), scale_bias.select(1, 0).unsqueeze(1));
}

}  // namespace

int64_t cached_table_bytes() { return cached_table_bytes_setting().load(std::memory_order_relaxed); }
int64_t set_cached_table_bytes(int64_t bytes) { return cached_table_bytes_setting().exchange(bytes); }
int64_t burst_table_bytes() { return burst_table_bytes_setting().load(std::memory_order_relaxed); }
int64_t set_burst_table_bytes(int64_t bytes) { return burst_table_bytes_setting().exchange(bytes); }
RowPrefetch row_prefetch() { return row_prefetch_setting().load(std::memory_order_relaxed); }
RowPrefetch set_row_prefetch(RowPrefetch policy) { return row_prefetch_setting().exchange(policy); }

// --- fused optimizers -----------------------------------------------------------------------------------
// Backward and optimizer step in one pass, as FBGEMM's TBE trains: no [rows, D] gradient exists. SGD on
// float32 / float64 tables applies each lookup's contribution to its row in lookup order (sgd_in_lookup_order).
// Otherwise each table's lookups are grouped by row (hashing, then a stable counting sort, O(lookups)); each
// distinct row sums its contributions in lookup order and is updated once. Either way a row is updated by one
// thread, in lookup order, so the result does not depend on the thread count.
//   sgd:              w[r] -= lr * g[r]
//   rowwise_adagrad:  s[r] += mean_d(g[r]^2);  w[r] -= lr * g[r] / (sqrt(s[r]) + eps)   (FBGEMM's row-wise
//                     Adagrad: one accumulator per row)
enum class FusedOptimizer { kSgd, kRowwiseAdagrad };

FusedOptimizer checked_optimizer(const char* op, const std::string& name) {
  if (name == "sgd") return FusedOptimizer::kSgd;
  if (name == "rowwise_adagrad") return FusedOptimizer::kRowwiseAdagrad;
  TORCH_CHECK_VALUE(false, op, ": optimizer must be 'sgd' or 'rowwise_adagrad', got '", name, "'");
}

// One table's lookups grouped by row: lookups order[first[k]..first[k + 1]) (in lookup order) are row
// rows[k]'s, groups numbered by first appearance.
template <typename acc_t>
struct RowGroups {
  std::vector<int64_t> rows, first, order, bags;
  std::vector<acc_t> scales;
};

// Lookups of table t (row, bag, scale), validated, and grouped by row: hashing, then a stable counting sort.
template <typename IT, typename acc_t>
RowGroups<acc_t> group_lookups(const BagReader<IT>& reader, const Layout& layout, PoolMode mode, const acc_t* psw,
                               int64_t t) {
  RowGroups<acc_t> out;
  std::vector<int64_t> lookup_rows;
  const int64_t base = t * layout.bags;
  for (int64_t b = 0; b < layout.bags; ++b) {
    const auto [start, end] = reader.bounds(base + b);
    const int64_t count = mode == PoolMode::kMean ? reader.count(base + b, t) : 0;
    for (int64_t i = start; i < end; ++i) {
      const int64_t r = reader.row(i, t);
      if (r < 0) continue;
      lookup_rows.push_back(r);
      out.bags.push_back(b);
      out.scales.push_back(lookup_scale(mode, psw, i, count));
    }
  }
  const int64_t n = static_cast<int64_t>(lookup_rows.size());
  if (n == 0) {
    out.first.assign(1, 0);
    return out;
  }
  int64_t capacity = 2;
  while (capacity < 2 * n) capacity *= 2;
  int shift = 64;
  for (int64_t c = capacity; c > 1; c >>= 1) --shift;
  std::vector<int64_t> slot_group(capacity, -1), group_of(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = lookup_rows[i];
    int64_t s = static_cast<int64_t>((static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ULL) >> shift);
    while (slot_group[s] >= 0 && out.rows[slot_group[s]] != r) s = (s + 1) & (capacity - 1);
    if (slot_group[s] < 0) {
      slot_group[s] = static_cast<int64_t>(out.rows.size());
      out.rows.push_back(r);
    }
    group_of[i] = slot_group[s];
  }
  const int64_t groups = static_cast<int64_t>(out.rows.size());
  out.first.assign(groups + 1, 0);
  out.order.resize(n);
  for (int64_t i = 0; i < n; ++i) ++out.first[group_of[i] + 1];
  for (int64_t k = 0; k < groups; ++k) out.first[k + 1] += out.first[k];
  std::vector<int64_t> fill(out.first.begin(), out.first.end() - 1);
  for (int64_t i = 0; i < n; ++i) out.order[fill[group_of[i]]++] = i;
  return out;
}

// Lookups ahead whose weight rows sgd_in_lookup_order prefetches (for writing): as in the pooling loop, the rows
// are random lines of tables far larger than the caches.
constexpr int64_t kSgdPrefetchLookups = 16;

// Every lookup of table t checked (offsets and rows), as group_lookups checks them, before any row changes.
template <typename IT>
void check_lookups(const BagReader<IT>& reader, const Layout& layout, int64_t t) {
  const int64_t base = t * layout.bags;
  for (int64_t b = 0; b < layout.bags; ++b) {
    const auto [start, end] = reader.bounds(base + b);
    for (int64_t i = start; i < end; ++i) reader.row(i, t);
  }
}

// SGD on a float32 or float64 table, rows r0..r1 (checked lookups): the step is linear in the gradient, so each
// lookup's contribution goes to its row in lookup order, w[r] -= lr * scale * g[bag], with no grouping by row:
// the same sum as one update per row of the summed contributions, rounded after each term. Grouping (hashing
// and sorting every lookup) took about as long as the updates themselves.
template <typename IT, typename acc_t>
void sgd_in_lookup_order(const BagReader<IT>& reader, const Layout& layout, PoolMode mode, const acc_t* psw,
                         const acc_t* gp, int64_t total_dim, const Table& table, int64_t t, acc_t lr, int64_t r0,
                         int64_t r1) {
  acc_t* w = table.weight.data_ptr<acc_t>();
  const int64_t dim = table.dim;
  const int64_t base = t * layout.bags;
  const int64_t last = layout.bags ? reader.bounds(base + layout.bags - 1).second : 0;
  const uintptr_t rows = reinterpret_cast<uintptr_t>(w);
  const uintptr_t row_bytes = static_cast<uintptr_t>(dim) * sizeof(acc_t);
  const int64_t lines = std::min<int64_t>((dim * static_cast<int64_t>(sizeof(acc_t)) + 63) / 64, 4);
  for (int64_t b = 0; b < layout.bags; ++b) {
    const auto [start, end] = reader.bounds(base + b);
    const int64_t count = mode == PoolMode::kMean ? reader.count(base + b, t) : 0;
    const acc_t* grow = gp + b * total_dim + table.col;
    for (int64_t i = start; i < end; ++i) {
      if (i + kSgdPrefetchLookups < last) {
        // An unchecked address: a prefetch never faults, and the lookup is checked when its turn comes.
        const char* ahead = reinterpret_cast<const char*>(
            rows + static_cast<uintptr_t>(reader.indices[i + kSgdPrefetchLookups]) * row_bytes);
        for (int64_t line = 0; line < lines; ++line) __builtin_prefetch(ahead + 64 * line, 1, 3);
      }
      const int64_t r = reader.row(i, t);
      if (r < r0 || r >= r1) continue;  // the padding row (-1) or another thread's
      const acc_t step = lr * lookup_scale(mode, psw, i, count);
      acc_t* row = w + r * dim;
      for (int64_t d = 0; d < dim; ++d) row[d] -= step * grow[d];
    }
  }
}

// Groups ahead whose weight rows are prefetched while a group is summed: the rows are random lines of
// tables far larger than the caches, and without it every update waits on a miss.
constexpr int64_t kUpdatePrefetchGroups = 8;
constexpr int64_t kUpdatePrefetchBytes = 256;

template <typename IT, typename acc_t>
void fused_update(const char* op, const Tensor& grad, const std::vector<Table>& tables, const Layout& layout,
                  PoolMode mode, const Tensor& psw, FusedOptimizer optimizer, at::TensorList state, double lr,
                  double eps) {
  const Tensor g = grad.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* gp = g.data_ptr<acc_t>();
  const int64_t total_dim = g.size(1);
  const acc_t* psw_ptr = psw.defined() ? psw.data_ptr<acc_t>() : nullptr;
  BagReader<IT> reader(op, layout, tables);
  const int64_t num_tables = static_cast<int64_t>(tables.size());
  // SGD on float32 / float64 tables applies each lookup in turn (sgd_in_lookup_order); the other cases group the
  // lookups by row, so that each row is updated once (one rounding of a bf16 / fp16 row, one accumulator step of
  // row-wise Adagrad).
  bool in_lookup_order = optimizer == FusedOptimizer::kSgd;
  for (const Table& table : tables) in_lookup_order = in_lookup_order && table.weight.scalar_type() == g.scalar_type();
  // Every table's lookups, validated (and grouped) with tables in parallel before any row changes, so a bad
  // index or offset leaves every table as it was. The error reported is the first table's with one, as
  // a serial pass would find.
  std::vector<RowGroups<acc_t>> grouped(num_tables);
  std::vector<std::exception_ptr> errors(num_tables);
  at::parallel_for(0, num_tables, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      try {
        if (in_lookup_order) check_lookups<IT>(reader, layout, t);
        else grouped[t] = group_lookups<IT, acc_t>(reader, layout, mode, psw_ptr, t);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    }
  });
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  // With many tables (DLRM's 26) each thread takes whole tables; with few, the rows of one table are split
  // over threads. Either way a row is updated by one thread, taking its lookups in lookup order, so the
  // result does not depend on the thread count.
  const bool split_tables = num_tables >= 2 * at::get_num_threads();
  if (in_lookup_order) {
    const acc_t step = static_cast<acc_t>(lr);
    if (split_tables) {
      at::parallel_for(0, num_tables, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          sgd_in_lookup_order<IT, acc_t>(reader, layout, mode, psw_ptr, gp, total_dim, tables[t], t, step, 0,
                                         tables[t].num_rows);
      });
    } else {
      // Each thread owns a range of the table's rows and scans every lookup.
      for (int64_t t = 0; t < num_tables; ++t) {
        const int64_t threads = at::get_num_threads();
        const int64_t rows = tables[t].num_rows;
        at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p)
            sgd_in_lookup_order<IT, acc_t>(reader, layout, mode, psw_ptr, gp, total_dim, tables[t], t, step,
                                           rows * p / threads, rows * (p + 1) / threads);
        });
      }
    }
    return;
  }
  auto update_table = [&](int64_t t) {
    const Table& table = tables[t];
    const RowGroups<acc_t>& rg = grouped[t];
    const int64_t groups = static_cast<int64_t>(rg.rows.size());
    if (groups == 0) return;
    const int64_t dim = table.dim;
    Tensor weight = table.weight;  // contiguous: the caller's tensor itself (checked)
    acc_t* momentum = optimizer == FusedOptimizer::kRowwiseAdagrad ? state[t].data_ptr<acc_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "fused_update", [&] {
      scalar_t* w = weight.data_ptr<scalar_t>();
      const int64_t row_bytes = std::min<int64_t>(dim * static_cast<int64_t>(sizeof(scalar_t)), kUpdatePrefetchBytes);
      auto update_rows = [&](int64_t k0, int64_t k1) {
        std::vector<acc_t> sum(dim);
        for (int64_t k = k0; k < k1; ++k) {
          if (k + kUpdatePrefetchGroups < k1) {
            const char* ahead = reinterpret_cast<const char*>(w + rg.rows[k + kUpdatePrefetchGroups] * dim);
            for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(ahead + b, 1, 3);
            if (momentum) __builtin_prefetch(momentum + rg.rows[k + kUpdatePrefetchGroups], 1, 3);
          }
          std::fill(sum.begin(), sum.end(), acc_t(0));
          for (int64_t j = rg.first[k]; j < rg.first[k + 1]; ++j) {
            const int64_t i = rg.order[j];
            const acc_t* grow = gp + rg.bags[i] * total_dim + table.col;
            const acc_t s = rg.scales[i];
            for (int64_t d = 0; d < dim; ++d) sum[d] += s * grow[d];
          }
          scalar_t* row = w + rg.rows[k] * dim;
          acc_t step = static_cast<acc_t>(lr);
          if (momentum) {
            acc_t squares = 0;
            for (int64_t d = 0; d < dim; ++d) squares += sum[d] * sum[d];
            acc_t& m = momentum[rg.rows[k]];
            m += squares / static_cast<acc_t>(dim);
            step = static_cast<acc_t>(lr) / (std::sqrt(m) + static_cast<acc_t>(eps));
          }
          for (int64_t d = 0; d < dim; ++d) {
            row[d] = static_cast<scalar_t>(static_cast<acc_t>(row[d]) - step * sum[d]);
          }
        }
      };
      if (split_tables) {
        update_rows(0, groups);
      } else {
        at::parallel_for(0, groups, 64, update_rows);
      }
    });
  };
  if (split_tables) {
    at::parallel_for(0, num_tables, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) update_table(t);
    });
  } else {
    for (int64_t t = 0; t < num_tables; ++t) update_table(t);
  }
}

void batched_embedding_bag_update_cpu(at::TensorList weights, at::TensorList state, const Tensor& grad,
                                      const Tensor& indices, const Tensor& offsets, int64_t mode,
                                      const c10::optional<Tensor>& per_sample_weights, at::IntArrayRef padding_idx,
                                      c10::string_view optimizer_name, double lr, double eps) {
  const char* op = "mprec::batched_embedding_bag_update";
  check_defined(op, {{"grad", &grad}, {"indices", &indices}, {"offsets", &offsets}});
  const FusedOptimizer optimizer = checked_optimizer(op, std::string(optimizer_name));
  BatchedCall c = batched_call(op, weights, indices, offsets, mode, padding_idx);
  TORCH_CHECK_VALUE(c.mode != PoolMode::kMax, op, ": fused optimizers support mode sum (0) and mean (1), got max (2)");
  check_grad(op, grad, c.layout.bags, c.total_dim, kCpu);
  for (const auto t : c10::irange(weights.size())) {
    TORCH_CHECK_VALUE(weights[t].is_contiguous(), op, ": weights[", t, "] must be contiguous (it is updated in place)");
  }
  TORCH_CHECK_VALUE(lr >= 0 && std::isfinite(lr), op, ": lr must be finite and >= 0, got ", lr);
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be > 0, got ", eps);
  const at::ScalarType acc = accumulation_dtype(c.tables[0].weight);
  if (optimizer == FusedOptimizer::kRowwiseAdagrad) {
    TORCH_CHECK_VALUE(state.size() == weights.size(), op, ": rowwise_adagrad needs one state tensor per table (",
                      weights.size(), "), got ", state.size());
    for (const auto t : c10::irange(state.size())) {
      TORCH_CHECK_VALUE(state[t].dim() == 1 && state[t].size(0) == weights[t].size(0) &&
                            state[t].scalar_type() == acc && state[t].is_contiguous(),
                        op, ": state[", t, "] must be a contiguous ", acc, " tensor of ", weights[t].size(0),
                        " entries (one per row), got ", state[t].scalar_type(), " ", state[t].sizes());
    }
  } else {
    TORCH_CHECK_VALUE(state.empty(), op, ": sgd takes no state, got ", state.size(), " tensors");
  }
  const Tensor psw = checked_per_sample_weights(op, per_sample_weights, c.mode, indices.numel(), acc, kCpu);
  if (acc == at::kDouble) {
    c.layout.index_is_64bit()
        ? fused_update<int64_t, double>(op, grad, c.tables, c.layout, c.mode, psw, optimizer, state, lr, eps)
        : fused_update<int32_t, double>(op, grad, c.tables, c.layout, c.mode, psw, optimizer, state, lr, eps);
  } else {
    c.layout.index_is_64bit()
        ? fused_update<int64_t, float>(op, grad, c.tables, c.layout, c.mode, psw, optimizer, state, lr, eps)
        : fused_update<int32_t, float>(op, grad, c.tables, c.layout, c.mode, psw, optimizer, state, lr, eps);
  }
}

TORCH_LIBRARY_IMPL(mprec, CPU, m) {
  m.impl("embedding_bag", &embedding_bag_cpu);
  m.impl("embedding_bag_backward", &embedding_bag_backward_cpu);
  m.impl("embedding_bag_sparse_backward", &embedding_bag_sparse_backward_cpu);
  m.impl("embedding_bag_per_sample_weights_backward", &embedding_bag_per_sample_weights_backward_cpu);
  m.impl("batched_embedding_bag", &batched_embedding_bag_cpu);
  m.impl("batched_embedding_bag_backward", &batched_embedding_bag_backward_cpu);
  m.impl("batched_embedding_bag_sparse_backward", &batched_embedding_bag_sparse_backward_cpu);
  m.impl("batched_embedding_bag_per_sample_weights_backward", &batched_embedding_bag_per_sample_weights_backward_cpu);
  m.impl("batched_embedding_bag_update", &batched_embedding_bag_update_cpu);
  m.impl("quantize_rowwise_int8", &quantize_rowwise_int8_cpu);
  m.impl("dequantize_rowwise_int8", &dequantize_rowwise_int8_cpu);
}

}  // namespace cpu
}  // namespace mprec
