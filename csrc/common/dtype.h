#pragma once
// Host-side dtype helper shared by the op glue and the autograd formulas.

#include <ATen/ATen.h>

namespace norm_ext {

// t in dtype, t itself where it already is: Tensor::to crosses the dispatcher even with nothing to
// do, a few microseconds of a call that normalizes a few thousand values.
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

}  // namespace norm_ext
