// CUDA backend of the batch-norm family: kernels in batch_norm_kernels.cuh, launches in
// batch_norm.cuh, op glue in ops/batch_norm.h.
#include <torch/library.h>

#include "cuda/batch_norm.cuh"

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_batch_norm_ops<norm_ext::GpuBatchNorm>(m);
}
