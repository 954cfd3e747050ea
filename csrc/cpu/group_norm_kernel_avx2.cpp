// GroupNorm CPU kernels for AVX2+FMA+F16C (see isa.h). The includes are in three blocks, in this
// order: the entry-point header first (its inline dispatcher is shared with the baseline build and
// must compile for the baseline ISA), then the prelude that switches the ISA, then the kernels.
#include "cpu/group_norm_kernel.h"

#define NORM_EXT_TARGET_AVX2
#include "cpu/isa_prelude.h"

#include "cpu/group_norm_kernel_impl.h"
