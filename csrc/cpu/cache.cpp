// CPU implementations of the cache op family, the index structures behind MP-Cache (mprec/nn/cache.py):
//
//   - an id -> entry hash table: open addressing with linear probing in an int64 [C, 2] tensor of
//     (key, entry) pairs, C a power of two, key -1 for an empty slot. Erasing shifts the following
//     cluster back (Knuth's algorithm R), so there are no tombstones and probe lengths never degrade
//     under the constant replacement an LFU cache does;
//   - a count-min sketch of id frequencies, int64 [R, B], B a power of two.
//
// Also mprec::unique_ids, the hash-based deduplication with which DHE layers decode each distinct id once.
//
// Why C++: a cache lookup is a handful of memory accesses per id, and doing it as a dozen tensor ops
// (searchsorted, masks, nonzero, gathers, scatters) cost more than the decoding a hit saves on a batch of
// a few thousand ids. Here a lookup is one pass that also gathers the hit vectors and counts the uses.
// Ids are int64 >= 0 (DHE ids); -1 is reserved for empty slots.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "mprec/checks.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace mprec {
namespace cpu {
namespace {

using at::Tensor;

constexpr int64_t kEmpty = -1;
constexpr int64_t kMinVictimWindow = 64;
constexpr uint64_t kTableMultiplier = 0x9E3779B97F4A7C15ULL;  // 2^64 / golden ratio (Fibonacci hashing)
// Odd multipliers, one per sketch row (rows beyond these reuse them xor-ed with the row number).
constexpr uint64_t kSketchMultipliers[] = {0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL, 0x27D4EB2F165667C5ULL,
                                           0x9E3779B97F4A7C15ULL, 0xD6E8FEB86659FD93ULL, 0xFF51AFD7ED558CCDULL,
                                           0xC4CEB9FE1A85EC53ULL, 0x94D049BB133111EBULL};
constexpr int64_t kMaxSketchRows = sizeof(kSketchMultipliers) / sizeof(kSketchMultipliers[0]);

int log2_exact(int64_t n) {
  int s = 0;
  while ((int64_t{1} << s) < n) ++s;
  return s;
}

bool is_power_of_two(int64_t n) { return n >= 2 && (n & (n - 1)) == 0; }

// A use count plus occurrences, held at the int64 limits instead of wrapping: counts only order entries, and
// occurrences, unchecked in sign and size, must not overflow them.
int64_t add_uses(int64_t count, int64_t occurrences) {
  int64_t sum;
  if (!__builtin_add_overflow(count, occurrences, &sum)) return sum;
  return occurrences > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
}

// Multiply-shift: the top `bits` bits of id * multiplier (mod 2^64).
inline int64_t bucket(int64_t id, uint64_t multiplier, int shift) {
  return static_cast<int64_t>((static_cast<uint64_t>(id) * multiplier) >> shift);
}

struct Table {
  int64_t* slots;  // [capacity][2]: key, entry
  int64_t capacity;
  int shift;

  int64_t home(int64_t key) const { return bucket(key, kTableMultiplier, shift); }
  int64_t mask() const { return capacity - 1; }

  // Slot holding `key`, or -1. Terminates: Python keeps the load at most 1/2, so empty slots exist.
  int64_t find(int64_t key) const {
    int64_t i = home(key);
    for (int64_t probes = 0; probes < capacity; ++probes, i = (i + 1) & mask()) {
      const int64_t k = slots[2 * i];
      if (k == key) return i;
      if (k == kEmpty) return -1;
    }
    return -1;
  }

  // Maps key (absent) to entry. Returns false if the key is present or the table is full.
  bool insert(int64_t key, int64_t entry, bool* present) const {
    int64_t i = home(key);
    for (int64_t probes = 0; probes < capacity; ++probes, i = (i + 1) & mask()) {
      const int64_t k = slots[2 * i];
      if (k == key) {
        *present = true;
        return false;
      }
      if (k == kEmpty) {
        slots[2 * i] = key;
        slots[2 * i + 1] = entry;
        return true;
      }
    }
    *present = false;
    return false;
  }

  // Removes key; returns the entry it mapped to, or -1 when absent. Backward shift: later members of the
  // cluster move into the hole unless their home lies cyclically in (hole, position], where moving them
  // would put them before their home. The hole is emptied as it moves, so the walk ends on it at the latest:
  // insert fills a table to its last slot, and a full table has no other empty slot to stop at.
  int64_t erase(int64_t key) const {
    int64_t i = find(key);
    if (i < 0) return -1;
    const int64_t erased = slots[2 * i + 1];
    slots[2 * i] = kEmpty;
    slots[2 * i + 1] = kEmpty;
    for (int64_t k = (i + 1) & mask(); slots[2 * k] != kEmpty; k = (k + 1) & mask()) {
      const int64_t moving = slots[2 * k];
      const int64_t h = home(moving);
      const bool stays = i <= k ? (i < h && h <= k) : (i < h || h <= k);
      if (!stays) {
        slots[2 * i] = moving;
        slots[2 * i + 1] = slots[2 * k + 1];
        slots[2 * k] = kEmpty;
        slots[2 * k + 1] = kEmpty;
        i = k;
      }
    }
    return erased;
  }
};

void insert_or_throw(const char* op, const Table& t, int64_t key, int64_t entry) {
  bool present = false;
  if (!t.insert(key, entry, &present)) {
    TORCH_CHECK(!present, op, ": id ", key, " is already in the table");
    TORCH_CHECK(false, op, ": the table is full (capacity ", t.capacity, ")");
  }
}

Table check_table(const char* op, const Tensor& table) {
  TORCH_CHECK(table.device().is_cpu(), op, ": table must be a CPU tensor, got ", table.device());
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 2 && table.size(1) == 2 && table.is_contiguous(),
              op, ": table must be a contiguous int64 [capacity, 2] tensor, got ", table.scalar_type(), " ",
              table.sizes());
  TORCH_CHECK(is_power_of_two(table.size(0)), op, ": table capacity must be a power of two >= 2, got ",
              table.size(0));
  return Table{table.data_ptr<int64_t>(), table.size(0), 64 - log2_exact(table.size(0))};
}

void check_ids(const char* op, const Tensor& ids, const char* name = "ids") {
  TORCH_CHECK(ids.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", ids.device());
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1, op, ": ", name,
              " must be a 1-D int64 tensor, got ", ids.scalar_type(), " ", ids.sizes());
}

void check_nonnegative(const char* op, const int64_t* ids, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ids[i] >= 0, op, ": ids must be >= 0, got ", ids[i], " at position ", i);
  }
}

void check_occurrences(const char* op, const Tensor& occurrences, const Tensor& ids) {
  TORCH_CHECK(occurrences.scalar_type() == at::kLong && occurrences.dim() == 1 &&
                  occurrences.size(0) == ids.size(0) && occurrences.device().is_cpu(),
              op, ": occurrences must be a 1-D int64 CPU tensor with one count per id (", ids.size(0), "), got ",
              occurrences.scalar_type(), " ", occurrences.sizes());
}

// (values of the cached ids [U, W] (zero rows for missed ids), positions of the missed ids).
// Adds each hit id's occurrences to its entry's use count. ids must be distinct.
std::tuple<Tensor, Tensor> cache_lookup_cpu(const Tensor& table, const Tensor& values, Tensor& counts,
                                            const Tensor& ids_in, const Tensor& occurrences_in) {
  constexpr const char* op = "mprec::cache_lookup";
  check_defined(op, {{"table", &table}, {"values", &values}, {"counts", &counts}, {"ids", &ids_in},
                     {"occurrences", &occurrences_in}});
  const Table t = check_table(op, table);
  TORCH_CHECK(values.dim() == 2 && values.device().is_cpu(), op, ": values must be a 2-D CPU tensor, got ",
              values.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == values.size(0) &&
                  counts.is_contiguous(),
              op, ": counts must be a contiguous 1-D int64 tensor with one count per values row (",
              values.size(0), "), got ", counts.scalar_type(), " ", counts.sizes());
  check_ids(op, ids_in);
  check_occurrences(op, occurrences_in, ids_in);
  const Tensor ids = ids_in.contiguous();
  const Tensor occurrences = occurrences_in.contiguous();
  const Tensor vals = values.contiguous();
  const int64_t n = ids.size(0), width = vals.size(1), rows = vals.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  check_nonnegative(op, id, n);

  std::vector<int64_t> entry(n);
  at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = t.find(id[i]);
      entry[i] = slot < 0 ? -1 : t.slots[2 * slot + 1];
    }
  });
  // A slot pointing outside `values` means the table and the arrays disagree: fail rather than read there.
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(entry[i] < rows, op, ": the table maps id ", id[i], " to entry ", entry[i],
                " but values has ", rows, " rows");
  }

  Tensor out = at::empty({n, width}, vals.options());
  const int64_t row_bytes = width * static_cast<int64_t>(vals.element_size());
  const char* src = static_cast<const char*>(vals.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  // Rows of no columns (a lookup that only asks which ids are cached) copy nothing: an empty tensor's data
  // pointer may be null, which memcpy must not be given even for 0 bytes.
  if (row_bytes > 0) at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (entry[i] >= 0) {
        std::memcpy(dst + i * row_bytes, src + entry[i] * row_bytes, row_bytes);
      } else {
        std::memset(dst + i * row_bytes, 0, row_bytes);  // zeros (all-zero bits in every float dtype)
      }
    }
  });

  const int64_t* occ = occurrences.data_ptr<int64_t>();
  int64_t* count = counts.data_ptr<int64_t>();
  int64_t misses = 0;
  for (int64_t i = 0; i < n; ++i) misses += entry[i] < 0;
  Tensor miss = at::empty({misses}, ids.options());
  int64_t* m = miss.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (entry[i] < 0) {
      *m++ = i;
    } else {
      count[entry[i]] = add_uses(count[entry[i]], occ[i]);
    }
  }
  return {out, miss};
}

// Maps each of `ids` (absent from the table, distinct) to the entry of the same position.
void cache_insert_cpu(Tensor& table, const Tensor& ids_in, const Tensor& entries_in) {
  constexpr const char* op = "mprec::cache_insert";
  check_defined(op, {{"table", &table}, {"ids", &ids_in}, {"entries", &entries_in}});
  const Table t = check_table(op, table);
  check_ids(op, ids_in);
  check_ids(op, entries_in, "entries");
  TORCH_CHECK(entries_in.size(0) == ids_in.size(0), op, ": one entry per id: ", ids_in.size(0), " ids, ",
              entries_in.size(0), " entries");
  const Tensor ids = ids_in.contiguous(), entries = entries_in.contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* entry = entries.data_ptr<int64_t>();
  const int64_t n = ids.size(0);
  check_nonnegative(op, id, n);
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK(entry[j] >= 0, op, ": entries must be >= 0, got ", entry[j], " at position ", j);
    insert_or_throw(op, t, id[j], entry[j]);
  }
}

// Removes `ids` from the table and returns the entries they mapped to (-1 for an id that was absent).
Tensor cache_erase_cpu(Tensor& table, const Tensor& ids_in) {
  constexpr const char* op = "mprec::cache_erase";
  check_defined(op, {{"table", &table}, {"ids", &ids_in}});
  const Table t = check_table(op, table);
  check_ids(op, ids_in);
  const Tensor ids = ids_in.contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t n = ids.size(0);
  check_nonnegative(op, id, n);
  Tensor erased = at::empty({n}, ids.options());
  int64_t* out = erased.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) out[j] = t.erase(id[j]);
  return erased;
}

// Online LFU replacement in a full cache, in one pass. Candidates (ids not cached, with their vectors and
// estimated counts `scores`) seen at least min_count times are taken best first (highest score; ties in
// input order); the victims are the least-used entries (lowest count; ties by entry number) among
// window_per_candidate entries per such candidate (at least kMinVictimWindow, at most all) starting at
// window_start (cyclically), fewest uses first: sampled LFU, O(candidates) rather than O(entries). Candidate i replaces victim i while
// its score is higher than the victim's count. Updates table, keys, values and counts in place; returns
// how many entries were replaced.
int64_t cache_replace_cpu(Tensor& table, Tensor& keys, Tensor& values, Tensor& counts, int64_t size,
                          const Tensor& ids_in, const Tensor& new_values_in, const Tensor& scores_in,
                          int64_t min_count, int64_t window_start, int64_t window_per_candidate) {
  constexpr const char* op = "mprec::cache_replace";
  check_defined(op, {{"table", &table}, {"keys", &keys}, {"values", &values}, {"counts", &counts}, {"ids", &ids_in},
                     {"new_values", &new_values_in}, {"scores", &scores_in}});
  const Table t = check_table(op, table);
  check_ids(op, ids_in);
  check_ids(op, keys, "keys");
  TORCH_CHECK(keys.is_contiguous() && counts.is_contiguous() && values.is_contiguous(), op,
              ": keys, values and counts must be contiguous");
  TORCH_CHECK(counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == keys.size(0) &&
                  values.dim() == 2 && values.size(0) == keys.size(0),
              op, ": keys [E], values [E, W] and counts [E] int64 must have one row per entry, got ", keys.sizes(),
              ", ", values.sizes(), ", ", counts.sizes());
  TORCH_CHECK(size >= 1 && size <= keys.size(0), op, ": size must be in [1, ", keys.size(0), "], got ", size);
  TORCH_CHECK(window_start >= 0 && window_start < size, op, ": window_start must be in [0, ", size, "), got ",
              window_start);
  TORCH_CHECK(window_per_candidate >= 1, op, ": window_per_candidate must be >= 1, got ", window_per_candidate);
  const int64_t n = ids_in.size(0);
  TORCH_CHECK(scores_in.scalar_type() == at::kLong && scores_in.dim() == 1 && scores_in.size(0) == n, op,
              ": scores must be 1-D int64 with one score per id (", n, "), got ", scores_in.scalar_type(), " ",
              scores_in.sizes());
  TORCH_CHECK(new_values_in.dim() == 2 && new_values_in.size(0) == n && new_values_in.size(1) == values.size(1) &&
                  new_values_in.scalar_type() == values.scalar_type(),
              op, ": new_values must be [", n, ", ", values.size(1), "] of the values' dtype ", values.scalar_type(),
              ", got ", new_values_in.scalar_type(), " ", new_values_in.sizes());
  const Tensor ids = ids_in.contiguous(), scores = scores_in.contiguous(), new_values = new_values_in.contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* score = scores.data_ptr<int64_t>();
  check_nonnegative(op, id, n);

  std::vector<int64_t> candidates;
  for (int64_t j = 0; j < n; ++j) {
    if (score[j] >= min_count) candidates.push_back(j);
  }
  if (candidates.empty()) return 0;
  std::stable_sort(candidates.begin(), candidates.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });

  // window_per_candidate * candidates, saturated at size: any window_per_candidate >= 1 is valid, and the product
  // must not overflow.
  const int64_t num_candidates = static_cast<int64_t>(candidates.size());
  const int64_t wanted = window_per_candidate > size / num_candidates ? size : window_per_candidate * num_candidates;
  const int64_t window = std::min(size, std::max(kMinVictimWindow, wanted));
  const int64_t* count = counts.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> sample(window);  // (count, entry)
  for (int64_t w = 0; w < window; ++w) {
    const int64_t e = (window_start + w) % size;
    sample[w] = {count[e], e};
  }
  const int64_t r = std::min<int64_t>(static_cast<int64_t>(candidates.size()), window);
  std::partial_sort(sample.begin(), sample.begin() + r, sample.end());

  int64_t* key = keys.data_ptr<int64_t>();
  int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t row_bytes = values.size(1) * static_cast<int64_t>(values.element_size());
  char* dst = static_cast<char*>(values.data_ptr());
  const char* src = static_cast<const char*>(new_values.data_ptr());
  int64_t replaced = 0;
  for (; replaced < r; ++replaced) {
    const int64_t j = candidates[replaced];
    const int64_t e = sample[replaced].second;
    if (score[j] <= sample[replaced].first) break;
    TORCH_CHECK(t.find(id[j]) < 0, op, ": id ", id[j], " is already in the table");
    TORCH_CHECK(t.erase(key[e]) == e, op, ": entry ", e, " holds id ", key[e], " but the table does not map it there");
    insert_or_throw(op, t, id[j], e);
    key[e] = id[j];
    cnt[e] = score[j];
    if (row_bytes > 0) std::memcpy(dst + e * row_bytes, src + j * row_bytes, row_bytes);
  }
  return replaced;
}

// Adds occurrences[i] uses of ids[i] to the sketch; returns each id's estimate (row minimum) afterwards.
Tensor count_min_add_cpu(Tensor& sketch, const Tensor& ids_in, const Tensor& occurrences_in) {
  constexpr const char* op = "mprec::count_min_add";
  check_defined(op, {{"sketch", &sketch}, {"ids", &ids_in}, {"occurrences", &occurrences_in}});
  TORCH_CHECK(sketch.device().is_cpu() && sketch.scalar_type() == at::kLong && sketch.dim() == 2 &&
                  sketch.is_contiguous(),
              op, ": sketch must be a contiguous int64 [rows, buckets] CPU tensor, got ", sketch.scalar_type(), " ",
              sketch.sizes());
  TORCH_CHECK(sketch.size(0) >= 1 && sketch.size(0) <= kMaxSketchRows, op, ": sketch rows must be in [1, ",
              kMaxSketchRows, "], got ", sketch.size(0));
  TORCH_CHECK(is_power_of_two(sketch.size(1)), op, ": sketch buckets must be a power of two >= 2, got ",
              sketch.size(1));
  check_ids(op, ids_in);
  check_occurrences(op, occurrences_in, ids_in);
  const Tensor ids = ids_in.contiguous(), occurrences = occurrences_in.contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* occ = occurrences.data_ptr<int64_t>();
  const int64_t n = ids.size(0), rows = sketch.size(0), buckets = sketch.size(1);
  check_nonnegative(op, id, n);
  const int shift = 64 - log2_exact(buckets);
  int64_t* s = sketch.data_ptr<int64_t>();
  Tensor estimate = at::empty({n}, ids.options());
  int64_t* est = estimate.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t lowest = 0;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t& cell = s[r * buckets + bucket(id[i], kSketchMultipliers[r], shift)];
      cell = add_uses(cell, occ[i]);
      lowest = r == 0 ? cell : std::min(lowest, cell);
    }
    est[i] = lowest;
  }
  return estimate;
}

// (distinct ids in order of first occurrence, inverse [ids.shape] int64, counts) by hashing: one pass,
// O(n), where torch.unique sorts. Any int64 or int32 values (no reserved value).
std::tuple<Tensor, Tensor, Tensor> unique_ids_cpu(const Tensor& ids_in) {
  constexpr const char* op = "mprec::unique_ids";
  check_defined(op, {{"ids", &ids_in}});
  TORCH_CHECK(ids_in.device().is_cpu(), op, ": ids must be a CPU tensor, got ", ids_in.device());
  TORCH_CHECK(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt, op,
              ": ids must be int32 or int64, got ", ids_in.scalar_type());
  const Tensor ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  Tensor inverse = at::empty(ids.sizes(), ids.options().dtype(at::kLong));
  std::vector<int64_t> first;  // position of each distinct id's first occurrence
  std::vector<int64_t> count;
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "unique_ids", [&] {
    const index_t* id = ids.data_ptr<index_t>();
    int64_t* inv = inverse.data_ptr<int64_t>();
    int64_t capacity = 2;
    while (capacity < 2 * n) capacity *= 2;
    const int shift = 64 - log2_exact(capacity);
    std::vector<int64_t> slots(capacity, -1);  // index into `first`, -1 empty
    first.reserve(std::min<int64_t>(n, 1 << 16));
    count.reserve(std::min<int64_t>(n, 1 << 16));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t key = static_cast<int64_t>(id[i]);
      int64_t s = bucket(key, kTableMultiplier, shift);
      while (slots[s] >= 0 && static_cast<int64_t>(id[first[slots[s]]]) != key) s = (s + 1) & (capacity - 1);
      if (slots[s] < 0) {
        slots[s] = static_cast<int64_t>(first.size());
        first.push_back(i);
        count.push_back(0);
      }
      inv[i] = slots[s];
      ++count[slots[s]];
    }
  });
  const int64_t u = static_cast<int64_t>(first.size());
  Tensor unique = at::empty({u}, ids.options());
  Tensor counts = at::empty({u}, ids.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "unique_ids", [&] {
    const index_t* id = ids.data_ptr<index_t>();
    index_t* out = unique.data_ptr<index_t>();
    for (int64_t j = 0; j < u; ++j) out[j] = id[first[j]];
  });
  std::copy(count.begin(), count.end(), counts.data_ptr<int64_t>());
  return {unique, inverse, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(mprec, CPU, m) {
  m.impl("unique_ids", &unique_ids_cpu);
  m.impl("cache_lookup", &cache_lookup_cpu);
  m.impl("cache_insert", &cache_insert_cpu);
  m.impl("cache_erase", &cache_erase_cpu);
  m.impl("cache_replace", &cache_replace_cpu);
  m.impl("count_min_add", &count_min_add_cpu);
}

}  // namespace cpu
}  // namespace mprec
