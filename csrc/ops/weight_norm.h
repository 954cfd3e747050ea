#pragma once
// Op glue of weight normalization, w = g * v / ||v||, the norm over every dim but `dim`, shared by
// every backend: checks, allocation and empty inputs. v is viewed as (outer, slices, inner) and g,
// the norms and grad_g as one value per slice, in the accumulation type. A backend supplies kDevice,
// Guard and
//   static void forward(const WeightNormFwdCall&);   // norm[d] = ||v_d||, w_d = g[d] / norm[d] * v_d
//   static void backward(const WeightNormBwdCall&);  // with c = <grad_w_d, v_d>, s = g[d] / norm[d]:
//                                                    // grad_g = c / norm, grad_v = s * grad_w - (s c / norm^2) v

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/reparam_checks.h"
#include "ops/common.h"

namespace norm_ext {

struct WeightNormFwdCall {
  const at::Tensor& v;
  const at::Tensor& g;  // flat, accumulation type
  const at::Tensor& w;
  const at::Tensor& norm;
  WeightNormShape shape;
};

struct WeightNormBwdCall {
  const at::Tensor& grad_w;
  const at::Tensor& v;
  const at::Tensor& g;     // flat, accumulation type
  const at::Tensor& norm;  // flat
  const at::Tensor& grad_v;
  const at::Tensor& grad_g;  // flat, accumulation type
  WeightNormShape shape;
};

template <typename Backend>
struct WeightNormOps {
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& v_, const at::Tensor& g,
                                                    std::optional<int64_t> dim) {
    constexpr const char* op = "norm_ext::weight_norm";
    const WeightNormShape shape = check_weight_norm_inputs(op, v_, g, dim);
    check_device_type(op, v_, Backend::kDevice);
    const typename Backend::Guard guard(v_.device());
    const at::Tensor v = v_.contiguous();
    const at::ScalarType acc = acc_dtype_of(v);
    at::Tensor w = at::empty_like(v, at::MemoryFormat::Contiguous);
    at::Tensor norm = at::empty(g.sizes(), v.options().dtype(acc));
    if (v.numel() == 0) return {w, norm.zero_()};
    Backend::forward({v, g.to(acc).contiguous().view({-1}), w, norm, shape});
    return {w, norm};
  }

  static std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_w_, const at::Tensor& v_,
                                                     const at::Tensor& g, const at::Tensor& norm,
                                                     std::optional<int64_t> dim) {
    constexpr const char* op = "norm_ext::weight_norm_backward";
    const WeightNormShape shape = check_weight_norm_inputs(op, v_, g, dim);
    check_weight_norm_backward_inputs(op, grad_w_, v_, g, norm);
    check_device_type(op, v_, Backend::kDevice);
    const typename Backend::Guard guard(v_.device());
    const at::Tensor v = v_.contiguous();
    const at::Tensor grad_w = grad_w_.contiguous();
    const at::ScalarType acc = acc_dtype_of(v);
    at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
    if (v.numel() == 0) return {grad_v, at::zeros_like(g)};
    at::Tensor grad_g = at::empty({shape.slices}, v.options().dtype(acc));
    Backend::backward(
        {grad_w, v, g.to(acc).contiguous().view({-1}), norm.contiguous().view({-1}), grad_v, grad_g, shape});
    return {grad_v, grad_g.view(g.sizes()).to(g.scalar_type())};
  }
};

template <typename Backend>
void register_weight_norm_ops(torch::Library& m) {
  m.impl("weight_norm", &WeightNormOps<Backend>::forward);
  m.impl("weight_norm_backward", &WeightNormOps<Backend>::backward);
}

}  // namespace norm_ext
