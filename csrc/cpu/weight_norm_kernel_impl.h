// Implementation of the weight-normalization CPU kernels, included once per instruction set by
// kernels_{default,avx2,avx512}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// With a long inner run (dim=0 of a Linear or Conv weight: each slice is a contiguous row) the loops
// are vectorized along the row; with inner = 1 (dim=-1: the slices themselves are contiguous) they
// are vectorized across slices, per-slice values being read as vectors too. Shorter inner runs are
// small tensors and take the scalar loops. Reductions are parallel over contiguous ranges of slices,
// and every slice's sum is accumulated in the same order whatever the thread count, so results are
// deterministic. Data is read in its stored dtype and widened in registers (load_pair). Large
// outputs go out through non-temporal stores (should_stream): a layer's weights are read once and
// written once, so nothing gains from caching them.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
// The helpers of each family have a namespace of their own: the families share one translation unit.
namespace weight_norm_detail {
namespace {

using at::vec::Vectorized;

// Partial sums are closed every kSumChunk elements so that rounding error grows slowly with length.
constexpr int64_t kSumChunk = 1024;
constexpr int64_t kGrainElements = 1 << 15;

// Grain of the loops whose work items are whole runs of `inner` elements.
int64_t row_grain(int64_t inner) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, inner));
}

// sum(a * b) over a contiguous run, closed every kSumChunk elements.
template <typename acc_t, typename in_t>
acc_t run_dot(const in_t* a, const in_t* b, int64_t n) {
  using Vec = Vectorized<acc_t>;
  return chunked_sum_four_chains<acc_t>(
      n, kSumChunk,
      [&](int64_t i, Vec& lo, Vec& hi) {
        const auto [a0, a1] = load_pair<acc_t>(a + i);
        const auto [b0, b1] = load_pair<acc_t>(b + i);
        lo = at::vec::fmadd(a0, b0, lo);
        hi = at::vec::fmadd(a1, b1, hi);
      },
      [&](int64_t i) { return static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]); });
}

template <typename in_t>
void slice_dots_impl(const in_t* a, const in_t* b, at::opmath_type<in_t>* out, const WeightNormLayout& l) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, l.outer * l.inner));
  at::parallel_for(0, l.slices, grain, [&](int64_t d0, int64_t d1) {
    const in_t *const ap = a, *const bp = b;
    acc_t* const op = out;
    const int64_t outer = l.outer, S = l.slices, inner = l.inner;
    if (inner >= kStep) {
      for (int64_t d = d0; d < d1; ++d) {
        acc_t acc = 0;
        for (int64_t o = 0; o < outer; ++o)
          acc += run_dot<acc_t>(ap + (o * S + d) * inner, bp + (o * S + d) * inner, inner);
        op[d] = acc;
      }
      return;
    }
    std::fill(op + d0, op + d1, acc_t(0));
    for (int64_t o = 0; o < outer; ++o) {
      int64_t d = d0;
      if (inner == 1) {
        for (; d + kStep <= d1; d += kStep) {
          const auto [a0, a1] = load_pair<acc_t>(ap + o * S + d);
          const auto [b0, b1] = load_pair<acc_t>(bp + o * S + d);
          store_pair(op + d, at::vec::fmadd(a0, b0, Vec::loadu(op + d)),
                     at::vec::fmadd(a1, b1, Vec::loadu(op + d + Vec::size())));
        }
      }
      for (; d < d1; ++d) {
        const int64_t off = (o * S + d) * inner;
        for (int64_t i = 0; i < inner; ++i) op[d] += static_cast<acc_t>(ap[off + i]) * static_cast<acc_t>(bp[off + i]);
      }
    }
  });
}

// alpha * x - beta * y (or alpha * x) over a contiguous run with per-run coefficients.
template <bool kWithY, typename in_t, typename acc_t>
void run_axpby(const in_t* x, const in_t* y, in_t* out, int64_t n, acc_t alpha, acc_t beta, bool stream) {
  using Vec = Vectorized<acc_t>;
  const Vec va(alpha), vb(beta);
  write_span<acc_t>(
      out, n, stream,
      [&](int64_t i) {
        const auto [x0, x1] = load_pair<acc_t>(x + i);
        if constexpr (kWithY) {
          const auto [y0, y1] = load_pair<acc_t>(y + i);
          return std::pair{at::vec::fmsub(va, x0, vb * y0), at::vec::fmsub(va, x1, vb * y1)};
        } else {
          return std::pair{va * x0, va * x1};
        }
      },
      [&](int64_t i) {
        acc_t r = alpha * static_cast<acc_t>(x[i]);
        if constexpr (kWithY) r -= beta * static_cast<acc_t>(y[i]);
        return r;
      });
}

// The same over one outer row of inner = 1 data, where slice d's coefficients vary along the row.
template <bool kWithY, typename in_t, typename acc_t>
void row_axpby_per_slice(const in_t* x, const in_t* y, in_t* out, int64_t S, const acc_t* alpha, const acc_t* beta,
                         bool stream) {
  write_span<acc_t>(
      out, S, stream,
      [&](int64_t d) {
        const auto [x0, x1] = load_pair<acc_t>(x + d);
        const auto [a0, a1] = load_pair<acc_t>(alpha + d);
        if constexpr (kWithY) {
          const auto [y0, y1] = load_pair<acc_t>(y + d);
          const auto [b0, b1] = load_pair<acc_t>(beta + d);
          return std::pair{at::vec::fmsub(a0, x0, b0 * y0), at::vec::fmsub(a1, x1, b1 * y1)};
        } else {
          return std::pair{a0 * x0, a1 * x1};
        }
      },
      [&](int64_t d) {
        acc_t r = alpha[d] * static_cast<acc_t>(x[d]);
        if constexpr (kWithY) r -= beta[d] * static_cast<acc_t>(y[d]);
        return r;
      });
}

template <bool kWithY, typename in_t>
void slice_axpby_impl(const in_t* x, const in_t* y, const at::opmath_type<in_t>* alpha,
                      const at::opmath_type<in_t>* beta, in_t* out, const WeightNormLayout& l) {
  using acc_t = at::opmath_type<in_t>;
  const bool stream = should_stream(out, l.outer * l.slices * l.inner);
  if (l.inner == 1) {
    at::parallel_for(0, l.outer, row_grain(l.slices), [&](int64_t o0, int64_t o1) {
      const int64_t S = l.slices;
      for (int64_t o = o0; o < o1; ++o) {
        row_axpby_per_slice<kWithY>(x + o * S, kWithY ? y + o * S : nullptr, out + o * S, S, alpha, beta, stream);
      }
      if (stream) stream_fence();
    });
    return;
  }
  at::parallel_for(0, l.outer * l.slices, row_grain(l.inner), [&](int64_t r0, int64_t r1) {
    const in_t *const xp = x, *const yp = y;
    in_t* const op = out;
    const acc_t *const ap = alpha, *const bp = beta;
    const int64_t S = l.slices, inner = l.inner;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t d = r % S, off = r * inner;
      run_axpby<kWithY>(xp + off, kWithY ? yp + off : nullptr, op + off, inner, ap[d], kWithY ? bp[d] : acc_t(0),
                        stream);
    }
    if (stream) stream_fence();
  });
}

}  // namespace
}  // namespace weight_norm_detail

void weight_norm_rows_fwd(const WeightNormRowsFwdArgs& a) {
  using namespace weight_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_weight_norm_rows_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool stream = should_stream(static_cast<const scalar_t*>(a.w), a.slices * a.inner);
    at::parallel_for(0, a.slices, row_grain(a.inner), [&](int64_t d0, int64_t d1) {
      const auto* const v = static_cast<const scalar_t*>(a.v);
      auto* const w = static_cast<scalar_t*>(a.w);
      const auto* const g = static_cast<const acc_t*>(a.g);
      auto* const norm = static_cast<acc_t*>(a.norm);
      const int64_t inner = a.inner;
      for (int64_t d = d0; d < d1; ++d) {
        const scalar_t* row = v + d * inner;
        norm[d] = std::sqrt(run_dot<acc_t>(row, row, inner));
        run_axpby<false>(row, static_cast<const scalar_t*>(nullptr), w + d * inner, inner, g[d] / norm[d], acc_t(0),
                         stream);
      }
      if (stream) stream_fence();
    });
  });
}

void weight_norm_rows_bwd(const WeightNormRowsBwdArgs& a) {
  using namespace weight_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_weight_norm_rows_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool stream = should_stream(static_cast<const scalar_t*>(a.grad_v), a.slices * a.inner);
    at::parallel_for(0, a.slices, row_grain(a.inner), [&](int64_t d0, int64_t d1) {
      const auto* const gw = static_cast<const scalar_t*>(a.grad_w);
      const auto* const v = static_cast<const scalar_t*>(a.v);
      auto* const gv = static_cast<scalar_t*>(a.grad_v);
      const auto* const g = static_cast<const acc_t*>(a.g);
      const auto* const norm = static_cast<const acc_t*>(a.norm);
      auto* const grad_g = static_cast<acc_t*>(a.grad_g);
      const int64_t inner = a.inner;
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t off = d * inner;
        const acc_t c = run_dot<acc_t>(gw + off, v + off, inner);
        const acc_t inv_n = acc_t(1) / norm[d];
        const acc_t alpha = g[d] * inv_n;
        grad_g[d] = c * inv_n;
        run_axpby<true>(gw + off, v + off, gv + off, inner, alpha, alpha * c * inv_n * inv_n, stream);
      }
      if (stream) stream_fence();
    });
  });
}

void slice_dots(const SliceDotsArgs& a) {
  using namespace weight_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_weight_norm_dots_cpu", [&] {
    slice_dots_impl<scalar_t>(static_cast<const scalar_t*>(a.a), static_cast<const scalar_t*>(a.b),
                              static_cast<at::opmath_type<scalar_t>*>(a.out), a.layout);
  });
}

void slice_axpby(const SliceAxpbyArgs& a) {
  using namespace weight_norm_detail;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "norm_ext_weight_norm_axpby_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(a.x);
    const auto* y = static_cast<const scalar_t*>(a.y);
    const auto* alpha = static_cast<const acc_t*>(a.alpha);
    const auto* beta = static_cast<const acc_t*>(a.beta);
    auto* out = static_cast<scalar_t*>(a.out);
    y != nullptr ? slice_axpby_impl<true>(x, y, alpha, beta, out, a.layout)
                 : slice_axpby_impl<false>(x, y, alpha, beta, out, a.layout);
  });
}

}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
