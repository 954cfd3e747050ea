// The batch-norm family's CUDA kernels and launches, compiled for the SIMT host backend.
#include "cuda/batch_norm.cuh"
#include "simt/ops.h"

void norm_ext::simt::register_batch_norm(torch::Library& m) {
  register_batch_norm_ops<GpuBatchNorm>(m);
}
