#pragma once
// The op families of csrc/cuda as the SIMT backend serves them: each registers its ops' GPU backend
// (compiled for the host) on a library for the CPU dispatch key (see module.cpp).

#include <torch/library.h>

namespace norm_ext::simt {

void register_row_norm(torch::Library& m);
void register_batch_norm(torch::Library& m);
void register_group_norm(torch::Library& m);
void register_power_norm(torch::Library& m);
void register_weight_norm(torch::Library& m);

}  // namespace norm_ext::simt
