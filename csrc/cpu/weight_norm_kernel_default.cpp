// Weight-normalization CPU kernels for the baseline instruction set (see isa.h).
#define NORM_EXT_ISA_NAMESPACE isa_default
#include "cpu/weight_norm_kernel_impl.h"
