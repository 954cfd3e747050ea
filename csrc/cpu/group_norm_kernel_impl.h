// Implementation of the GroupNorm CPU kernels (and of InstanceNorm, which is GroupNorm with G = C),
// with an optional fused SiLU on the output; included once per instruction set by
// group_norm_kernel_{default,avx2}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Contiguous (NCHW) input whose groups fit in L2 (kFusedGroupElements) is processed one (n, g) group
// per work item: the forward (statistics, then output) or the backward (dz and xhat with the SiLU's
// exp evaluated once, per-channel sums, group means, grad_input) runs on the group while it is in
// L2 (converted once into acc_t buffers where needed), so DRAM sees x (and dy) once. Channels-last
// input keeps the two-pass backward, which evaluates the SiLU's exp in both passes.
//
// Otherwise the structure mirrors the CUDA kernels: the forward is one statistics pass and one
// output pass, the backward one reduction pass (per-(n, c) sums) and one pass computing grad_input.
// Statistics are computed per chunk of a group by two passes over the chunk in acc_t (the chunk is
// small enough to stay in L1/L2), and the chunks' (count, mean, m2) are merged with Chan's formula
// in chunk order. Values enter the sums relative to their group's first element, so fp32 sums of
// an input with |mean| >> std do not lose the variance to rounding. Work items own disjoint
// outputs or partials, and partials are always merged in a fixed order, so every result is
// independent of the thread count and scheduling. The output pass computes
// (x - mean) * (rstd * w) + b, never x * a + (b - mean * a), which cancels when |mean| >> std.

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
#include "cpu/group_norm_kernel.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
namespace {

using at::vec::Vectorized;

// Largest group (D * HW elements) processed whole by one work item on contiguous input: the
// backward's two acc_t copies of it (512 KiB in fp32) stay in L2.
constexpr int64_t kFusedGroupElements = 1 << 16;
// Elements of one group handled by one statistics work item, and the sub-chunk over which the two
// in-cache passes run.
constexpr int64_t kStatsChunk = 1 << 14;
constexpr int64_t kInnerChunk = 1024;
// Elements per parallel work item in the elementwise passes.
constexpr int64_t kGrainElements = 1 << 15;

template <typename acc_t>
acc_t span_sum(const acc_t* p, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  Vec acc0(0), acc1(0);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 += Vec::loadu(p + i);
    acc1 += Vec::loadu(p + i + kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += Vec::loadu(p + i);
  acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, acc0 + acc1);
  for (; i < n; ++i) s += p[i];
  return s;
}

template <typename acc_t>
acc_t span_sum_dev(const acc_t* p, int64_t n, acc_t origin) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vorigin(origin);
  Vec acc0(0), acc1(0);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 += Vec::loadu(p + i) - vorigin;
    acc1 += Vec::loadu(p + i + kLanes) - vorigin;
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += Vec::loadu(p + i) - vorigin;
  acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, acc0 + acc1);
  for (; i < n; ++i) s += p[i] - origin;
  return s;
}

// sum(((p - origin) - mean)^2): the deviations from `origin` (a value of the group) are exact, so
// an offset |origin| >> std does not reach the squares.
template <typename acc_t>
acc_t span_sum_sq_dev(const acc_t* p, int64_t n, acc_t origin, acc_t mean) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vorigin(origin), vmean(mean);
  Vec acc(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec d = (Vec::loadu(p + i) - vorigin) - vmean;
    acc = at::vec::fmadd(d, d, acc);
  }
  acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) s += ((p[i] - origin) - mean) * ((p[i] - origin) - mean);
  return s;
}

// The acc_t view of n input elements: the input itself when it already is acc_t, else a converted
// copy in buf.
template <typename in_t, typename acc_t>
const acc_t* acc_view(const in_t* p, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<in_t, acc_t>) {
    return p;
  } else {
    widen(p, buf, n);
    return buf;
  }
}

// Where a pass writes acc_t results bound for `out`: out itself when it is acc_t, else buf, which
// finish_output then converts into out.
template <typename out_t, typename acc_t>
acc_t* acc_target(out_t* out, acc_t* buf) {
  if constexpr (std::is_same_v<out_t, acc_t>) {
    return out;
  } else {
    return buf;
  }
}

template <typename out_t, typename acc_t>
void finish_output(const acc_t* buf, out_t* out, int64_t n) {
  if constexpr (!std::is_same_v<out_t, acc_t>) narrow(buf, out, n);
}

// (count, mean, m2) of a contiguous span, relative to `shift`: two passes per kInnerChunk, chunks
// merged in order.
template <typename in_t, typename acc_t>
WelfordState<acc_t> contiguous_span_stats(const in_t* x, int64_t n, acc_t shift, acc_t* buf) {
  WelfordState<acc_t> total = welford_init<acc_t>();
  for (int64_t start = 0; start < n; start += kInnerChunk) {
    const int64_t len = std::min(kInnerChunk, n - start);
    const acc_t* v = acc_view(x + start, buf, len);
    const acc_t count = static_cast<acc_t>(len);
    const acc_t mean = span_sum_dev(v, len, shift) / count;
    total = welford_merge(total, WelfordState<acc_t>{count, mean, span_sum_sq_dev(v, len, shift, mean)});
  }
  return total;
}

template <typename acc_t>
acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + std::exp(-z));
}

template <typename acc_t>
acc_t param_or(const acc_t* p, int64_t c, acc_t fallback) {
  return p != nullptr ? p[c] : fallback;
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
      std::vector<acc_t> buf(kInnerChunk);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t group = item / chunks;
        const int64_t start = (item % chunks) * kStatsChunk;
        const int64_t n = std::min(kStatsChunk, len - start);
        partials[item] = contiguous_span_stats(x + group * len + start, n, shifts[group], buf.data());
      }
    });
  } else {
    // Rows of C channels; a work item takes a block of rows of one sample and produces the partial
    // state of every group: per-channel sums, group means, then per-channel squared deviations.
    const int64_t rows_per_chunk = std::max<int64_t>(1, kStatsChunk / s.c);
    chunks = (s.hw + rows_per_chunk - 1) / rows_per_chunk;
    partials.resize(ng * chunks);
    at::parallel_for(0, s.n * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(s.c), channel_acc(s.c), channel_mean(s.c), channel_shift(s.c);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / chunks;
        const int64_t chunk = item % chunks;
        const int64_t row_begin = chunk * rows_per_chunk;
        const int64_t row_end = std::min(s.hw, row_begin + rows_per_chunk);
        const in_t* base = x + n * s.hw * s.c;
        for (int64_t c = 0; c < s.c; ++c) channel_shift[c] = shifts[n * s.groups + c / s.channels_per_group];
        const acc_t count = static_cast<acc_t>((row_end - row_begin) * s.channels_per_group);
        std::fill(channel_acc.begin(), channel_acc.end(), acc_t(0));
        for (int64_t r = row_begin; r < row_end; ++r) {
          const acc_t* v = acc_view(base + r * s.c, row.data(), s.c);
          for (int64_t c = 0; c < s.c; ++c) channel_acc[c] += v[c] - channel_shift[c];
        }
        for (int64_t g = 0; g < s.groups; ++g) {
          const int64_t c0 = g * s.channels_per_group;
          acc_t sum = 0;
          for (int64_t c = c0; c < c0 + s.channels_per_group; ++c) sum += channel_acc[c];
          std::fill(channel_mean.begin() + c0, channel_mean.begin() + c0 + s.channels_per_group, sum / count);
        }
        std::fill(channel_acc.begin(), channel_acc.end(), acc_t(0));
        for (int64_t r = row_begin; r < row_end; ++r) {
          const acc_t* v = acc_view(base + r * s.c, row.data(), s.c);
          for (int64_t c = 0; c < s.c; ++c) {
            const acc_t d = (v[c] - channel_shift[c]) - channel_mean[c];
            channel_acc[c] += d * d;
          }
        }
        for (int64_t g = 0; g < s.groups; ++g) {
          const int64_t c0 = g * s.channels_per_group;
          acc_t m2 = 0;
          for (int64_t c = c0; c < c0 + s.channels_per_group; ++c) m2 += channel_acc[c];
          partials[(n * s.groups + g) * chunks + chunk] = {count, channel_mean[c0], m2};
        }
      }
    });
  }
  for (int64_t group = 0; group < ng; ++group) {
    WelfordState<acc_t> st = welford_init<acc_t>();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) st = welford_merge(st, partials[group * chunks + chunk]);
    mean[group] = shifts[group] + st.mean;
    rstd[group] = acc_t(1) / std::sqrt(std::max(st.m2 / st.count, acc_t(0)) + static_cast<acc_t>(eps));
  }
}

// A per-channel quantity as seen from a span of elements: one value for the whole span (contiguous
// layout, where a span lies in one channel's plane) or one value per element (channels_last, where
// a span is a row of channels). A null pointer reads as `fallback` (absent weight or bias).
template <typename acc_t>
struct SpanParam {
  const acc_t* data;
  bool per_element;
  acc_t fallback;

  acc_t at(int64_t i) const { return data == nullptr ? fallback : data[per_element ? i : 0]; }
  Vectorized<acc_t> vec(int64_t i) const {
    if (data == nullptr) return Vectorized<acc_t>(fallback);
    return per_element ? Vectorized<acc_t>::loadu(data + i) : Vectorized<acc_t>(data[0]);
  }
};

template <typename acc_t>
Vectorized<acc_t> sigmoid(const Vectorized<acc_t>& z) {
  const Vectorized<acc_t> one(1);
  return one / (one + z.neg().exp());
}

// out <- act(((v - origin) - mu) * scale + shift); out may be v. The mean is given relative to
// `origin` (zero when it is absolute).
template <typename acc_t>
void normalize_span(const acc_t* v, acc_t* out, int64_t len, acc_t origin, SpanParam<acc_t> mu, SpanParam<acc_t> scale,
                    SpanParam<acc_t> shift, bool silu) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vorigin(origin);
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    Vec z = ((Vec::loadu(v + i) - vorigin) - mu.vec(i)) * scale.vec(i) + shift.vec(i);
    if (silu) z = z * sigmoid(z);
    z.store(out + i);
  }
  for (; i < len; ++i) {
    acc_t z = ((v[i] - origin) - mu.at(i)) * scale.at(i) + shift.at(i);
    if (silu) z *= sigmoid(z);
    out[i] = z;
  }
}

// In place: dy <- dz, the gradient reaching the affine output z (through the SiLU when fused, with
// z recomputed from x), and x <- xhat, the normalized input.
template <typename acc_t>
void dz_xhat_span(acc_t* dy, acc_t* x, int64_t len, SpanParam<acc_t> mu, SpanParam<acc_t> r, SpanParam<acc_t> w,
                  SpanParam<acc_t> b, bool silu) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec one(1);
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const Vec xhat = (Vec::loadu(x + i) - mu.vec(i)) * r.vec(i);
    xhat.store(x + i);
    if (silu) {
      const Vec z = xhat * w.vec(i) + b.vec(i);
      const Vec sg = sigmoid(z);
      (Vec::loadu(dy + i) * sg * (one + z * (one - sg))).store(dy + i);
    }
  }
  for (; i < len; ++i) {
    const acc_t xhat = (x[i] - mu.at(i)) * r.at(i);
    x[i] = xhat;
    if (silu) {
      const acc_t z = xhat * w.at(i) + b.at(i);
      const acc_t sg = sigmoid(z);
      dy[i] *= sg * (acc_t(1) + z * (acc_t(1) - sg));
    }
  }
}

template <typename acc_t>
acc_t span_dot(const acc_t* a, const acc_t* b, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  Vec acc(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Pass 2 of the forward: y = act((x - mean) * (rstd * w) + b), with per-(n, c) mean and scale.
template <typename in_t, typename acc_t>
void group_norm_apply_cpu(const in_t* x, in_t* y, const GroupNormShape& s, const acc_t* mean_nc, const acc_t* scale_nc,
                          const acc_t* b, bool silu) {
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(std::min(kInnerChunk, s.hw));
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % s.c;
        const SpanParam<acc_t> mu{mean_nc + plane, false, 0}, scale{scale_nc + plane, false, 0};
        const SpanParam<acc_t> shift{b != nullptr ? b + c : nullptr, false, 0};
        for (int64_t start = 0; start < s.hw; start += kInnerChunk) {
          const int64_t len = std::min(kInnerChunk, s.hw - start);
          const int64_t off = plane * s.hw + start;
          normalize_span(acc_view(x + off, buf.data(), len), acc_target(y + off, buf.data()), len, acc_t(0), mu, scale,
                         shift, silu);
          finish_output(buf.data(), y + off, len);
        }
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.c);
    at::parallel_for(0, s.n * s.hw, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(s.c);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / s.hw;
        normalize_span(acc_view(x + r * s.c, buf.data(), s.c), acc_target(y + r * s.c, buf.data()), s.c, acc_t(0),
                       SpanParam<acc_t>{mean_nc + n * s.c, true, 0}, SpanParam<acc_t>{scale_nc + n * s.c, true, 0},
                       SpanParam<acc_t>{b, true, 0}, silu);
        finish_output(buf.data(), y + r * s.c, s.c);
      }
    });
  }
}

// Pass 1 of the backward: sum_dz[n, c] = sum_hw dz and sum_dz_xhat[n, c] = sum_hw dz * xhat.
template <typename in_t, typename acc_t>
void group_norm_channel_sums_cpu(const in_t* dy, const in_t* x, const GroupNormShape& s, const acc_t* mean_nc,
                                 const acc_t* rstd_nc, const acc_t* w, const acc_t* b, bool silu, acc_t* sum_dz,
                                 acc_t* sum_dz_xhat) {
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      const int64_t buf_len = std::min(kInnerChunk, s.hw);
      std::vector<acc_t> dy_buf(buf_len), x_buf(buf_len);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % s.c;
        const SpanParam<acc_t> mu{mean_nc + plane, false, 0}, r{rstd_nc + plane, false, 0};
        const SpanParam<acc_t> wc{w != nullptr ? w + c : nullptr, false, 1},
            bc{b != nullptr ? b + c : nullptr, false, 0};
        acc_t total_dz = 0, total_dz_xhat = 0;
        for (int64_t start = 0; start < s.hw; start += kInnerChunk) {
          const int64_t len = std::min(kInnerChunk, s.hw - start);
          widen(dy + plane * s.hw + start, dy_buf.data(), len);
          widen(x + plane * s.hw + start, x_buf.data(), len);
          dz_xhat_span(dy_buf.data(), x_buf.data(), len, mu, r, wc, bc, silu);
          total_dz += span_sum(dy_buf.data(), len);
          total_dz_xhat += span_dot(dy_buf.data(), x_buf.data(), len);
        }
        sum_dz[plane] = total_dz;
        sum_dz_xhat[plane] = total_dz_xhat;
      }
    });
    return;
  }
  const int64_t rows_per_chunk = std::max<int64_t>(1, kStatsChunk / s.c);
  const int64_t chunks = (s.hw + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<acc_t> partial_dz(s.n * chunks * s.c), partial_dz_xhat(s.n * chunks * s.c);
  at::parallel_for(0, s.n * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dy_row(s.c), x_row(s.c);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks;
      const int64_t row_begin = (item % chunks) * rows_per_chunk;
      const int64_t row_end = std::min(s.hw, row_begin + rows_per_chunk);
      acc_t* acc_dz = partial_dz.data() + item * s.c;
      acc_t* acc_dz_xhat = partial_dz_xhat.data() + item * s.c;
      const SpanParam<acc_t> mu{mean_nc + n * s.c, true, 0}, r{rstd_nc + n * s.c, true, 0};
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t off = (n * s.hw + row) * s.c;
        widen(dy + off, dy_row.data(), s.c);
        widen(x + off, x_row.data(), s.c);
        dz_xhat_span(dy_row.data(), x_row.data(), s.c, mu, r, SpanParam<acc_t>{w, true, 1},
                     SpanParam<acc_t>{b, true, 0}, silu);
        for (int64_t c = 0; c < s.c; ++c) {
          acc_dz[c] += dy_row[c];
          acc_dz_xhat[c] += dy_row[c] * x_row[c];
        }
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

// In place over a span after dz_xhat_span: xhat <- rstd * (dz * w - coef_dz - xhat * coef_xhat).
template <typename acc_t>
void grad_input_span(const acc_t* dz, acc_t* xhat, int64_t len, SpanParam<acc_t> r, SpanParam<acc_t> w,
                     SpanParam<acc_t> coef_dz, SpanParam<acc_t> coef_xhat) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const Vec v = r.vec(i) * (Vec::loadu(dz + i) * w.vec(i) - coef_dz.vec(i) - Vec::loadu(xhat + i) * coef_xhat.vec(i));
    v.store(xhat + i);
  }
  for (; i < len; ++i) xhat[i] = r.at(i) * (dz[i] * w.at(i) - coef_dz.at(i) - xhat[i] * coef_xhat.at(i));
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
template <typename in_t, typename acc_t>
void group_norm_grad_input_cpu(const in_t* dy, const in_t* x, in_t* dx, const GroupNormShape& s, const acc_t* mean_nc,
                               const acc_t* rstd_nc, const acc_t* coef_dz, const acc_t* coef_xhat, const acc_t* w,
                               const acc_t* b, bool silu) {
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(s.hw, 1));
    at::parallel_for(0, s.n * s.c, grain, [&](int64_t begin, int64_t end) {
      const int64_t buf_len = std::min(kInnerChunk, s.hw);
      std::vector<acc_t> dy_buf(buf_len), x_buf(buf_len);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % s.c;
        const SpanParam<acc_t> mu{mean_nc + plane, false, 0}, r{rstd_nc + plane, false, 0};
        const SpanParam<acc_t> wc{w != nullptr ? w + c : nullptr, false, 1},
            bc{b != nullptr ? b + c : nullptr, false, 0};
        const SpanParam<acc_t> cdz{coef_dz + plane, false, 0}, cx{coef_xhat + plane, false, 0};
        for (int64_t start = 0; start < s.hw; start += kInnerChunk) {
          const int64_t len = std::min(kInnerChunk, s.hw - start);
          const int64_t off = plane * s.hw + start;
          widen(dy + off, dy_buf.data(), len);
          widen(x + off, x_buf.data(), len);
          dz_xhat_span(dy_buf.data(), x_buf.data(), len, mu, r, wc, bc, silu);
          grad_input_span(dy_buf.data(), x_buf.data(), len, r, wc, cdz, cx);
          narrow(x_buf.data(), dx + off, len);
        }
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.c);
    at::parallel_for(0, s.n * s.hw, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> dy_buf(s.c), x_buf(s.c);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t off = row * s.c;
        const int64_t nc0 = (row / s.hw) * s.c;
        const SpanParam<acc_t> r{rstd_nc + nc0, true, 0}, wc{w, true, 1};
        widen(dy + off, dy_buf.data(), s.c);
        widen(x + off, x_buf.data(), s.c);
        dz_xhat_span(dy_buf.data(), x_buf.data(), s.c, SpanParam<acc_t>{mean_nc + nc0, true, 0}, r, wc,
                     SpanParam<acc_t>{b, true, 0}, silu);
        grad_input_span(dy_buf.data(), x_buf.data(), s.c, r, wc, SpanParam<acc_t>{coef_dz + nc0, true, 0},
                        SpanParam<acc_t>{coef_xhat + nc0, true, 0});
        narrow(x_buf.data(), dx + off, s.c);
      }
    });
  }
}

// The forward on contiguous input, one whole (n, g) group per work item: statistics of the group
// relative to its first element, then the output from the same (cached) values.
template <typename in_t, typename acc_t>
void group_norm_fused_forward_cpu(const in_t* x, in_t* y, const GroupNormShape& s, double eps, const acc_t* w,
                                  const acc_t* b, bool silu, acc_t* mean, acc_t* rstd) {
  const int64_t len = s.channels_per_group * s.hw;
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    // Reduced-precision input is converted once; acc_t input is read in place (from L2 the second time).
    std::vector<acc_t> buf(std::is_same_v<in_t, acc_t> ? 0 : len);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t offset = group * len;
      const acc_t* v = acc_view(x + offset, buf.data(), len);
      const acc_t shift = v[0];
      WelfordState<acc_t> st = welford_init<acc_t>();
      for (int64_t start = 0; start < len; start += kInnerChunk) {
        const int64_t chunk = std::min(kInnerChunk, len - start);
        const acc_t count = static_cast<acc_t>(chunk);
        const acc_t chunk_mean = span_sum_dev(v + start, chunk, shift) / count;
        st = welford_merge(
            st, WelfordState<acc_t>{count, chunk_mean, span_sum_sq_dev(v + start, chunk, shift, chunk_mean)});
      }
      const acc_t group_rstd = acc_t(1) / std::sqrt(std::max(st.m2 / st.count, acc_t(0)) + static_cast<acc_t>(eps));
      mean[group] = shift + st.mean;
      rstd[group] = group_rstd;
      acc_t* out = acc_target(y + offset, buf.data());
      const int64_t c0 = (group % s.groups) * s.channels_per_group;
      for (int64_t d = 0; d < s.channels_per_group; ++d) {
        const int64_t c = c0 + d;
        const acc_t scale = group_rstd * param_or(w, c, acc_t(1));
        normalize_span(v + d * s.hw, out + d * s.hw, s.hw, shift, SpanParam<acc_t>{&st.mean, false, 0},
                       SpanParam<acc_t>{&scale, false, 0}, SpanParam<acc_t>{b != nullptr ? b + c : nullptr, false, 0},
                       silu);
      }
      finish_output(buf.data(), y + offset, len);
    }
  });
}

// The backward on contiguous input, one whole (n, g) group per work item: dz (the SiLU's exp
// evaluated once per element) and xhat are cached, reduced per channel, and turned into grad_input
// in place. The per-(n, c) sums are kept for dweight / dbias.
template <typename in_t, typename acc_t>
void group_norm_fused_backward_cpu(const in_t* dy, const in_t* x, in_t* dx, const GroupNormShape& s, const acc_t* mean,
                                   const acc_t* rstd, const acc_t* w, const acc_t* b, bool silu, acc_t* sum_dz,
                                   acc_t* sum_dz_xhat) {
  const int64_t len = s.channels_per_group * s.hw;
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dz_buf(len), x_buf(len);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t offset = group * len;
      const int64_t n = group / s.groups, g = group % s.groups, c0 = g * s.channels_per_group;
      const SpanParam<acc_t> mu{mean + group, false, 0}, r{rstd + group, false, 0};
      widen(dy + offset, dz_buf.data(), len);
      widen(x + offset, x_buf.data(), len);
      for (int64_t d = 0; d < s.channels_per_group; ++d) {
        const int64_t c = c0 + d;
        acc_t* dz_c = dz_buf.data() + d * s.hw;
        acc_t* x_c = x_buf.data() + d * s.hw;
        dz_xhat_span(dz_c, x_c, s.hw, mu, r, SpanParam<acc_t>{w != nullptr ? w + c : nullptr, false, 1},
                     SpanParam<acc_t>{b != nullptr ? b + c : nullptr, false, 0}, silu);
        sum_dz[n * s.c + c] = span_sum(dz_c, s.hw);
        sum_dz_xhat[n * s.c + c] = span_dot(dz_c, x_c, s.hw);
      }
      const auto [mean_dz, mean_dz_xhat] = group_grad_means(s, sum_dz, sum_dz_xhat, w, n, g);
      for (int64_t d = 0; d < s.channels_per_group; ++d) {
        const int64_t c = c0 + d;
        grad_input_span(dz_buf.data() + d * s.hw, x_buf.data() + d * s.hw, s.hw, r,
                        SpanParam<acc_t>{w != nullptr ? w + c : nullptr, false, 1},
                        SpanParam<acc_t>{&mean_dz, false, 0}, SpanParam<acc_t>{&mean_dz_xhat, false, 0});
      }
      narrow(x_buf.data(), dx + offset, len);
    }
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

}  // namespace

void group_norm_fwd(const GroupNormFwdArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_group_norm_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(a.x);
    auto* y = static_cast<scalar_t*>(a.y);
    const auto* w = static_cast<const acc_t*>(a.w);
    const auto* b = static_cast<const acc_t*>(a.b);
    auto* mean = static_cast<acc_t*>(a.mean);
    auto* rstd = static_cast<acc_t*>(a.rstd);
    if (use_fused_groups(a.shape)) {
      group_norm_fused_forward_cpu<scalar_t, acc_t>(x, y, a.shape, a.eps, w, b, a.silu, mean, rstd);
      return;
    }
    group_stats_cpu<scalar_t, acc_t>(x, a.shape, a.eps, mean, rstd);
    const std::vector<acc_t> mean_nc = expand_to_channels<acc_t>(mean, a.shape, nullptr);
    const std::vector<acc_t> scale_nc = expand_to_channels<acc_t>(rstd, a.shape, w);
    group_norm_apply_cpu<scalar_t, acc_t>(x, y, a.shape, mean_nc.data(), scale_nc.data(), b, a.silu);
  });
}

void group_norm_bwd(const GroupNormBwdArgs& a) {
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
    if (use_fused_groups(s)) {
      group_norm_fused_backward_cpu<scalar_t, acc_t>(dy, x, dx, s, mean, rstd, w, b, a.silu, sum_dz.data(),
                                                     sum_dz_xhat.data());
    } else {
      const std::vector<acc_t> mean_nc = expand_to_channels<acc_t>(mean, s, nullptr);
      const std::vector<acc_t> rstd_nc = expand_to_channels<acc_t>(rstd, s, nullptr);
      group_norm_channel_sums_cpu<scalar_t, acc_t>(dy, x, s, mean_nc.data(), rstd_nc.data(), w, b, a.silu,
                                                   sum_dz.data(), sum_dz_xhat.data());
      std::vector<acc_t> coef_dz(s.n * s.c), coef_xhat(s.n * s.c);
      group_norm_coefficients_cpu<acc_t>(s, sum_dz.data(), sum_dz_xhat.data(), w, coef_dz.data(), coef_xhat.data());
      group_norm_grad_input_cpu<scalar_t, acc_t>(dy, x, dx, s, mean_nc.data(), rstd_nc.data(), coef_dz.data(),
                                                 coef_xhat.data(), w, b, a.silu);
    }
    group_norm_param_grads_cpu<acc_t>(s, sum_dz.data(), sum_dz_xhat.data(), static_cast<acc_t*>(a.dw),
                                      static_cast<acc_t*>(a.db));
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
