// Run-time choice of the CPU kernel variant (AVX-512, AVX2 or portable scalar).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mprec/dhe_kernel.h"
#include "mprec/embedding_bag_kernel.h"
#include "mprec/gather_probe.h"
#include "mprec/interaction_kernel.h"
#include "mprec/mlp_kernel.h"

namespace mprec {
namespace cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best variant this CPU (and this build) supports.
Isa best_supported_isa();
// The variant in use: MPREC_CPU_ISA when set (read once), else the best supported one; set_active_isa
// overrides both. Forcing a variant the CPU cannot run is an error, never a crash.
Isa active_isa();
void set_active_isa(const std::string& name);
std::string isa_name(Isa isa);
// "intel", "amd" or "other" (a CPU that is not x86, or a build without the x86 kernels).
std::string cpu_vendor();
// The bytes of cpu0's L3, one instance of it as Linux's sysfs (and lscpu) reports it, or 0 where the system does
// not say. sysconf's figure is not used: on an AMD EPYC, glibc gave the L3 of every core complex in the package
// together (320 MiB, where a core reaches 32 MiB).
int64_t l3_cache_bytes();
std::vector<std::string> supported_isa_names();

PoolFn pool_kernel(Isa isa);
DheEncodeFn dhe_encode_kernel(Isa isa);
InteractionKernels interaction_kernels(Isa isa);
MlpKernels mlp_kernels(Isa isa);
GatherProbeFn gather_probe_kernel(Isa isa);

}  // namespace cpu
}  // namespace mprec
