// CUDA backend of GroupNorm: kernels in group_norm_kernels.cuh, launches in group_norm.cuh, op glue in
// ops/group_norm.h.
#include <torch/library.h>

#include "cuda/group_norm.cuh"

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_group_norm_ops<norm_ext::GpuGroupNorm>(m);
}
