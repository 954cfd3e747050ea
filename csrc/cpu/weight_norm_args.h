#pragma once
// Arguments of the CPU weight-normalization kernels' entry points (cpu/kernels.h). v (and grad_w) are
// contiguous and viewed as (outer, slices, inner), the norm being taken per slice; per-slice vectors
// are contiguous arrays in the accumulation type (float, or double for double input).

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace norm_ext::cpu {

struct WeightNormLayout {
  int64_t outer;
  int64_t slices;
  int64_t inner;
};

// out[d] = sum over (o, i) of a[o, d, i] * b[o, d, i].
struct SliceDotsArgs {
  at::ScalarType dtype;
  WeightNormLayout layout;
  const void* a;
  const void* b;
  void* out;
};

// out[o, d, i] = alpha[d] * x[o, d, i] - beta[d] * y[o, d, i]; without y, alpha[d] * x[o, d, i].
struct SliceAxpbyArgs {
  at::ScalarType dtype;
  WeightNormLayout layout;
  const void* x;
  const void* y;  // null: out = alpha * x, beta unused
  const void* alpha;
  const void* beta;
  void* out;
};

// outer == 1 (dim=0): each slice is one contiguous row, and the forward and the backward finish a
// row while it is in cache instead of making a reduction pass and an element-wise pass over v.
// norm[d] = ||v_d||, w_d = (g[d] / norm[d]) * v_d.
struct WeightNormRowsFwdArgs {
  at::ScalarType dtype;
  int64_t slices;
  int64_t inner;
  const void* v;
  const void* g;
  void* w;
  void* norm;
};

// c = <grad_w_d, v_d>: grad_g[d] = c / norm[d], grad_v_d = s * grad_w_d - (s * c / norm[d]^2) * v_d
// with s = g[d] / norm[d].
struct WeightNormRowsBwdArgs {
  at::ScalarType dtype;
  int64_t slices;
  int64_t inner;
  const void* grad_w;
  const void* v;
  const void* g;
  const void* norm;
  void* grad_v;
  void* grad_g;
};

}  // namespace norm_ext::cpu
