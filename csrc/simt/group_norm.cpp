// GroupNorm's CUDA kernels and launches, compiled for the SIMT host backend.
#include "cuda/group_norm.cuh"
#include "simt/ops.h"

void norm_ext::simt::register_group_norm(torch::Library& m) {
  register_group_norm_ops<GpuGroupNorm>(m);
}
