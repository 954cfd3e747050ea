// CPU kernels of the row-norm family: LayerNorm and RMSNorm, plain and with a fused residual add.
//
// Rows are independent, so the forward is parallel over rows. Each row is first brought into an
// accumulation-type buffer (skipped when the input already is acc_t); the row then stays in L1/L2
// for the two reduction passes (mean, then squared deviations) and the output pass, so DRAM sees x
// once and y once. The affine parameters are converted to acc_t once per call, which also applies
// the zero-centred (1 + w) offset and removes the parameter dtype from the kernel templates.
//
// The backward splits the rows into a fixed number of contiguous blocks, one per thread; each block
// accumulates dgamma/dbeta partials in acc_t, and the partials are summed in block order, so the
// result does not depend on scheduling.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/checks.h"

namespace norm_ext {
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

template <typename dst_t, typename src_t>
void convert_row(const src_t* src, dst_t* dst, int64_t n) {
  if constexpr (std::is_same_v<src_t, dst_t>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// Affine parameters as acc_t arrays (or empty when absent). zero_centered adds the 1 in acc_t, so a
// bf16 weight near zero does not lose the offset to rounding.
template <typename acc_t>
at::Tensor param_as_acc(const std::optional<at::Tensor>& p, bool add_one) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  at::Tensor out = p->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  if (add_one) out = out + 1;
  return out;
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

struct RowNormFlags {
  bool rms;
};

// Forward over rows. in_t: input/output dtype; h_t: dtype of the normalised row as stored (the
// input itself, or the residual stream for the fused add).
template <typename in_t, typename h_t>
void row_norm_fwd_cpu(const in_t* x, const h_t* residual, h_t* residual_out, in_t* y, at::opmath_type<in_t>* mean,
                      at::opmath_type<in_t>* rstd, const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b,
                      int64_t rows, int64_t cols, double eps, RowNormFlags flags) {
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
        convert_row(x + off, buf.data(), cols);
        h = buf.data();
      }
      const acc_t n = static_cast<acc_t>(cols);
      const acc_t shift = flags.rms ? acc_t(0) : h[0];
      const acc_t delta = flags.rms ? acc_t(0) : chunked_sum(h, cols, shift) / n;
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
      if constexpr (!std::is_same_v<in_t, acc_t>) convert_row(buf.data(), y + off, cols);
    }
  });
}

// Backward over rows; saved_t is the dtype of the saved tensor (input, residual stream or output).
template <typename in_t, typename saved_t>
void row_norm_bwd_cpu(const in_t* dy, const saved_t* saved, const saved_t* grad_residual, saved_t* dx,
                      const at::opmath_type<in_t>* mean, const at::opmath_type<in_t>* rstd,
                      const at::opmath_type<in_t>* w, const at::opmath_type<in_t>* b, at::opmath_type<in_t>* dw_out,
                      at::opmath_type<in_t>* db_out, int64_t rows, int64_t cols, bool saved_is_output,
                      RowNormFlags flags) {
  using acc_t = at::opmath_type<in_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  const int64_t num_blocks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  std::vector<acc_t> dw_partial(dw_out ? num_blocks * cols : 0, acc_t(0));
  std::vector<acc_t> db_partial(db_out ? num_blocks * cols : 0, acc_t(0));

  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<acc_t> xhat(cols), g(cols), tmp(cols);
    for (int64_t block = block_begin; block < block_end; ++block) {
      acc_t* dw_acc = dw_out ? dw_partial.data() + block * cols : nullptr;
      acc_t* db_acc = db_out ? db_partial.data() + block * cols : nullptr;
      const int64_t row_begin = rows * block / num_blocks;
      const int64_t row_end = rows * (block + 1) / num_blocks;
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t off = row * cols;
        const acc_t r = rstd[row];
        const acc_t mu = (flags.rms || saved_is_output) ? acc_t(0) : mean[row];
        convert_row(saved + off, xhat.data(), cols);
        convert_row(dy + off, tmp.data(), cols);
        // x_hat, and g = dy * w; dgamma += dy * x_hat, dbeta += dy.
        int64_t i = 0;
        for (; i < cols; ++i) {
          acc_t xh;
          if (saved_is_output) {
            // Memory-efficient mode: invert the affine map y = x_hat * w + b.
            const acc_t yv = xhat[i] - (b ? b[i] : acc_t(0));
            xh = w ? yv / w[i] : yv;
          } else {
            xh = (xhat[i] - mu) * r;
          }
          xhat[i] = xh;
          const acc_t d = tmp[i];
          g[i] = w ? d * w[i] : d;
          if (dw_acc) dw_acc[i] += d * xh;
          if (db_acc) db_acc[i] += d;
        }
        const acc_t n = static_cast<acc_t>(cols);
        const acc_t mean_g = flags.rms ? acc_t(0) : chunked_sum(g.data(), cols) / n;
        const acc_t mean_gx = chunked_dot(g.data(), xhat.data(), cols) / n;
        const Vec vr(r), vmg(mean_g), vmgx(mean_gx);
        for (i = 0; i + kLanes <= cols; i += kLanes) {
          const Vec v = vr * (Vec::loadu(g.data() + i) - vmg - Vec::loadu(xhat.data() + i) * vmgx);
          v.store(tmp.data() + i);
        }
        for (; i < cols; ++i) tmp[i] = r * (g[i] - mean_g - xhat[i] * mean_gx);
        if (grad_residual != nullptr) {
          for (i = 0; i < cols; ++i) tmp[i] += static_cast<acc_t>(grad_residual[off + i]);
        }
        convert_row(tmp.data(), dx + off, cols);
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

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Shared body of the four forward ops. residual is null for the plain ops.
std::vector<at::Tensor> row_norm_forward(const char* op, const at::Tensor& input_, const at::Tensor* residual_,
                                         std::optional<at::ScalarType> residual_dtype, at::IntArrayRef normalized_shape,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& bias, double eps, bool zero_centered,
                                         bool rms) {
  const RowShape shape = check_row_norm_inputs(op, input_, normalized_shape, weight, bias, eps);
  TORCH_CHECK(input_.device().is_cpu(), op, ": expected a CPU input, got ", input_.device());
  at::ScalarType h_dtype = input_.scalar_type();
  if (residual_ != nullptr) h_dtype = check_add_norm_inputs(op, input_, *residual_, residual_dtype);

  const at::Tensor input = input_.contiguous();
  const auto stat_shape = row_stat_shape(input, static_cast<int64_t>(normalized_shape.size()));
  const auto stat_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options());
  at::Tensor mean = rms ? at::Tensor() : at::empty(stat_shape, stat_opts);
  at::Tensor rstd = at::empty(stat_shape, stat_opts);
  at::Tensor residual, residual_out;
  if (residual_ != nullptr) {
    residual = residual_->to(h_dtype).contiguous();
    residual_out = at::empty(input.sizes(), input.options().dtype(h_dtype));
  }

  if (shape.rows * shape.cols != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_row_norm_forward", [&] {
      using in_t = scalar_t;
      using acc_t = at::opmath_type<in_t>;
      const at::Tensor w = param_as_acc<acc_t>(weight, zero_centered);
      const at::Tensor b = param_as_acc<acc_t>(bias, false);
      const auto run = [&](auto h_tag) {
        using h_t = decltype(h_tag);
        row_norm_fwd_cpu<in_t, h_t>(input.const_data_ptr<in_t>(),
                                    residual.defined() ? residual.const_data_ptr<h_t>() : nullptr,
                                    residual_out.defined() ? residual_out.mutable_data_ptr<h_t>() : nullptr,
                                    out.mutable_data_ptr<in_t>(), rms ? nullptr : mean.mutable_data_ptr<acc_t>(),
                                    rstd.mutable_data_ptr<acc_t>(), data_or_null<acc_t>(w), data_or_null<acc_t>(b),
                                    shape.rows, shape.cols, eps, RowNormFlags{rms});
      };
      if (h_dtype == input.scalar_type()) {
        run(in_t{});
      } else {
        run(float{});
      }
    });
  } else if (shape.rows > 0) {
    if (mean.defined()) mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
  }

  std::vector<at::Tensor> result{out};
  if (residual_ != nullptr) result.push_back(residual_out);
  if (!rms) result.push_back(mean);
  result.push_back(rstd);
  return result;
}

std::vector<at::Tensor> row_norm_backward(const char* op, const at::Tensor& grad_out_, const at::Tensor& saved_,
                                          at::IntArrayRef normalized_shape, const at::Tensor* mean_,
                                          const at::Tensor& rstd_, const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& bias, bool zero_centered,
                                          bool saved_is_output, const std::optional<at::Tensor>& grad_residual_,
                                          bool rms) {
  const RowShape shape =
      check_row_norm_backward_inputs(op, grad_out_, saved_, normalized_shape, rstd_, weight, bias, grad_residual_);
  TORCH_CHECK(grad_out_.device().is_cpu(), op, ": expected CPU tensors, got ", grad_out_.device());
  const at::ScalarType acc = acc_dtype(grad_out_.scalar_type());
  TORCH_CHECK_TYPE(rstd_.scalar_type() == acc, op, ": rstd must be ", acc, ", got ", rstd_.scalar_type());
  if (!rms && !saved_is_output) {
    TORCH_CHECK_VALUE(mean_->numel() == shape.rows && mean_->scalar_type() == acc, op, ": mean must hold one ", acc,
                      " value per row (", shape.rows, "), got ", mean_->numel(), " of ", mean_->scalar_type());
  }
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor saved = saved_.contiguous();
  const at::Tensor rstd = rstd_.contiguous();
  const at::Tensor mean = (rms || saved_is_output) ? at::Tensor() : mean_->contiguous();
  const at::Tensor grad_residual = defined(grad_residual_) ? grad_residual_->contiguous() : at::Tensor();

  at::Tensor grad_input = at::empty(saved.sizes(), saved.options());
  const auto acc_opts = grad_out.options().dtype(acc);
  at::Tensor dw = defined(weight) ? at::zeros(normalized_shape, acc_opts) : at::Tensor();
  at::Tensor db = defined(bias) ? at::zeros(normalized_shape, acc_opts) : at::Tensor();

  if (shape.rows * shape.cols != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "norm_ext_row_norm_backward", [&] {
      using in_t = scalar_t;
      using acc_t = at::opmath_type<in_t>;
      const at::Tensor w = param_as_acc<acc_t>(weight, zero_centered);
      const at::Tensor b = saved_is_output ? param_as_acc<acc_t>(bias, false) : at::Tensor();
      const auto run = [&](auto saved_tag) {
        using saved_t = decltype(saved_tag);
        row_norm_bwd_cpu<in_t, saved_t>(
            grad_out.const_data_ptr<in_t>(), saved.const_data_ptr<saved_t>(),
            grad_residual.defined() ? grad_residual.const_data_ptr<saved_t>() : nullptr,
            grad_input.mutable_data_ptr<saved_t>(), mean.defined() ? mean.const_data_ptr<acc_t>() : nullptr,
            rstd.const_data_ptr<acc_t>(), data_or_null<acc_t>(w), data_or_null<acc_t>(b),
            dw.defined() ? dw.mutable_data_ptr<acc_t>() : nullptr, db.defined() ? db.mutable_data_ptr<acc_t>() : nullptr,
            shape.rows, shape.cols, saved_is_output, RowNormFlags{rms});
      };
      if (saved.scalar_type() == grad_out.scalar_type()) {
        run(in_t{});
      } else {
        run(float{});
      }
    });
  }
  const at::Tensor empty = at::empty({0}, grad_out.options());
  std::vector<at::Tensor> result{grad_input, dw.defined() ? dw.to(weight->scalar_type()) : empty};
  if (!rms) result.push_back(db.defined() ? db.to(bias->scalar_type()) : empty);
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cpu(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps,
                                                              bool zero_centered_weight, bool /*memory_efficient*/) {
  auto r = row_norm_forward("layer_norm", input, nullptr, std::nullopt, normalized_shape, weight, bias, eps,
                            zero_centered_weight, false);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                const std::optional<at::Tensor>& weight, double eps,
                                                bool zero_centered_weight, bool /*memory_efficient*/) {
  auto r = row_norm_forward("rms_norm", input, nullptr, std::nullopt, normalized_shape, weight, std::nullopt, eps,
                            zero_centered_weight, true);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_cpu(
    const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    std::optional<at::ScalarType> residual_dtype, bool zero_centered_weight, bool /*memory_efficient*/) {
  auto r = row_norm_forward("add_layer_norm", input, &residual, residual_dtype, normalized_shape, weight, bias, eps,
                            zero_centered_weight, false);
  return {r[0], r[1], r[2], r[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& input, const at::Tensor& residual,
                                                                at::IntArrayRef normalized_shape,
                                                                const std::optional<at::Tensor>& weight, double eps,
                                                                std::optional<at::ScalarType> residual_dtype,
                                                                bool zero_centered_weight, bool /*memory_efficient*/) {
  auto r = row_norm_forward("add_rms_norm", input, &residual, residual_dtype, normalized_shape, weight, std::nullopt,
                            eps, zero_centered_weight, true);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& saved, at::IntArrayRef normalized_shape, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    bool zero_centered_weight, bool saved_is_output, const std::optional<at::Tensor>& grad_residual) {
  auto r = row_norm_backward("layer_norm_backward", grad_out, saved, normalized_shape, &mean, rstd, weight, bias,
                             zero_centered_weight, saved_is_output, grad_residual, false);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_out, const at::Tensor& saved,
                                                         at::IntArrayRef normalized_shape, const at::Tensor& rstd,
                                                         const std::optional<at::Tensor>& weight,
                                                         bool zero_centered_weight, bool saved_is_output,
                                                         const std::optional<at::Tensor>& grad_residual) {
  auto r = row_norm_backward("rms_norm_backward", grad_out, saved, normalized_shape, nullptr, rstd, weight,
                             std::nullopt, zero_centered_weight, saved_is_output, grad_residual, true);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("layer_norm", &norm_ext::layer_norm_cpu);
  m.impl("rms_norm", &norm_ext::rms_norm_cpu);
  m.impl("add_layer_norm", &norm_ext::add_layer_norm_cpu);
  m.impl("add_rms_norm", &norm_ext::add_rms_norm_cpu);
  m.impl("layer_norm_backward", &norm_ext::layer_norm_backward_cpu);
  m.impl("rms_norm_backward", &norm_ext::rms_norm_backward_cpu);
}
