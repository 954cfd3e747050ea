// Weight-normalization CPU kernels for AVX2+FMA+F16C (see isa.h and row_norm_kernel_avx2.cpp for the
// order of the includes).
#include "cpu/weight_norm_kernel.h"

#define NORM_EXT_TARGET_AVX2
#include "cpu/isa_prelude.h"

#include "cpu/weight_norm_kernel_impl.h"
