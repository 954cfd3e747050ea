// Implementation of the CPU row-norm kernels, included once per instruction set by
// kernels_{default,avx2,avx512}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Rows are independent, so the forward is parallel over rows. The first pass over a row reads it
// from DRAM and accumulates its first statistic (and, for the fused add, writes the residual stream);
// the later passes re-read the row, which is then in L1/L2, and bf16/half are widened in registers
// each time rather than through a float buffer, so DRAM sees x once and y once and the cache sees no
// extra stores.
//
// The backward splits the rows into a fixed number of contiguous blocks, one per thread; each block
// accumulates dgamma/dbeta partials in acc_t, and the partials are summed in block order, so the
// result does not depend on scheduling. Its first pass over a row takes both row sums and the
// partials; the second recomputes x_hat and dy * w from the (now cached) row instead of storing them.
//
// Row loops step by pairs of vectors (see load_pair): two independent accumulation chains per sum,
// and one full-width access (256-bit, or 512-bit on AVX-512) per bf16/half load or store. Absent
// weight/bias read shared 1/0 vectors so that one loop serves every combination without a branch
// inside it.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
// The helpers of each family have a namespace of their own: the families share one translation unit.
namespace row_norm_detail {
namespace {

using at::vec::Vectorized;

// Elements per parallel work item: enough that the per-row overhead is amortised.
constexpr int64_t kGrainElements = 1 << 15;
// Partial sums are closed every kSumChunk elements so that rounding error grows with
// kSumChunk / lanes + n / kSumChunk rather than with n. A multiple of every pair width, so only the
// end of a row has a scalar tail.
constexpr int64_t kSumChunk = 1024;

// Two sums over [0, n), closed every kSumChunk elements. pair_step(i, a_lo, a_hi, b_lo, b_hi) adds
// the terms of elements [i, i + kPairLanes) to the vector accumulators of sums a and b;
// scalar_step(i, a, b) adds element i's terms (the row's tail). The accumulators are named locals,
// not an array, so that they stay in registers: an array of vectors was kept on the stack, which put
// a store-to-load forward into every accumulation chain.
template <typename acc_t, typename PairStep, typename ScalarStep>
std::pair<acc_t, acc_t> chunked_row_sums(int64_t n, const PairStep& pair_step, const ScalarStep& scalar_step) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kPair = kPairLanes<acc_t>;
  acc_t total_a = 0, total_b = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec a_lo(acc_t(0)), a_hi(acc_t(0)), b_lo(acc_t(0)), b_hi(acc_t(0));
    int64_t i = start;
    for (; i + kPair <= end; i += kPair) pair_step(i, a_lo, a_hi, b_lo, b_hi);
    acc_t chunk_a = reduce_lanes(a_lo + a_hi), chunk_b = reduce_lanes(b_lo + b_hi);
    for (; i < end; ++i) scalar_step(i, chunk_a, chunk_b);
    total_a += chunk_a;
    total_b += chunk_b;
  }
  return {total_a, total_b};
}

// One row of the forward. h is the row to normalise: the input itself, or the residual stream that
// the first pass writes (x + residual rounded to h_t, so the backward, which re-reads the stored h,
// differentiates exactly the function the forward computed). w and b are never null.
template <typename in_t, typename h_t, typename acc_t = at::opmath_type<in_t>>
void row_norm_fwd_row(const in_t* x, const h_t* residual, h_t* h, in_t* y, acc_t* mean, acc_t* rstd, const acc_t* w,
                      const acc_t* b, int64_t cols, acc_t eps, bool rms, bool stream, bool prefetch_next) {
  using Vec = Vectorized<acc_t>;
  const acc_t n = static_cast<acc_t>(cols);
  // LayerNorm sums deviations from the row's first value: the mean of a row with a large offset
  // (1e4 + 1e-2 * noise) then stays exact to the roundoff of the deviations, not of the offset.
  const auto h_at = [&](int64_t i) {
    return residual ? static_cast<acc_t>(static_cast<h_t>(static_cast<acc_t>(x[i]) + static_cast<acc_t>(residual[i])))
                    : static_cast<acc_t>(h[i]);
  };
  const acc_t shift = rms ? acc_t(0) : h_at(0);
  const Vec vshift(shift);
  // First pass: RMSNorm's sum of squares, LayerNorm's sum of deviations.
  const auto first_term = [&](const Vec& v, Vec& acc) { acc = rms ? at::vec::fmadd(v, v, acc) : acc + (v - vshift); };
  const auto first_scalar = [&](acc_t v) { return rms ? v * v : v - shift; };
  acc_t first;
  if (residual != nullptr) {
    first = chunked_row_sums<acc_t>(
                cols,
                [&](int64_t i, Vec& lo, Vec& hi, Vec&, Vec&) {
                  const auto [xl, xh] = load_pair<acc_t>(x + i);
                  const auto [rl, rh] = load_pair<acc_t>(residual + i);
                  const auto [hl, hh] = round_pair<h_t>(xl + rl, xh + rh);
                  store_pair(h + i, hl, hh);
                  first_term(hl, lo);
                  first_term(hh, hi);
                },
                [&](int64_t i, acc_t& sum, acc_t&) {
                  const acc_t v = h_at(i);
                  h[i] = static_cast<h_t>(v);
                  sum += first_scalar(v);
                })
                .first;
  } else {
    first = chunked_row_sums<acc_t>(
                cols,
                [&](int64_t i, Vec& lo, Vec& hi, Vec&, Vec&) {
                  const auto [hl, hh] = load_pair<acc_t>(h + i);
                  first_term(hl, lo);
                  first_term(hh, hi);
                },
                [&](int64_t i, acc_t& sum, acc_t&) { sum += first_scalar(static_cast<acc_t>(h[i])); })
                .first;
  }
  acc_t delta = 0;
  acc_t var = first / n;
  if (!rms) {
    delta = first / n;
    const Vec vdelta(delta);
    var = chunked_row_sums<acc_t>(
              cols,
              [&](int64_t i, Vec& lo, Vec& hi, Vec&, Vec&) {
                const auto [hl, hh] = load_pair<acc_t>(h + i);
                const Vec dl = (hl - vshift) - vdelta, dh = (hh - vshift) - vdelta;
                lo = at::vec::fmadd(dl, dl, lo);
                hi = at::vec::fmadd(dh, dh, hi);
              },
              [&](int64_t i, acc_t& sum, acc_t&) {
                const acc_t d = (static_cast<acc_t>(h[i]) - shift) - delta;
                sum += d * d;
              })
              .first /
          n;
    *mean = shift + delta;
  }
  const acc_t r = acc_t(1) / std::sqrt(var + eps);
  *rstd = r;

  const Vec vdelta(delta), vr(r);
  write_span<acc_t>(
      y, cols, stream,
      [&](int64_t i) {
        constexpr int64_t kLanes = Vec::size();
        if (prefetch_next) {
          prefetch_l2(x + cols + i);
          if (residual) prefetch_l2(residual + cols + i);
        }
        const auto [hl, hh] = load_pair<acc_t>(h + i);
        return std::pair{
            at::vec::fmadd(((hl - vshift) - vdelta) * vr, Vec::loadu(w + i), Vec::loadu(b + i)),
            at::vec::fmadd(((hh - vshift) - vdelta) * vr, Vec::loadu(w + i + kLanes), Vec::loadu(b + i + kLanes))};
      },
      [&](int64_t i) { return ((static_cast<acc_t>(h[i]) - shift) - delta) * r * w[i] + b[i]; });
}

// Forward over rows. in_t: input/output dtype; h_t: dtype of the normalised row as stored (the
// input itself, or the residual stream for the fused add).
template <typename in_t, typename h_t>
void row_norm_fwd_cpu(const in_t* x, const h_t* residual, h_t* residual_out, in_t* y, at::opmath_type<in_t>* mean,
                      at::opmath_type<in_t>* rstd, const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b,
                      int64_t rows, int64_t cols, double eps, bool rms) {
  using acc_t = at::opmath_type<in_t>;
  const std::vector<acc_t> ones(w ? 0 : cols, acc_t(1)), zeros(b ? 0 : cols, acc_t(0));
  const acc_t* const w_or_ones = w ? w : ones.data();
  const acc_t* const b_or_zeros = b ? b : zeros.data();
  const bool stream = should_stream(y, rows * cols);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [=](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t off = row * cols;
      // Without a residual, h is x itself (h_t == in_t then). The residual stream is re-read by this
      // row's later passes, so unlike y it is never streamed past the cache.
      h_t* const h = residual ? residual_out + off : const_cast<h_t*>(reinterpret_cast<const h_t*>(x + off));
      row_norm_fwd_row<in_t, h_t>(x + off, residual ? residual + off : nullptr, h, y + off, mean ? mean + row : nullptr,
                                  rstd + row, w_or_ones, b_or_zeros, cols, static_cast<acc_t>(eps), rms, stream,
                                  row + 1 < end);
    }
    if (stream) stream_fence();
  });
}

// One row of the backward. w and b are never null; dw_acc/db_acc (this block's partials) may be.
template <typename in_t, typename saved_t, typename acc_t = at::opmath_type<in_t>>
void row_norm_bwd_row(const in_t* dy, const saved_t* saved, const saved_t* grad_residual, saved_t* dx, acc_t mu,
                      acc_t r, const acc_t* w, const acc_t* b, acc_t* dw_acc, acc_t* db_acc, int64_t cols,
                      bool saved_is_output, bool rms, bool stream, bool prefetch_next) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vmu(mu), vr(r);
  // x_hat; memory-efficient mode inverts the affine map y = x_hat * w + b.
  const auto xhat_vec = [&](const Vec& s, int64_t i) {
    return saved_is_output ? (s - Vec::loadu(b + i)) / Vec::loadu(w + i) : (s - vmu) * vr;
  };
  const auto xhat_scalar = [&](acc_t s, int64_t i) { return saved_is_output ? (s - b[i]) / w[i] : (s - mu) * r; };
  // Sums of g = dy * w and of g * x_hat; dgamma += dy * x_hat, dbeta += dy.
  const auto [sum_g, sum_gx] = chunked_row_sums<acc_t>(
      cols,
      [&](int64_t i, Vec& g_lo, Vec& g_hi, Vec& gx_lo, Vec& gx_hi) {
        const auto [sl, sh] = load_pair<acc_t>(saved + i);
        const auto [dl, dh] = load_pair<acc_t>(dy + i);
        const Vec xl = xhat_vec(sl, i), xh = xhat_vec(sh, i + kLanes);
        const Vec gl = dl * Vec::loadu(w + i), gh = dh * Vec::loadu(w + i + kLanes);
        g_lo = g_lo + gl;
        g_hi = g_hi + gh;
        gx_lo = at::vec::fmadd(gl, xl, gx_lo);
        gx_hi = at::vec::fmadd(gh, xh, gx_hi);
        if (dw_acc) {
          at::vec::fmadd(dl, xl, Vec::loadu(dw_acc + i)).store(dw_acc + i);
          at::vec::fmadd(dh, xh, Vec::loadu(dw_acc + i + kLanes)).store(dw_acc + i + kLanes);
        }
        if (db_acc) {
          (Vec::loadu(db_acc + i) + dl).store(db_acc + i);
          (Vec::loadu(db_acc + i + kLanes) + dh).store(db_acc + i + kLanes);
        }
      },
      [&](int64_t i, acc_t& g_sum, acc_t& gx_sum) {
        const acc_t d = static_cast<acc_t>(dy[i]);
        const acc_t xh = xhat_scalar(static_cast<acc_t>(saved[i]), i);
        const acc_t g = d * w[i];
        g_sum += g;
        gx_sum += g * xh;
        if (dw_acc) dw_acc[i] += d * xh;
        if (db_acc) db_acc[i] += d;
      });
  const acc_t n = static_cast<acc_t>(cols);
  // RMSNorm has no mean to differentiate through.
  const acc_t mean_g = rms ? acc_t(0) : sum_g / n;
  const acc_t mean_gx = sum_gx / n;
  // dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) (+ the residual stream's own gradient).
  const Vec vmg(mean_g), vmgx(mean_gx);
  const auto dx_vec = [&](const Vec& s, const Vec& d, int64_t i) {
    return vr * (d * Vec::loadu(w + i) - vmg - xhat_vec(s, i) * vmgx);
  };
  write_span<acc_t>(
      dx, cols, stream,
      [&](int64_t i) {
        if (prefetch_next) {
          prefetch_l2(saved + cols + i);
          prefetch_l2(dy + cols + i);
          if (grad_residual) prefetch_l2(grad_residual + cols + i);
        }
        const auto [sl, sh] = load_pair<acc_t>(saved + i);
        const auto [dl, dh] = load_pair<acc_t>(dy + i);
        Vec ol = dx_vec(sl, dl, i), oh = dx_vec(sh, dh, i + kLanes);
        if (grad_residual) {
          const auto [gl, gh] = load_pair<acc_t>(grad_residual + i);
          ol = ol + gl;
          oh = oh + gh;
        }
        return std::pair{ol, oh};
      },
      [&](int64_t i) {
        acc_t v =
            r * (static_cast<acc_t>(dy[i]) * w[i] - mean_g - xhat_scalar(static_cast<acc_t>(saved[i]), i) * mean_gx);
        if (grad_residual) v += static_cast<acc_t>(grad_residual[i]);
        return v;
      });
}

// Backward over rows; saved_t is the dtype of the saved tensor (input, residual stream or output).
template <typename in_t, typename saved_t>
void row_norm_bwd_cpu(const in_t* dy, const saved_t* saved, const saved_t* grad_residual, saved_t* dx,
                      const at::opmath_type<in_t>* mean, const at::opmath_type<in_t>* rstd,
                      const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b, at::opmath_type<in_t>* dw_out,
                      at::opmath_type<in_t>* db_out, int64_t rows, int64_t cols, bool saved_is_output, bool rms) {
  using acc_t = at::opmath_type<in_t>;
  // A block of rows per thread, but no more blocks than grains of elements, as the forward splits:
  // below a grain, a second thread's wake-up and the partial rows' fill and sum cost more than the rows.
  const int64_t by_size = std::max<int64_t>(1, rows * cols / kGrainElements);
  const int64_t num_blocks = std::max<int64_t>(1, std::min<int64_t>({rows, at::get_num_threads(), by_size}));
  // One block accumulates straight into the outputs; more keep a partial row each, summed after.
  const bool direct = num_blocks == 1;
  std::vector<acc_t> dw_partial(dw_out && !direct ? num_blocks * cols : 0, acc_t(0));
  std::vector<acc_t> db_partial(db_out && !direct ? num_blocks * cols : 0, acc_t(0));
  for (acc_t* out : {dw_out, db_out}) {
    if (direct && out != nullptr) std::memset(out, 0, cols * sizeof(acc_t));
  }
  const std::vector<acc_t> ones(w ? 0 : cols, acc_t(1)), zeros(b ? 0 : cols, acc_t(0));
  const acc_t* const w_or_ones = w ? w : ones.data();
  const acc_t* const b_or_zeros = b ? b : zeros.data();
  acc_t* const dw_base = direct ? dw_out : (dw_out ? dw_partial.data() : nullptr);
  acc_t* const db_base = direct ? db_out : (db_out ? db_partial.data() : nullptr);
  const bool stream = should_stream(dx, rows * cols);

  at::parallel_for(0, num_blocks, 1, [=](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      acc_t* const dw_acc = dw_base ? dw_base + block * cols : nullptr;
      acc_t* const db_acc = db_base ? db_base + block * cols : nullptr;
      const int64_t row_begin = rows * block / num_blocks;
      const int64_t row_end = rows * (block + 1) / num_blocks;
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t off = row * cols;
        const acc_t mu = (rms || saved_is_output) ? acc_t(0) : mean[row];
        row_norm_bwd_row<in_t, saved_t>(dy + off, saved + off, grad_residual ? grad_residual + off : nullptr, dx + off,
                                        mu, rstd[row], w_or_ones, b_or_zeros, dw_acc, db_acc, cols, saved_is_output,
                                        rms, stream, row + 1 < row_end);
      }
    }
    if (stream) stream_fence();
  });

  const auto reduce_partials = [&](const std::vector<acc_t>& partial, acc_t* out) {
    if (out == nullptr || direct) return;
    at::parallel_for(0, cols, kGrainElements, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t s = 0;
        for (int64_t block = 0; block < num_blocks; ++block) s += partial[block * cols + i];
        out[i] = s;
      }
    });
  };
  reduce_partials(dw_partial, dw_out);
  reduce_partials(db_partial, db_out);
}

}  // namespace
}  // namespace row_norm_detail

void row_norm_fwd(const RowNormFwdArgs& a) {
  using namespace row_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.in_dtype, "norm_ext_row_norm_fwd_cpu", [&] {
    using in_t = scalar_t;
    using acc_t = at::opmath_type<in_t>;
    const auto run = [&](auto h_tag) {
      using h_t = decltype(h_tag);
      row_norm_fwd_cpu<in_t, h_t>(
          static_cast<const in_t*>(a.x), static_cast<const h_t*>(a.residual), static_cast<h_t*>(a.residual_out),
          static_cast<in_t*>(a.y), static_cast<acc_t*>(a.mean), static_cast<acc_t*>(a.rstd),
          static_cast<const acc_t*>(a.w), static_cast<const acc_t*>(a.b), a.rows, a.cols, a.eps, a.rms);
    };
    // The residual stream is the input's dtype or float32 (checked by the caller).
    if (a.h_dtype == a.in_dtype) {
      run(in_t{});
    } else {
      run(float{});
    }
  });
}

void row_norm_bwd(const RowNormBwdArgs& a) {
  using namespace row_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.in_dtype, "norm_ext_row_norm_bwd_cpu", [&] {
    using in_t = scalar_t;
    using acc_t = at::opmath_type<in_t>;
    const auto run = [&](auto saved_tag) {
      using saved_t = decltype(saved_tag);
      row_norm_bwd_cpu<in_t, saved_t>(
          static_cast<const in_t*>(a.dy), static_cast<const saved_t*>(a.saved),
          static_cast<const saved_t*>(a.grad_residual), static_cast<saved_t*>(a.dx), static_cast<const acc_t*>(a.mean),
          static_cast<const acc_t*>(a.rstd), static_cast<const acc_t*>(a.w), static_cast<const acc_t*>(a.b),
          static_cast<acc_t*>(a.dw), static_cast<acc_t*>(a.db), a.rows, a.cols, a.saved_is_output, a.rms);
    };
    if (a.saved_dtype == a.in_dtype) {
      run(in_t{});
    } else {
      run(float{});
    }
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
