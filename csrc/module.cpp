// The Python module mprec._C. Loading it registers every op (registration.cpp and the kernels'
// TORCH_LIBRARY_IMPL blocks); the pybind functions below are only the helpers that are not ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>

#include <string>
#include <utility>

#include "mprec/gather_probe.h"
#include "mprec/isa.h"

#ifndef MPREC_TORCH_VERSION
#define MPREC_TORCH_VERSION "unknown"
#endif
#ifndef MPREC_COMPILER
#define MPREC_COMPILER "unknown"
#endif

namespace py = pybind11;

// The names of the row prefetch policies a caller can choose (RowPrefetch::kNone is not one), both ways.
static const std::pair<const char*, mprec::cpu::RowPrefetch> kRowPrefetchNames[] = {
    {"leading_lines", mprec::cpu::RowPrefetch::kLeadingLines},
    {"whole_slices", mprec::cpu::RowPrefetch::kWholeSlices},
    {"whole_slices_near", mprec::cpu::RowPrefetch::kWholeSlicesNear}};

static std::string row_prefetch_name(mprec::cpu::RowPrefetch policy) {
  for (const auto& [name, value] : kRowPrefetchNames)
    if (value == policy) return name;
  return "none";
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mprec compiled extension: op registrations and CPU feature helpers";
  m.def("cpu_isa", [] { return mprec::cpu::isa_name(mprec::cpu::active_isa()); },
        "The CPU kernel variant in use: 'avx512', 'avx2' or 'scalar'.");
  m.def("set_cpu_isa", &mprec::cpu::set_active_isa, py::arg("name"),
        "Force a CPU kernel variant for this process (overrides MPREC_CPU_ISA).");
  m.def("supported_cpu_isas", &mprec::cpu::supported_isa_names,
        "CPU kernel variants this CPU and build can run, best first.");
  m.def("build_info", [] {
    py::dict info;
    info["torch_version"] = MPREC_TORCH_VERSION;
    info["compiler"] = MPREC_COMPILER;
    info["x86_kernels"] = static_cast<bool>(MPREC_HAVE_X86);
    info["cuda"] = static_cast<bool>(MPREC_WITH_CUDA);
    info["parallel"] = at::get_parallel_info();
    return info;
  });
  // Raw pointers: this module does not link torch's Python bindings. mprec.benchmark.gather_limit checks the
  // tensors and keeps them alive.
  m.def("gather_probe", [](uintptr_t table, int64_t row_bytes, uintptr_t indices, int64_t count, int64_t distance,
                           int64_t prefetch_lines, bool into_l2) {
    py::gil_scoped_release release;
    return mprec::cpu::gather_probe(reinterpret_cast<const void*>(table), row_bytes,
                                    reinterpret_cast<const int64_t*>(indices), count, distance, prefetch_lines,
                                    into_l2);
  }, "The random-row gather probe of mprec.benchmark.gather_limit.");
  m.def("cached_table_bytes", &mprec::cpu::cached_table_bytes,
        "Tables of at most this many bytes are pooled without prefetching their rows.");
  m.def("set_cached_table_bytes", [](int64_t bytes) {
    if (bytes < 0) throw py::value_error("set_cached_table_bytes: bytes must be >= 0, got " + std::to_string(bytes));
    return mprec::cpu::set_cached_table_bytes(bytes);
  }, py::arg("bytes"), "Sets cached_table_bytes for this process; returns the previous value.");
  m.def("burst_table_bytes", &mprec::cpu::burst_table_bytes,
        "Tables of at most this many bytes have their rows prefetched row by row; larger ones may have each bag's "
        "rows prefetched in one burst as the bag starts.");
  m.def("set_burst_table_bytes", [](int64_t bytes) {
    if (bytes < 0) throw py::value_error("set_burst_table_bytes: bytes must be >= 0, got " + std::to_string(bytes));
    return mprec::cpu::set_burst_table_bytes(bytes);
  }, py::arg("bytes"), "Sets burst_table_bytes for this process; returns the previous value.");
  m.def("cpu_vendor", &mprec::cpu::cpu_vendor, "The CPU's vendor: 'intel', 'amd' or 'other'.");
  m.def("row_prefetch", [] { return row_prefetch_name(mprec::cpu::row_prefetch()); },
        "How the pooling loop prefetches the rows of tables larger than cached_table_bytes: 'leading_lines' (the "
        "first lines of a wide slice), 'whole_slices' (every line, from further ahead the narrower the slice) or "
        "'whole_slices_near' (every line, from the same distance at every width); the default follows the CPU (see "
        "csrc/include/mprec/embedding_bag_kernel.h).");
  m.def("set_row_prefetch", [](const std::string& name) {
    for (const auto& [known, policy] : kRowPrefetchNames)
      if (name == known) return row_prefetch_name(mprec::cpu::set_row_prefetch(policy));
    throw py::value_error("set_row_prefetch: expected 'leading_lines', 'whole_slices' or 'whole_slices_near', got '" +
                          name + "'");
  }, py::arg("name"), "Sets row_prefetch for this process; returns the previous setting.");
}
