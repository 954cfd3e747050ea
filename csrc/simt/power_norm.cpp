// PowerNorm's CUDA kernels and launches, compiled for the SIMT host backend.
#include "cuda/power_norm.cuh"
#include "simt/ops.h"

void norm_ext::simt::register_power_norm(torch::Library& m) {
  register_power_norm_ops<GpuPowerNorm>(m);
}
