// CUDA backend of the row norms: the kernels are in row_norm_kernels.cuh, their launches in
// row_norm.cuh, the op glue in ops/row_norm.h.
#include <torch/library.h>

#include "cuda/row_norm.cuh"

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_row_norm_ops<norm_ext::GpuRowNorm>(m);
}
