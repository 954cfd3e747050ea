// Implementation of the CPU batch-norm kernels, included once per instruction set by
// kernels_{default,avx2,avx512}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Channels-first input ([N][C][inner]) is reduced plane by plane: each (n, c) plane is contiguous,
// so its sum / centred sum of squares are vectorized two-pass reductions, and planes merge into the
// channel by Chan's formula. Work items are (channel, block of N) pairs so that few channels still
// keep every thread busy. Channels-last input ([rows][C]) is reduced by blocks of rows, vectorized
// across channels. Statistics are taken relative to a per-channel sample value, so large channel
// offsets do not cost precision. Block partials are merged in a fixed order, so results do not
// depend on scheduling. The training forward (batch_norm_train) normalizes a channels-first channel
// as soon as its statistics are known, while its planes are still in cache.

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
namespace batch_norm_detail {
namespace {

using at::vec::Vectorized;

constexpr int64_t kGrainElements = 1 << 15;
// Partial sums are closed every kSumChunk elements (channels-first) or kRowFlush rows
// (channels-last) so that rounding error does not grow linearly with the batch.
constexpr int64_t kSumChunk = 1024;
constexpr int64_t kRowFlush = 256;

// The plane reductions below read the stored dtype directly and widen in registers (load_pair), so
// reduced-precision planes cost no conversion pass through a buffer. Each keeps at least four
// independent accumulation chains: with one, the loop waits on the add/FMA latency instead of
// the loads.

// sum(p)
template <typename acc_t, typename src_t>
acc_t plane_sum(const src_t* p, int64_t n) {
  using Vec = Vectorized<acc_t>;
  return chunked_sum_four_chains<acc_t>(
      n, kSumChunk,
      [&](int64_t i, Vec& lo, Vec& hi) {
        const auto [x0, x1] = load_pair<acc_t>(p + i);
        lo += x0;
        hi += x1;
      },
      [&](int64_t i) { return static_cast<acc_t>(p[i]); });
}

// (sum(w), sum(w * (p - shift))): the backward's sum(dy) and sum(dy * (x - mean)) in one pass.
template <typename acc_t, typename src_t>
std::pair<acc_t, acc_t> plane_sum_and_dot_centred(const src_t* w, const src_t* p, int64_t n, acc_t shift) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const Vec vshift(shift);
  acc_t total_w = 0, total_dot = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec w0(0), w1(0), d0(0), d1(0);
    int64_t i = start;
    for (; i + kStep <= end; i += kStep) {
      const auto [g0, g1] = load_pair<acc_t>(w + i);
      const auto [x0, x1] = load_pair<acc_t>(p + i);
      w0 += g0;
      w1 += g1;
      d0 = at::vec::fmadd(g0, x0 - vshift, d0);
      d1 = at::vec::fmadd(g1, x1 - vshift, d1);
    }
    acc_t sw = reduce_lanes<acc_t>(w0 + w1), sd = reduce_lanes<acc_t>(d0 + d1);
    for (; i < end; ++i) {
      const acc_t g = static_cast<acc_t>(w[i]);
      sw += g;
      sd += g * (static_cast<acc_t>(p[i]) - shift);
    }
    total_w += sw;
    total_dot += sd;
  }
  return {total_w, total_dot};
}

// (count, mean - shift, m2) of a contiguous run by the corrected two-pass algorithm: with
// d = p - mean0 for the first-pass mean0, m2 = sum(d^2) - sum(d)^2 / n removes the error that
// rounding mean0 (an ulp of 1e4 is 1e-3 in fp32) would otherwise add to a variance of 1e-4.
// A plane is a few KiB, so the second pass reads it from L1/L2.
template <typename acc_t, typename src_t>
WelfordState<acc_t> plane_moments(const src_t* p, int64_t n, acc_t shift) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const acc_t count = static_cast<acc_t>(n);
  const acc_t mean0 = plane_sum<acc_t>(p, n) / count;
  const Vec vmean0(mean0);
  acc_t s1 = 0, s2 = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec a0(0), a1(0), q0(0), q1(0);
    int64_t i = start;
    for (; i + kStep <= end; i += kStep) {
      const auto [x0, x1] = load_pair<acc_t>(p + i);
      const Vec d0 = x0 - vmean0, d1 = x1 - vmean0;
      a0 += d0;
      a1 += d1;
      q0 = at::vec::fmadd(d0, d0, q0);
      q1 = at::vec::fmadd(d1, d1, q1);
    }
    acc_t c1 = reduce_lanes<acc_t>(a0 + a1), c2 = reduce_lanes<acc_t>(q0 + q1);
    for (; i < end; ++i) {
      const acc_t d = static_cast<acc_t>(p[i]) - mean0;
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

// The parallel_for bodies below first copy what they use into local constants: values captured by
// reference are otherwise reloaded on every iteration, since the compiler cannot prove that the
// kernel's stores do not alias them.

// ----- statistics ----------------------------------------------------------------------------------

// Statistics are accumulated relative to shift[c] (see bn_channel_shift) and shifted back at the end.
template <typename in_t>
void stats_channels_first(const in_t* x, const BatchNormShape& v, const at::opmath_type<in_t>* shift,
                          at::opmath_type<in_t>* mean_out, at::opmath_type<in_t>* m2_out) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t nb = n_blocks_per_channel(v.outer, v.channels);
  std::vector<WelfordState<acc_t>> partial(v.channels * nb);
  at::parallel_for(0, v.channels * nb, 1, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    const acc_t* const sh = shift;
    WelfordState<acc_t>* const part = partial.data();
    const int64_t outer = v.outer, C = v.channels, inner = v.inner, blocks = nb;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / blocks, b = task % blocks;
      WelfordState<acc_t> s = welford_init<acc_t>();
      for (int64_t n = outer * b / blocks; n < outer * (b + 1) / blocks; ++n) {
        s = welford_merge(s, plane_moments<acc_t>(xp + (n * C + c) * inner, inner, sh[c]));
      }
      part[task] = s;
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
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const int64_t rows = v.outer, C = v.channels;
  const int64_t nb = row_blocks(rows, C);
  std::vector<acc_t> block_mean(nb * C, acc_t(0)), block_m2(nb * C, acc_t(0));
  std::vector<int64_t> block_count(nb, 0);
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    const bool* const pd = pad;
    const acc_t* const sh = shift;
    const int64_t nrows = rows, nc = C, blocks = nb;
    std::vector<acc_t> s1(nc), s2(nc), run1_v(nc), run2_v(nc);
    acc_t* const run1 = run1_v.data();
    acc_t* const run2 = run2_v.data();
    for (int64_t b = begin; b < end; ++b) {
      std::fill(s1.begin(), s1.end(), acc_t(0));
      std::fill(s2.begin(), s2.end(), acc_t(0));
      std::fill(run1, run1 + nc, acc_t(0));
      std::fill(run2, run2 + nc, acc_t(0));
      const auto flush = [&] {
        for (int64_t c = 0; c < nc; ++c) {
          s1[c] += run1[c];
          s2[c] += run2[c];
        }
        std::fill(run1, run1 + nc, acc_t(0));
        std::fill(run2, run2 + nc, acc_t(0));
      };
      int64_t count = 0;
      for (int64_t r = nrows * b / blocks; r < nrows * (b + 1) / blocks; ++r) {
        if (pd != nullptr && pd[r]) continue;
        const in_t* p = xp + r * nc;
        int64_t c = 0;
        for (; c + kStep <= nc; c += kStep) {
          const auto [x0, x1] = load_pair<acc_t>(p + c);
          const auto [h0, h1] = load_pair<acc_t>(sh + c);
          const auto [r0, r1] = load_pair<acc_t>(run1 + c);
          const auto [q0, q1] = load_pair<acc_t>(run2 + c);
          const Vec d0 = x0 - h0, d1 = x1 - h1;
          store_pair(run1 + c, r0 + d0, r1 + d1);
          store_pair(run2 + c, at::vec::fmadd(d0, d0, q0), at::vec::fmadd(d1, d1, q1));
        }
        for (; c < nc; ++c) {
          const acc_t d = static_cast<acc_t>(p[c]) - sh[c];
          run1[c] += d;
          run2[c] += d * d;
        }
        if (++count % kRowFlush == 0) flush();
      }
      flush();
      block_count[b] = count;
      if (count == 0) continue;
      const acc_t n = static_cast<acc_t>(count);
      for (int64_t c = 0; c < nc; ++c) {
        block_mean[b * nc + c] = s1[c] / n;
        block_m2[b * nc + c] = std::max(acc_t(0), s2[c] - s1[c] * s1[c] / n);
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
    const in_t* const gp = dy;
    const in_t* const xp = x;
    const acc_t* const mu = mean;
    acc_t* const out_dy = part_dy.data();
    acc_t* const out_dy_xmu = part_dy_xmu.data();
    const int64_t outer = v.outer, C = v.channels, inner = v.inner, blocks = nb;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / blocks, b = task % blocks;
      acc_t s_dy = 0, s_dy_xmu = 0;
      for (int64_t n = outer * b / blocks; n < outer * (b + 1) / blocks; ++n) {
        const int64_t off = (n * C + c) * inner;
        const auto [plane_dy, plane_dy_xmu] = plane_sum_and_dot_centred<acc_t>(gp + off, xp + off, inner, mu[c]);
        s_dy += plane_dy;
        s_dy_xmu += plane_dy_xmu;
      }
      out_dy[task] = s_dy;
      out_dy_xmu[task] = s_dy_xmu;
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
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const int64_t rows = v.outer, C = v.channels;
  const int64_t nb = row_blocks(rows, C);
  std::vector<acc_t> block_dy(nb * C, acc_t(0)), block_dy_xmu(nb * C, acc_t(0));
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    const in_t* const gp = dy;
    const in_t* const xp = x;
    const bool* const pd = pad;
    const acc_t* const mu = mean;
    const int64_t nrows = rows, nc = C, blocks = nb;
    std::vector<acc_t> run_dy_v(nc), run_dy_xmu_v(nc);
    acc_t* const run_dy = run_dy_v.data();
    acc_t* const run_dy_xmu = run_dy_xmu_v.data();
    for (int64_t b = begin; b < end; ++b) {
      acc_t* tot_dy = block_dy.data() + b * nc;
      acc_t* tot_dy_xmu = block_dy_xmu.data() + b * nc;
      const auto flush = [&] {
        for (int64_t c = 0; c < nc; ++c) {
          tot_dy[c] += run_dy[c];
          tot_dy_xmu[c] += run_dy_xmu[c];
        }
        std::fill(run_dy, run_dy + nc, acc_t(0));
        std::fill(run_dy_xmu, run_dy_xmu + nc, acc_t(0));
      };
      std::fill(run_dy, run_dy + nc, acc_t(0));
      std::fill(run_dy_xmu, run_dy_xmu + nc, acc_t(0));
      int64_t since_flush = 0;
      for (int64_t r = nrows * b / blocks; r < nrows * (b + 1) / blocks; ++r) {
        if (pd != nullptr && pd[r]) continue;
        const in_t* g = gp + r * nc;
        const in_t* p = xp + r * nc;
        int64_t c = 0;
        for (; c + kStep <= nc; c += kStep) {
          const auto [g0, g1] = load_pair<acc_t>(g + c);
          const auto [x0, x1] = load_pair<acc_t>(p + c);
          const auto [m0, m1] = load_pair<acc_t>(mu + c);
          const auto [a0, a1] = load_pair<acc_t>(run_dy + c);
          const auto [q0, q1] = load_pair<acc_t>(run_dy_xmu + c);
          store_pair(run_dy + c, a0 + g0, a1 + g1);
          store_pair(run_dy_xmu + c, at::vec::fmadd(g0, x0 - m0, q0), at::vec::fmadd(g1, x1 - m1, q1));
        }
        for (; c < nc; ++c) {
          const acc_t gc = static_cast<acc_t>(g[c]);
          run_dy[c] += gc;
          run_dy_xmu[c] += gc * (static_cast<acc_t>(p[c]) - mu[c]);
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

// One channels-first plane, read and written in the stored dtype (converted in registers); the
// forward and the backward (kWithDy) are separate loops rather than a test per vector. With
// prefetch_next, the plane that follows in memory (the next channel's, same sample) is pulled into
// L2 meanwhile: a pass that reads the cache leaves DRAM idle otherwise.
template <bool kWithDy, typename in_t, typename acc_t>
void affine_plane(const in_t* x, const in_t* dy, in_t* out, int64_t n, acc_t m, acc_t s, acc_t t, acc_t a, bool stream,
                  bool prefetch_next) {
  using Vec = Vectorized<acc_t>;
  const Vec vm(m), vs(s), vt(t), va(a);
  write_span<acc_t>(
      out, n, stream,
      [&](int64_t i) {
        if (prefetch_next) {
          prefetch_l2(x + n + i);
          if constexpr (kWithDy) prefetch_l2(dy + n + i);
        }
        const auto [x0, x1] = load_pair<acc_t>(x + i);
        Vec r0 = at::vec::fmadd(x0 - vm, vs, vt), r1 = at::vec::fmadd(x1 - vm, vs, vt);
        if constexpr (kWithDy) {
          const auto [g0, g1] = load_pair<acc_t>(dy + i);
          r0 = at::vec::fmadd(va, g0, r0);
          r1 = at::vec::fmadd(va, g1, r1);
        }
        return std::pair{r0, r1};
      },
      [&](int64_t i) {
        acc_t r = (static_cast<acc_t>(x[i]) - m) * s + t;
        if constexpr (kWithDy) r += a * static_cast<acc_t>(dy[i]);
        return r;
      });
}

template <bool kWithDy, typename in_t>
void affine_channels_first(const in_t* x, const in_t* dy, in_t* out, const BatchNormShape& v,
                           const AffineCoefs<at::opmath_type<in_t>>& k) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t planes = v.outer * v.channels;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(v.inner, 1));
  const bool stream = should_stream(out, planes * v.inner);
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    const in_t* const gp = dy;
    in_t* const op = out;
    const AffineCoefs<acc_t> coefs = k;
    const int64_t C = v.channels, inner = v.inner;
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % C, off = plane * inner;
      affine_plane<kWithDy>(xp + off, kWithDy ? gp + off : nullptr, op + off, inner, coefs.mean[c], coefs.scale[c],
                            coefs.shift[c], kWithDy ? coefs.dy_scale[c] : acc_t(0), stream, false);
    }
    if (stream) stream_fence();
  });
}

template <bool kWithDy, typename in_t>
void affine_channels_last(const in_t* x, const in_t* dy, const bool* pad, in_t* out, const BatchNormShape& v,
                          const AffineCoefs<at::opmath_type<in_t>>& k) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t rows = v.outer, C = v.channels;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1));
  const bool stream = should_stream(out, rows * C);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    const in_t* const gp = dy;
    const bool* const pd = pad;
    in_t* const op = out;
    const acc_t* const mean = k.mean;
    const acc_t* const scale = k.scale;
    const acc_t* const shift = k.shift;
    const acc_t* const dy_scale = k.dy_scale;
    const int64_t nc = C;
    for (int64_t r = begin; r < end; ++r) {
      in_t* o = op + r * nc;
      if (pd != nullptr && pd[r]) {
        std::fill(o, o + nc, in_t(0));
        continue;
      }
      const in_t* p = xp + r * nc;
      const in_t* g = kWithDy ? gp + r * nc : nullptr;
      write_span<acc_t>(
          o, nc, stream,
          [&](int64_t c) {
            const auto [x0, x1] = load_pair<acc_t>(p + c);
            const auto [m0, m1] = load_pair<acc_t>(mean + c);
            const auto [s0, s1] = load_pair<acc_t>(scale + c);
            const auto [t0, t1] = load_pair<acc_t>(shift + c);
            Vec r0 = at::vec::fmadd(x0 - m0, s0, t0), r1 = at::vec::fmadd(x1 - m1, s1, t1);
            if constexpr (kWithDy) {
              const auto [g0, g1] = load_pair<acc_t>(g + c);
              const auto [a0, a1] = load_pair<acc_t>(dy_scale + c);
              r0 = at::vec::fmadd(a0, g0, r0);
              r1 = at::vec::fmadd(a1, g1, r1);
            }
            return std::pair{r0, r1};
          },
          [&](int64_t c) {
            acc_t res = (static_cast<acc_t>(p[c]) - mean[c]) * scale[c] + shift[c];
            if constexpr (kWithDy) res += dy_scale[c] * static_cast<acc_t>(g[c]);
            return res;
          });
    }
    if (stream) stream_fence();
  });
}

// ----- training forward: statistics and output in one call ------------------------------------------

template <typename acc_t>
acc_t channel_invstd(acc_t m2, acc_t count, double eps) {
  return acc_t(1) / std::sqrt(m2 / count + static_cast<acc_t>(eps));
}

// The statistics op followed by the affine op reads a channels-first x from DRAM twice: the input
// is far larger than the cache. Normalizing each channel right after its statistics, while its N
// planes are still in this core's cache, reads it once (a third less traffic); the backward does the
// same with dy and x. That needs a channel's `tensors` inputs to fit a thread's share of the cache,
// and enough channels to keep every thread busy, since a channel is then one thread's work.
template <typename in_t>
bool train_channel_fits_in_cache(const BatchNormShape& v, int64_t tensors) {
  if (v.channels_last) return false;
  const int64_t threads = at::get_num_threads();
  const int64_t channel_bytes = tensors * v.outer * v.inner * static_cast<int64_t>(sizeof(in_t));
  return v.channels >= 2 * threads && 2 * threads * channel_bytes <= last_level_cache_bytes();
}

// The same arithmetic as stats_channels_first (one block per channel) and affine_channels_first.
template <typename in_t>
void train_channels_first_in_cache(const in_t* x, in_t* out, const BatchNormShape& v,
                                   const at::opmath_type<in_t>* shift, const at::opmath_type<in_t>* weight,
                                   const at::opmath_type<in_t>* bias, double eps, at::opmath_type<in_t>* mean_out,
                                   at::opmath_type<in_t>* m2_out, at::opmath_type<in_t>* invstd_out) {
  using acc_t = at::opmath_type<in_t>;
  const bool stream = should_stream(out, v.outer * v.channels * v.inner);
  at::parallel_for(0, v.channels, 1, [&](int64_t begin, int64_t end) {
    const in_t* const xp = x;
    in_t* const op = out;
    const acc_t* const sh = shift;
    const acc_t* const w = weight;
    const acc_t* const b = bias;
    acc_t* const mean = mean_out;
    acc_t* const m2 = m2_out;
    acc_t* const invstd = invstd_out;
    const int64_t outer = v.outer, C = v.channels, inner = v.inner;
    const double epsilon = eps;
    for (int64_t c = begin; c < end; ++c) {
      WelfordState<acc_t> s = welford_init<acc_t>();
      for (int64_t n = 0; n < outer; ++n) {
        s = welford_merge(s, plane_moments<acc_t>(xp + (n * C + c) * inner, inner, sh[c]));
      }
      const acc_t mu = sh[c] + s.mean;
      const acc_t r = channel_invstd(s.m2, s.count, epsilon);
      mean[c] = mu;
      m2[c] = s.m2;
      invstd[c] = r;
      const acc_t scale = w != nullptr ? r * w[c] : r;
      const acc_t offset = b != nullptr ? b[c] : acc_t(0);
      for (int64_t n = 0; n < outer; ++n) {
        const int64_t off = (n * C + c) * inner;
        affine_plane<false>(xp + off, static_cast<const in_t*>(nullptr), op + off, inner, mu, scale, offset, acc_t(0),
                            stream, c + 1 < end);
      }
    }
    if (stream) stream_fence();
  });
}

template <typename in_t>
void train_forward(const in_t* x, in_t* out, const BatchNormShape& v, const at::opmath_type<in_t>* weight,
                   const at::opmath_type<in_t>* bias, double eps, at::opmath_type<in_t>* mean,
                   at::opmath_type<in_t>* m2, at::opmath_type<in_t>* invstd) {
  using acc_t = at::opmath_type<in_t>;
  // The shift of the statistics (bn_channel_shift): each channel's value in the first sample, read
  // here rather than gathered into a tensor by the caller, a handful of ops at small sizes.
  std::vector<acc_t> first(v.channels);
  for (int64_t c = 0; c < v.channels; ++c) first[c] = static_cast<acc_t>(x[v.channels_last ? c : c * v.inner]);
  const acc_t* shift = first.data();
  if (train_channel_fits_in_cache<in_t>(v, 1)) {
    train_channels_first_in_cache<in_t>(x, out, v, shift, weight, bias, eps, mean, m2, invstd);
    return;
  }
  if (v.channels_last) {
    stats_channels_last<in_t>(x, nullptr, v, shift, mean, m2);
  } else {
    stats_channels_first<in_t>(x, v, shift, mean, m2);
  }
  const acc_t count = static_cast<acc_t>(v.outer * v.inner);
  std::vector<acc_t> scale(v.channels), offset(v.channels, acc_t(0));
  for (int64_t c = 0; c < v.channels; ++c) {
    invstd[c] = channel_invstd(m2[c], count, eps);
    scale[c] = weight != nullptr ? invstd[c] * weight[c] : invstd[c];
    if (bias != nullptr) offset[c] = bias[c];
  }
  const AffineCoefs<acc_t> k{mean, scale.data(), offset.data(), nullptr};
  if (v.channels_last) {
    affine_channels_last<false, in_t>(x, nullptr, nullptr, out, v, k);
  } else {
    affine_channels_first<false, in_t>(x, nullptr, out, v, k);
  }
}

// dx's coefficients in the form affine_plane takes: dx = (x - mean) * scale + shift + a * dy.
template <typename acc_t>
struct DxCoefs {
  acc_t scale, shift, a;
};

template <typename acc_t>
DxCoefs<acc_t> dx_coefs(acc_t sum_dy, acc_t sum_dy_xhat, acc_t invstd, acc_t weight, acc_t count) {
  const acc_t a = weight * invstd;
  return {-(a * invstd * (sum_dy_xhat / count)), -(a * (sum_dy / count)), a};
}

template <typename in_t>
void train_backward_channels_first_in_cache(const in_t* dy, const in_t* x, in_t* dx, const BatchNormShape& v,
                                            const at::opmath_type<in_t>* mean, const at::opmath_type<in_t>* invstd,
                                            const at::opmath_type<in_t>* weight, at::opmath_type<in_t>* sum_dy_out,
                                            at::opmath_type<in_t>* sum_dy_xhat_out) {
  using acc_t = at::opmath_type<in_t>;
  const bool stream = should_stream(dx, v.outer * v.channels * v.inner);
  at::parallel_for(0, v.channels, 1, [&](int64_t begin, int64_t end) {
    const in_t* const gp = dy;
    const in_t* const xp = x;
    in_t* const op = dx;
    const acc_t* const mu = mean;
    const acc_t* const inv = invstd;
    const acc_t* const w = weight;
    acc_t* const out_dy = sum_dy_out;
    acc_t* const out_dy_xhat = sum_dy_xhat_out;
    const int64_t outer = v.outer, C = v.channels, inner = v.inner;
    const acc_t count = static_cast<acc_t>(outer * inner);
    for (int64_t c = begin; c < end; ++c) {
      acc_t s_dy = 0, s_dy_xmu = 0;
      for (int64_t n = 0; n < outer; ++n) {
        const int64_t off = (n * C + c) * inner;
        const auto [plane_dy, plane_dy_xmu] = plane_sum_and_dot_centred<acc_t>(gp + off, xp + off, inner, mu[c]);
        s_dy += plane_dy;
        s_dy_xmu += plane_dy_xmu;
      }
      const acc_t s_dy_xhat = s_dy_xmu * inv[c];
      out_dy[c] = s_dy;
      out_dy_xhat[c] = s_dy_xhat;
      const DxCoefs<acc_t> k = dx_coefs(s_dy, s_dy_xhat, inv[c], w != nullptr ? w[c] : acc_t(1), count);
      for (int64_t n = 0; n < outer; ++n) {
        const int64_t off = (n * C + c) * inner;
        affine_plane<true>(xp + off, gp + off, op + off, inner, mu[c], k.scale, k.shift, k.a, stream, c + 1 < end);
      }
    }
    if (stream) stream_fence();
  });
}

template <typename in_t>
void train_backward(const in_t* dy, const in_t* x, in_t* dx, const BatchNormShape& v, const at::opmath_type<in_t>* mean,
                    const at::opmath_type<in_t>* invstd, const at::opmath_type<in_t>* weight,
                    at::opmath_type<in_t>* sum_dy, at::opmath_type<in_t>* sum_dy_xhat) {
  using acc_t = at::opmath_type<in_t>;
  if (train_channel_fits_in_cache<in_t>(v, 2)) {
    train_backward_channels_first_in_cache<in_t>(dy, x, dx, v, mean, invstd, weight, sum_dy, sum_dy_xhat);
    return;
  }
  if (v.channels_last) {
    backward_reduce_channels_last<in_t>(dy, x, nullptr, v, mean, sum_dy, sum_dy_xhat);
  } else {
    backward_reduce_channels_first<in_t>(dy, x, v, mean, sum_dy, sum_dy_xhat);
  }
  const acc_t count = static_cast<acc_t>(v.outer * v.inner);
  std::vector<acc_t> scale(v.channels), shift(v.channels), a(v.channels);
  for (int64_t c = 0; c < v.channels; ++c) {
    sum_dy_xhat[c] *= invstd[c];
    const DxCoefs<acc_t> k =
        dx_coefs(sum_dy[c], sum_dy_xhat[c], invstd[c], weight != nullptr ? weight[c] : acc_t(1), count);
    scale[c] = k.scale;
    shift[c] = k.shift;
    a[c] = k.a;
  }
  const AffineCoefs<acc_t> k{mean, scale.data(), shift.data(), a.data()};
  if (v.channels_last) {
    affine_channels_last<true, in_t>(x, dy, nullptr, dx, v, k);
  } else {
    affine_channels_first<true, in_t>(x, dy, dx, v, k);
  }
}

}  // namespace
}  // namespace batch_norm_detail

void batch_norm_stats(const BatchNormStatsArgs& a) {
  using namespace batch_norm_detail;
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

void batch_norm_train(const BatchNormTrainArgs& a) {
  using namespace batch_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_train_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    train_forward<scalar_t>(static_cast<const scalar_t*>(a.x), static_cast<scalar_t*>(a.out), a.shape,
                            static_cast<const acc_t*>(a.weight), static_cast<const acc_t*>(a.bias), a.eps,
                            static_cast<acc_t*>(a.mean), static_cast<acc_t*>(a.m2), static_cast<acc_t*>(a.invstd));
  });
}

void batch_norm_train_backward(const BatchNormTrainBackwardArgs& a) {
  using namespace batch_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_train_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    train_backward<scalar_t>(static_cast<const scalar_t*>(a.dy), static_cast<const scalar_t*>(a.x),
                             static_cast<scalar_t*>(a.dx), a.shape, static_cast<const acc_t*>(a.mean),
                             static_cast<const acc_t*>(a.invstd), static_cast<const acc_t*>(a.weight),
                             static_cast<acc_t*>(a.sum_dy), static_cast<acc_t*>(a.sum_dy_xhat));
  });
}

void batch_norm_backward_reduce(const BatchNormBackwardReduceArgs& a) {
  using namespace batch_norm_detail;
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
  using namespace batch_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_batch_norm_affine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const AffineCoefs<acc_t> k{static_cast<const acc_t*>(a.mean), static_cast<const acc_t*>(a.scale),
                               static_cast<const acc_t*>(a.shift), static_cast<const acc_t*>(a.dy_scale)};
    const auto* x = static_cast<const scalar_t*>(a.x);
    const auto* dy = static_cast<const scalar_t*>(a.dy);
    auto* out = static_cast<scalar_t*>(a.out);
    if (a.shape.channels_last) {
      dy != nullptr ? affine_channels_last<true, scalar_t>(x, dy, a.pad, out, a.shape, k)
                    : affine_channels_last<false, scalar_t>(x, dy, a.pad, out, a.shape, k);
    } else {
      dy != nullptr ? affine_channels_first<true, scalar_t>(x, dy, out, a.shape, k)
                    : affine_channels_first<false, scalar_t>(x, dy, out, a.shape, k);
    }
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
