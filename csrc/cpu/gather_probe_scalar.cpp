// Portable variant of the gather probe's loop (gather_probe_impl.h): rows read by 8-byte words.
#include <cstdint>

#include "mprec/gather_probe.h"

namespace mprec {
namespace cpu {
namespace scalar {

struct P {
  static constexpr int kBytes = 8;
  using A = uint64_t;
  static A zero() { return 0; }
  static A add(A acc, const char* p) {
    uint64_t word;
    __builtin_memcpy(&word, p, 8);
    return acc + word;
  }
  static uint64_t sum(A acc) { return acc; }
};

#include "gather_probe_impl.h"

}  // namespace scalar
}  // namespace cpu
}  // namespace mprec
