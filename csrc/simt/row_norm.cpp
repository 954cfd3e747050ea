// The row norms' CUDA kernels and launches, compiled for the SIMT host backend.
#include "cuda/row_norm.cuh"
#include "simt/ops.h"

void norm_ext::simt::register_row_norm(torch::Library& m) {
  register_row_norm_ops<GpuRowNorm>(m);
}
