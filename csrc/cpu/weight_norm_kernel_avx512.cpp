// Weight-normalization CPU kernels for AVX-512 F/BW/VL/DQ with BF16 (see isa.h and weight_norm_kernel_avx2.cpp for the
// order of the includes).
#include "cpu/weight_norm_kernel.h"

#define NORM_EXT_TARGET_AVX512
#include "cpu/isa_prelude.h"

#include "cpu/weight_norm_kernel_impl.h"
