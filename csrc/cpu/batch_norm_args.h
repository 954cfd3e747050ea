#pragma once
// Arguments of the CPU batch-norm kernels' entry points (cpu/kernels.h). The data is in one of the
// two layouts of common/batch_norm.h: channels-first [outer = N][C][inner] or channels-last
// [outer = rows][C] (inner = 1). Per-channel vectors are contiguous arrays in the accumulation type
// (float, or double for double input), already converted by the caller.

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace norm_ext::cpu {

struct BatchNormShape {
  bool channels_last;
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// Per-channel mean and m2 (sum of squared deviations), accumulated relative to shift[c].
struct BatchNormStatsArgs {
  at::ScalarType dtype;
  BatchNormShape shape;
  const void* x;
  const bool* pad;  // channels-last only; null when absent, else true rows are left out
  const void* shift;
  void* mean;
  void* m2;
};

// Per-channel sum(dy) and sum(dy * (x - mean)).
struct BatchNormBackwardReduceArgs {
  at::ScalarType dtype;
  BatchNormShape shape;
  const void* dy;
  const void* x;
  const bool* pad;
  const void* mean;
  void* sum_dy;
  void* sum_dy_xmu;
};

// out = (x - mean[c]) * scale[c] + shift[c] + dy_scale[c] * dy; padded rows are set to zero.
struct BatchNormAffineArgs {
  at::ScalarType dtype;
  BatchNormShape shape;
  const void* x;
  const void* dy;  // null in the forward
  const bool* pad;
  void* out;
  const void* mean;
  const void* scale;
  const void* shift;
  const void* dy_scale;  // null in the forward
};

// The training forward with the batch's own statistics, in one call: per-channel mean, m2 and
// invstd = 1 / sqrt(m2 / count + eps), then out = (x - mean) * invstd * weight + bias.
struct BatchNormTrainArgs {
  at::ScalarType dtype;
  BatchNormShape shape;
  const void* x;
  const void* weight;  // null: 1
  const void* bias;    // null: 0
  double eps;
  void* out;
  void* mean;
  void* m2;
  void* invstd;
};

// The backward of batch_norm_train: sum_dy and sum_dy_xhat per channel (also the bias and weight
// gradients), and dx = a * (dy - sum_dy / count - x_hat * sum_dy_xhat / count), a = weight * invstd.
struct BatchNormTrainBackwardArgs {
  at::ScalarType dtype;
  BatchNormShape shape;
  const void* dy;
  const void* x;
  const void* mean;
  const void* invstd;
  const void* weight;  // null: 1
  void* dx;
  void* sum_dy;
  void* sum_dy_xhat;
};

}  // namespace norm_ext::cpu
