// Implementation of the CPU row-norm kernels, included once per instruction set by
// row_norm_kernel_{default,avx2}.cpp with NORM_EXT_ISA_NAMESPACE set. No include guard on purpose.
//
// Rows are independent, so the forward is parallel over rows. Each row is first brought into an
// accumulation-type buffer (skipped when the input already is acc_t); the row then stays in L1/L2
// for the two reduction passes (mean, then squared deviations) and the output pass, so DRAM sees x
// once and y once.
//
// The backward splits the rows into a fixed number of contiguous blocks, one per thread; each block
// accumulates dgamma/dbeta partials in acc_t, and the partials are summed in block order, so the
// result does not depend on scheduling.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/row_norm_kernel.h"
#include "cpu/vec_convert.h"

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
namespace {

using at::vec::Vectorized;

// Elements per parallel work item: enough that the per-row overhead is amortised.
constexpr int64_t kGrainElements = 1 << 15;
// Partial sums are closed every kSumChunk elements so that rounding error grows with
// kSumChunk / lanes + n / kSumChunk rather than with n.
constexpr int64_t kSumChunk = 1024;

// sum(p - shift). Summing deviations from a value inside the row keeps the mean of a row with a large
// offset (1e4 + 1e-2 * noise) exact to fp32 roundoff of the deviations, not of the offset.
template <typename acc_t>
acc_t chunked_sum(const acc_t* p, int64_t n, acc_t shift = acc_t(0)) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vshift(shift);
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc0(0), acc1(0);
    int64_t i = start;
    for (; i + 2 * kLanes <= end; i += 2 * kLanes) {
      acc0 += Vec::loadu(p + i) - vshift;
      acc1 += Vec::loadu(p + i + kLanes) - vshift;
    }
    for (; i + kLanes <= end; i += kLanes) acc0 += Vec::loadu(p + i) - vshift;
    acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, acc0 + acc1);
    for (; i < end; ++i) s += p[i] - shift;
    total += s;
  }
  return total;
}

// sum(((p - shift) - delta)^2): the second pass of a two-pass variance around mean = shift + delta.
template <typename acc_t>
acc_t chunked_sum_sq_dev(const acc_t* p, int64_t n, acc_t shift, acc_t delta) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const Vec vshift(shift), vdelta(delta);
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc(0);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      const Vec d = (Vec::loadu(p + i) - vshift) - vdelta;
      acc = at::vec::fmadd(d, d, acc);
    }
    acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, acc);
    for (; i < end; ++i) s += ((p[i] - shift) - delta) * ((p[i] - shift) - delta);
    total += s;
  }
  return total;
}

// sum(a * b), the backward's second row reduction.
template <typename acc_t>
acc_t chunked_dot(const acc_t* a, const acc_t* b, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    Vec acc(0);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
    acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& x, Vec& y) { return x + y; }, acc);
    for (; i < end; ++i) s += a[i] * b[i];
    total += s;
  }
  return total;
}

// Forward over rows. in_t: input/output dtype; h_t: dtype of the normalised row as stored (the
// input itself, or the residual stream for the fused add).
template <typename in_t, typename h_t>
void row_norm_fwd_cpu(const in_t* x, const h_t* residual, h_t* residual_out, in_t* y, at::opmath_type<in_t>* mean,
                      at::opmath_type<in_t>* rstd, const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b,
                      int64_t rows, int64_t cols, double eps, bool rms) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(cols);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t off = row * cols;
      const acc_t* h;
      if (residual != nullptr) {
        // h is rounded to its storage dtype before it is normalised, so the backward, which re-reads
        // the stored h, differentiates exactly the function the forward computed.
        for (int64_t i = 0; i < cols; ++i) {
          const h_t hv = static_cast<h_t>(static_cast<acc_t>(x[off + i]) + static_cast<acc_t>(residual[off + i]));
          residual_out[off + i] = hv;
          buf[i] = static_cast<acc_t>(hv);
        }
        h = buf.data();
      } else if constexpr (std::is_same_v<in_t, acc_t>) {
        h = x + off;
      } else {
        widen(x + off, buf.data(), cols);
        h = buf.data();
      }
      const acc_t n = static_cast<acc_t>(cols);
      const acc_t shift = rms ? acc_t(0) : h[0];
      const acc_t delta = rms ? acc_t(0) : chunked_sum(h, cols, shift) / n;
      const acc_t r = acc_t(1) / std::sqrt(chunked_sum_sq_dev(h, cols, shift, delta) / n + static_cast<acc_t>(eps));
      if (mean != nullptr) mean[row] = shift + delta;
      rstd[row] = r;

      acc_t* out = std::is_same_v<in_t, acc_t> ? reinterpret_cast<acc_t*>(y + off) : buf.data();
      const Vec vshift(shift), vdelta(delta), vr(r);
      int64_t i = 0;
      for (; i + kLanes <= cols; i += kLanes) {
        Vec v = ((Vec::loadu(h + i) - vshift) - vdelta) * vr;
        if (w != nullptr) v = v * Vec::loadu(w + i);
        if (b != nullptr) v = v + Vec::loadu(b + i);
        v.store(out + i);
      }
      for (; i < cols; ++i) {
        acc_t v = ((h[i] - shift) - delta) * r;
        if (w != nullptr) v *= w[i];
        if (b != nullptr) v += b[i];
        out[i] = v;
      }
      if constexpr (!std::is_same_v<in_t, acc_t>) narrow(buf.data(), y + off, cols);
    }
  });
}

// Backward over rows; saved_t is the dtype of the saved tensor (input, residual stream or output).
template <typename in_t, typename saved_t>
void row_norm_bwd_cpu(const in_t* dy, const saved_t* saved, const saved_t* grad_residual, saved_t* dx,
                      const at::opmath_type<in_t>* mean, const at::opmath_type<in_t>* rstd,
                      const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b, at::opmath_type<in_t>* dw_out,
                      at::opmath_type<in_t>* db_out, int64_t rows, int64_t cols, bool saved_is_output, bool rms) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const int64_t num_blocks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  std::vector<acc_t> dw_partial(dw_out ? num_blocks * cols : 0, acc_t(0));
  std::vector<acc_t> db_partial(db_out ? num_blocks * cols : 0, acc_t(0));

  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<acc_t> saved_buf(std::is_same_v<saved_t, acc_t> ? 0 : cols);
    std::vector<acc_t> dy_buf(std::is_same_v<in_t, acc_t> ? 0 : cols);
    std::vector<acc_t> xhat(cols), g(cols);
    const Vec zero(0), one(1);
    for (int64_t block = block_begin; block < block_end; ++block) {
      acc_t* dw_acc = dw_out ? dw_partial.data() + block * cols : nullptr;
      acc_t* db_acc = db_out ? db_partial.data() + block * cols : nullptr;
      const int64_t row_begin = rows * block / num_blocks;
      const int64_t row_end = rows * (block + 1) / num_blocks;
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t off = row * cols;
        const acc_t r = rstd[row];
        const acc_t mu = (rms || saved_is_output) ? acc_t(0) : mean[row];
        const acc_t* s_row = as_acc(saved + off, saved_buf.data(), cols);
        const acc_t* dy_row = as_acc(dy + off, dy_buf.data(), cols);
        // x_hat and g = dy * w; dgamma += dy * x_hat, dbeta += dy. The row-uniform branches are hoisted
        // by the compiler (loop unswitching); each element is touched once here.
        const Vec vmu(mu), vr(r);
        const auto step = [&](int64_t i, auto load, auto store) {
          const Vec sv = load(s_row + i);
          const Vec d = load(dy_row + i);
          const Vec wv = w ? load(w + i) : one;
          // Memory-efficient mode inverts the affine map y = x_hat * w + b.
          const Vec xh = saved_is_output ? (sv - (b ? load(b + i) : zero)) / wv : (sv - vmu) * vr;
          store(xhat.data() + i, xh);
          store(g.data() + i, d * wv);
          if (dw_acc) store(dw_acc + i, at::vec::fmadd(d, xh, load(dw_acc + i)));
          if (db_acc) store(db_acc + i, load(db_acc + i) + d);
        };
        const auto load_full = [](const acc_t* p) { return Vec::loadu(p); };
        const auto store_full = [](acc_t* p, const Vec& v) { v.store(p); };
        int64_t i = 0;
        for (; i + kLanes <= cols; i += kLanes) step(i, load_full, store_full);
        if (i < cols) {
          const int64_t tail = cols - i;
          step(
              i, [tail](const acc_t* p) { return Vec::loadu(p, tail); },
              [tail](acc_t* p, const Vec& v) { v.store(p, tail); });
        }
        const acc_t n = static_cast<acc_t>(cols);
        const acc_t mean_g = rms ? acc_t(0) : chunked_sum(g.data(), cols) / n;
        const acc_t mean_gx = chunked_dot(g.data(), xhat.data(), cols) / n;
        // dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), written over g.
        const Vec vmg(mean_g), vmgx(mean_gx);
        for (i = 0; i + kLanes <= cols; i += kLanes) {
          const Vec v = vr * (Vec::loadu(g.data() + i) - vmg - Vec::loadu(xhat.data() + i) * vmgx);
          v.store(g.data() + i);
        }
        for (; i < cols; ++i) g[i] = r * (g[i] - mean_g - xhat[i] * mean_gx);
        if (grad_residual != nullptr) {
          const acc_t* gr_row = as_acc(grad_residual + off, xhat.data(), cols);
          for (i = 0; i + kLanes <= cols; i += kLanes) {
            (Vec::loadu(g.data() + i) + Vec::loadu(gr_row + i)).store(g.data() + i);
          }
          for (; i < cols; ++i) g[i] += gr_row[i];
        }
        narrow(g.data(), dx + off, cols);
      }
    }
  });

  const auto reduce_partials = [&](const std::vector<acc_t>& partial, acc_t* out) {
    if (out == nullptr) return;
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

void row_norm_fwd(const RowNormFwdArgs& a) {
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
