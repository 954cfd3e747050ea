// Weight normalization's CUDA kernels and launches, compiled for the SIMT host backend.
#include "cuda/weight_norm.cuh"
#include "simt/ops.h"

void norm_ext::simt::register_weight_norm(torch::Library& m) {
  register_weight_norm_ops<GpuWeightNorm>(m);
}
