// The CPU kernels for AVX2+FMA+F16C (see kernels.h and isa.h). The includes are in three blocks, in this
// order: the entry points first (their inline dispatchers are shared with the baseline build and
// must compile for the baseline ISA), then the prelude that switches the ISA, then the kernels.
#include "cpu/kernels.h"

#define NORM_EXT_TARGET_AVX2
#include "cpu/isa_prelude.h"

#include "cpu/batch_norm_kernel_impl.h"
#include "cpu/group_norm_kernel_impl.h"
#include "cpu/row_norm_kernel_impl.h"
#include "cpu/weight_norm_kernel_impl.h"
