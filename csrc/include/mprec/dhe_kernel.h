// The interface between the DHE operators (csrc/cpu/dhe.cpp: validation, allocation, threads, GEMMs) and
// the ISA variants of the hashing loop (csrc/cpu/dhe_encode_{avx512,avx2,scalar}.cpp).
//
// As for embedding_bag_kernel.h, this header is shared by files compiled with different -m flags, so it
// holds plain structs and function pointers only (no ATen, c10 or standard-library templates).
//
// The hash (docs/architecture.md, "What mprec computes"): h_j(x) = ((a_j * (x mod p) + b_j) mod p) mod m.
// The variants compute it in double precision with an error-free product (fma), which is exact for
// every p < 2^32: a_j and x mod p are below 2^32, so a_j * x splits exactly into a rounded product and
// its fma remainder, and every other intermediate is an integer below 2^53.
#pragma once
#include <cstdint>

namespace mprec {
namespace cpu {

enum class DheTransform : int32_t { kUniform = 0, kGaussian = 1 };
enum class DheOutType : int32_t { kFloat = 0, kBFloat16 = 1, kDouble = 2 };

// hash_a / hash_b arrays hold k entries followed by kDhePadding entries of padding (a = 1, b = 0), so a
// variant may read a whole vector past the last hash and drop the extra lanes.
constexpr int64_t kDhePadding = 32;

struct DheEncodeArgs {
  const void* ids;         // int32 or int64, [num_ids]
  bool ids_are_64bit;
  int64_t k;               // number of hash functions (encoding width)
  const double* hash_a;    // [k + kDhePadding], integers in [1, p - 1]
  const double* hash_b;    // [k + kDhePadding], integers in [0, p - 1]
  int64_t p;               // prime, m < p < 2^32
  int64_t m;               // hash range, >= 2
  DheTransform transform;  // kGaussian needs even column ranges
};

// Encodes ids [row_begin, row_end), hash columns [col_begin, col_end), writing row r's first column at
// out + (r - row_begin) * out_stride (elements of out_type). Returns -1, or the first row whose id is
// negative (the loop stops there).
using DheEncodeFn = int64_t (*)(const DheEncodeArgs& args, int64_t row_begin, int64_t row_end, int64_t col_begin,
                                int64_t col_end, void* out, DheOutType out_type, int64_t out_stride);

namespace avx512 { int64_t dhe_encode(const DheEncodeArgs&, int64_t, int64_t, int64_t, int64_t, void*, DheOutType, int64_t); }
namespace avx2 { int64_t dhe_encode(const DheEncodeArgs&, int64_t, int64_t, int64_t, int64_t, void*, DheOutType, int64_t); }
namespace scalar { int64_t dhe_encode(const DheEncodeArgs&, int64_t, int64_t, int64_t, int64_t, void*, DheOutType, int64_t); }

}  // namespace cpu
}  // namespace mprec
