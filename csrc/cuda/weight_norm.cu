// CUDA backend of weight normalization: kernels and launches in weight_norm.cuh, op glue in
// ops/weight_norm.h.
#include <torch/library.h>

#include "cuda/weight_norm.cuh"

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_weight_norm_ops<norm_ext::GpuWeightNorm>(m);
}
