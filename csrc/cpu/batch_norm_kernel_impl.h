// Implementation of the CPU batch-norm kernels, included once per instruction set by
// batch_norm_kernel_{default,avx2}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Channels-first input ([N][C][inner]) is reduced plane by plane: each (n, c) plane is contiguous,
// so its sum / centred sum of squares are vectorized two-pass reductions, and planes merge into the
// channel by Chan's formula. Work items are (channel, block of N) pairs so that few channels still
// keep every thread busy. Channels-last input ([rows][C]) is reduced by blocks of rows, vectorized
// across channels. Statistics are taken relative to a per-channel sample value, so large channel
// offsets do not cost precision. Block partials are merged in a fixed order, so results do not
// depend on scheduling.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/welford.h"
#include "cpu/batch_norm_kernel.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrainElements = 1 << 15;
// Partial sums are closed every kSumChunk elements (channels-first) or kRowFlush rows
// (channels-last) so that rounding error does not grow linearly with the batch.
constexpr int64_t kSumChunk = 1024;
constexpr int64_t kRowFlush = 256;

template <typename acc_t>
acc_t reduce_lanes(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}

// sum(p)
template <typename acc_t>
acc_t plane_sum(const acc_t* p, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc(0);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) acc += Vec::loadu(p + i);
    acc_t s = reduce_lanes(acc);
    for (; i < end; ++i) s += p[i];
    total += s;
  }
  return total;
}

// sum(w * (p - shift)): the backward's dy * (x - mean).
template <typename acc_t>
acc_t plane_dot_centred(const acc_t* w, const acc_t* p, int64_t n, acc_t shift) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vshift(shift);
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc(0);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) acc = at::vec::fmadd(Vec::loadu(w + i), Vec::loadu(p + i) - vshift, acc);
    acc_t s = reduce_lanes(acc);
    for (; i < end; ++i) s += w[i] * (p[i] - shift);
    total += s;
  }
  return total;
}

// (count, mean - shift, m2) of a contiguous run by the corrected two-pass algorithm: with
// d = p - mean0 for the first-pass mean0, m2 = sum(d^2) - sum(d)^2 / n removes the error that
// rounding mean0 (an ulp of 1e4 is 1e-3 in fp32) would otherwise add to a variance of 1e-4.
template <typename acc_t>
WelfordState<acc_t> plane_moments(const acc_t* p, int64_t n, acc_t shift) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const acc_t count = static_cast<acc_t>(n);
  const acc_t mean0 = plane_sum(p, n) / count;
  const Vec vshift(mean0);
  acc_t s1 = 0, s2 = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc1(0), acc2(0);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      const Vec d = Vec::loadu(p + i) - vshift;
      acc1 += d;
      acc2 = at::vec::fmadd(d, d, acc2);
    }
    acc_t c1 = reduce_lanes(acc1), c2 = reduce_lanes(acc2);
    for (; i < end; ++i) {
      const acc_t d = p[i] - mean0;
      c1 += d;
      c2 += d * d;
    }
    s1 += c1;
    s2 += c2;
  }
  return {count, (mean0 - shift) + s1 / count, std::max(acc_t(0), s2 - s1 * s1 / count)};
}

// Blocks of N per channel for channels-first reductions: one per channel when channels alone fill
// the threads, more when there are few channels.
int64_t n_blocks_per_channel(int64_t n, int64_t c) {
  const int64_t threads = at::get_num_threads();
  if (c >= threads) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(n, (2 * threads + c - 1) / c));
}

int64_t row_blocks(int64_t rows, int64_t c) {
  const int64_t by_size = std::max<int64_t>(1, rows * c / kGrainElements);
  return std::max<int64_t>(1, std::min<int64_t>({rows, by_size, static_cast<int64_t>(at::get_num_threads())}));
}

// ----- statistics ----------------------------------------------------------------------------------

// Statistics are accumulated relative to shift[c] (see bn_channel_shift) and shifted back at the end.
template <typename in_t>
void stats_channels_first(const in_t* x, const BatchNormShape& v, const at::opmath_type<in_t>* shift,
                          at::opmath_type<in_t>* mean_out, at::opmath_type<in_t>* m2_out) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t nb = n_blocks_per_channel(v.outer, v.channels);
  std::vector<WelfordState<acc_t>> partial(v.channels * nb);
  at::parallel_for(0, v.channels * nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<in_t, acc_t> ? 0 : v.inner);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / nb, b = task % nb;
      WelfordState<acc_t> s = welford_init<acc_t>();
      for (int64_t n = v.outer * b / nb; n < v.outer * (b + 1) / nb; ++n) {
        const acc_t* p = as_acc(x + (n * v.channels + c) * v.inner, buf.data(), v.inner);
        s = welford_merge(s, plane_moments(p, v.inner, shift[c]));
      }
      partial[task] = s;
    }
  });
  for (int64_t c = 0; c < v.channels; ++c) {
    WelfordState<acc_t> s = partial[c * nb];
    for (int64_t b = 1; b < nb; ++b) s = welford_merge(s, partial[c * nb + b]);
    mean_out[c] = shift[c] + s.mean;
    m2_out[c] = s.m2;
  }
}

// Per block of rows, sums of d = x - shift and d^2 (the shifted-data algorithm: the shift is a
// sample of the channel, so sum(d)^2 / n does not cancel against sum(d^2)), with no per-row division
// as a Welford update would need. Blocks merge by Chan's formula, still relative to the shift.
template <typename in_t>
void stats_channels_last(const in_t* x, const bool* pad, const BatchNormShape& v, const at::opmath_type<in_t>* shift,
                         at::opmath_type<in_t>* mean_out, at::opmath_type<in_t>* m2_out) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const int64_t rows = v.outer, C = v.channels;
  const int64_t nb = row_blocks(rows, C);
  std::vector<acc_t> block_mean(nb * C, acc_t(0)), block_m2(nb * C, acc_t(0));
  std::vector<int64_t> block_count(nb, 0);
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<in_t, acc_t> ? 0 : C), s1(C), s2(C), run1(C), run2(C);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(s1.begin(), s1.end(), acc_t(0));
      std::fill(s2.begin(), s2.end(), acc_t(0));
      std::fill(run1.begin(), run1.end(), acc_t(0));
      std::fill(run2.begin(), run2.end(), acc_t(0));
      const auto flush = [&] {
        for (int64_t c = 0; c < C; ++c) {
          s1[c] += run1[c];
          s2[c] += run2[c];
        }
        std::fill(run1.begin(), run1.end(), acc_t(0));
        std::fill(run2.begin(), run2.end(), acc_t(0));
      };
      int64_t count = 0;
      for (int64_t r = rows * b / nb; r < rows * (b + 1) / nb; ++r) {
        if (pad != nullptr && pad[r]) continue;
        const acc_t* p = as_acc(x + r * C, buf.data(), C);
        int64_t c = 0;
        for (; c + kLanes <= C; c += kLanes) {
          const Vec d = Vec::loadu(p + c) - Vec::loadu(shift + c);
          (Vec::loadu(run1.data() + c) + d).store(run1.data() + c);
          at::vec::fmadd(d, d, Vec::loadu(run2.data() + c)).store(run2.data() + c);
        }
        for (; c < C; ++c) {
          const acc_t d = p[c] - shift[c];
          run1[c] += d;
          run2[c] += d * d;
        }
        if (++count % kRowFlush == 0) flush();
      }
      flush();
      block_count[b] = count;
      if (count == 0) continue;
      const acc_t n = static_cast<acc_t>(count);
      for (int64_t c = 0; c < C; ++c) {
        block_mean[b * C + c] = s1[c] / n;
        block_m2[b * C + c] = std::max(acc_t(0), s2[c] - s1[c] * s1[c] / n);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    WelfordState<acc_t> s{static_cast<acc_t>(block_count[0]), block_mean[c], block_m2[c]};
    for (int64_t b = 1; b < nb; ++b) {
      s = welford_merge(
          s, WelfordState<acc_t>{static_cast<acc_t>(block_count[b]), block_mean[b * C + c], block_m2[b * C + c]});
    }
    mean_out[c] = shift[c] + s.mean;
    m2_out[c] = s.m2;
  }
}

// ----- backward reduction: sum(dy), sum(dy * (x - mean)) ---------------------------------------------

template <typename in_t>
void backward_reduce_channels_first(const in_t* dy, const in_t* x, const BatchNormShape& v,
                                    const at::opmath_type<in_t>* mean, at::opmath_type<in_t>* sum_dy_out,
                                    at::opmath_type<in_t>* sum_dy_xmu_out) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t nb = n_blocks_per_channel(v.outer, v.channels);
  std::vector<acc_t> part_dy(v.channels * nb), part_dy_xmu(v.channels * nb);
  at::parallel_for(0, v.channels * nb, 1, [&](int64_t begin, int64_t end) {
    const int64_t buf_len = std::is_same_v<in_t, acc_t> ? 0 : v.inner;
    std::vector<acc_t> dy_buf(buf_len), x_buf(buf_len);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / nb, b = task % nb;
      acc_t s_dy = 0, s_dy_xmu = 0;
      for (int64_t n = v.outer * b / nb; n < v.outer * (b + 1) / nb; ++n) {
        const int64_t off = (n * v.channels + c) * v.inner;
        const acc_t* g = as_acc(dy + off, dy_buf.data(), v.inner);
        const acc_t* p = as_acc(x + off, x_buf.data(), v.inner);
        s_dy += plane_sum(g, v.inner);
        s_dy_xmu += plane_dot_centred(g, p, v.inner, mean[c]);
      }
      part_dy[task] = s_dy;
      part_dy_xmu[task] = s_dy_xmu;
    }
  });
  for (int64_t c = 0; c < v.channels; ++c) {
    acc_t s_dy = 0, s_dy_xmu = 0;
    for (int64_t b = 0; b < nb; ++b) {
      s_dy += part_dy[c * nb + b];
      s_dy_xmu += part_dy_xmu[c * nb + b];
    }
    sum_dy_out[c] = s_dy;
    sum_dy_xmu_out[c] = s_dy_xmu;
  }
}

template <typename in_t>
void backward_reduce_channels_last(const in_t* dy, const in_t* x, const bool* pad, const BatchNormShape& v,
                                   const at::opmath_type<in_t>* mean, at::opmath_type<in_t>* sum_dy_out,
                                   at::opmath_type<in_t>* sum_dy_xmu_out) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const int64_t rows = v.outer, C = v.channels;
  const int64_t nb = row_blocks(rows, C);
  std::vector<acc_t> block_dy(nb * C, acc_t(0)), block_dy_xmu(nb * C, acc_t(0));
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    const int64_t buf_len = std::is_same_v<in_t, acc_t> ? 0 : C;
    std::vector<acc_t> dy_buf(buf_len), x_buf(buf_len), run_dy(C), run_dy_xmu(C);
    for (int64_t b = begin; b < end; ++b) {
      acc_t* tot_dy = block_dy.data() + b * C;
      acc_t* tot_dy_xmu = block_dy_xmu.data() + b * C;
      const auto flush = [&] {
        for (int64_t c = 0; c < C; ++c) {
          tot_dy[c] += run_dy[c];
          tot_dy_xmu[c] += run_dy_xmu[c];
        }
        std::fill(run_dy.begin(), run_dy.end(), acc_t(0));
        std::fill(run_dy_xmu.begin(), run_dy_xmu.end(), acc_t(0));
      };
      std::fill(run_dy.begin(), run_dy.end(), acc_t(0));
      std::fill(run_dy_xmu.begin(), run_dy_xmu.end(), acc_t(0));
      int64_t since_flush = 0;
      for (int64_t r = rows * b / nb; r < rows * (b + 1) / nb; ++r) {
        if (pad != nullptr && pad[r]) continue;
        const acc_t* g = as_acc(dy + r * C, dy_buf.data(), C);
        const acc_t* p = as_acc(x + r * C, x_buf.data(), C);
        int64_t c = 0;
        for (; c + kLanes <= C; c += kLanes) {
          const Vec gv = Vec::loadu(g + c);
          (Vec::loadu(run_dy.data() + c) + gv).store(run_dy.data() + c);
          at::vec::fmadd(gv, Vec::loadu(p + c) - Vec::loadu(mean + c), Vec::loadu(run_dy_xmu.data() + c))
              .store(run_dy_xmu.data() + c);
        }
        for (; c < C; ++c) {
          run_dy[c] += g[c];
          run_dy_xmu[c] += g[c] * (p[c] - mean[c]);
        }
        if (++since_flush == kRowFlush) {
          flush();
          since_flush = 0;
        }
      }
      flush();
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    acc_t s_dy = 0, s_dy_xmu = 0;
    for (int64_t b = 0; b < nb; ++b) {
      s_dy += block_dy[b * C + c];
      s_dy_xmu += block_dy_xmu[b * C + c];
    }
    sum_dy_out[c] = s_dy;
    sum_dy_xmu_out[c] = s_dy_xmu;
  }
}

// ----- element-wise: out = (x - mean) * scale + shift [+ dy_scale * dy] ------------------------------

template <typename acc_t>
struct AffineCoefs {
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* shift;
  const acc_t* dy_scale;  // null in the forward
};

template <typename in_t>
void affine_channels_first(const in_t* x, const in_t* dy, in_t* out, const BatchNormShape& v,
                           const AffineCoefs<at::opmath_type<in_t>>& k) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  constexpr bool kConvert = !std::is_same_v<in_t, acc_t>;
  const int64_t planes = v.outer * v.channels, inner = v.inner;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(inner, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x_buf(kConvert ? inner : 0), dy_buf(kConvert && dy ? inner : 0), o_buf(kConvert ? inner : 0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % v.channels, off = plane * inner;
      const acc_t* p = as_acc(x + off, x_buf.data(), inner);
      const acc_t* g = dy != nullptr ? as_acc(dy + off, dy_buf.data(), inner) : nullptr;
      acc_t* o = kConvert ? o_buf.data() : reinterpret_cast<acc_t*>(out + off);
      const acc_t m = k.mean[c], s = k.scale[c], t = k.shift[c], a = g ? k.dy_scale[c] : acc_t(0);
      const Vec vm(m), vs(s), vt(t), va(a);
      int64_t i = 0;
      for (; i + kLanes <= inner; i += kLanes) {
        Vec r = at::vec::fmadd(Vec::loadu(p + i) - vm, vs, vt);
        if (g != nullptr) r = at::vec::fmadd(va, Vec::loadu(g + i), r);
        r.store(o + i);
      }
      for (; i < inner; ++i) o[i] = (p[i] - m) * s + t + (g != nullptr ? a * g[i] : acc_t(0));
      if constexpr (kConvert) at::vec::convert(o, out + off, inner);
    }
  });
}

template <typename in_t>
void affine_channels_last(const in_t* x, const in_t* dy, const bool* pad, in_t* out, const BatchNormShape& v,
                          const AffineCoefs<at::opmath_type<in_t>>& k) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  constexpr bool kConvert = !std::is_same_v<in_t, acc_t>;
  const int64_t rows = v.outer, C = v.channels;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x_buf(kConvert ? C : 0), dy_buf(kConvert && dy ? C : 0), o_buf(kConvert ? C : 0);
    for (int64_t r = begin; r < end; ++r) {
      if (pad != nullptr && pad[r]) {
        std::fill(out + r * C, out + (r + 1) * C, in_t(0));
        continue;
      }
      const acc_t* p = as_acc(x + r * C, x_buf.data(), C);
      const acc_t* g = dy != nullptr ? as_acc(dy + r * C, dy_buf.data(), C) : nullptr;
      acc_t* o = kConvert ? o_buf.data() : reinterpret_cast<acc_t*>(out + r * C);
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        Vec res = at::vec::fmadd(Vec::loadu(p + c) - Vec::loadu(k.mean + c), Vec::loadu(k.scale + c),
                                 Vec::loadu(k.shift + c));
        if (g != nullptr) res = at::vec::fmadd(Vec::loadu(k.dy_scale + c), Vec::loadu(g + c), res);
        res.store(o + c);
      }
      for (; c < C; ++c) {
        o[c] = (p[c] - k.mean[c]) * k.scale[c] + k.shift[c] + (g != nullptr ? k.dy_scale[c] * g[c] : acc_t(0));
      }
      if constexpr (kConvert) at::vec::convert(o, out + r * C, C);
    }
  });
}

}  // namespace

void batch_norm_stats(const BatchNormStatsArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(a.x);
    const auto* shift = static_cast<const acc_t*>(a.shift);
    auto* mean = static_cast<acc_t*>(a.mean);
    auto* m2 = static_cast<acc_t*>(a.m2);
    if (a.shape.channels_last) {
      stats_channels_last<scalar_t>(x, a.pad, a.shape, shift, mean, m2);
    } else {
      stats_channels_first<scalar_t>(x, a.shape, shift, mean, m2);
    }
  });
}

void batch_norm_backward_reduce(const BatchNormBackwardReduceArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_backward_reduce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* dy = static_cast<const scalar_t*>(a.dy);
    const auto* x = static_cast<const scalar_t*>(a.x);
    const auto* mean = static_cast<const acc_t*>(a.mean);
    auto* sum_dy = static_cast<acc_t*>(a.sum_dy);
    auto* sum_dy_xmu = static_cast<acc_t*>(a.sum_dy_xmu);
    if (a.shape.channels_last) {
      backward_reduce_channels_last<scalar_t>(dy, x, a.pad, a.shape, mean, sum_dy, sum_dy_xmu);
    } else {
      backward_reduce_channels_first<scalar_t>(dy, x, a.shape, mean, sum_dy, sum_dy_xmu);
    }
  });
}

void batch_norm_affine(const BatchNormAffineArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_affine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const AffineCoefs<acc_t> k{static_cast<const acc_t*>(a.mean), static_cast<const acc_t*>(a.scale),
                               static_cast<const acc_t*>(a.shift), static_cast<const acc_t*>(a.dy_scale)};
    const auto* x = static_cast<const scalar_t*>(a.x);
    const auto* dy = static_cast<const scalar_t*>(a.dy);
    auto* out = static_cast<scalar_t*>(a.out);
    if (a.shape.channels_last) {
      affine_channels_last<scalar_t>(x, dy, a.pad, out, a.shape, k);
    } else {
      affine_channels_first<scalar_t>(x, dy, out, a.shape, k);
    }
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
