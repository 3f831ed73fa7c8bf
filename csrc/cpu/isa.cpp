#include "mprec/isa.h"

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace mprec {
namespace cpu {
namespace {

bool cpu_supports(Isa isa) {
#if MPREC_HAVE_X86
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::kScalar:
      return true;
  }
  return false;
#else
  return isa == Isa::kScalar;
#endif
}

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "scalar") return Isa::kScalar;
  throw std::invalid_argument("mprec: unknown CPU ISA '" + name + "'; expected one of avx512, avx2, scalar");
}

Isa checked(Isa isa, const std::string& source) {
  if (!cpu_supports(isa)) {
    throw std::runtime_error("mprec: " + source + " asks for the " + isa_name(isa) +
                             " kernels, but this CPU (or this build) does not support them; supported: " +
                             [] {
                               std::string s;
                               for (const auto& n : supported_isa_names()) s += (s.empty() ? "" : ", ") + n;
                               return s;
                             }());
  }
  return isa;
}

Isa initial_isa() {
  const char* env = std::getenv("MPREC_CPU_ISA");
  if (env != nullptr && env[0] != '\0') return checked(parse_isa(env), std::string("MPREC_CPU_ISA=") + env);
  return best_supported_isa();
}

std::atomic<int> g_forced{-1};

}  // namespace

Isa best_supported_isa() {
  if (cpu_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_supports(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa active_isa() {
  const int forced = g_forced.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  static const Isa from_environment = initial_isa();
  return from_environment;
}

void set_active_isa(const std::string& name) {
  g_forced.store(static_cast<int>(checked(parse_isa(name), "set_cpu_isa('" + name + "')")));
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: return "scalar";
  }
  return "unknown";
}

std::string cpu_vendor() {
#if MPREC_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) return "intel";
  if (__builtin_cpu_is("amd")) return "amd";
#endif
  return "other";
}

int64_t l3_cache_bytes() {
  // cpu0's caches: index<k>/level and index<k>/size, such as "32768K".
  for (int k = 0; k < 8; ++k) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(k) + "/";
    std::ifstream level_file(dir + "level");
    int level = 0;
    if (!(level_file >> level)) break;
    if (level != 3) continue;
    std::ifstream size_file(dir + "size");
    int64_t size = 0;
    std::string unit;
    if (!(size_file >> size) || size <= 0) return 0;
    size_file >> unit;
    return unit == "K" ? size << 10 : unit == "M" ? size << 20 : unit.empty() ? size : 0;
  }
  return 0;
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> names;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar})
    if (cpu_supports(isa)) names.push_back(isa_name(isa));
  return names;
}

PoolFn pool_kernel(Isa isa) {
  switch (isa) {
#if MPREC_HAVE_X86
    case Isa::kAvx512: return &avx512::pool;
    case Isa::kAvx2: return &avx2::pool;
#endif
    default: return &scalar::pool;
  }
}

DheEncodeFn dhe_encode_kernel(Isa isa) {
  switch (isa) {
#if MPREC_HAVE_X86
    case Isa::kAvx512: return &avx512::dhe_encode;
    case Isa::kAvx2: return &avx2::dhe_encode;
#endif
    default: return &scalar::dhe_encode;
  }
}

InteractionKernels interaction_kernels(Isa isa) {
  switch (isa) {
#if MPREC_HAVE_X86
    case Isa::kAvx512: return avx512::interaction_kernels();
    case Isa::kAvx2: return avx2::interaction_kernels();
#endif
    default: return scalar::interaction_kernels();
  }
}

GatherProbeFn gather_probe_kernel(Isa isa) {
  switch (isa) {
#if MPREC_HAVE_X86
    case Isa::kAvx512: return &avx512::gather_probe_range;
    case Isa::kAvx2: return &avx2::gather_probe_range;
#endif
    default: return &scalar::gather_probe_range;
  }
}

MlpKernels mlp_kernels(Isa isa) {
  switch (isa) {
#if MPREC_HAVE_X86
    case Isa::kAvx512: return avx512::mlp_kernels();
    case Isa::kAvx2: return avx2::mlp_kernels();
#endif
    default: return scalar::mlp_kernels();
  }
}

}  // namespace cpu
}  // namespace mprec
