// The CPU kernels for the baseline instruction set (see kernels.h).
#define NORM_EXT_ISA_NAMESPACE isa_default
#include "cpu/kernels.h"

#include "cpu/batch_norm_kernel_impl.h"
#include "cpu/group_norm_kernel_impl.h"
#include "cpu/row_norm_kernel_impl.h"
#include "cpu/weight_norm_kernel_impl.h"
