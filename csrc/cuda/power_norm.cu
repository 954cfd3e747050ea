// CUDA backend of PowerNorm: kernels and launches in power_norm.cuh, op glue in ops/power_norm.h.
#include <torch/library.h>

#include "cuda/power_norm.cuh"

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_power_norm_ops<norm_ext::GpuPowerNorm>(m);
}
