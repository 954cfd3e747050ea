#pragma once
// Arguments of the CPU GroupNorm kernels' entry points (cpu/kernels.h). Input, output and gradient
// buffers are contiguous in the layout `shape` describes (N x C x HW, or N x HW x C when
// channels_last); statistics (N x G) and affine parameters (C) are in the accumulation type (float,
// or double for double input), parameters already converted by the caller.

#include <c10/core/ScalarType.h>

#include "common/group_norm.h"

namespace norm_ext::cpu {

struct GroupNormFwdArgs {
  at::ScalarType dtype;  // input and output
  const void* x;
  void* y;
  void* mean;
  void* rstd;
  const void* w;  // null when absent
  const void* b;
  GroupNormShape shape;
  double eps;
  bool silu;
};

struct GroupNormBwdArgs {
  at::ScalarType dtype;  // grad_out, input and grad_input
  const void* dy;
  const void* x;
  void* dx;
  const void* mean;
  const void* rstd;
  const void* w;  // null when absent
  const void* b;
  void* dw;  // null when not wanted
  void* db;
  GroupNormShape shape;
  bool silu;
};

}  // namespace norm_ext::cpu
