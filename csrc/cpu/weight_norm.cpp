// CPU kernels of weight normalization: w = g * v / ||v||, the norm over every dim but `dim`.
//
// v is viewed as (outer, slices, inner). Slices are split into fixed contiguous chunks, one work item
// each; a chunk walks v in memory order (o, then its slices, then inner), so dim=0 (inner contiguous
// rows) and dim=-1 (inner=1, slices contiguous) both stream through memory. Every slice's sum is
// accumulated in the same order whatever the thread count, so results are deterministic. g (tiny) is
// converted to the accumulation type once, which keeps its dtype out of the kernel templates.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/reparam_checks.h"

namespace norm_ext {
namespace {

// Partial sums are closed every kSumChunk elements so that rounding error grows slowly with length.
constexpr int64_t kSumChunk = 1024;
constexpr int64_t kGrainElements = 1 << 15;

template <typename scalar_t, typename acc_t>
acc_t chunked_dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += kSumChunk) {
    const int64_t end = std::min(n, start + kSumChunk);
    acc_t lanes[4] = {0, 0, 0, 0};
    int64_t i = start;
    for (; i + 4 <= end; i += 4) {
      for (int k = 0; k < 4; ++k) lanes[k] += static_cast<acc_t>(a[i + k]) * static_cast<acc_t>(b[i + k]);
    }
    acc_t s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < end; ++i) s += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
    total += s;
  }
  return total;
}

// out[d] = sum over (o, i) of a[o, d, i] * b[o, d, i].
template <typename scalar_t, typename acc_t>
void slice_dots(const scalar_t* a, const scalar_t* b, acc_t* out, const WeightNormShape& s) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, s.outer * s.inner));
  at::parallel_for(0, s.slices, grain, [&](int64_t d0, int64_t d1) {
    std::vector<acc_t> acc(d1 - d0, acc_t(0));
    for (int64_t o = 0; o < s.outer; ++o) {
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t offset = (o * s.slices + d) * s.inner;
        acc[d - d0] += chunked_dot<scalar_t, acc_t>(a + offset, b + offset, s.inner);
      }
    }
    std::copy(acc.begin(), acc.end(), out + d0);
  });
}

// out[o, d, i] = alpha[d] * x[o, d, i] - beta[d] * y[o, d, i] (y may be null: beta ignored).
template <typename scalar_t, typename acc_t>
void slice_axpby(const scalar_t* x, const scalar_t* y, const acc_t* alpha, const acc_t* beta, scalar_t* out,
                 const WeightNormShape& s) {
  const int64_t rows = s.outer * s.slices;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, s.inner));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t d = r % s.slices;
      const acc_t a = alpha[d];
      const int64_t offset = r * s.inner;
      if (y == nullptr) {
        for (int64_t i = 0; i < s.inner; ++i)
          out[offset + i] = static_cast<scalar_t>(a * static_cast<acc_t>(x[offset + i]));
      } else {
        const acc_t b = beta[d];
        for (int64_t i = 0; i < s.inner; ++i) {
          out[offset + i] =
              static_cast<scalar_t>(a * static_cast<acc_t>(x[offset + i]) - b * static_cast<acc_t>(y[offset + i]));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> weight_norm_cpu(const at::Tensor& v_in, const at::Tensor& g,
                                                   std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  TORCH_CHECK(v_in.device().is_cpu(), op, ": expected CPU tensors, got v on ", v_in.device());
  const at::Tensor v = v_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor w = at::empty_like(v, at::MemoryFormat::Contiguous);
  at::Tensor norm = at::empty(g.sizes(), v.options().dtype(acc_type));
  if (v.numel() == 0) {
    norm.zero_();
    return {w, norm};
  }
  const at::Tensor g_acc = g.to(acc_type).contiguous().view({-1});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* norm_ptr = norm.data_ptr<acc_t>();
    slice_dots<scalar_t, acc_t>(v.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), norm_ptr, shape);
    std::vector<acc_t> alpha(shape.slices);
    const acc_t* g_ptr = g_acc.const_data_ptr<acc_t>();
    for (int64_t d = 0; d < shape.slices; ++d) {
      norm_ptr[d] = std::sqrt(norm_ptr[d]);
      alpha[d] = g_ptr[d] / norm_ptr[d];
    }
    slice_axpby<scalar_t, acc_t>(v.const_data_ptr<scalar_t>(), nullptr, alpha.data(), nullptr,
                                 w.mutable_data_ptr<scalar_t>(), shape);
  });
  return {w, norm};
}

// With s = g / n and c = sum(grad_w * v) per slice: grad_g = c / n and
// grad_v = s * grad_w - (s * c / n^2) * v, the projection of grad_w off v, scaled.
std::tuple<at::Tensor, at::Tensor> weight_norm_backward_cpu(const at::Tensor& grad_w_in, const at::Tensor& v_in,
                                                            const at::Tensor& g, const at::Tensor& norm_in,
                                                            std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm_backward";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  check_weight_norm_backward_inputs(op, grad_w_in, v_in, norm_in, shape);
  TORCH_CHECK(v_in.device().is_cpu(), op, ": expected CPU tensors, got v on ", v_in.device());
  const at::Tensor v = v_in.contiguous();
  const at::Tensor grad_w = grad_w_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
  at::Tensor grad_g_acc = at::empty({shape.slices}, v.options().dtype(acc_type));
  if (v.numel() == 0) {
    return {grad_v, at::zeros_like(g)};
  }
  const at::Tensor g_acc = g.to(acc_type).contiguous().view({-1});
  const at::Tensor norm = norm_in.contiguous().view({-1});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> dots(shape.slices), alpha(shape.slices), beta(shape.slices);
    slice_dots<scalar_t, acc_t>(grad_w.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), dots.data(), shape);
    const acc_t* g_ptr = g_acc.const_data_ptr<acc_t>();
    const acc_t* n_ptr = norm.const_data_ptr<acc_t>();
    acc_t* grad_g_ptr = grad_g_acc.data_ptr<acc_t>();
    for (int64_t d = 0; d < shape.slices; ++d) {
      const acc_t inv_n = acc_t(1) / n_ptr[d];
      grad_g_ptr[d] = dots[d] * inv_n;
      alpha[d] = g_ptr[d] * inv_n;
      beta[d] = alpha[d] * dots[d] * inv_n * inv_n;
    }
    slice_axpby<scalar_t, acc_t>(grad_w.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), alpha.data(),
                                 beta.data(), grad_v.mutable_data_ptr<scalar_t>(), shape);
  });
  return {grad_v, grad_g_acc.view(g.sizes()).to(g.scalar_type())};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("weight_norm", &norm_ext::weight_norm_cpu);
  m.impl("weight_norm_backward", &norm_ext::weight_norm_backward_cpu);
}
