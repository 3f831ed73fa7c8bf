// The embedding-bag pooling loop, written once over a vector type `V` and included by each ISA variant
// (embedding_bag_avx512.cpp, embedding_bag_avx2.cpp, embedding_bag_scalar.cpp) inside that variant's own
// namespace, after it has defined `V`, `f16_t` and `bf16_t`. Deliberately no #include here: see
// embedding_bag_kernel.h for why these files stay free of shared inline code.
//
// V provides: W (lanes), F (float vector), I (row-index vector), M (lane mask) and
//   mask(n), zero(), set1(x), neg_inf(), load(const T*, M) and loadu(const T*) (all W lanes) for
//   float/f16_t/bf16_t/uint8_t,
//   add(a, b), fmadd(a, b, c), mul(a, b), max(x, acc) (acc where x is not greater: ties, NaN), arg_init(),
//   arg_update(arg, best, x, row) (row where x == best, a vector of maxima), arg_unset(arg, best) (-1 where best is
//   -inf), arg_row(row) (row in every lane), max_update(acc, arg, x, row) (acc = max(x, acc), and arg = row where
//   x is greater),
//   kRegisters (vector registers), kSumVectors and kMaxVectors (accumulators of a float32 sum/mean and max pass),
//   kArgVectors (vectors of a chunk of the argmax pass), kConvertedVectors, kNarrow16BitSlices and
//   kWholeConvertedBlocks (see block_vectors and whole_variants), kCachedLoops (see whole_variants_when_cached),
//   kBf16Pairs (where true, also bf16_odd_mask(),
//   load_bf16_pair(p, odd_mask, even, odd) and interleave(even, odd, first, second): see pool_bf16_pairs),
//   kBf16PairTails (where true, also PM, pair_mask(n) and load_bf16_pair(p, PM, odd_mask, even, odd): see
//   bf16_tail_pairs),
//   store(float*/f16_t*/bf16_t*, F, M), storeu(float*, F) (all W lanes),
//   store_arg(int64_t*, I, M),
//   prefetch(const void*) (into L2) and prefetch_l1(const void*).

// How many lookups ahead the loop prefetches rows. The rows of a bag are random reads from a table much
// larger than the caches, so the loop is bound by memory latency unless several rows are in flight.
// Measured on a 2-core EPYC (E=1e6, D=128, L=40): 16 and 24 are equally good, 8 is a few percent slower,
// no prefetch is 3x slower. Under kLeadingLines (see kPrefetchLines), rows pooled in several passes of wide
// slices (float32 D=256) keep it.
constexpr int64_t kPrefetchDistance = 16;
// Slices of at most kWholeSliceLines lines, and whole rows (kRow), go further ahead: each lookup is a short
// read, so 16 of them in flight leave the loop waiting on memory. On a 2-core Xeon (E=1e6, B=4096, L=40,
// caches flushed), with tables on 4 KiB and on 2 MiB pages, AVX-512 and AVX2 kernels: 32 ahead ran faster
// than 16 for one-line rows (D=16; 48 or 64 no faster than 32), for float32 D=32 and D=64 and for 16-bit
// D=128 (up to 18% faster on huge pages, where D=64 had been slower than torch's), and as fast for int8.
constexpr int64_t kNarrowPrefetchDistance = 32;
// Lines of each row's slice prefetched. Which lines pay depends on the CPU's own prefetchers, so the caller picks
// one of two policies (RowPrefetch, chosen by vendor in embedding_bag.cpp):
// - kLeadingLines (Intel): the first two lines of a slice wider than four lines, a narrower slice whole. The
//   CPU's prefetchers fetch the rest of a wide row once its first lines are requested; prefetching every line
//   filled the queue of outstanding misses with lines that were coming anyway, so fewer rows were in flight.
//   On a 2-core Xeon with the caches flushed between calls, two lines beat every line by a wide margin for
//   float32 rows of 8 and 16 lines (weighted or not, AVX-512 and AVX2 kernels alike), one line was no better
//   than two, and with the rows partly or wholly in L3 two lines were as fast or faster; rows of four lines ran
//   as fast or faster prefetched whole (16-bit rows of D=128 faster), and four of eight lines was slower on AVX2.
// - kWholeSlices (AMD, and CPUs not measured): every line of the slice, from kWholeSlicePrefetchDistance ahead
//   where it is wider than four lines. On a 2-core AMD EPYC (AVX-512) with the caches flushed, the prefetchers
//   did not fetch the rest of a row: two lines of float32 D=128 and D=256 rows ran at 0.82-0.97x torch's
//   embedding_bag, every line at 1.34-1.67x; four of eight lines fell between.
// V::prefetch brings lines into L2 (prefetcht1), not L1: a prefetch to L1 holds one of its few fill buffers
// until the line arrives from memory, while the lookups' own loads find the line in L2 a few cycles away. With
// the caches flushed, that made one-line rows (D=16) and D=64 rows faster and left D=128 as it was, on the Xeon;
// on the EPYC, L1 made D=16 and D=64 rows 1.4-1.6x slower. Max mode prefetches as sum does: its D=128 rows, now
// pooled in one pass, ran faster that way than with whole slices prefetched into L1.
constexpr int kWholeSliceLines = 4;
constexpr int kPrefetchLines = 2;
// kLeadingLines: a row of more than kWholeSliceLines lines pooled in one pass (float32 D=128) has its first lines
// prefetched into L1 and from further ahead (kWideRow). On a table backed by 2 MiB pages (transparent huge
// pages, as many distributions give every large allocation), where a lookup seldom misses the TLB and the loop is
// bound by memory latency alone, that ran 10-15% faster than into L2 from 16 ahead, on the AVX-512 and AVX2
// kernels, weighted or not, and made the kernel faster than torch's there rather than slower; on 4 KiB pages it
// ran as fast. Rows of several passes (D=256) and narrower rows ran slower so, on either kind of page.
constexpr int64_t kWideRowPrefetchDistance = 24;
// kWholeSlices: how far ahead slices wider than kWholeSliceLines are prefetched. On the EPYC, D=128 ran 1.42-1.45x
// torch from 24 ahead against 1.16-1.42x from 16, 1.35-1.43x from 32 and 1.38-1.39x from 48; D=256 1.52-1.55x
// from 24, 1.49-1.67x from 16 and 1.51-1.59x from 32.
constexpr int64_t kWholeSlicePrefetchDistance = 24;
// RowPrefetch::kWholeSlicesNear: every width from this many lookups ahead. On an AVX2-only EPYC (caches flushed,
// E=1e6, B=4096, L=40, each setting timed in turn in one process, five such runs), 16 ahead against the distances
// above (24 for wide slices, 32 for narrow ones) ran float32 D=64 rows at 1.03-1.17x the speed, D=128 at
// 1.02-1.10x (weighted 1.05-1.08x), D=256 at 0.98-1.14x and int8 at 1.00-1.14x; D=16 moved between 0.85x and
// 1.08x, and D=128 on 2 MiB pages measured 0.94x once. 8 and 12 ahead were no faster than 16. Slices of one line
// go kNarrowPrefetchDistance ahead instead, as on the Xeon. On that EPYC (the same conditions, each distance timed
// in turn), float32 D=16 then pooled 5-12% faster than from 16 ahead in eight runs of nine (2% slower in the
// ninth), its one-hot bags 7-21% faster and fp16 D=32 5-22% faster in each of four, int8 D=64 within -3% to +5%;
// on 2 MiB pages D=16 moved less (-2% to +9%).
// Float32 rows of several slices wider than kWholeSliceLines lines are another exception (see pool_typed): their first
// pass prefetches its slice's first kPrefetchLines lines and the later passes nothing, the CPU's own prefetchers
// fetching the rest of the row. On that EPYC, float32 D=256 and D=512 then pooled at 0.92-1.03x torch's
// embedding_bag, against 0.84-0.92x with every line of each slice prefetched in each pass (sum, mean; the weighted
// sum and max the same either way). 16-bit and int8 rows ran 1.25-1.7x slower so and keep whole slices.
constexpr int64_t kNearPrefetchDistance = 16;
// Prefetch::kCached: a table that stays in the cache (RowPrefetch::kNone), whose rows of one pass hold more than
// kCachedPrefetchElements elements, has each row's first kPrefetchLines lines prefetched into L1 from this many
// lookups ahead. There the lookups' loads find their lines in L2, not memory, and wait for them all the same: a wide
// row's loop is long enough that few rows' loads are in the out-of-order window at once. With the caches warm (tables
// of 1,000 and 2,000 rows, 512 KiB, B=4096, L=40, two threads, on an AVX-512 EPYC with a 1 MiB L2, each setting timed
// in turn in one process), every line against no prefetch: the AVX-512 kernels' float32 D=128 took 4-6% less time,
// bf16 and fp16 D=128 11-14% less; the AVX2 kernels' float32 D=128 2-4% less (its weighted sum 5-9%), bf16 (in pairs)
// 6%, fp16 13-16%. Row-wise int8 D=128 (its scale and bias still prefetched into L2), builds alternated in three
// processes each: 0.82-0.99x torch's embedding_bag to 1.10-1.24x with the AVX2 kernels, 0.84-1.02x to 1.15-1.23x with
// the AVX-512 ones. The first lines alone did better still where a row has more (the same machine and tables, one
// thread, each timed in turn in one process): float32 D=128 took 6-7% less time than with every line on the AVX-512
// kernels and 4-5% less on the AVX2 ones (its weighted sum 6%, its mean 4%), 16-bit rows of four lines the same
// either way. One line or three ran as fast as two, and 4 to 16 lookups ahead as fast as 8; a loop of the same shape
// outside the library ran the same with 2, 4 or all 8 lines. Float32 D=64 rows, of fewer instructions a line, had
// taken 2-4% more time with every line prefetched (both kernels); with their first two lines (one thread), 5-8% less,
// and 16-bit D=64 rows 5-17% less. D=32 rows gained with 16-bit lines and lost with float32 ones (up to 20%), and keep
// no prefetch (kCachedPrefetchElements) but where cached_prefetch says, nor do rows of two passes (AVX2's float32
// D=256, up to 25% slower with every line). Into L2 (V::prefetch), a loop of the same shape outside the library ran
// slower than with no prefetch.
constexpr int64_t kCachedPrefetchDistance = 8;
constexpr int64_t kCachedPrefetchElements = 32;
// kBurstPrefetch: where a block's accumulators take every register (the AVX2 kernels' D=128 rows of every type), its
// bag loop prefetches each bag's rows in a burst when the bag starts, up to the block's prefetch distance past the
// bag's end (prefetch_burst), and the pooling loop prefetches nothing. Rows of several such blocks (pool_passes) are
// prefetched whole in the burst, and no pass prefetches. Such a loop runs 40 to 75 instructions a row, and a row's
// first prefetch that misses the TLB holds up retirement, so few rows' prefetches fit in the out-of-order window
// at once; in a burst a bag's prefetches sit together in the window and their page walks and fetches overlap.
// Measured with the AVX2 kernels on an AVX-512 EPYC (caches flushed, E=1e6, B=4096, L=40, as fractions of the gather
// limit), under its whole-slice policy (RowPrefetch::kWholeSlices), with and without the burst alternated in one
// process: bf16 D=128 from 0.62 to 0.81-0.83, fp16 from 0.66-0.69 to 0.86-0.88, the float32 sum from 0.93-0.98 to
// 1.02-1.16, its mean from 0.94-0.95 to 1.00-1.16, max from 0.86-0.87 to 1.09, int8 the same; under the near policy
// (RowPrefetch::kWholeSlicesNear, which the EPYCs with AVX2 alone take), each build in alternating processes: bf16
// from 0.62 to 0.83-0.84, fp16 from 0.66-0.70 to 0.84-0.85, the float32 sum from 0.97-1.02 to 1.07-1.20. Shorter
// loops ran slower so (AVX2's D=16 from 0.91 to 0.81, D=64 from 0.97 to 0.93, the AVX-512 kernels' D=128 from
// 0.93 to 0.87): the prefetches within them are already close together. So did max with its argmax (0.82 to
// 0.78), whose walk after the pass goes on with the pass's own prefetches: it keeps them. The weighted float32 sum,
// whose last vector has a loop of its own (last_vector_apart), from 0.87-0.93 to 0.97-1.17 in five pairs of
// processes under either policy (0.89-0.92 to 0.92-1.14 alternated in one process, eight runs). Rows of several
// passes, under the near policy: float32 D=256 from 0.79-0.82 to 0.95-1.07, its weighted sum from 0.75-0.78 to
// 0.90-0.94 (0.93x torch's embedding_bag to 1.12-1.14x), bf16 D=256 (pool_bf16_pairs) from 0.77-0.84 to 0.89-1.07;
// under whole slices bf16 from 0.79-0.84 to 0.83-1.04, but float32 D=256, whose passes each prefetch their own eight
// lines, fell from 1.03-1.17 to 0.96-1.06 and keeps them. The leading-lines policy (Intel) was not measured with
// bursts and keeps the prefetches in its loops. All of these were tables of 1e6 rows; tables within the L3's reach
// (at most burst_table_bytes) ran faster without bursts and keep the prefetches too (csrc/cpu/embedding_bag.cpp).
template <int NV>
constexpr bool kBurstPrefetch = NV == V::kRegisters;
// A row wider than one pass of accumulators is pooled in several passes over the bag's rows, each of which
// prefetches its own slice of the rows. Where a slice is a single line (int8 rows on AVX2), the first pass
// prefetches the whole row instead, up to this many 64-byte lines, and the later passes read it from the
// caches: one line per lookup leaves too few reads in flight, and the later pass's random reads go to memory
// again. Wider rows keep per-slice prefetches: whole rows of 16 lines, as many times the lines in flight, made
// a D=256 float32 sum slower (AVX-512 and AVX2 alike), and rows of 4 or 8 lines gained nothing.
constexpr int kWholeRowLines = 2;
// Vectors of accumulators kept in registers per pass over a bag's rows; wider rows take several passes.
// Converted types need a register for the conversion, so they keep V::kConvertedVectors (128 elements a pass on
// either ISA, as FBGEMM's generated AVX2 kernels take 15 vectors of 16-bit rows); float32 rows keep V::kSumVectors
// in sum and mean, which load rows straight into the adds, and V::kMaxVectors in max mode, whose argmax is found
// after the pass (max_args), so that no register holds it during the pass.
// Under whole-slice prefetch (AMD), the kernels with V::kNarrow16BitSlices (AVX-512) pass 16-bit rows in slices of
// at most kNarrowSliceBytes, two lines (kNarrowSlices). There, caches flushed, bf16 and fp16 D=128 rows pooled by
// the AVX-512 kernels in one pass of four lines ran at 1.1x torch's embedding_bag, in two passes of two lines at
// 1.55-1.64x, with either prefetch. Fewer instructions per row in a pass likely let more rows' loads into the
// out-of-order window. The Xeon's kernels keep their measured 8 vectors. The AVX2 kernels go the other way: on an
// AVX2-only EPYC (caches flushed, D=128, each timed in turn in one process, over several prefetch settings), fp16
// and int8 rows pooled in one pass of 16 vectors ran at 0.91-1.18x torch, in two passes of 8 at 0.80-0.91x; bf16
// at 0.85-1.10x against 0.85-0.93x.
constexpr int kNarrowSliceBytes = 128;
template <typename WT, bool kMax, bool kNarrowSlices = false>
constexpr int block_vectors() {
  if constexpr (sizeof(WT) == 4) return kMax ? V::kMaxVectors : V::kSumVectors;
  constexpr int narrow = kNarrowSliceBytes / (V::W * static_cast<int>(sizeof(WT)));
  return kNarrowSlices && V::kNarrow16BitSlices && sizeof(WT) == 2 && narrow < V::kConvertedVectors
             ? narrow
             : V::kConvertedVectors;
}

// The accumulators must live in registers: without full unrolling of the per-vector loops, gcc keeps
// acc[] on the stack and every row costs a load and a store per vector.
#define MPREC_UNROLL _Pragma("GCC unroll 16")

template <typename WT> struct OutputOf { using type = WT; };

// The 64-byte lines that `cols` elements of a row span from its start (a partial last line counted whole).
template <typename WT>
constexpr int64_t lines_of(int64_t cols) { return (cols * static_cast<int64_t>(sizeof(WT)) + 63) / 64; }

// Vector v of a row: only the last vector of a block can be partial, and only it pays for a lane mask. A block
// known to be whole (kWhole) loads every vector unmasked: the mask of a partial last vector takes a register,
// which a block with as many accumulators as registers (AVX2's 16 of a float32 sum or max) pays for by
// spilling accumulators to the stack on every row, and AVX2, which has no mask registers, decides per row
// whether to mask. Every whole float32 block uses it (with kUnweighted where the call has no weights): with the
// rows in the cache, D=16 pooled 1.4x faster so on AVX2, and bags of one D=16 lookup twice as fast on AVX-512
// (which had loaded masked and checked for weights per row). Converted rows: see whole_variants.
template <int NV, bool kWhole, typename WT>
static inline typename V::F load_vector(const WT* row, int v, typename V::M tail) {
  return !kWhole && v == NV - 1 ? V::load(row + v * V::W, tail) : V::loadu(row + v * V::W);
}
template <> struct OutputOf<uint8_t> { using type = float; };

template <typename WT> struct IsBf16 { static constexpr bool value = false; };
template <> struct IsBf16<bf16_t> { static constexpr bool value = true; };
template <typename WT> struct IsFp16 { static constexpr bool value = false; };
template <> struct IsFp16<f16_t> { static constexpr bool value = true; };

// Whether rows of `dim` elements of one pass, of a table that stays in the cache, take Prefetch::kCached: those of more
// than kCachedPrefetchElements, and on the kernels with V::kCachedPrefetchFp16Line (AVX2) fp16 rows of a whole line or
// more (D=32), whose row converts four vectors, where AVX-512's converts two and AVX2's bf16 rows load two pairs
// (pool_bf16_pairs). With the caches warm (tables of 8,192 rows, 512 KiB, one thread, each setting timed in turn in
// one process), AVX2's fp16 D=32 sum took 6-8% less time so (0.89-0.93x torch's embedding_bag to 0.97-1.00x), its
// weighted sum 3-4% less; AVX2's bf16 D=32 sum moved between 10% less and 9% more, AVX-512's 16-bit D=32 took 1-2%
// more, AVX2's fp16 D=24 (three vectors in 48 bytes) 16-19% more: they keep no prefetch.
template <typename WT>
constexpr bool cached_prefetch(int64_t dim) {
  return dim > kCachedPrefetchElements ||
         (IsFp16<WT>::value && V::kCachedPrefetchFp16Line && dim * static_cast<int64_t>(sizeof(WT)) >= 64);
}

// Whether whole blocks of NV vectors of WT rows take the kWhole (and kUnweighted) variants: every float32 block
// (see load_vector), and converted rows where V::kWholeConvertedBlocks. On AVX-512 those variants made bf16 and
// fp16 rows slower. On an AVX2-only EPYC (caches flushed, E=1e6, B=4096, L=40, each timed in turn in one process,
// several such runs), AVX2's converted rows pooled faster with them in most runs: fp16 and bf16 D=64 by up to 23%,
// int8 D=128 and D=256 by up to 15%, fp16 D=128 by 2-6%. bf16 blocks of 16 vectors had run slower with them at
// D=128 in 10 runs of 13, but that was before pool_block stopped keeping the row count and the row length on the
// stack; since then the general variant, whose masked last vector keeps a call to memcpy in the loop's code, is the
// slower one (three alternating runs against torch: 0.86-0.96x torch with the kWhole variants against 0.85-0.89x,
// the mean 1.08-1.18x against 0.95-1.06x).
template <typename WT, int NV>
constexpr bool whole_variants() {
  if constexpr (sizeof(WT) == 4) return true;
  else return V::kWholeConvertedBlocks;
}
// The kernels without V::kWholeConvertedBlocks take the kWhole variants for whole 16-bit and int8 blocks on tables that
// stay in the cache (RowPrefetch::kNone), where the loop waits on its own instructions, not on memory: with the
// AVX-512 kernels on an AVX-512 EPYC (tables of 512 KiB, warm, B=4096, L=40, each timed in turn in one process), bf16
// D=128 took 2-4% less time so, fp16 5-8% less (2-9% on 500 rows), fp16's mean, weighted sum and bf16's max 1-13% less;
// with one thread, fp16 D=16 and D=64 took 10-22% less time, bf16 D=16 17%, D=64 28% (with pairs, pool_bf16_pairs).
// Row-wise int8 (tables of 256 KiB and their scales and biases, one thread): D=32 took 22% less time (1.06x torch's
// embedding_bag to 1.34-1.36x), its mean 19-20% less, weighted sum 6%, max 5-6%; D=16, D=64 and D=128 up to 4% less.
// These variants, and the bag loop of whole blocks of such tables (pool_bags), are code for tables in the cache alone:
// the kernels without V::kCachedLoops (the scalar fallback) keep the general loops: theirs took 6% of the library.
template <typename WT, int NV>
constexpr bool whole_variants_when_cached() {
  return V::kCachedLoops && sizeof(WT) != 4 && !V::kWholeConvertedBlocks && NV <= V::kConvertedVectors;
}

// Vector v of row `row` as the pooling reads it: row-wise int8 rows dequantized with their scale and bias.
template <int NV, bool kWhole, typename WT>
static inline typename V::F row_vector(const WT* row, int v, typename V::M tail, typename V::F scale,
                                       typename V::F bias) {
  if constexpr (sizeof(WT) == 1) return V::fmadd(load_vector<NV, kWhole>(row, v, tail), scale, bias);
  else return load_vector<NV, kWhole>(row, v, tail);
}

// What a pass prefetches of the rows `distance` lookups ahead: its own slice, the first lines of a wide one
// (kSlice) or every line (kWholeSlice, see kPrefetchLines), the whole row (kRow: the first pass over rows of at
// most kWholeRowLines lines, see there), the first lines of a wide row into L1 (kWideRow: under kLeadingLines,
// the only pass over rows of more than kWholeSliceLines lines, see kWideRowPrefetchDistance), the first lines of the
// row into L1 (kCached: wide rows of a table that stays in the cache, see kCachedPrefetchDistance), or nothing (kNone:
// other rows of a table that stays in the cache, or a later pass over rows the first one fetched whole).
enum class Prefetch { kSlice, kWholeSlice, kRow, kWideRow, kCached, kNone };
// A kind known at compile time, for a loop specialised on it (see pool_bags); kind_value reads either.
template <Prefetch P> struct PrefetchConst {};
static inline constexpr Prefetch kind_value(Prefetch p) { return p; }
template <Prefetch P> static inline constexpr Prefetch kind_value(PrefetchConst<P>) { return P; }

// Whether `policy` prefetches every line of a slice, from the per-width distances or the near one.
static inline bool whole_slice_policy(RowPrefetch policy) {
  return policy == RowPrefetch::kWholeSlices || policy == RowPrefetch::kWholeSlicesNear;
}

// How many lookups ahead a block of NV vectors prefetches its rows under `prefetch`.
template <typename WT, int NV>
__attribute__((always_inline)) static inline int64_t prefetch_distance(const PoolArgs& a, Prefetch prefetch) {
  constexpr int64_t kLines = lines_of<WT>(NV * V::W);
  if (prefetch == Prefetch::kCached) return kCachedPrefetchDistance;
  if (a.prefetch == RowPrefetch::kWholeSlicesNear) return kLines <= 1 ? kNarrowPrefetchDistance : kNearPrefetchDistance;
  return prefetch == Prefetch::kRow || kLines <= kWholeSliceLines ? kNarrowPrefetchDistance
         : prefetch == Prefetch::kWideRow                         ? kWideRowPrefetchDistance
         : prefetch == Prefetch::kWholeSlice                      ? kWholeSlicePrefetchDistance
                                                                  : kPrefetchDistance;
}

// How many lookups ahead the loop over the lookups of a bag that ends at `end` prefetches: `distance`, or less in the
// call's last bags, so that the lookup prefetched is always one of the call's. A bound per bag rather than a clamp
// per row: the pooling loop is short enough for its scalar work to count, and on AVX2, whose accumulators take every
// vector register, its scalar values are short of registers too.
__attribute__((always_inline)) static inline int64_t bag_prefetch_distance(const PoolArgs& a, int64_t end,
                                                                           int64_t distance) {
  const int64_t room = a.num_indices - end;  // >= 0: bag_range checked `end`
  return distance < room ? distance : room;
}

// Prefetches, as `prefetch` says (not kNone), the block at `col` of the row of lookup `ahead`, one of the call's
// lookups. Its address is taken unchecked: an id out of range only prefetches some other address, which never faults
// (the lookup itself is checked when its turn comes). Always inlined: a call from the pooling loop would spill every
// accumulator around it, and gcc did not inline it unasked.
// kOneBlock: the row is this one block (see pool_block). A block of at most kWholeSliceLines lines that is the whole
// row is then prefetched whole by every kind: kSlice and kWholeSlice take such a slice whole, kRow the row, which is
// the slice, and kWideRow is only given for wider rows. The kind is then not tested per row where it is not a
// constant of the loop: those compares against an argument kept on the stack, and the jumps around them, had been
// six of the 36 instructions a row of AVX2's float32 D=64 loop. Caches flushed, E=1e6, B=4096, L=40, each build
// against the other in alternating processes on an AVX-512 EPYC: D=64 rose from 0.80-0.88 to 0.91-0.96 of the gather
// limit with the AVX2 kernels and from 0.80-0.90 to 0.96-1.05 with the AVX-512 ones; D=16 moved within the noise.
template <typename WT, int NV, typename IT, bool kOneBlock = false>
__attribute__((always_inline)) static inline void prefetch_lookup(const PoolArgs& a, const WT* weight,
                                                                  const IT* indices, int64_t dim, int64_t col,
                                                                  int64_t ahead, Prefetch prefetch) {
  // Cache lines of the block's slice of a row (a partial last vector may prefetch a little of the next row, which
  // is harmless: prefetches never fault).
  constexpr int kLines = static_cast<int>(lines_of<WT>(NV * V::W));
  constexpr int kPrefetched = kLines <= kWholeSliceLines ? kLines : kPrefetchLines;
  const uintptr_t next = static_cast<uintptr_t>(indices[ahead]);
  const char* p = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(weight + col) +
                                                next * static_cast<uintptr_t>(dim) * sizeof(WT));
  if (prefetch == Prefetch::kCached) {
    constexpr int kLeading = kLines < kPrefetchLines ? kLines : kPrefetchLines;
    MPREC_UNROLL for (int line = 0; line < kLeading; ++line) V::prefetch_l1(p + 64 * line);
  } else if constexpr (kOneBlock && kLines <= kWholeSliceLines) {
    MPREC_UNROLL for (int line = 0; line < kLines; ++line) V::prefetch(p + 64 * line);
  } else if (prefetch == Prefetch::kSlice) {
    MPREC_UNROLL for (int line = 0; line < kPrefetched; ++line) V::prefetch(p + 64 * line);
  } else if (prefetch == Prefetch::kWholeSlice) {
    MPREC_UNROLL for (int line = 0; line < kLines; ++line) V::prefetch(p + 64 * line);
  } else if (prefetch == Prefetch::kWideRow) {
    MPREC_UNROLL for (int line = 0; line < kPrefetchLines; ++line) V::prefetch_l1(p + 64 * line);
  } else {
    const int row_lines = static_cast<int>(lines_of<WT>(dim));
    for (int line = 0; line < row_lines; ++line) V::prefetch(p + 64 * line);
  }
  // Row-wise int8 keeps scale and bias in their own array: one more line per lookup to fetch early.
  if constexpr (sizeof(WT) == 1) {
    V::prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(a.scale_bias) + next * 2 * sizeof(float)));
  }
}

// The burst of kBurstPrefetch: prefetches, as `prefetch` says, the rows of the lookups from the later of `prefetched`
// (where the previous burst stopped) and `start` (the bag's first) to `distance` past the bag's `end`, at most the
// call's last, and returns where it stopped.
template <typename WT, int NV, typename IT, bool kOneBlock>
__attribute__((always_inline)) static inline int64_t prefetch_burst(const PoolArgs& a, const WT* weight,
                                                                  const IT* indices, int64_t prefetched,
                                                                  int64_t start, int64_t end, int64_t distance,
                                                                  Prefetch prefetch) {
  const int64_t stop = end + bag_prefetch_distance(a, end, distance);
  for (int64_t j = prefetched > start ? prefetched : start; j < stop; ++j)
    prefetch_lookup<WT, NV, IT, kOneBlock>(a, weight, indices, a.dim, 0, j, prefetch);
  return stop;
}

// Max mode's argmax, where the pass has no registers to track it (see arg_in_pass), found after the pass over the
// bag's rows, which left them in the caches: for each lane, the first row whose value equals the lane's maximum, or
// -1 where the maximum is -inf. That is the row a running "x > max so far" comparison keeps: the rows before it are
// smaller or NaN, and none after it is greater. Walking the rows backwards, the last equal row met is the first.
// The lanes are taken V::kArgVectors vectors at a time, so that a chunk's argmaxes and maxima stay in registers (the
// pass stored the maxima in `best`).
// While a walk of several chunks runs, no row of the bags to come would be requested, and on the EPYC the memory
// then sat idle: the first chunk's walk goes on with the pass's prefetches, the lookups after those the pass made,
// where they are whole slices (RowPrefetch::kWholeSlices). Caches flushed, float32 D=128, that took AVX2 max (three
// chunks) from 0.65-0.77 of the speed of a sum of the same rows to 0.85-0.95. A walk of one chunk (AVX-512's, before
// its pass tracked the argmax) is short enough for the pass's own prefetches: continued, its prefetches flooded the
// queue of misses, and it ran at 0.71-0.73 of sum against 0.74-0.82 without. The Xeon's leading-lines prefetch (its
// max measured 0.78-0.88 of sum without this) keeps the walk as it was, and so does the near policy of the AVX2-only
// EPYC: there the continued prefetches likely only moved the next bag's requests from its pass to this walk, where they
// arrived in a burst, and max ran at 0.58-0.68 of sum with them against 0.66-0.75 without (float32 D=128, caches
// flushed, each timed in turn in one process; 32 or 40 lookups ahead in the pass instead gained nothing more).
template <typename WT, typename IT, int NV, bool kWhole, int kFirst = 0>
static void max_args(const PoolArgs& a, const WT* weight, const IT* indices, int64_t col, int64_t start,
                     int64_t end, const float* best, typename V::M tail, Prefetch prefetch, int64_t* arg_out) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::W;
  constexpr int kCount = NV - kFirst < V::kArgVectors ? NV - kFirst : V::kArgVectors;
  I arg[kCount];
  F b[kCount];  // the chunk's maxima, in registers: read from memory per row, they doubled the walk's loads
  MPREC_UNROLL for (int k = 0; k < kCount; ++k) {
    arg[k] = V::arg_init();
    b[k] = V::loadu(best + (kFirst + k) * W);
  }
  // The first chunk's walk goes on with the pass's prefetches (see above): lookup end - 1 + distance was its last.
  const bool go_on = kFirst == 0 && NV > V::kArgVectors && prefetch == Prefetch::kWholeSlice &&
                     a.prefetch == RowPrefetch::kWholeSlices;
  const int64_t next = end + prefetch_distance<WT, NV>(a, prefetch);
  const int64_t last_lookup = a.num_indices - 1;
  for (int64_t i = end - 1; i >= start; --i) {
    if (go_on) {
      const int64_t ahead = next + (end - 1 - i);
      prefetch_lookup<WT, NV>(a, weight, indices, a.dim, col, ahead < last_lookup ? ahead : last_lookup, prefetch);
    }
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (idx == a.padding_idx) continue;
    const WT* row = weight + idx * a.dim + col;
    F scale = V::zero(), bias = V::zero();
    if constexpr (sizeof(WT) == 1) {
      scale = V::set1(a.scale_bias[2 * idx]);
      bias = V::set1(a.scale_bias[2 * idx + 1]);
    }
    MPREC_UNROLL for (int k = 0; k < kCount; ++k)
      V::arg_update(arg[k], b[k], row_vector<NV, kWhole>(row, kFirst + k, tail, scale, bias), idx);
  }
  MPREC_UNROLL for (int k = 0; k < kCount; ++k)
    V::store_arg(arg_out + (kFirst + k) * W, V::arg_unset(arg[k], b[k]),
                 kFirst + k == NV - 1 ? tail : V::mask(W));
  if constexpr (kFirst + kCount < NV)
    max_args<WT, IT, NV, kWhole, kFirst + kCount>(a, weight, indices, col, start, end, best, tail, prefetch,
                                                  arg_out);
}


// Whether max mode's pass over a block of NV vectors tracks the argmax itself (V::max_update), rather than leaving
// it to a walk over the rows after the pass (max_args): where the registers hold an argmax beside each accumulator,
// with four to spare for the row's vector, the row broadcast and a conversion or an int8 row's scale and bias.
// Caches flushed (E=1e6, B=4096, L=40), on a 2-core EPYC: AVX-512 float32 max went from 0.74-0.78 of the speed of a
// sum of the same rows to 0.80-0.82 at D=128, 0.77 to 0.83 at D=64 and 0.87 to 0.95 at D=16, bf16 and fp16 D=128
// and float32 D=256 the same; AVX2 D=16 from 0.82 to 0.92 and D=32 from 0.79 to 0.84, while its D=64 (16 registers
// for 8 accumulators and 8 argmaxes) fell from 0.82 to 0.69 and D=128 from 0.91 to 0.55, spilling. The walk
// re-reads every row and requests nothing from memory meanwhile; the pass's extra work likely hides behind its
// misses.
template <int NV>
constexpr bool arg_in_pass() { return 2 * NV + 4 <= V::kRegisters; }

// Whether pool_block's loop over a block of NV vectors leaves the last to last_vector_apart: a weighted whole float32
// block whose accumulators take every register (AVX2's 16). The loop keeps a register for the row's weight; keeping
// all 16 accumulators beside it spilled two of them to the stack, every row then waiting on a store and a reload.
// FBGEMM's generated AVX2 kernels split the row the same way.
template <typename WT, bool kMax, int NV, bool kWhole, bool kUnweighted>
constexpr bool splits_last_vector() {
  return sizeof(WT) == 4 && kWhole && !kUnweighted && !kMax && NV >= 16 && NV == V::kSumVectors;
}

// Whether the bag loops over blocks of NV vectors prefetch a bag's rows in a burst (see kBurstPrefetch): under the
// whole-slice policies, on tables larger than burst_table_bytes, not for max with its argmax.
template <bool kMax, int NV>
__attribute__((always_inline)) static inline bool bursts(const PoolArgs& a) {
  return kBurstPrefetch<NV> && a.burst && whole_slice_policy(a.prefetch) && !(kMax && a.max_indices);
}

// The weighted sum of vector NV - 1 of the rows of lookups [start, end) into out's vector NV - 1: the second loop of
// a weighted block whose accumulators took every register (splits_last_vector), over rows the first
// loop checked and left in L1. With the other accumulators stored first, nothing else is live, and the loop is a
// broadcast and an FMA a row. The alternative, accumulating that vector in the output row within the first loop
// (its product added to the output from memory), took longer: on an AVX2-only EPYC (caches flushed, E=1e6, D=128,
// B=4096, L=40, the two timed in turn in one process, 13 such runs), this took 1-5% less time in 10 runs, the same
// in one, and 1% and 3% more in the other two.
template <typename WT, typename IT, int NV>
__attribute__((always_inline)) static inline void last_vector_apart(const PoolArgs& a, const WT* weight,
                                                                    const IT* indices, int64_t dim, int64_t col,
                                                                    int64_t start, int64_t end, float* out) {
  typename V::F last = V::zero();
  for (int64_t i = start; i < end; ++i) {
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (idx == a.padding_idx) continue;
    last = V::fmadd(V::loadu(weight + idx * dim + col + (NV - 1) * V::W), V::set1(a.per_sample_weights[i]), last);
  }
  V::storeu(out + (NV - 1) * V::W, last);
}

// Whether lookup i's id `idx` is a row of the table; where not, the error report says so, and the pooling loops
// return false. Expected in range: without the hint gcc laid out some loops with the error report where the loop
// goes on and the row's work behind a jump, two taken branches a row. With the caches warm (512 KiB tables, one
// thread, B=4096, L=40, each build timed in one process), that had held the AVX2 kernels' float32 D=16 sum at
// 0.18-0.20 ms where it takes 0.15 ms (1.2x torch's embedding_bag to 1.6x); with the caches flushed (E=1e6, builds
// alternated in processes) the sums, means and max moved within the machine's noise, the AVX2 int8 D=128 11-14% faster.
__attribute__((always_inline)) static inline bool index_in_range(int64_t idx, int64_t num_rows, int64_t i,
                                                                 BagErrorReport* error) {
  if (__builtin_expect(static_cast<uint64_t>(idx) < static_cast<uint64_t>(num_rows), 1)) return true;
  error->kind = BagError::kIndexOutOfRange;
  error->position = i;
  error->value = idx;
  return false;
}

// Whether whole blocks of NV vectors of bf16 rows, in sum, mean and weighted sum, take pool_bf16_pairs, on ISAs with
// V::kBf16Pairs. A pass of a row pooled in several (pool_pass, kOnePass false) where its accumulators would take every
// register (AVX2's 16 vectors); a row of one pass in its kWhole variant where its bags are not prefetched in bursts
// (pool_bags, kOnePass true): of V::kConvertedVectors (D=128) on any table, where AVX-512's kWhole variants are only
// taken by tables that stay in the cache (whole_variants_when_cached), and of fewer pairs of at least 32 elements on
// tables that stay in the cache (see pool_bf16_pairs).
template <typename WT, bool kMax, int NV, bool kOnePass>
constexpr bool bf16_pairs() {
  if constexpr (IsBf16<WT>::value && !kMax && V::kBf16Pairs)
    return kOnePass ? NV % 2 == 0 && NV * V::W >= 32 : NV == V::kRegisters;
  else return false;
}

// Whether the rows of a table that stays in the cache whose one block of NV vectors is not whole pairs (pool_bags'
// kWhole variants of an odd NV; a partial block's unweighted and weighted ones, partial_variants_when_cached) take
// pool_bf16_pairs too (kTail: the last elements in a vector or a pair of their own, overlapping the one before, or in
// a masked pair on ISAs with V::kBf16PairTails): AVX-512's from two vectors on, AVX2's from four. With the caches warm
// (tables of 512-640 KiB, B=4096, L=40, one thread), each loop timed in turn in one process: AVX-512's D=48 took 13%
// less time so (0.95x torch's embedding_bag to 1.09x), D=80 16%, D=112 17% (0.95x to 1.15x), the partial D=20 3%,
// D=24 7%, D=40 9% (0.93x to 1.02x), D=63 13%, the means and weighted sums 9-15%. The AVX2 kernels, builds alternated
// in processes: D=28 0.93-0.95x torch to 1.00-1.07x, D=44 0.98x to 1.10-1.18x, D=56 0.97x to 1.09-1.10x, D=60 1.01x
// to 1.09-1.26x, D=72 0.95-0.97x to 1.12-1.14x, D=40 0.95x to 0.95-1.03x; their rows of three vectors (D=17-24), one
// pair and one vector, ran 5-10% slower so and keep pool_block.
template <typename WT, bool kMax, int NV, bool kWhole, bool kUnweighted, bool kWeighted>
constexpr bool bf16_tail_pairs() {
  constexpr bool kCachedRowLoop = kWhole ? NV % 2 == 1 : kUnweighted || kWeighted;
  if constexpr (IsBf16<WT>::value && !kMax && V::kBf16Pairs && kCachedRowLoop)
    return V::kBf16PairTails ? NV >= 2 : NV >= 4;
  else return false;
}

// The lane mask of a pair of `n` elements (P::pair_mask) and the pair's load, where kMasked; nothing otherwise, so that
// ISAs without V::kBf16PairTails need not define them.
template <typename P, bool kMasked>
static inline auto tail_pair_mask(int n) {
  if constexpr (kMasked) return P::pair_mask(n);
  else return n;
}
template <typename P, bool kMasked, typename PM>
__attribute__((always_inline)) static inline void load_masked_bf16_pair(const bf16_t* p, PM m, typename P::I odd_mask,
                                                                        typename P::F& even, typename P::F& odd) {
  if constexpr (kMasked) P::load_bf16_pair(p, m, odd_mask, even, odd);
}

// A whole block of NV vectors of bf16 rows, one pass of a row pooled in several (pool_pass), in the sum, mean
// and weighted sum. Each 32-byte load gives two vectors (P::load_bf16_pair: the even elements and the odd ones),
// three instructions for both, where converting each vector on its own takes two (a widening load and a
// shift); the pair's accumulators hold the elements out of order until P::interleave puts them back at the end.
// The first loop keeps kLoopPairs pairs, whose accumulators leave registers for the odd mask, the weight and two
// temporaries; the pairs left over go to a second loop over the bag's rows, then in L1, as in last_vector_apart.
// Converting each vector, the pass spilled accumulators to the stack on every row.
// On an AVX2-only EPYC (caches flushed, E=1e6, B=4096, L=40, the two loops timed in turn in one process), bf16 D=256
// took 8-19% less time in pairs in 12 runs of 14 over several builds and states of the machine (the same in one, 6%
// more in one), and 4-26% less in four runs of the final code; its weighted sum 14-21% less, its mean 3-13% less and
// D=512 18% less. Across those runs the vector-by-vector loop pooled D=256 at 0.70-0.97x torch's embedding_bag, pairs
// at 0.87-1.12x. Rows with a partial last pass gain too: D=192 took 20-23% less time in pairs in three runs, D=320
// 9-14% less in two, D=200 12-13% less in two and 8% more in one. Five pairs in the first loop ran about as fast as
// six, seven (spilling one) as the old loop, four or all eight in one loop slower. Narrower blocks (D=32, D=64), which
// spill nothing either way, ran no faster in pairs.
// A row of one pass (D=128) moved from 14% faster to 10% slower in pairs with the state of the machine there, with its
// rows from memory. With its rows from the caches the loop waits on its own instructions, and pairs are faster: with
// the AVX2 kernels on an AVX-512 EPYC (B=4096, L=40, the two alternated in one process), warm tables of 500 to 4,000
// rows (128 KiB to 1 MiB) took 9-24% less time in pairs (0.84-0.98x torch's embedding_bag to 1.04-1.23x), their mean
// and weighted sum 16-20% less; a 10 MiB table with the caches flushed 11-19% less, its mean and weighted sum 15-16%
// less. Tables whose bags are prefetched in bursts (past burst_table_bytes: 1e6 rows, flushed) moved between 7% faster
// and 5% slower, the weighted sum 4-5% slower, and keep pool_block there. Pairs in one pass of a bag are called out of
// line (pool_bf16_pairs_outlined): inlined into the bag loop, gcc kept the odd mask and two accumulators on the stack,
// and the loop ran slower than pool_block's.
// The AVX-512 kernels, whose 32 registers hold any pass, pool in pairs only where the conversion is what the loop
// waits on: rows of one pass from a table that stays in the cache. There (tables of 2,000 rows, 512 KiB, one thread,
// the two loops timed in turn in one process), bf16 D=128 took 20% less time in pairs (0.93x torch's embedding_bag to
// 1.16x), its weighted sum 29% less and its mean 19% less; called in line or out of line, the same. With the caches
// flushed (E=1e6), the two-line passes of D=128 and D=256, the weighted sum and D=64 ran as fast in pairs as without;
// warm D=256 (two passes of 128 elements) 10% slower. Narrower rows of one pass from the cache gain too, on either
// kernel set: warm D=64 took 23-26% less time in pairs on both (AVX-512: 0.80x torch to 1.20x), AVX2's D=32 14% less;
// AVX-512's D=32 (one pair) ran the same, AVX2's D=16 (one pair of 8) 6% slower and stays out (NV * W >= 32).
// Templated on the vector type (P) so that ISAs without the pair primitives need not define them.
template <typename P, typename IT, int NV, bool kWeighted, bool kTail = false>
__attribute__((always_inline)) static inline bool pool_bf16_pairs(const PoolArgs& a, const bf16_t* weight,
                                                                  const IT* indices, int64_t col, int64_t start,
                                                                  int64_t end, Prefetch prefetch, bf16_t* out,
                                                                  BagErrorReport* error) {
  using F = typename P::F;
  constexpr int W = P::W;
  static_assert(kTail || NV % 2 == 0, "a pass of bf16 pairs takes an even number of vectors");
  // kTail: the block's last elements are not a whole pair. Where NV is odd, the last W of them are a vector of their
  // own (kSingle); where it is even, the last 2W a pair (kOverlapPair), or a pair of masked loads and stores where the
  // block is shorter (kMaskedPair, NV = 2). Either overlaps the pair before it, as kOverlapLast in pool_block: the
  // lanes of both hold the same elements pooled in the same order, so the same sums, and it is stored last.
  constexpr bool kSingle = kTail && NV % 2 == 1;
  constexpr bool kMaskedPair = kTail && NV == 2;
  constexpr bool kOverlapPair = kTail && NV % 2 == 0 && NV > 2;
  constexpr int kPairs = NV / 2;
  constexpr int kLoopPairs = kPairs < 6 ? kPairs : 6;
  F even[kPairs], odd[kPairs], single = P::zero();
  MPREC_UNROLL for (int k = 0; k < kPairs; ++k) even[k] = odd[k] = P::zero();
  const typename P::I odd_mask = P::bf16_odd_mask();
  const int64_t dim = a.dim;
  const int64_t num_rows = a.num_rows;
  const int64_t padding_idx = a.padding_idx;  // -1: none
  const int64_t distance = bag_prefetch_distance(a, end, prefetch_distance<bf16_t, NV>(a, prefetch));
  const int64_t cols = dim - col;
  const auto pair_mask = tail_pair_mask<P, kMaskedPair>(static_cast<int>(cols));
  // Where pair k starts: the last one of kOverlapPair ends where the block ends.
  const auto pair_col = [&](int k) __attribute__((always_inline)) {
    return kOverlapPair && k == kPairs - 1 ? cols - 2 * W : static_cast<int64_t>(2 * k * W);
  };
  // Pair k of row `row` into its accumulators, weighted by w where kWeighted.
  const auto pool_pair = [&](const bf16_t* row, int k, F w) __attribute__((always_inline)) {
    F e, o;
    if (kMaskedPair && k == kPairs - 1) load_masked_bf16_pair<P, kMaskedPair>(row, pair_mask, odd_mask, e, o);
    else P::load_bf16_pair(row + pair_col(k), odd_mask, e, o);
    if constexpr (kWeighted) {
      even[k] = P::fmadd(e, w, even[k]);
      odd[k] = P::fmadd(o, w, odd[k]);
    } else {
      even[k] = P::add(even[k], e);
      odd[k] = P::add(odd[k], o);
    }
  };
  const auto weight_of = [&](int64_t i) __attribute__((always_inline)) {
    return kWeighted ? P::set1(a.per_sample_weights[i]) : P::zero();
  };
  int64_t count = 0;
  for (int64_t i = start; i < end; ++i) {
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (!index_in_range(idx, num_rows, i, error)) return false;
    if (idx == padding_idx) continue;  // idx is in range, so -1 (none) skips nothing
    if (prefetch != Prefetch::kNone)
      prefetch_lookup<bf16_t, NV>(a, weight, indices, dim, col, i + distance, prefetch);
    const bf16_t* row = weight + idx * dim + col;
    const F w = weight_of(i);
    MPREC_UNROLL for (int k = 0; k < kLoopPairs; ++k) pool_pair(row, k, w);
    if constexpr (kSingle) {
      const F x = P::loadu(row + cols - W);
      single = kWeighted ? P::fmadd(x, w, single) : P::add(single, x);
    }
    ++count;
  }
  if constexpr (kLoopPairs < kPairs) {
    for (int64_t i = start; i < end; ++i) {  // the first loop checked every index
      const int64_t idx = static_cast<int64_t>(indices[i]);
      if (idx == padding_idx) continue;
      const F w = weight_of(i);
      MPREC_UNROLL for (int k = kLoopPairs; k < kPairs; ++k) pool_pair(weight + idx * dim + col, k, w);
    }
  }
  const bool mean = a.mode == PoolMode::kMean && count > 0;
  const F scale = P::set1(mean ? 1.f / static_cast<float>(count) : 1.f);
  MPREC_UNROLL for (int k = 0; k < kPairs; ++k) {
    F first, second;
    P::interleave(even[k], odd[k], first, second);
    if (mean) {
      first = P::mul(first, scale);
      second = P::mul(second, scale);
    }
    const bool masked = kMaskedPair && k == kPairs - 1;  // cols - W of its elements past its first vector
    P::store(out + pair_col(k), first, P::mask(W));
    P::store(out + pair_col(k) + W, second, P::mask(masked ? static_cast<int>(cols) - W : W));
  }
  if constexpr (kSingle) P::store(out + cols - W, mean ? P::mul(single, scale) : single, P::mask(W));
  return true;
}

// Whether a row of one block of NV vectors of a table that stays in the cache pools into two sets of accumulators, a
// bag's even lookups into one and its odd ones into the other, added at the end: rows of at most 16 elements, in sum,
// mean and weighted sum, in the loops of such tables' rows: a whole block's kWhole variant (pool_block's kOneBlock) or
// a partial block's unweighted or weighted one (partial_variants_when_cached). Such a row's loop is a few instructions,
// and from the cache its loads wait little; what it waits on is the chain of adds through each accumulator, one a row,
// which two sets halve. With the caches warm (tables of 512 KiB, B=4096, L=40, one thread, each loop timed in turn in
// one process), D=16 took 10-17% less time on both kernel sets in float32, bf16 and fp16 (AVX-512's bf16 D=16 from
// 0.90x torch's embedding_bag to 1.09x), its mean and weighted sum 9-15% less, AVX2's D=8 9-11% less. Partial blocks:
// AVX-512's bf16 and fp16 D=8 and D=12 5-13% less (bf16 D=8 0.88-0.92x torch to 1.01-1.05x), float32 1-5% less; AVX2's
// bf16 and fp16 D=4 9-14% less, its D=12 3-10% less, float32 D=4 the same. Row-wise int8, whose rows' biases are summed
// in two sets too (tables of 64-192 KiB and their scales and biases, the builds alternated in processes, with pool_bags
// still inlined): AVX-512's partial D=4 to D=12 from 0.93-0.98x torch to 0.98-1.06x, their weighted sum 0.87-0.92x to
// 1.24x, mean 0.91x to 0.99-1.01x; AVX2's D=4 the same within a noisy machine's spread; whole int8 blocks ran slower so
// (AVX-512's D=16 4-8%, AVX2's 10%) and keep one set. Wider rows (whole D=24 and D=32, AVX-512's partial D=20 and D=24)
// ran the same or slower; with the caches flushed (E=1e6) D=16 gained nothing and its one-lookup bags lost 7%.
template <typename WT, bool kMax, int NV, bool kWhole, bool kUnweighted, bool kWeighted, bool kOneBlock>
constexpr bool two_accumulator_sets() {
  constexpr bool kCachedRowLoop = (kWhole && kOneBlock) || (!kWhole && (kUnweighted || kWeighted));
  return V::kCachedLoops && kCachedRowLoop && !kMax && NV * V::W <= 16 && (sizeof(WT) != 1 || !kWhole);
}

// The loop of pool_block where two_accumulator_sets says, reading vector v of a row as load(row, v) does: acc[] holds
// the sum (or weighted sum) of the bag's rows, bias_sum that of row-wise int8 rows' biases (as in pool_block) and
// `skipped` its lookups of padding_idx on return. No prefetch: the rows of a table that stays in the cache are too
// narrow for one (cached_prefetch).
template <typename WT, typename IT, int NV, bool kUnweighted, typename Load>
__attribute__((always_inline)) static inline bool pool_two_sets(const PoolArgs& a, const WT* weight,
                                                                const IT* indices, int64_t start, int64_t end,
                                                                int64_t dim, const Load& load,
                                                                typename V::F* acc, float& bias_sum,
                                                                int64_t& skipped, BagErrorReport* error) {
  using F = typename V::F;
  const int64_t num_rows = a.num_rows;
  const int64_t padding_idx = a.padding_idx;  // -1: none
  F odd[NV];
  MPREC_UNROLL for (int v = 0; v < NV; ++v) odd[v] = V::zero();
  float odd_bias = 0.f;
  const auto pool_row = [&](int64_t i, F* sums, float& bias) __attribute__((always_inline)) {
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (!index_in_range(idx, num_rows, i, error)) return false;
    if (idx == padding_idx) {  // idx is in range, so -1 (none) skips nothing
      ++skipped;
      return true;
    }
    const WT* row = weight + idx * dim;
    if constexpr (sizeof(WT) == 1) {  // row-wise int8: x = q * scale + bias
      const float w = kUnweighted ? 1.f : a.per_sample_weights[i];
      const F s = V::set1(w * a.scale_bias[2 * idx]);
      MPREC_UNROLL for (int v = 0; v < NV; ++v) sums[v] = V::fmadd(load(row, v), s, sums[v]);
      bias += w * a.scale_bias[2 * idx + 1];
    } else if constexpr (kUnweighted) {
      MPREC_UNROLL for (int v = 0; v < NV; ++v) sums[v] = V::add(sums[v], load(row, v));
    } else {
      const F w = V::set1(a.per_sample_weights[i]);
      MPREC_UNROLL for (int v = 0; v < NV; ++v) sums[v] = V::fmadd(load(row, v), w, sums[v]);
    }
    return true;
  };
  int64_t i = start;
  for (; i + 1 < end; i += 2) {
    if (!pool_row(i, acc, bias_sum)) return false;
    if (!pool_row(i + 1, odd, odd_bias)) return false;
  }
  if (i < end && !pool_row(i, acc, bias_sum)) return false;
  MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = V::add(acc[v], odd[v]);
  bias_sum += odd_bias;
  return true;
}

// A block of NV vectors of one bag. The kWhole variants know at compile time whether the call has per-sample
// weights: kUnweighted says it has none, so that the loop keeps no register for a weight (the same register pressure
// as kWhole's), and the other kWhole variant is only called with weights; so is a partial block's kWeighted variant
// (partial_variants_when_cached). The general variant checks per row.
// kOneBlock: the row is this one whole block (a kWhole block of pool_bags), so its length is a constant: the loop
// computes row addresses with a shift rather than a multiply by a length kept in a register, which on AVX2, whose
// accumulators leave the loop's scalar values short of registers too, had been reloaded from the stack every row.
// Inlined into the loops that call it (pool_bags, pool_pass): a call per bag cost as much as pooling a bag of one
// lookup.
template <typename WT, typename IT, bool kMax, int NV, bool kWhole = false, bool kUnweighted = false,
          bool kOneBlock = false, bool kWeighted = false>
__attribute__((always_inline)) static inline bool pool_block(const PoolArgs& a, const WT* weight, const IT* indices,
                                                             int64_t col, int64_t start, int64_t end,
                                                             Prefetch prefetch, typename OutputOf<WT>::type* out,
                                                             int64_t* arg_out, BagErrorReport* error) {
  using F = typename V::F;
  constexpr int W = V::W;
  const int64_t dim = kOneBlock ? NV * W : a.dim;
  const int64_t num_rows = a.num_rows;
  const int64_t cols = (dim - col < NV * W) ? dim - col : NV * W;
  const typename V::M tail = V::mask(static_cast<int>(cols - (NV - 1) * W));
  const typename V::M full = V::mask(W);
  const int64_t distance = bag_prefetch_distance(a, end, prefetch_distance<WT, NV>(a, prefetch));
  // A block of several vectors whose last one is partial, in sum, mean and weighted sum, loads that one whole, ending
  // where the block ends: its first lanes are the previous vector's last ones again, pooled in the same order to the
  // same sums, and stored over them. No lane mask, which had cost more than the lanes it saves: with the caches
  // flushed (E=1e6, B=4096, L=40, two threads, the two builds alternated in processes), float32 D=20 took 37-44% less
  // time on both kernel sets (1.2x torch's embedding_bag to 1.8-1.97x), AVX-512's D=24 38-40% less, fp16 D=100
  // 20-25% less on AVX-512; on AVX2, whose masked 16-bit and int8 loads copy through a buffer, bf16 D=20 took 47-51%
  // less (0.46x torch to 0.9x) and int8 D=100 27-30% less. Warm, AVX2's bf16 D=20 took a fifth of the time, its
  // float32 D=12 12% less. Max mode, whose argmax walk loads the rows again (max_args), keeps the mask.
  constexpr bool kOverlapLast = !kWhole && !kMax && NV >= 2;
  const int64_t last_col = cols - W;  // where the last vector starts, under kOverlapLast
  const auto block_vector = [&](const WT* row, int v) __attribute__((always_inline)) {
    if constexpr (kOverlapLast) return V::loadu(row + (v == NV - 1 ? last_col : v * W));
    else return load_vector<NV, kWhole>(row, v, tail);
  };

  // A weighted block whose accumulators take every register pools all but the last vector here, and a second loop
  // over the bag's rows, then in L1, pools the last one after the others are stored (see splits_last_vector).
  constexpr int kWeightedVectors = splits_last_vector<WT, kMax, NV, kWhole, kUnweighted>() ? NV - 1 : NV;
  F acc[NV];
  MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = kMax ? V::neg_inf() : V::zero();
  constexpr bool kArgInPass = kMax && arg_in_pass<NV>();
  // Max mode without an arg_out (the caller wants no argmax): the pass keeps the maxima alone and no walk follows,
  // so it costs little more than a sum of the same rows. A branch per row, the same every time, rather than
  // variants of their own, which would add as much code again as max mode has.
  const bool args = kMax && arg_out != nullptr;
  typename V::I arg[kArgInPass ? NV : 1];
  if constexpr (kArgInPass) MPREC_UNROLL for (int v = 0; v < NV; ++v) arg[v] = V::arg_init();
  float bias_sum = 0.f;  // uint8 rows in sum/mean mode: sum of w * bias, added once at the end
  // The lookups of padding_idx, counted where they are skipped rather than the others where they are pooled: an
  // increment per row, which register pressure kept on the stack, is a load and a store per row.
  int64_t skipped = 0;
  const int64_t padding_idx = a.padding_idx;  // -1: none
  bool two_sets = false;
  if constexpr (two_accumulator_sets<WT, kMax, NV, kWhole, kUnweighted, kWeighted, kOneBlock>())
    two_sets = a.prefetch == RowPrefetch::kNone;
  if (two_sets) {
    if (!pool_two_sets<WT, IT, NV, kUnweighted>(a, weight, indices, start, end, dim, block_vector, acc, bias_sum,
                                                skipped, error))
      return false;
  } else for (int64_t i = start; i < end; ++i) {
    const int64_t idx = static_cast<int64_t>(indices[i]);
    if (!index_in_range(idx, num_rows, i, error)) return false;
    if (idx == padding_idx) {  // idx is in range, so -1 (none) skips nothing
      ++skipped;
      continue;
    }
    if (prefetch != Prefetch::kNone)
      prefetch_lookup<WT, NV, IT, kOneBlock>(a, weight, indices, dim, col, i + distance, prefetch);
    const WT* row = weight + idx * dim + col;
    // Known in the kWhole variants: a runtime check would keep the unweighted loop, whose accumulators take every
    // register, beside the weighted one, and gcc then allocated registers for both: a weighted float32 D=128 block on
    // AVX2 spilled two accumulators to the stack on every row, though its loop leaves the last vector to a second one.
    const bool weighted = !kUnweighted && (kWhole || kWeighted || a.per_sample_weights);
    const float w = weighted ? a.per_sample_weights[i] : 1.f;
    if constexpr (sizeof(WT) == 1) {
      // Row-wise int8: x = q * scale + bias.
      const float scale = a.scale_bias[2 * idx];
      const float bias = a.scale_bias[2 * idx + 1];
      if (kMax) {
        const F s = V::set1(scale), b = V::set1(bias);
        if (kArgInPass && args) {
          const typename V::I r = V::arg_row(idx);
          MPREC_UNROLL for (int v = 0; v < NV; ++v)
            V::max_update(acc[v], arg[v], row_vector<NV, kWhole>(row, v, tail, s, b), r);
        } else {
          MPREC_UNROLL for (int v = 0; v < NV; ++v)
            acc[v] = V::max(row_vector<NV, kWhole>(row, v, tail, s, b), acc[v]);
        }
      } else {
        const F s = V::set1(w * scale);
        MPREC_UNROLL for (int v = 0; v < NV; ++v)
          acc[v] = V::fmadd(block_vector(row, v), s, acc[v]);
        bias_sum += w * bias;
      }
    } else {
      if (kArgInPass && args) {
        const typename V::I r = V::arg_row(idx);
        MPREC_UNROLL for (int v = 0; v < NV; ++v)
          V::max_update(acc[v], arg[v], load_vector<NV, kWhole>(row, v, tail), r);
      } else if (kMax) {
        MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = V::max(load_vector<NV, kWhole>(row, v, tail), acc[v]);
      } else if (weighted) {
        const F wv = V::set1(w);
        MPREC_UNROLL for (int v = 0; v < kWeightedVectors; ++v)
          acc[v] = V::fmadd(block_vector(row, v), wv, acc[v]);
      } else {  // no weight to broadcast: one register more for accumulators
        MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = V::add(acc[v], block_vector(row, v));
      }
    }
  }
  const int64_t count = (end - start) - skipped;  // rows pooled
  if constexpr (kWeightedVectors < NV) {
    // A weighted sum (a kWhole variant with weights): the output is complete once the last vector is (no mean, no
    // int8 bias).
    MPREC_UNROLL for (int v = 0; v < NV - 1; ++v) V::storeu(out + v * W, acc[v]);
    last_vector_apart<WT, IT, NV>(a, weight, indices, dim, col, start, end, out);
    return true;
  }
  if constexpr (!kMax && kWhole && NV == V::kRegisters && sizeof(WT) != 1) {
    // Accumulators in every register (AVX2's float32 and 16-bit D=128 sums): they are stored as they are, as float32
    // (into the output, or for 16-bit rows into a buffer), and what follows works on memory: a mean's scale, the
    // rounding to 16 bits and its constants. Done in registers, those values would be live beside all the
    // accumulators, and gcc then kept some of them on the stack through the whole loop, a store and a reload every
    // row: two of the float32 mean's, and five of a bf16 sum's (two now, beside its conversion register). The empty
    // asm makes gcc reload the stored sums rather than reuse the registers it stored. Int8 rows, whose loop keeps a
    // scale and a bias sum beside the accumulators, ran slower this way (the AVX2 kernels on an AVX-512 EPYC, three
    // alternating runs: 0.67-0.71 of the gather limit against 0.72-0.80) and add their bias in registers below.
    alignas(32) float buffer[sizeof(WT) == 2 ? NV * W : 1];
    float* sums;
    if constexpr (sizeof(WT) == 2) sums = buffer;
    else sums = out;
    MPREC_UNROLL for (int v = 0; v < NV; ++v) V::storeu(sums + v * W, acc[v]);
    const bool mean = a.mode == PoolMode::kMean && count > 0;
    if (sizeof(WT) == 2 || mean) {
      __asm__ __volatile__("" : : "r"(sums) : "memory");
      const F s = V::set1(mean ? 1.f / static_cast<float>(count) : 1.f);
      MPREC_UNROLL for (int v = 0; v < NV; ++v) {
        const F x = V::loadu(sums + v * W);
        V::store(out + v * W, mean ? V::mul(x, s) : x, full);
      }
    }
    return true;
  }
  if (kMax) {
    if (count == 0) {
      MPREC_UNROLL for (int v = 0; v < NV; ++v) {
        acc[v] = V::zero();
        if (args) V::store_arg(arg_out + v * W, V::arg_init(), v == NV - 1 ? tail : full);
      }
    } else if (args) {
      if constexpr (kArgInPass) {
        MPREC_UNROLL for (int v = 0; v < NV; ++v) V::store_arg(arg_out + v * W, arg[v], v == NV - 1 ? tail : full);
      } else {
        alignas(64) float best[NV * W];
        MPREC_UNROLL for (int v = 0; v < NV; ++v) V::store(best + v * W, acc[v], full);
        max_args<WT, IT, NV, kWhole>(a, weight, indices, col, start, end, best, tail, prefetch, arg_out);
      }
    }
  } else {
    if (sizeof(WT) == 1 && bias_sum != 0.f) {
      const F b = V::set1(bias_sum);
      const F one = V::set1(1.f);
      MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = V::fmadd(b, one, acc[v]);
    }
    if (a.mode == PoolMode::kMean && count > 0) {
      const F s = V::set1(1.f / static_cast<float>(count));
      MPREC_UNROLL for (int v = 0; v < NV; ++v) acc[v] = V::mul(acc[v], s);
    }
  }
  // A whole float32 block stores unmasked too: on the EPYC, bags of one lookup (one D=16 store each) pooled about
  // 5% faster than with AVX-512's masked store of a full mask.
  if constexpr (kWhole && sizeof(WT) == 4) {
    MPREC_UNROLL for (int v = 0; v < NV; ++v) V::storeu(out + v * W, acc[v]);
  } else if constexpr (kOverlapLast) {
    MPREC_UNROLL for (int v = 0; v < NV - 1; ++v) V::store(out + v * W, acc[v], full);
    V::store(out + last_col, acc[NV - 1], full);
  } else {
    MPREC_UNROLL for (int v = 0; v < NV; ++v) V::store(out + v * W, acc[v], v == NV - 1 ? tail : full);
  }
  return true;
}

// Pass `col` of a row pooled in several passes over a bag's rows (pool_passes, pool_pass_outlined): a whole block
// of bf16 rows in pairs where bf16_pairs says, any other block as pool_block does.
template <typename WT, typename IT, bool kMax, int NV, bool kWhole = false, bool kUnweighted = false>
__attribute__((always_inline)) static inline bool pool_pass(const PoolArgs& a, const WT* weight, const IT* indices,
                                                            int64_t col, int64_t start, int64_t end,
                                                            Prefetch prefetch, typename OutputOf<WT>::type* out,
                                                            int64_t* arg_out, BagErrorReport* error) {
  if constexpr (bf16_pairs<WT, kMax, NV, false>()) {
    if (a.dim - col >= NV * V::W) {
      if (a.per_sample_weights)
        return pool_bf16_pairs<V, IT, NV, true>(a, weight, indices, col, start, end, prefetch, out, error);
      return pool_bf16_pairs<V, IT, NV, false>(a, weight, indices, col, start, end, prefetch, out, error);
    }
  }
  return pool_block<WT, IT, kMax, NV, kWhole, kUnweighted>(a, weight, indices, col, start, end, prefetch, out,
                                                          arg_out, error);
}

// Bag `bag`'s output row, and its row of max mode's argmaxes (nullptr in other modes, and where the call wants none),
// in a call whose output starts at bag `output_bag_base`.
template <typename WT>
__attribute__((always_inline)) static inline typename OutputOf<WT>::type* bag_output(const PoolArgs& a, int64_t bag,
                                                                                     int64_t output_bag_base) {
  return static_cast<typename OutputOf<WT>::type*>(a.output) + (bag - output_bag_base) * a.output_stride;
}
template <bool kMax>
__attribute__((always_inline)) static inline int64_t* bag_max_indices(const PoolArgs& a, int64_t bag,
                                                                      int64_t output_bag_base) {
  return kMax && a.max_indices ? a.max_indices + (bag - output_bag_base) * a.max_indices_stride : nullptr;
}

// Bag `bag`'s lookups [start, end). Offsets are checked here, bag by bag, rather than in a pass of their own.
template <typename IT>
__attribute__((always_inline)) static inline bool bag_range(const PoolArgs& a, const IT* offsets, int64_t bag,
                                                            int64_t& start, int64_t& end, BagErrorReport* error) {
  start = static_cast<int64_t>(offsets[bag]);
  end = bag + 1 < a.num_offsets ? static_cast<int64_t>(offsets[bag + 1]) : a.num_indices;
  if (end > a.num_indices) {
    error->kind = BagError::kOffsetPastEnd;
    error->position = bag + 1;
    error->value = end;
    return false;
  }
  if (end < start || start < 0) {
    error->kind = BagError::kOffsetDecreasing;
    error->position = bag + 1;
    error->value = end;
    return false;
  }
  return true;
}

// The first bag's lookup where every bag of [bag_begin, bag_end) holds exactly one lookup, the next after the
// previous bag's (so the offsets are valid too), else -1. A table of one-hot features: pool_bags then pools lookup
// first + i as bag bag_begin + i without reading the offsets per bag, the block's loop known to run once. Caches
// flushed, one-hot D=16 (65,536 bags of E=1e6), that took 18-26% less time than the general bag loop, AVX-512 and
// AVX2 kernels alike, on a 2-core EPYC. Other tables stop the scan at their first bag of another size.
template <typename IT>
static int64_t first_of_one_lookup_bags(const PoolArgs& a, const IT* offsets, int64_t bag_begin, int64_t bag_end) {
  if (bag_begin >= bag_end) return -1;
  const int64_t first = static_cast<int64_t>(offsets[bag_begin]);
  if (first < 0 || first > a.num_indices) return -1;  // also keeps first + (bag - bag_begin) from overflowing
  for (int64_t bag = bag_begin + 1; bag < bag_end; ++bag)
    if (static_cast<int64_t>(offsets[bag]) != first + (bag - bag_begin)) return -1;
  const int64_t end = bag_end < a.num_offsets ? static_cast<int64_t>(offsets[bag_end]) : a.num_indices;
  return end == first + (bag_end - bag_begin) && end <= a.num_indices ? first : -1;
}

// One pass of one bag, out of line: rows of several blocks, the last partial, dispatch per bag and block, and
// inlining every variant into that loop would only grow it.
template <typename WT, typename IT, bool kMax, int NV, bool kWhole = false, bool kUnweighted = false>
__attribute__((noinline)) static bool pool_pass_outlined(const PoolArgs& a, const WT* weight, const IT* indices,
                                                         int64_t col, int64_t start, int64_t end, Prefetch prefetch,
                                                         typename OutputOf<WT>::type* out, int64_t* arg_out,
                                                         BagErrorReport* error) {
  return pool_pass<WT, IT, kMax, NV, kWhole, kUnweighted>(a, weight, indices, col, start, end, prefetch, out,
                                                         arg_out, error);
}

// One bag of bf16 rows of one block in pairs (see pool_bf16_pairs), out of line: the bag loop around it would take its
// registers.
template <typename IT, int NV, bool kWeighted, bool kTail = false>
__attribute__((noinline)) static bool pool_bf16_pairs_outlined(const PoolArgs& a, const bf16_t* weight,
                                                               const IT* indices, int64_t start, int64_t end,
                                                               Prefetch prefetch, bf16_t* out, BagErrorReport* error) {
  return pool_bf16_pairs<V, IT, NV, kWeighted, kTail>(a, weight, indices, 0, start, end, prefetch, out, error);
}

// Bags [bag_begin, bag_end) of a table whose rows are one block, the bag loop inside the block's variant: a bag of
// one lookup (one-hot features, as most of Criteo's) costs no dispatch and no call. With a dispatch, a call and the
// block's setup per bag, such bags (D=16, rows in the cache) pooled at 0.67-0.81x torch's embedding_bag, and at
// 1.0-1.15x this way. Never inlined into pool_typed, whose dispatch keeps its own values live: gcc inlined some int8
// variants there, and their loop then kept the table's address and the row's offset in vector registers, moved back
// and forth every row. Warm, one thread, the builds alternated in processes: AVX-512's row-wise int8 D=4 to D=12
// pooled at 0.98-1.06x torch's embedding_bag so, and at 1.26-1.36x out of line, their mean 1.0x and 1.3x.
template <typename WT, typename IT, bool kMax, int NV, bool kWhole = false, bool kUnweighted = false,
          bool kWeighted = false>
__attribute__((noinline)) static bool pool_bags(const PoolArgs& args, const WT* weight, const IT* indices,
                                                const IT* offsets, int64_t bag_begin, int64_t bag_end,
                                                int64_t output_bag_base, Prefetch prefetch, BagErrorReport* error) {
  using OT = typename OutputOf<WT>::type;
  // A copy, which no store through the output (or the error report) can alias: gcc then keeps the fields and
  // what the block derives from them (its lane mask, its prefetch distance) out of the bag loop.
  const PoolArgs a = args;
  if (const int64_t first = first_of_one_lookup_bags(a, offsets, bag_begin, bag_end); first >= 0) {
    for (int64_t bag = bag_begin; bag < bag_end; ++bag) {
      const int64_t i = first + (bag - bag_begin);
      OT* out = bag_output<WT>(a, bag, output_bag_base);
      int64_t* arg_out = bag_max_indices<kMax>(a, bag, output_bag_base);
      if (!pool_block<WT, IT, kMax, NV, kWhole, kUnweighted, kWhole, kWeighted>(a, weight, indices, 0, i, i + 1,
                                                                                prefetch, out, arg_out, error))
        return false;
    }
    return true;
  }
  // The bags of several lookups, prefetching as `p` says: in a burst per bag where `bursts` says.
  const bool burst = bursts<kMax, NV>(a);
  const auto bags = [&](auto kind) {
    const Prefetch p = kind_value(kind);
    const int64_t burst_distance = prefetch_distance<WT, NV>(a, p);
    int64_t prefetched = 0;
    for (int64_t bag = bag_begin; bag < bag_end; ++bag) {
      int64_t start, end;
      if (!bag_range(a, offsets, bag, start, end, error)) return false;
      OT* out = bag_output<WT>(a, bag, output_bag_base);
      int64_t* arg_out = bag_max_indices<kMax>(a, bag, output_bag_base);
      if (burst && p != Prefetch::kNone) {
        prefetched = prefetch_burst<WT, NV, IT, kWhole>(a, weight, indices, prefetched, start, end, burst_distance, p);
        if (!pool_block<WT, IT, kMax, NV, kWhole, kUnweighted, kWhole, kWeighted>(a, weight, indices, 0, start, end,
                                                                                  Prefetch::kNone, out, arg_out,
                                                                                  error))
          return false;
        continue;
      }
      if constexpr (kWhole && bf16_pairs<WT, kMax, NV, true>()) {  // see pool_bf16_pairs
        if (NV == V::kConvertedVectors || p == Prefetch::kNone || p == Prefetch::kCached) {
          if (!pool_bf16_pairs_outlined<IT, NV, !kUnweighted>(a, weight, indices, start, end, p, out, error))
            return false;
          continue;
        }
      } else if constexpr (bf16_tail_pairs<WT, kMax, NV, kWhole, kUnweighted, kWeighted>()) {
        if (p == Prefetch::kNone || p == Prefetch::kCached) {
          constexpr bool kWeighs = kWhole ? !kUnweighted : kWeighted;
          if (!pool_bf16_pairs_outlined<IT, NV, kWeighs, true>(a, weight, indices, start, end, p, out, error))
            return false;
          continue;
        }
      }
      if (!pool_block<WT, IT, kMax, NV, kWhole, kUnweighted, kWhole, kWeighted>(a, weight, indices, 0, start, end, p,
                                                                                out, arg_out, error))
        return false;
    }
    return true;
  };
  // Blocks wider than kWholeSliceLines lines under whole-slice prefetch get that loop with the kind a constant, and so
  // do the blocks of kCached.
  // gcc does not unswitch so large a loop on the runtime kind, and the compares that pick every lookup's prefetch
  // left fewer rows in flight: on the AMD EPYC (caches flushed, E=1e6, B=4096, L=40), the AVX2 kernel's float32
  // D=128 sum, whose 16 accumulators make the widest loop, took 5-7% less time this way, its mean a little less,
  // its weighted sum and the AVX-512 kernel's rows the same. A constant kind per loop for every kind and width
  // measured no faster and grew the library by a sixth.
  if constexpr (cached_prefetch<WT>(NV * V::W)) {
    if (prefetch == Prefetch::kCached) return bags(PrefetchConst<Prefetch::kCached>{});
  }
  // The kWhole variants that only tables in the cache take (whole_variants_when_cached), and the partial blocks'
  // unweighted and weighted ones (partial_variants_when_cached): the kind is kNone here, and no other loop is
  // instantiated.
  if constexpr ((kWhole && !whole_variants<WT, NV>()) || (!kWhole && (kUnweighted || kWeighted))) {
    return bags(PrefetchConst<Prefetch::kNone>{});
  } else {
    if constexpr (lines_of<WT>(NV * V::W) > kWholeSliceLines) {
      if (prefetch == Prefetch::kWholeSlice) return bags(PrefetchConst<Prefetch::kWholeSlice>{});
    }
    // And so do whole blocks on tables that stay in the cache (kNone), whose loop waits on its own instructions: one
    // thread, warm 512 KiB tables, the AVX-512 kernels' float32 D=64 and fp16 D=32 took 4-16% less time so, the
    // AVX2 kernels' float32 D=32 and fp16 D=64 6%; other widths and types the same.
    if constexpr (kWhole && V::kCachedLoops) {
      if (prefetch == Prefetch::kNone) return bags(PrefetchConst<Prefetch::kNone>{});
    }
    return bags(prefetch);
  }
}

// Bags [bag_begin, bag_end) of a table whose rows are several whole blocks of NV vectors, every pass over a bag's rows
// inlined into one loop, the first prefetching as `first` says and the later ones as `later`. The general loop
// (pool_typed) picks a variant and makes a call per pass and bag, which cost as much as a few of the bag's rows: on
// a 2-core AVX2-only EPYC, one thread, float32 D=256 with the rows in L2 pooled 1.18x as fast this way, in L3 1.12x.
template <typename WT, typename IT, bool kMax, int NV, bool kWhole = false, bool kUnweighted = false>
static bool pool_passes(const PoolArgs& args, const WT* weight, const IT* indices, const IT* offsets,
                        int64_t bag_begin, int64_t bag_end, int64_t output_bag_base, Prefetch first, Prefetch later,
                        BagErrorReport* error) {
  using OT = typename OutputOf<WT>::type;
  const PoolArgs a = args;  // a copy no store can alias, as in pool_bags
  // Whole rows in a burst per bag where `bursts` says, as in pool_bags, from the first pass's distance; not float32
  // rows under RowPrefetch::kWholeSlices (see kBurstPrefetch).
  const bool burst = bursts<kMax, NV>(a) &&
                     !(sizeof(WT) == 4 && a.prefetch == RowPrefetch::kWholeSlices) && first != Prefetch::kNone;
  const int64_t burst_distance = prefetch_distance<WT, NV>(a, first);
  int64_t prefetched = 0;
  for (int64_t bag = bag_begin; bag < bag_end; ++bag) {
    int64_t start, end;
    if (!bag_range(a, offsets, bag, start, end, error)) return false;
    OT* out = bag_output<WT>(a, bag, output_bag_base);
    int64_t* arg_out = bag_max_indices<kMax>(a, bag, output_bag_base);
    if (burst)
      prefetched = prefetch_burst<WT, NV, IT, false>(a, weight, indices, prefetched, start, end, burst_distance,
                                                     Prefetch::kRow);
    for (int64_t col = 0; col < a.dim; col += NV * V::W) {
      const Prefetch p = burst ? Prefetch::kNone : col == 0 ? first : later;
      if (!pool_pass<WT, IT, kMax, NV, kWhole, kUnweighted>(a, weight, indices, col, start, end, p, out + col,
                                                            arg_out ? arg_out + col : nullptr, error))
        return false;
    }
  }
  return true;
}

// Whether a partial block (its last vector partial: loaded whole where the block has several, see kOverlapLast in
// pool_block; masked where it has one) of a table that stays in the cache takes bag loops of its own: unprefetched,
// and unweighted or weighted, as constants (pool_bags' kUnweighted and kWeighted variants without kWhole), as whole
// blocks of such tables do. The general loop decides per row whether to weigh and how to prefetch, and gcc laid it out
// with two taken branches a row. With the caches warm (tables of 400-800 KiB, B=4096, L=40, one thread, the two builds
// alternated in processes), AVX-512's fp16 D=24 took 28-41% less time so (0.60x torch's embedding_bag to 0.98-1.01x),
// its bf16 D=20 22% less (0.79x to 0.98x), float32 D=20 and D=24 9-32% less (0.83-0.92x to 1.09-1.15x); AVX2's float32
// D=12 32% less (0.77x to 1.11-1.13x), D=20 22% less, bf16 D=20 46% less (0.53-0.64x to 0.99x). Blocks of one masked
// vector: AVX-512's bf16 D=4 to D=12 17-38% less (0.73-0.79x to 0.88-0.98x), fp16 D=8 17-20% less (0.90-0.94x to
// 1.10-1.13x), its float32 D=8 3-4% more; AVX2's float32 D=4 18-20% less (0.80-0.82x to 0.95-0.96x). Rows of up to 64
// elements, which spend the least a row on pooling and the most on that overhead; fp16 D=40 (prefetched into L1,
// kCached) ran the same either way. Weighted float32 (each loop in turn in one process): AVX-512's D=8 to D=24 3-13%
// less time (D=24 1.01x torch to 1.16x), AVX2's D=12 21% less (0.90x to 1.14x) and D=20 8% less (0.93x to 1.01x).
// bf16 blocks of up to 128 elements too, whose loops of their own pool in pairs (bf16_tail_pairs): builds alternated in
// processes, tables of 2,000 rows, AVX-512's D=72 took 18% less time (0.93x torch to 1.13x), D=84 15%, D=100 12%
// (0.94x to 1.07x), D=120 21% (0.94x to 1.19x), D=100's mean 12%; AVX2's D=84 9% (0.99x to 1.09x), D=100 16-17%
// (1.08-1.12x to 1.28x), its mean 15%. Other types' blocks of 65-128 elements moved between 4% slower (AVX-512's
// weighted float32 D=100, float32 D=120) and 3% faster (float32 D=100, fp16 D=100), and grew the library by 4.5%.
template <typename WT, bool kMax, int NV>
constexpr bool partial_variants_when_cached() {
  constexpr int64_t kElements = static_cast<int64_t>(NV) * V::W;
  return V::kCachedLoops && !kMax && (kElements <= 64 || (IsBf16<WT>::value && V::kBf16Pairs && kElements <= 128));
}

// ok = FN<WT, IT, kMax, nv, ...>(...): the variant of a block of `nv` vectors and `cols` columns (whole blocks
// take the kWhole variants where whole_variants says, and on a table that stays in the cache where
// whole_variants_when_cached says; partial ones of such tables their unweighted or weighted variant where PARTIAL and
// partial_variants_when_cached say).
#define MPREC_POOL_CASE(N, PARTIAL, FN, ...)                                                               \
  case N:                                                                                                  \
    if constexpr (PARTIAL && N <= kVectors && partial_variants_when_cached<WT, kMax, N>()) {               \
      if (cols != N * V::W && a.prefetch == RowPrefetch::kNone) {                                          \
        if (a.per_sample_weights) ok = FN<WT, IT, kMax, N, false, false, true>(__VA_ARGS__);               \
        else ok = FN<WT, IT, kMax, N, false, true>(__VA_ARGS__);                                           \
        break;                                                                                             \
      }                                                                                                    \
    }                                                                                                      \
    if constexpr (N <= kVectors && (whole_variants<WT, N>() || whole_variants_when_cached<WT, N>())) {      \
      if (cols != N * V::W || (!whole_variants<WT, N>() && a.prefetch != RowPrefetch::kNone))              \
        ok = FN<WT, IT, kMax, N>(__VA_ARGS__);                                                             \
      else if (a.per_sample_weights) ok = FN<WT, IT, kMax, N, true>(__VA_ARGS__);                          \
      else ok = FN<WT, IT, kMax, N, true, true>(__VA_ARGS__);                                              \
    } else if constexpr (N <= kVectors) ok = FN<WT, IT, kMax, N>(__VA_ARGS__);                             \
    else ok = false; /* unreachable: nv <= kVectors */                                                    \
    break;
#define MPREC_POOL_SWITCH(PARTIAL, FN, ...)                                                                \
  switch (nv) {                                                                                            \
    MPREC_POOL_CASE(1, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(2, PARTIAL, FN, __VA_ARGS__)              \
    MPREC_POOL_CASE(3, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(4, PARTIAL, FN, __VA_ARGS__)              \
    MPREC_POOL_CASE(5, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(6, PARTIAL, FN, __VA_ARGS__)              \
    MPREC_POOL_CASE(7, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(8, PARTIAL, FN, __VA_ARGS__)              \
    MPREC_POOL_CASE(9, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(10, PARTIAL, FN, __VA_ARGS__)             \
    MPREC_POOL_CASE(11, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(12, PARTIAL, FN, __VA_ARGS__)            \
    MPREC_POOL_CASE(13, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(14, PARTIAL, FN, __VA_ARGS__)            \
    MPREC_POOL_CASE(15, PARTIAL, FN, __VA_ARGS__) MPREC_POOL_CASE(16, PARTIAL, FN, __VA_ARGS__)            \
    default: ok = false; break;                                                                            \
  }

template <typename WT, typename IT, bool kMax, bool kNarrowSlices>
static bool pool_typed(const PoolArgs& a, int64_t bag_begin, int64_t bag_end, int64_t output_bag_base,
                       BagErrorReport* error) {
  using OT = typename OutputOf<WT>::type;
  const WT* weight = static_cast<const WT*>(a.weight);
  const IT* indices = static_cast<const IT*>(a.indices);
  const IT* offsets = static_cast<const IT*>(a.offsets);
  constexpr int kVectors = block_vectors<WT, kMax, kNarrowSlices>();
  constexpr int64_t kBlock = static_cast<int64_t>(kVectors) * V::W;
  // What the first pass and each later one prefetch (see kPrefetchLines and kWholeRowLines).
  const bool none = a.prefetch == RowPrefetch::kNone;
  const bool whole_slices = whole_slice_policy(a.prefetch);
  const bool whole = a.dim > kBlock && lines_of<WT>(a.dim) <= kWholeRowLines;
  const bool wide_row = a.dim <= kBlock && lines_of<WT>(a.dim) > kWholeSliceLines;  // one pass (kWideRow)
  // Float32 rows of several whole blocks of wide slices, under the near policy: the first pass's leading lines only
  // (see kNearPrefetchDistance).
  const bool leading = sizeof(WT) == 4 && lines_of<WT>(kBlock) > kWholeSliceLines && a.dim > kBlock &&
                       a.dim % kBlock == 0 && a.prefetch == RowPrefetch::kWholeSlicesNear;
  const Prefetch slice = whole_slices ? Prefetch::kWholeSlice : Prefetch::kSlice;
  const Prefetch cached = a.dim <= kBlock && cached_prefetch<WT>(a.dim) ? Prefetch::kCached : Prefetch::kNone;
  const Prefetch first = none                       ? cached
                         : whole                    ? Prefetch::kRow
                         : wide_row && !whole_slices ? Prefetch::kWideRow
                         : leading                  ? Prefetch::kSlice
                                                    : slice;
  const Prefetch later = none || whole || leading ? Prefetch::kNone : slice;
  bool ok = true;
  if (a.dim <= kBlock) {
    const int64_t cols = a.dim;
    const int nv = static_cast<int>((cols + V::W - 1) / V::W);
    MPREC_POOL_SWITCH(true, pool_bags, a, weight, indices, offsets, bag_begin, bag_end, output_bag_base, first, error)
    return ok;
  }
  if (a.dim % kBlock == 0) {
    if constexpr (whole_variants<WT, kVectors>()) {  // as in MPREC_POOL_CASE
      if (!a.per_sample_weights)
        return pool_passes<WT, IT, kMax, kVectors, true, true>(a, weight, indices, offsets, bag_begin, bag_end,
                                                               output_bag_base, first, later, error);
      return pool_passes<WT, IT, kMax, kVectors, true>(a, weight, indices, offsets, bag_begin, bag_end,
                                                       output_bag_base, first, later, error);
    } else {
      return pool_passes<WT, IT, kMax, kVectors>(a, weight, indices, offsets, bag_begin, bag_end, output_bag_base,
                                                 first, later, error);
    }
  }
  // Rows with a partial last block: a call per pass and bag, to the block's variant.
  for (int64_t bag = bag_begin; bag < bag_end; ++bag) {
    int64_t start, end;
    if (!bag_range(a, offsets, bag, start, end, error)) return false;
    OT* out = bag_output<WT>(a, bag, output_bag_base);
    int64_t* arg_out = bag_max_indices<kMax>(a, bag, output_bag_base);
    for (int64_t col = 0; col < a.dim; col += kBlock) {
      const int64_t cols = a.dim - col < kBlock ? a.dim - col : kBlock;
      const int nv = static_cast<int>((cols + V::W - 1) / V::W);
      const Prefetch p = col == 0 ? first : later;
      MPREC_POOL_SWITCH(false, pool_pass_outlined, a, weight, indices, col, start, end, p, out + col,
                        arg_out ? arg_out + col : nullptr, error)
      if (!ok) return false;
    }
  }
  return true;
}
#undef MPREC_POOL_SWITCH
#undef MPREC_POOL_CASE

template <typename WT, bool kNarrowSlices = false>
static bool pool_weight(const PoolArgs& a, int64_t b0, int64_t b1, int64_t base, BagErrorReport* e) {
  // 16-bit rows narrow their slices under whole-slice prefetch (see kNarrowSliceBytes); they alone differ.
  if constexpr (sizeof(WT) == 2 && !kNarrowSlices && block_vectors<WT, false, true>() != V::kConvertedVectors) {
    if (whole_slice_policy(a.prefetch)) return pool_weight<WT, true>(a, b0, b1, base, e);
  }
  const bool is_max = a.mode == PoolMode::kMax;
  if (a.index_is_64bit)
    return is_max ? pool_typed<WT, int64_t, true, kNarrowSlices>(a, b0, b1, base, e)
                  : pool_typed<WT, int64_t, false, kNarrowSlices>(a, b0, b1, base, e);
  return is_max ? pool_typed<WT, int32_t, true, kNarrowSlices>(a, b0, b1, base, e)
                : pool_typed<WT, int32_t, false, kNarrowSlices>(a, b0, b1, base, e);
}

bool pool(const PoolArgs& a, int64_t bag_begin, int64_t bag_end, int64_t output_bag_base,
          BagErrorReport* error) {
  switch (a.weight_type) {
    case WeightType::kFloat: return pool_weight<float>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kHalf: return pool_weight<f16_t>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kBFloat16: return pool_weight<bf16_t>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kUInt8RowwiseQuantized:
      return pool_weight<uint8_t>(a, bag_begin, bag_end, output_bag_base, error);
    case WeightType::kDouble:  // pooled by embedding_bag.cpp, never by a variant
      break;
  }
  return false;
}
