// Implementation of the GroupNorm CPU kernels (and of InstanceNorm, which is GroupNorm with G = C),
// with an optional fused SiLU on the output; included once per instruction set by
// kernels_{default,avx2,avx512}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Contiguous (NCHW) input whose groups fit in L2 (kFusedGroupElements) is processed one (n, g) group
// per work item: the forward (statistics, then output) or the backward (per-channel sums of dz and
// dz * xhat, group means, grad_input) runs on the group while it is in L2, so DRAM sees x (and dy)
// once. Those later passes leave DRAM idle, so they pull the work item's next group into L2. With
// the fused SiLU the backward caches dz, so its exp is evaluated once per element. The channels-last
// forward likewise takes one sample per work item when a sample fits in a thread's share of the
// last-level cache and the batch spreads evenly over the threads (use_fused_samples), and so does
// the channels-last backward, which evaluates the SiLU's exp in both of its passes.
//
// Otherwise the structure mirrors the CUDA kernels: the forward is one statistics pass and one
// output pass, the backward one reduction pass (per-(n, c) sums) and one pass computing grad_input.
// Statistics are computed per chunk of a group, by two passes over a contiguous chunk (small
// enough to stay in L1/L2) or, on channels-last input, by one pass of Welford's update per channel
// over a block of rows, and the chunks' (count, mean, m2) are merged with Chan's formula in chunk
// order. Values enter the sums relative to their group's first element, so fp32 sums of an
// input with |mean| >> std do not lose the variance to rounding. Work items own disjoint outputs or
// partials, and partials are always merged in a fixed order, so every result is independent of the
// thread count and scheduling. The output pass computes (x - mean) * (rstd * w) + b, never
// x * a + (b - mean * a), which cancels when |mean| >> std. Large outputs (y, grad_input) are
// written with non-temporal stores (output_streams), which also leaves a cached sample or group in
// the cache for the pass that reads it.
//
// Every loop reads and writes the stored dtype directly, widening to acc_t and narrowing back in
// registers (load_pair / store_pair), so reduced-precision data costs no conversion pass through a
// buffer. Reductions keep four independent accumulation chains, so they wait on loads rather than
// on the add/FMA latency. The fused SiLU and absent weight/bias are resolved outside the loops
// (template flags, and parameters materialized per channel) instead of being tested per vector.
// parallel_for bodies copy what they use into local constants: values captured by reference are
// otherwise reloaded on every iteration, since the compiler cannot prove the stores do not alias them.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/welford.h"
#include "cpu/kernels.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
// The helpers of each family have a namespace of their own: the families share one translation unit.
namespace group_norm_detail {
namespace {

using at::vec::Vectorized;

// Largest group (D * HW elements) processed whole by one work item on contiguous input: x and dy
// (and, with the SiLU, the acc_t dz cache) stay in L2 between the two passes over the group.
constexpr int64_t kFusedGroupElements = 1 << 16;
// Elements of one group handled by one statistics work item, and the sub-chunk over which the two
// in-cache passes run (and after which partial sums are closed).
constexpr int64_t kStatsChunk = 1 << 14;
constexpr int64_t kInnerChunk = 1024;
// Elements per parallel work item in the elementwise passes.
constexpr int64_t kGrainElements = 1 << 15;

// sum(p - origin)
template <typename acc_t, typename in_t>
acc_t span_sum_dev(const in_t* p, int64_t n, acc_t origin) {
  using Vec = Vectorized<acc_t>;
  const Vec vo(origin);
  return sum_four_chains<acc_t>(
      0, n,
      [&](int64_t i, Vec& lo, Vec& hi) {
        const auto [x0, x1] = load_pair<acc_t>(p + i);
        lo += x0 - vo;
        hi += x1 - vo;
      },
      [&](int64_t i) { return static_cast<acc_t>(p[i]) - origin; });
}

// sum(((p - origin) - mean)^2): the deviations from `origin` (a value of the group) are exact, so
// an offset |origin| >> std does not reach the squares.
template <typename acc_t, typename in_t>
acc_t span_sum_sq_dev(const in_t* p, int64_t n, acc_t origin, acc_t mean) {
  using Vec = Vectorized<acc_t>;
  const Vec vo(origin), vm(mean);
  return sum_four_chains<acc_t>(
      0, n,
      [&](int64_t i, Vec& lo, Vec& hi) {
        const auto [x0, x1] = load_pair<acc_t>(p + i);
        const Vec d0 = (x0 - vo) - vm, d1 = (x1 - vo) - vm;
        lo = at::vec::fmadd(d0, d0, lo);
        hi = at::vec::fmadd(d1, d1, hi);
      },
      [&](int64_t i) {
        const acc_t d = (static_cast<acc_t>(p[i]) - origin) - mean;
        return d * d;
      });
}

// (count, mean, m2) of a contiguous span, relative to `shift`: two passes per kInnerChunk (the
// second from L1), chunks merged in order.
template <typename in_t, typename acc_t>
WelfordState<acc_t> contiguous_span_stats(const in_t* x, int64_t n, acc_t shift) {
  WelfordState<acc_t> total = welford_init<acc_t>();
  for (int64_t start = 0; start < n; start += kInnerChunk) {
    const int64_t len = std::min(kInnerChunk, n - start);
    const acc_t count = static_cast<acc_t>(len);
    const acc_t mean = span_sum_dev(x + start, len, shift) / count;
    total = welford_merge(total, WelfordState<acc_t>{count, mean, span_sum_sq_dev(x + start, len, shift, mean)});
  }
  return total;
}

template <typename acc_t>
acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + std::exp(-z));
}

template <typename acc_t>
Vectorized<acc_t> sigmoid(const Vectorized<acc_t>& z) {
  const Vectorized<acc_t> one(1);
  return one / (one + z.neg().exp());
}

template <typename acc_t>
acc_t param_or(const acc_t* p, int64_t c, acc_t fallback) {
  return p != nullptr ? p[c] : fallback;
}

// A per-channel parameter for the row loops: p itself, or a vector of `fallback` when absent.
template <typename acc_t>
std::vector<acc_t> materialize_param(const acc_t* p, int64_t c, acc_t fallback) {
  return p != nullptr ? std::vector<acc_t>(p, p + c) : std::vector<acc_t>(c, fallback);
}

// Whether the output (y or dx, N * C * HW elements at out) of a pass goes out through non-temporal
// stores: only a large output in memory already mapped in (see should_stream). The passes that read
// a cached sample or group then keep it in the cache instead of making room for their output.
template <typename in_t>
bool output_streams(const in_t* out, const GroupNormShape& s) {
  return should_stream(out, s.n * s.c * s.hw);
}

// The forward's activation of z = xhat * w + b.
template <bool kSilu, typename acc_t>
Vectorized<acc_t> activate(const Vectorized<acc_t>& z) {
  if constexpr (kSilu) {
    return z * sigmoid(z);
  } else {
    return z;
  }
}

template <bool kSilu, typename acc_t>
acc_t activate(acc_t z) {
  if constexpr (kSilu) {
    return z * sigmoid(z);
  } else {
    return z;
  }
}

// The gradient reaching the affine output z = xhat * w + b: dy itself, or through the fused SiLU,
// with z recomputed from xhat.
template <bool kSilu, typename acc_t>
Vectorized<acc_t> dz_of(const Vectorized<acc_t>& dy, const Vectorized<acc_t>& xhat, const Vectorized<acc_t>& w,
                        const Vectorized<acc_t>& b) {
  if constexpr (kSilu) {
    const Vectorized<acc_t> one(1);
    const Vectorized<acc_t> z = at::vec::fmadd(xhat, w, b);
    const Vectorized<acc_t> sg = sigmoid(z);
    return dy * sg * (one + z * (one - sg));
  } else {
    return dy;
  }
}

template <bool kSilu, typename acc_t>
acc_t dz_of(acc_t dy, acc_t xhat, acc_t w, acc_t b) {
  if constexpr (kSilu) {
    const acc_t z = xhat * w + b;
    const acc_t sg = sigmoid(z);
    return dy * sg * (acc_t(1) + z * (acc_t(1) - sg));
  } else {
    return dy;
  }
}

// ----- forward -------------------------------------------------------------------------------------

// y = act(((x - origin) - mu) * scale + shift) over one channel's plane; mu is relative to `origin`
// (zero when it is absolute). With `next`, the n elements there are pulled into L2 meanwhile. With
// `stream`, y goes out through non-temporal stores (see output_streams).
template <bool kSilu, typename in_t, typename acc_t>
void normalize_plane(const in_t* x, in_t* y, int64_t n, acc_t origin, acc_t mu, acc_t scale, acc_t shift,
                     const in_t* next, bool stream) {
  using Vec = Vectorized<acc_t>;
  const Vec vo(origin), vmu(mu), vs(scale), vt(shift);
  write_span<acc_t>(
      y, n, stream,
      [&](int64_t i) {
        if (next) prefetch_l2(next + i);
        const auto [x0, x1] = load_pair<acc_t>(x + i);
        return std::pair{activate<kSilu>(at::vec::fmadd((x0 - vo) - vmu, vs, vt)),
                         activate<kSilu>(at::vec::fmadd((x1 - vo) - vmu, vs, vt))};
      },
      [&](int64_t i) { return activate<kSilu>(((static_cast<acc_t>(x[i]) - origin) - mu) * scale + shift); });
}

// y = act((x - mu) * scale + shift) over a channels-last row, with per-channel mu, scale and shift.
template <bool kSilu, typename in_t, typename acc_t>
void normalize_row(const in_t* x, in_t* y, int64_t C, const acc_t* mu, const acc_t* scale, const acc_t* shift,
                   bool stream) {
  write_span<acc_t>(
      y, C, stream,
      [&](int64_t c) {
        const auto [x0, x1] = load_pair<acc_t>(x + c);
        const auto [m0, m1] = load_pair<acc_t>(mu + c);
        const auto [s0, s1] = load_pair<acc_t>(scale + c);
        const auto [t0, t1] = load_pair<acc_t>(shift + c);
        return std::pair{activate<kSilu>(at::vec::fmadd(x0 - m0, s0, t0)),
                         activate<kSilu>(at::vec::fmadd(x1 - m1, s1, t1))};
      },
      [&](int64_t c) { return activate<kSilu>((static_cast<acc_t>(x[c]) - mu[c]) * scale[c] + shift[c]); });
}

// Rows handled per sweep of the channels-last statistics: the per-channel state is loaded and
// stored once per kStatsRows rows instead of once per row, which made the loop store-bound.
constexpr int64_t kStatsRows = 8;

// Welford's update of the per-channel (mean, m2) by `rows` (<= kStatsRows) consecutive
// channels-last rows, each value taken relative to its channel's shift. The sweep starts after
// `seen` rows, so row r is the (seen + r + 1)-th value of every channel and all channels share its
// reciprocal count. One pass over the block, where a sum and then the squared deviations from its
// mean read it twice, for one more flop per value; each channel still adds its rows in order.
// With `next`, its rows * C elements (the same rows of the block processed next) are pulled into L2,
// a few lines per step of the channel loop: issued all at once before the loop, the prefetches
// outnumbered the misses a core keeps in flight and were partly dropped, and the next block's
// sweep waited for DRAM (1.08-1.14x on the channels-last forward, bf16 and fp32).
template <typename in_t, typename acc_t>
C10_ALWAYS_INLINE void rows_welford_update(const in_t* x, int64_t rows, int64_t seen, int64_t C, const acc_t* shift,
                                           acc_t* mean, acc_t* m2, const in_t* next) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  // The new mean is m * (1 - 1/n) + d / n: one FMA on the loop-carried chain, where m + (d - m) / n
  // puts a subtraction and an FMA on it and the loop waited on their latency.
  acc_t inv_count[kStatsRows], keep[kStatsRows];
  for (int64_t r = 0; r < rows; ++r) {
    inv_count[r] = acc_t(1) / static_cast<acc_t>(seen + r + 1);
    keep[r] = acc_t(1) - inv_count[r];
  }
  int64_t c = 0;
  for (; c + kStep <= C; c += kStep) {
    if (next) prefetch_l2_span(next + c * rows, kStep * rows);
    const auto [h0, h1] = load_pair<acc_t>(shift + c);
    auto [m0, m1] = load_pair<acc_t>(mean + c);
    auto [q0, q1] = load_pair<acc_t>(m2 + c);
    for (int64_t r = 0; r < rows; ++r) {
      const auto [x0, x1] = load_pair<acc_t>(x + r * C + c);
      const Vec inv(inv_count[r]), kept(keep[r]);
      const Vec d0 = x0 - h0, d1 = x1 - h1;
      const Vec e0 = d0 - m0, e1 = d1 - m1;
      m0 = at::vec::fmadd(m0, kept, d0 * inv);
      m1 = at::vec::fmadd(m1, kept, d1 * inv);
      q0 = at::vec::fmadd(e0, d0 - m0, q0);
      q1 = at::vec::fmadd(e1, d1 - m1, q1);
    }
    store_pair(mean + c, m0, m1);
    store_pair(m2 + c, q0, q1);
  }
  if (next) prefetch_l2_span(next + c * rows, (C - c) * rows);
  for (; c < C; ++c) {
    acc_t m = mean[c], q = m2[c];
    for (int64_t r = 0; r < rows; ++r) {
      const acc_t d = static_cast<acc_t>(x[r * C + c]) - shift[c];
      const acc_t e = d - m;
      m = m * keep[r] + d * inv_count[r];
      q += e * (d - m);
    }
    mean[c] = m;
    m2[c] = q;
  }
}

template <typename acc_t>
acc_t group_rstd(const WelfordState<acc_t>& st, acc_t eps) {
  return acc_t(1) / std::sqrt(std::max(st.m2 / st.count, acc_t(0)) + eps);
}

// The first element of each group of sample n of a channels-last input, broadcast over its
// channels: the shift the group's statistics are accumulated relative to.
template <typename in_t, typename acc_t>
void channels_last_group_shifts(const in_t* sample, const GroupNormShape& s, acc_t* channel_shift) {
  for (int64_t g = 0; g < s.groups; ++g) {
    const int64_t c0 = g * s.channels_per_group;
    std::fill(channel_shift + c0, channel_shift + c0 + s.channels_per_group, static_cast<acc_t>(sample[c0]));
  }
}

// The partial state of every group over one block of `rows` channels-last rows (contiguous): a
// Welford state per channel in one pass over the block, then each group's channels merged (equal
// counts, so the group mean is the mean of the channel means). Meanwhile `next` (rows * C elements,
// or null), the block processed next, is pulled into L2. out[g * out_stride] receives group g's
// state relative to its shift; channel_mean and channel_m2 are C-element scratch.
template <typename in_t, typename acc_t>
void channels_last_block_stats(const in_t* block, int64_t rows, const GroupNormShape& s, const acc_t* channel_shift,
                               const in_t* next, acc_t* channel_mean, acc_t* channel_m2, WelfordState<acc_t>* out,
                               int64_t out_stride) {
  const int64_t C = s.c, D = s.channels_per_group;
  std::fill(channel_mean, channel_mean + C, acc_t(0));
  std::fill(channel_m2, channel_m2 + C, acc_t(0));
  const auto next_rows = [&](int64_t row) { return next ? next + row * C : nullptr; };
  // Full sweeps pass kStatsRows as a constant, so that the inlined row loop is unrolled.
  int64_t r = 0;
  for (; r + kStatsRows <= rows; r += kStatsRows)
    rows_welford_update(block + r * C, kStatsRows, r, C, channel_shift, channel_mean, channel_m2, next_rows(r));
  if (r < rows)
    rows_welford_update(block + r * C, rows - r, r, C, channel_shift, channel_mean, channel_m2, next_rows(r));
  const acc_t rows_acc = static_cast<acc_t>(rows);
  for (int64_t g = 0; g < s.groups; ++g) {
    const acc_t* gm = channel_mean + g * D;
    const acc_t* gq = channel_m2 + g * D;
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += gm[d];
    const acc_t mean = sum / static_cast<acc_t>(D);
    acc_t within = 0, between = 0;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t dev = gm[d] - mean;
      within += gq[d];
      between += dev * dev;
    }
    out[g * out_stride] = {rows_acc * static_cast<acc_t>(D), mean, within + rows_acc * between};
  }
}

// Pass 1 of the forward: per-(n, g) mean and rstd. Each group's statistics are accumulated relative
// to its first element.
template <typename in_t, typename acc_t>
void group_stats_cpu(const in_t* x, const GroupNormShape& s, double eps, acc_t* mean, acc_t* rstd) {
  const int64_t ng = s.n * s.groups;
  std::vector<acc_t> shifts(ng);
  for (int64_t group = 0; group < ng; ++group) {
    const int64_t n = group / s.groups, c0 = (group % s.groups) * s.channels_per_group;
    shifts[group] = static_cast<acc_t>(x[s.channels_last ? n * s.hw * s.c + c0 : (n * s.c + c0) * s.hw]);
  }
  std::vector<WelfordState<acc_t>> partials;
  int64_t chunks;
  if (!s.channels_last) {
    // A group is a contiguous span of D * HW elements; it is split into `chunks` work items.
    const int64_t len = s.channels_per_group * s.hw;
    chunks = (len + kStatsChunk - 1) / kStatsChunk;
    partials.resize(ng * chunks);
    at::parallel_for(0, ng * chunks, 1, [&](int64_t begin, int64_t end) {
      const in_t* const xp = x;
      const acc_t* const sh = shifts.data();
      WelfordState<acc_t>* const part = partials.data();
      const int64_t group_len = len, nchunks = chunks;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t group = item / nchunks;
        const int64_t start = (item % nchunks) * kStatsChunk;
        const int64_t n = std::min(kStatsChunk, group_len - start);
        part[item] = contiguous_span_stats(xp + group * group_len + start, n, sh[group]);
      }
    });
  } else {
    // Rows of C channels; a work item takes a block of rows of one sample. Consecutive items' blocks
    // are contiguous (the following rows, or the next sample's first ones).
    const int64_t rows_per_chunk = std::max<int64_t>(1, kStatsChunk / s.c);
    chunks = (s.hw + rows_per_chunk - 1) / rows_per_chunk;
    partials.resize(ng * chunks);
    at::parallel_for(0, s.n * chunks, 1, [&](int64_t begin, int64_t end) {
      const in_t* const xp = x;
      const GroupNormShape sh = s;
      const int64_t nchunks = chunks, rows_per = rows_per_chunk;
      WelfordState<acc_t>* const part = partials.data();
      std::vector<acc_t> channel_mean(sh.c), channel_m2(sh.c), channel_shift(sh.c);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / nchunks, chunk = item % nchunks;
        const int64_t row_begin = chunk * rows_per, row_end = std::min(sh.hw, row_begin + rows_per);
        const in_t* sample = xp + n * sh.hw * sh.c;
        channels_last_group_shifts(sample, sh, channel_shift.data());
        channels_last_block_stats(sample + row_begin * sh.c, row_end - row_begin, sh, channel_shift.data(),
                                  item + 1 < end ? sample + row_end * sh.c : nullptr, channel_mean.data(),
                                  channel_m2.data(), part + n * sh.groups * nchunks + chunk, nchunks);
      }
    });
  }
  for (int64_t group = 0; group < ng; ++group) {
    WelfordState<acc_t> st = welford_init<acc_t>();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) st = welford_merge(st, partials[group * chunks + chunk]);
    mean[group] = shifts[group] + st.mean;
    rstd[group] = group_rstd(st, static_cast<acc_t>(eps));
  }
}

// Pass 2 of the forward: y = act((x - mean) * (rstd * w) + b), with per-(n, c) mean and scale and
// per-channel shift (b, or zeros).
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_apply_cpu(const in_t* x, in_t* y, const GroupNormShape& s, const acc_t* mean_nc, const acc_t* scale_nc,
                          const acc_t* shift_c) {
  const bool stream = output_streams(y, s);
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      const in_t* const xp = x;
      in_t* const yp = y;
      const acc_t *const mu = mean_nc, *const scale = scale_nc, *const shift = shift_c;
      const int64_t C = s.c, hw = s.hw;
      for (int64_t plane = begin; plane < end; ++plane) {
        normalize_plane<kSilu>(xp + plane * hw, yp + plane * hw, hw, acc_t(0), mu[plane], scale[plane],
                               shift[plane % C], static_cast<const in_t*>(nullptr), stream);
      }
      if (stream) stream_fence();
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.c);
    at::parallel_for(0, s.n * s.hw, grain, [&](int64_t begin, int64_t end) {
      const in_t* const xp = x;
      in_t* const yp = y;
      const acc_t *const mu = mean_nc, *const scale = scale_nc, *const shift = shift_c;
      const int64_t C = s.c, hw = s.hw;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t nc0 = (r / hw) * C;
        normalize_row<kSilu>(xp + r * C, yp + r * C, C, mu + nc0, scale + nc0, shift, stream);
      }
      if (stream) stream_fence();
    });
  }
}

// The forward on contiguous input, one whole (n, g) group per work item: statistics of the group
// relative to its first element, then the output from the same (cached) values.
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_fused_forward_cpu(const in_t* x, in_t* y, const GroupNormShape& s, double eps, const acc_t* w,
                                  const acc_t* b, acc_t* mean, acc_t* rstd) {
  const bool stream = output_streams(y, s);
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    in_t* const yp = y;
    const acc_t *const wp = w, *const bp = b;
    acc_t *const mean_out = mean, *const rstd_out = rstd;
    const int64_t G = s.groups, D = s.channels_per_group, hw = s.hw, len = D * hw;
    const acc_t acc_eps = static_cast<acc_t>(eps);
    for (int64_t group = begin; group < end; ++group) {
      const in_t* gx = xp + group * len;
      in_t* gy = yp + group * len;
      const acc_t shift = static_cast<acc_t>(gx[0]);
      const WelfordState<acc_t> st = contiguous_span_stats(gx, len, shift);
      const acc_t r = group_rstd(st, acc_eps);
      mean_out[group] = shift + st.mean;
      rstd_out[group] = r;
      const int64_t c0 = (group % G) * D;
      const in_t* next_group = group + 1 < end ? gx + len : nullptr;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = c0 + d;
        normalize_plane<kSilu>(gx + d * hw, gy + d * hw, hw, shift, st.mean, r * param_or(wp, c, acc_t(1)),
                               param_or(bp, c, acc_t(0)), next_group ? next_group + d * hw : nullptr, stream);
      }
    }
    if (stream) stream_fence();
  });
}

// The forward on channels-last input, one sample per work item: the statistics by blocks of rows
// (merged in the same order as group_stats_cpu's), then the output while the sample is still in
// the cache (see use_fused_samples), instead of reading it from DRAM a second time.
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_fused_channels_last_forward_cpu(const in_t* x, in_t* y, const GroupNormShape& s, double eps,
                                                const acc_t* w, const acc_t* b, acc_t* mean, acc_t* rstd) {
  const std::vector<acc_t> shift_c = materialize_param(b, s.c, acc_t(0));
  const bool stream = output_streams(y, s);
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    const GroupNormShape sh = s;
    const in_t* const xp = x;
    in_t* const yp = y;
    const acc_t* const wp = w;
    const acc_t* const shift = shift_c.data();
    acc_t *const mean_out = mean, *const rstd_out = rstd;
    const int64_t C = sh.c, G = sh.groups, D = sh.channels_per_group, hw = sh.hw;
    const int64_t rows_per_block = std::max<int64_t>(1, kStatsChunk / C);
    const acc_t acc_eps = static_cast<acc_t>(eps);
    std::vector<acc_t> channel_mean(C), channel_m2(C), channel_shift(C), mu_c(C), scale_c(C);
    std::vector<WelfordState<acc_t>> block_states(G), totals(G);
    for (int64_t n = begin; n < end; ++n) {
      const in_t* sample = xp + n * hw * C;
      in_t* out = yp + n * hw * C;
      channels_last_group_shifts(sample, sh, channel_shift.data());
      std::fill(totals.begin(), totals.end(), welford_init<acc_t>());
      for (int64_t row = 0; row < hw; row += rows_per_block) {
        const int64_t rows = std::min(rows_per_block, hw - row);
        const bool has_next = row + rows < hw;
        channels_last_block_stats(sample + row * C, rows, sh, channel_shift.data(),
                                  has_next ? sample + (row + rows) * C : nullptr, channel_mean.data(),
                                  channel_m2.data(), block_states.data(), 1);
        for (int64_t g = 0; g < G; ++g) totals[g] = welford_merge(totals[g], block_states[g]);
      }
      for (int64_t g = 0; g < G; ++g) {
        const acc_t m = channel_shift[g * D] + totals[g].mean, r = group_rstd(totals[g], acc_eps);
        mean_out[n * G + g] = m;
        rstd_out[n * G + g] = r;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          mu_c[c] = m;
          scale_c[c] = r * param_or(wp, c, acc_t(1));
        }
      }
      for (int64_t row = 0; row < hw; ++row) {
        normalize_row<kSilu>(sample + row * C, out + row * C, C, mu_c.data(), scale_c.data(), shift, stream);
      }
    }
    if (stream) stream_fence();
  });
}

// ----- backward ------------------------------------------------------------------------------------

// (sum(dz), sum(dz * xhat)) over one channel's plane, with xhat = (x - mu) * r, partial sums closed
// every kInnerChunk elements. With kKeepDz, dz is also written to dz_out, so that the SiLU's exp is
// not evaluated again for grad_input.
template <bool kSilu, bool kKeepDz, typename in_t, typename acc_t>
std::pair<acc_t, acc_t> plane_dz_sums(const in_t* dy, const in_t* x, int64_t n, acc_t mu, acc_t r, acc_t w, acc_t b,
                                      acc_t* dz_out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const Vec vmu(mu), vr(r), vw(w), vb(b);
  acc_t total_dz = 0, total_dz_xhat = 0;
  for (int64_t start = 0; start < n; start += kInnerChunk) {
    const int64_t end = std::min(n, start + kInnerChunk);
    Vec s0(0), s1(0), q0(0), q1(0);
    int64_t i = start;
    for (; i + kStep <= end; i += kStep) {
      const auto [g0, g1] = load_pair<acc_t>(dy + i);
      const auto [x0, x1] = load_pair<acc_t>(x + i);
      const Vec xh0 = (x0 - vmu) * vr, xh1 = (x1 - vmu) * vr;
      const Vec dz0 = dz_of<kSilu>(g0, xh0, vw, vb), dz1 = dz_of<kSilu>(g1, xh1, vw, vb);
      if constexpr (kKeepDz) store_pair(dz_out + i, dz0, dz1);
      s0 += dz0;
      s1 += dz1;
      q0 = at::vec::fmadd(dz0, xh0, q0);
      q1 = at::vec::fmadd(dz1, xh1, q1);
    }
    acc_t sdz = reduce_lanes<acc_t>(s0 + s1), sdzx = reduce_lanes<acc_t>(q0 + q1);
    for (; i < end; ++i) {
      const acc_t xhat = (static_cast<acc_t>(x[i]) - mu) * r;
      const acc_t dz = dz_of<kSilu>(static_cast<acc_t>(dy[i]), xhat, w, b);
      if constexpr (kKeepDz) dz_out[i] = dz;
      sdz += dz;
      sdzx += dz * xhat;
    }
    total_dz += sdz;
    total_dz_xhat += sdzx;
  }
  return {total_dz, total_dz_xhat};
}

// dx = r * (dz * w - mean_dz - xhat * mean_dz_xhat) over one channel's plane; dz is read from
// dz_cache (kCached) or recomputed from dy. With next_offset (0 for none), the n elements of x and dy
// that far ahead are pulled into L2 meanwhile. With `stream`, dx goes out through non-temporal stores.
template <bool kSilu, bool kCached, typename in_t, typename acc_t>
void plane_grad_input(const in_t* dy, const acc_t* dz_cache, const in_t* x, in_t* dx, int64_t n, acc_t mu, acc_t r,
                      acc_t w, acc_t b, acc_t mean_dz, acc_t mean_dz_xhat, int64_t next_offset, bool stream) {
  using Vec = Vectorized<acc_t>;
  const Vec vmu(mu), vr(r), vw(w), vb(b), vmdz(mean_dz), vmdzx(mean_dz_xhat);
  const auto dz_at = [&](int64_t i, const Vec& xh0, const Vec& xh1) -> std::pair<Vec, Vec> {
    if constexpr (kCached) {
      return load_pair<acc_t>(dz_cache + i);
    } else {
      const auto [g0, g1] = load_pair<acc_t>(dy + i);
      return {dz_of<kSilu>(g0, xh0, vw, vb), dz_of<kSilu>(g1, xh1, vw, vb)};
    }
  };
  write_span<acc_t>(
      dx, n, stream,
      [&](int64_t i) {
        if (next_offset != 0) {
          prefetch_l2(x + next_offset + i);
          prefetch_l2(dy + next_offset + i);
        }
        const auto [x0, x1] = load_pair<acc_t>(x + i);
        const Vec xh0 = (x0 - vmu) * vr, xh1 = (x1 - vmu) * vr;
        const auto [dz0, dz1] = dz_at(i, xh0, xh1);
        return std::pair{vr * (dz0 * vw - vmdz - xh0 * vmdzx), vr * (dz1 * vw - vmdz - xh1 * vmdzx)};
      },
      [&](int64_t i) {
        const acc_t xhat = (static_cast<acc_t>(x[i]) - mu) * r;
        const acc_t dz = kCached ? dz_cache[i] : dz_of<kSilu>(static_cast<acc_t>(dy[i]), xhat, w, b);
        return r * (dz * w - mean_dz - xhat * mean_dz_xhat);
      });
}

// x_hat and dz at channels [c, c + kPairLanes) of a channels-last row, with per-channel mu, r, w, b:
// what both passes of the channels-last backward recompute from x and dy. Always inlined: out of
// line (as GCC had left it) it returned its four vectors through memory, and a bf16 channels-last
// backward ran 1.2-1.4x slower.
template <typename acc_t>
struct XhatDzPair {
  Vectorized<acc_t> xh0, xh1, dz0, dz1;
};

template <bool kSilu, typename in_t, typename acc_t>
C10_ALWAYS_INLINE XhatDzPair<acc_t> xhat_dz_pair(const in_t* dy, const in_t* x, const acc_t* mu, const acc_t* r,
                                                 const acc_t* w, const acc_t* b, int64_t c) {
  const auto [g0, g1] = load_pair<acc_t>(dy + c);
  const auto [x0, x1] = load_pair<acc_t>(x + c);
  const auto [m0, m1] = load_pair<acc_t>(mu + c);
  const auto [r0, r1] = load_pair<acc_t>(r + c);
  const Vectorized<acc_t> xh0 = (x0 - m0) * r0, xh1 = (x1 - m1) * r1;
  if constexpr (kSilu) {
    const auto [w0, w1] = load_pair<acc_t>(w + c);
    const auto [b0, b1] = load_pair<acc_t>(b + c);
    return {xh0, xh1, dz_of<kSilu>(g0, xh0, w0, b0), dz_of<kSilu>(g1, xh1, w1, b1)};
  } else {
    return {xh0, xh1, g0, g1};
  }
}

// The same for channel c alone (the row's tail): (x_hat, dz).
template <bool kSilu, typename in_t, typename acc_t>
C10_ALWAYS_INLINE std::pair<acc_t, acc_t> xhat_dz_at(const in_t* dy, const in_t* x, const acc_t* mu, const acc_t* r,
                                                     const acc_t* w, const acc_t* b, int64_t c) {
  const acc_t xhat = (static_cast<acc_t>(x[c]) - mu[c]) * r[c];
  return {xhat, dz_of<kSilu>(static_cast<acc_t>(dy[c]), xhat, w[c], b[c])};
}

// acc_dz[c] += dz, acc_dz_xhat[c] += dz * xhat over a channels-last row, with per-channel mu, r, w, b.
template <bool kSilu, typename in_t, typename acc_t>
void row_dz_sums(const in_t* dy, const in_t* x, int64_t C, const acc_t* mu, const acc_t* r, const acc_t* w,
                 const acc_t* b, acc_t* acc_dz, acc_t* acc_dz_xhat) {
  constexpr int64_t kStep = kPairLanes<acc_t>;
  int64_t c = 0;
  for (; c + kStep <= C; c += kStep) {
    const auto [xh0, xh1, dz0, dz1] = xhat_dz_pair<kSilu>(dy, x, mu, r, w, b, c);
    const auto [s0, s1] = load_pair<acc_t>(acc_dz + c);
    const auto [q0, q1] = load_pair<acc_t>(acc_dz_xhat + c);
    store_pair(acc_dz + c, s0 + dz0, s1 + dz1);
    store_pair(acc_dz_xhat + c, at::vec::fmadd(dz0, xh0, q0), at::vec::fmadd(dz1, xh1, q1));
  }
  for (; c < C; ++c) {
    const auto [xhat, dz] = xhat_dz_at<kSilu>(dy, x, mu, r, w, b, c);
    acc_dz[c] += dz;
    acc_dz_xhat[c] += dz * xhat;
  }
}

// dx = r * (dz * w - coef_dz - xhat * coef_xhat) over a channels-last row, all per channel.
template <bool kSilu, typename in_t, typename acc_t>
void row_grad_input(const in_t* dy, const in_t* x, in_t* dx, int64_t C, const acc_t* mu, const acc_t* r, const acc_t* w,
                    const acc_t* b, const acc_t* coef_dz, const acc_t* coef_xhat, bool stream) {
  write_span<acc_t>(
      dx, C, stream,
      [&](int64_t c) {
        const auto [xh0, xh1, dz0, dz1] = xhat_dz_pair<kSilu>(dy, x, mu, r, w, b, c);
        const auto [r0, r1] = load_pair<acc_t>(r + c);
        const auto [w0, w1] = load_pair<acc_t>(w + c);
        const auto [k0, k1] = load_pair<acc_t>(coef_dz + c);
        const auto [h0, h1] = load_pair<acc_t>(coef_xhat + c);
        return std::pair{r0 * (dz0 * w0 - k0 - xh0 * h0), r1 * (dz1 * w1 - k1 - xh1 * h1)};
      },
      [&](int64_t c) {
        const auto [xhat, dz] = xhat_dz_at<kSilu>(dy, x, mu, r, w, b, c);
        return r[c] * (dz * w[c] - coef_dz[c] - xhat * coef_xhat[c]);
      });
}

// Pass 1 of the backward: sum_dz[n, c] = sum_hw dz and sum_dz_xhat[n, c] = sum_hw dz * xhat, with
// w_c and b_c the per-channel parameters (materialized).
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_channel_sums_cpu(const in_t* dy, const in_t* x, const GroupNormShape& s, const acc_t* mean_nc,
                                 const acc_t* rstd_nc, const acc_t* w_c, const acc_t* b_c, acc_t* sum_dz,
                                 acc_t* sum_dz_xhat) {
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      const in_t *const gp = dy, *const xp = x;
      const acc_t *const mu = mean_nc, *const r = rstd_nc, *const wp = w_c, *const bp = b_c;
      acc_t *const out_dz = sum_dz, *const out_dz_xhat = sum_dz_xhat;
      const int64_t C = s.c, hw = s.hw;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C, off = plane * hw;
        const auto [total_dz, total_dz_xhat] = plane_dz_sums<kSilu, false>(gp + off, xp + off, hw, mu[plane], r[plane],
                                                                           wp[c], bp[c], static_cast<acc_t*>(nullptr));
        out_dz[plane] = total_dz;
        out_dz_xhat[plane] = total_dz_xhat;
      }
    });
    return;
  }
  const int64_t rows_per_chunk = std::max<int64_t>(1, kStatsChunk / s.c);
  const int64_t chunks = (s.hw + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<acc_t> partial_dz(s.n * chunks * s.c), partial_dz_xhat(s.n * chunks * s.c);
  at::parallel_for(0, s.n * chunks, 1, [&](int64_t begin, int64_t end) {
    const in_t *const gp = dy, *const xp = x;
    const acc_t *const mu = mean_nc, *const r = rstd_nc, *const wp = w_c, *const bp = b_c;
    acc_t *const part_dz = partial_dz.data(), *const part_dz_xhat = partial_dz_xhat.data();
    const int64_t C = s.c, hw = s.hw, nchunks = chunks, rows_per = rows_per_chunk;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / nchunks;
      const int64_t row_begin = (item % nchunks) * rows_per;
      const int64_t row_end = std::min(hw, row_begin + rows_per);
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t off = (n * hw + row) * C;
        row_dz_sums<kSilu>(gp + off, xp + off, C, mu + n * C, r + n * C, wp, bp, part_dz + item * C,
                           part_dz_xhat + item * C);
      }
    }
  });
  at::parallel_for(0, s.n * s.c, kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / s.c, c = nc % s.c;
      acc_t total_dz = 0, total_dz_xhat = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        total_dz += partial_dz[(n * chunks + chunk) * s.c + c];
        total_dz_xhat += partial_dz_xhat[(n * chunks + chunk) * s.c + c];
      }
      sum_dz[nc] = total_dz;
      sum_dz_xhat[nc] = total_dz_xhat;
    }
  });
}

// The two group means of the backward, mean_g(dz * w) and mean_g(dz * w * xhat), of group g of
// sample n, from the per-(n, c) sums.
template <typename acc_t>
std::pair<acc_t, acc_t> group_grad_means(const GroupNormShape& s, const acc_t* sum_dz, const acc_t* sum_dz_xhat,
                                         const acc_t* w, int64_t n, int64_t g) {
  const int64_t c0 = g * s.channels_per_group;
  acc_t mean_dz = 0, mean_dz_xhat = 0;
  for (int64_t c = c0; c < c0 + s.channels_per_group; ++c) {
    const acc_t wc = param_or(w, c, acc_t(1));
    mean_dz += wc * sum_dz[n * s.c + c];
    mean_dz_xhat += wc * sum_dz_xhat[n * s.c + c];
  }
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.channels_per_group * s.hw);
  return {mean_dz * inv_count, mean_dz_xhat * inv_count};
}

// dweight / dbias as sums over n, in order.
template <typename acc_t>
void group_norm_param_grads_cpu(const GroupNormShape& s, const acc_t* sum_dz, const acc_t* sum_dz_xhat, acc_t* dw,
                                acc_t* db) {
  for (int64_t c = 0; c < s.c; ++c) {
    acc_t total_dz = 0, total_dz_xhat = 0;
    for (int64_t n = 0; n < s.n; ++n) {
      total_dz += sum_dz[n * s.c + c];
      total_dz_xhat += sum_dz_xhat[n * s.c + c];
    }
    if (dw != nullptr) dw[c] = total_dz_xhat;
    if (db != nullptr) db[c] = total_dz;
  }
}

// Between the passes (O(N * C) work): the two group means of pass 2 per (n, c).
template <typename acc_t>
void group_norm_coefficients_cpu(const GroupNormShape& s, const acc_t* sum_dz, const acc_t* sum_dz_xhat, const acc_t* w,
                                 acc_t* coef_dz, acc_t* coef_xhat) {
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      const int64_t begin = n * s.c + g * s.channels_per_group, end = begin + s.channels_per_group;
      const auto [mean_dz, mean_dz_xhat] = group_grad_means(s, sum_dz, sum_dz_xhat, w, n, g);
      std::fill(coef_dz + begin, coef_dz + end, mean_dz);
      std::fill(coef_xhat + begin, coef_xhat + end, mean_dz_xhat);
    }
  }
}

// Pass 2 of the backward: dx = rstd * (dz * w - mean_g(dz * w) - xhat * mean_g(dz * w * xhat)),
// with the two group means given per (n, c) as coef_dz and coef_xhat.
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_grad_input_cpu(const in_t* dy, const in_t* x, in_t* dx, const GroupNormShape& s, const acc_t* mean_nc,
                               const acc_t* rstd_nc, const acc_t* coef_dz, const acc_t* coef_xhat, const acc_t* w_c,
                               const acc_t* b_c) {
  const bool stream = output_streams(dx, s);
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      const in_t *const gp = dy, *const xp = x;
      in_t* const dxp = dx;
      const acc_t *const mu = mean_nc, *const r = rstd_nc, *const wp = w_c, *const bp = b_c;
      const acc_t *const cdz = coef_dz, *const cx = coef_xhat;
      const int64_t C = s.c, hw = s.hw;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C, off = plane * hw;
        plane_grad_input<kSilu, false>(gp + off, static_cast<const acc_t*>(nullptr), xp + off, dxp + off, hw, mu[plane],
                                       r[plane], wp[c], bp[c], cdz[plane], cx[plane], 0, stream);
      }
      if (stream) stream_fence();
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.c);
    at::parallel_for(0, s.n * s.hw, grain, [&](int64_t begin, int64_t end) {
      const in_t *const gp = dy, *const xp = x;
      in_t* const dxp = dx;
      const acc_t *const mu = mean_nc, *const r = rstd_nc, *const wp = w_c, *const bp = b_c;
      const acc_t *const cdz = coef_dz, *const cx = coef_xhat;
      const int64_t C = s.c, hw = s.hw;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t off = row * C, nc0 = (row / hw) * C;
        row_grad_input<kSilu>(gp + off, xp + off, dxp + off, C, mu + nc0, r + nc0, wp, bp, cdz + nc0, cx + nc0, stream);
      }
      if (stream) stream_fence();
    });
  }
}

// The backward on channels-last input, one sample per work item (see use_fused_samples): the
// per-(n, c) sums over the sample's blocks of rows (summed block by block, as
// group_norm_channel_sums_cpu does), the sample's group means, then grad_input while x and dy are
// still in the cache. sum_dz and sum_dz_xhat must be zero on entry.
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_fused_channels_last_backward_cpu(const in_t* dy, const in_t* x, in_t* dx, const GroupNormShape& s,
                                                 const acc_t* mean_nc, const acc_t* rstd_nc, const acc_t* w,
                                                 const acc_t* w_c, const acc_t* b_c, acc_t* sum_dz,
                                                 acc_t* sum_dz_xhat) {
  const bool stream = output_streams(dx, s);
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    const GroupNormShape sh = s;
    const in_t *const gp = dy, *const xp = x;
    in_t* const dxp = dx;
    const acc_t *const wp = w, *const wc = w_c, *const bc = b_c;
    const int64_t C = sh.c, D = sh.channels_per_group, hw = sh.hw;
    const int64_t rows_per_block = std::max<int64_t>(1, kStatsChunk / C);
    std::vector<acc_t> block_dz(C), block_dz_xhat(C), coef_dz(C), coef_xhat(C);
    for (int64_t n = begin; n < end; ++n) {
      const acc_t *const mu = mean_nc + n * C, *const r = rstd_nc + n * C;
      acc_t *const total_dz = sum_dz + n * C, *const total_dz_xhat = sum_dz_xhat + n * C;
      for (int64_t row0 = 0; row0 < hw; row0 += rows_per_block) {
        std::fill(block_dz.begin(), block_dz.end(), acc_t(0));
        std::fill(block_dz_xhat.begin(), block_dz_xhat.end(), acc_t(0));
        for (int64_t row = row0; row < std::min(hw, row0 + rows_per_block); ++row) {
          const int64_t off = (n * hw + row) * C;
          row_dz_sums<kSilu>(gp + off, xp + off, C, mu, r, wc, bc, block_dz.data(), block_dz_xhat.data());
        }
        for (int64_t c = 0; c < C; ++c) {
          total_dz[c] += block_dz[c];
          total_dz_xhat[c] += block_dz_xhat[c];
        }
      }
      for (int64_t g = 0; g < sh.groups; ++g) {
        const auto [mean_dz, mean_dz_xhat] = group_grad_means(sh, sum_dz, sum_dz_xhat, wp, n, g);
        std::fill(coef_dz.begin() + g * D, coef_dz.begin() + (g + 1) * D, mean_dz);
        std::fill(coef_xhat.begin() + g * D, coef_xhat.begin() + (g + 1) * D, mean_dz_xhat);
      }
      for (int64_t row = 0; row < hw; ++row) {
        const int64_t off = (n * hw + row) * C;
        row_grad_input<kSilu>(gp + off, xp + off, dxp + off, C, mu, r, wc, bc, coef_dz.data(), coef_xhat.data(),
                              stream);
      }
    }
    if (stream) stream_fence();
  });
}

// The backward on contiguous input, one whole (n, g) group per work item: per-channel sums of dz and
// dz * xhat, the group means, then grad_input from x and dy (or, with the SiLU, the dz cache) while
// they are in L2. The per-(n, c) sums are kept for dweight / dbias.
template <bool kSilu, typename in_t, typename acc_t>
void group_norm_fused_backward_cpu(const in_t* dy, const in_t* x, in_t* dx, const GroupNormShape& s, const acc_t* mean,
                                   const acc_t* rstd, const acc_t* w, const acc_t* b, acc_t* sum_dz,
                                   acc_t* sum_dz_xhat) {
  const bool stream = output_streams(dx, s);
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    const GroupNormShape sh = s;
    const in_t *const gp = dy, *const xp = x;
    in_t* const dxp = dx;
    const acc_t *const mean_p = mean, *const rstd_p = rstd, *const wp = w, *const bp = b;
    acc_t *const out_dz = sum_dz, *const out_dz_xhat = sum_dz_xhat;
    const int64_t D = sh.channels_per_group, hw = sh.hw, len = D * hw;
    std::vector<acc_t> dz_cache(kSilu ? len : 0);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t offset = group * len;
      const int64_t n = group / sh.groups, g = group % sh.groups, c0 = g * D;
      const acc_t mu = mean_p[group], r = rstd_p[group];
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = c0 + d, off = offset + d * hw;
        const auto [total_dz, total_dz_xhat] =
            plane_dz_sums<kSilu, kSilu>(gp + off, xp + off, hw, mu, r, param_or(wp, c, acc_t(1)),
                                        param_or(bp, c, acc_t(0)), dz_cache.data() + d * hw);
        out_dz[n * sh.c + c] = total_dz;
        out_dz_xhat[n * sh.c + c] = total_dz_xhat;
      }
      const auto [mean_dz, mean_dz_xhat] = group_grad_means(sh, out_dz, out_dz_xhat, wp, n, g);
      const int64_t next_offset = group + 1 < end ? len : 0;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = c0 + d, off = offset + d * hw;
        plane_grad_input<kSilu, kSilu>(gp + off, dz_cache.data() + d * hw, xp + off, dxp + off, hw, mu, r,
                                       param_or(wp, c, acc_t(1)), param_or(bp, c, acc_t(0)), mean_dz, mean_dz_xhat,
                                       next_offset, stream);
      }
    }
    if (stream) stream_fence();
  });
}

// Per-(n, c) copy of a per-(n, g) statistic, so that the elementwise passes index one array;
// `w` (null when absent) multiplies it per channel.
template <typename acc_t>
std::vector<acc_t> expand_to_channels(const acc_t* per_group, const GroupNormShape& s, const acc_t* w) {
  std::vector<acc_t> out(s.n * s.c);
  for (int64_t nc = 0; nc < s.n * s.c; ++nc) {
    const int64_t n = nc / s.c, c = nc % s.c;
    out[nc] = per_group[n * s.groups + c / s.channels_per_group] * param_or(w, c, acc_t(1));
  }
  return out;
}

bool use_fused_groups(const GroupNormShape& s) {
  return !s.channels_last && s.channels_per_group * s.hw <= kFusedGroupElements;
}

// Channels-last input one sample per work item: when the samples spread evenly enough over the
// threads, and each thread's sample (element_bytes per element: x, and dy in the backward) fits in
// its share of the last-level cache.
bool use_fused_samples(const GroupNormShape& s, int64_t element_bytes) {
  const int64_t threads = at::get_num_threads();
  return s.channels_last && s.n >= threads && (s.n % threads == 0 || s.n >= 4 * threads) &&
         s.hw * s.c * element_bytes <= last_level_cache_bytes() / threads;
}

// f(std::bool_constant<silu>{}): the kernels take the fused SiLU as a template flag.
template <typename F>
void with_silu_flag(bool silu, const F& f) {
  if (silu) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace
}  // namespace group_norm_detail

void group_norm_fwd(const GroupNormFwdArgs& a) {
  using namespace group_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_group_norm_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GroupNormShape& s = a.shape;
    const auto* x = static_cast<const scalar_t*>(a.x);
    auto* y = static_cast<scalar_t*>(a.y);
    const auto* w = static_cast<const acc_t*>(a.w);
    const auto* b = static_cast<const acc_t*>(a.b);
    auto* mean = static_cast<acc_t*>(a.mean);
    auto* rstd = static_cast<acc_t*>(a.rstd);
    with_silu_flag(a.silu, [&](auto silu) {
      constexpr bool kSilu = decltype(silu)::value;
      if (use_fused_groups(s)) {
        group_norm_fused_forward_cpu<kSilu, scalar_t, acc_t>(x, y, s, a.eps, w, b, mean, rstd);
        return;
      }
      if (use_fused_samples(s, sizeof(scalar_t))) {
        group_norm_fused_channels_last_forward_cpu<kSilu, scalar_t, acc_t>(x, y, s, a.eps, w, b, mean, rstd);
        return;
      }
      group_stats_cpu<scalar_t, acc_t>(x, s, a.eps, mean, rstd);
      const std::vector<acc_t> mean_nc = expand_to_channels<acc_t>(mean, s, nullptr);
      const std::vector<acc_t> scale_nc = expand_to_channels<acc_t>(rstd, s, w);
      const std::vector<acc_t> shift_c = materialize_param(b, s.c, acc_t(0));
      group_norm_apply_cpu<kSilu, scalar_t, acc_t>(x, y, s, mean_nc.data(), scale_nc.data(), shift_c.data());
    });
  });
}

void group_norm_bwd(const GroupNormBwdArgs& a) {
  using namespace group_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_group_norm_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GroupNormShape& s = a.shape;
    const auto* dy = static_cast<const scalar_t*>(a.dy);
    const auto* x = static_cast<const scalar_t*>(a.x);
    auto* dx = static_cast<scalar_t*>(a.dx);
    const auto* w = static_cast<const acc_t*>(a.w);
    const auto* b = static_cast<const acc_t*>(a.b);
    const auto* mean = static_cast<const acc_t*>(a.mean);
    const auto* rstd = static_cast<const acc_t*>(a.rstd);
    std::vector<acc_t> sum_dz(s.n * s.c), sum_dz_xhat(s.n * s.c);
    with_silu_flag(a.silu, [&](auto silu) {
      constexpr bool kSilu = decltype(silu)::value;
      if (use_fused_groups(s)) {
        group_norm_fused_backward_cpu<kSilu, scalar_t, acc_t>(dy, x, dx, s, mean, rstd, w, b, sum_dz.data(),
                                                              sum_dz_xhat.data());
        return;
      }
      const std::vector<acc_t> mean_nc = expand_to_channels<acc_t>(mean, s, nullptr);
      const std::vector<acc_t> rstd_nc = expand_to_channels<acc_t>(rstd, s, nullptr);
      const std::vector<acc_t> w_c = materialize_param(w, s.c, acc_t(1));
      const std::vector<acc_t> b_c = materialize_param(b, s.c, acc_t(0));
      if (use_fused_samples(s, 2 * sizeof(scalar_t))) {
        group_norm_fused_channels_last_backward_cpu<kSilu, scalar_t, acc_t>(
            dy, x, dx, s, mean_nc.data(), rstd_nc.data(), w, w_c.data(), b_c.data(), sum_dz.data(), sum_dz_xhat.data());
        return;
      }
      group_norm_channel_sums_cpu<kSilu, scalar_t, acc_t>(dy, x, s, mean_nc.data(), rstd_nc.data(), w_c.data(),
                                                          b_c.data(), sum_dz.data(), sum_dz_xhat.data());
      std::vector<acc_t> coef_dz(s.n * s.c), coef_xhat(s.n * s.c);
      group_norm_coefficients_cpu<acc_t>(s, sum_dz.data(), sum_dz_xhat.data(), w, coef_dz.data(), coef_xhat.data());
      group_norm_grad_input_cpu<kSilu, scalar_t, acc_t>(dy, x, dx, s, mean_nc.data(), rstd_nc.data(), coef_dz.data(),
                                                        coef_xhat.data(), w_c.data(), b_c.data());
    });
    group_norm_param_grads_cpu<acc_t>(s, sum_dz.data(), sum_dz_xhat.data(), static_cast<acc_t*>(a.dw),
                                      static_cast<acc_t*>(a.db));
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
