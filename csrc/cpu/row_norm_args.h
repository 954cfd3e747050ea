#pragma once
// Arguments of the CPU row-norm kernels' entry points (cpu/kernels.h): LayerNorm / RMSNorm, plain or
// with a fused residual add. Pointers are contiguous rows x cols buffers; statistics and affine
// parameters are in the accumulation type (float, or double for double input), parameters already
// converted (and offset by 1 when zero-centred) by the caller.

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace norm_ext::cpu {

struct RowNormFwdArgs {
  at::ScalarType in_dtype;  // input and output
  at::ScalarType h_dtype;   // the normalised row as stored: the input's dtype, or the residual stream's
  const void* x;
  const void* residual;  // null for the plain ops
  void* residual_out;
  void* y;
  void* mean;  // null for RMSNorm
  void* rstd;
  const void* w;  // null when absent
  const void* b;
  int64_t rows;
  int64_t cols;
  double eps;
  bool rms;
};

struct RowNormBwdArgs {
  at::ScalarType in_dtype;     // grad_out
  at::ScalarType saved_dtype;  // saved tensor, grad_residual and grad_input
  const void* dy;
  const void* saved;
  const void* grad_residual;  // null when absent
  void* dx;
  const void* mean;  // null for RMSNorm or saved_is_output
  const void* rstd;
  const void* w;
  const void* b;  // only read when saved_is_output
  void* dw;       // null when not wanted
  void* db;
  int64_t rows;
  int64_t cols;
  bool saved_is_output;
  bool rms;
};

}  // namespace norm_ext::cpu
