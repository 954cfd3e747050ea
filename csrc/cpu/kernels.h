#pragma once
// The entry points of the CPU kernels, and the one mechanism that compiles each for three instruction
// sets and picks one at run time (isa.h). Every entry point takes its family's argument struct; each
// family's *_kernel_impl.h defines its entry points in namespace NORM_EXT_ISA_NAMESPACE, and
// kernels_{default,avx2,avx512}.cpp include every implementation header once. A new family adds its
// entry points to the list below and one include to each of those three files.

#include "cpu/batch_norm_args.h"
#include "cpu/group_norm_args.h"
#include "cpu/isa.h"
#include "cpu/row_norm_args.h"
#include "cpu/weight_norm_args.h"

// X(entry point, argument struct)
#define NORM_EXT_CPU_KERNELS(X)                              \
  X(row_norm_fwd, RowNormFwdArgs)                            \
  X(row_norm_bwd, RowNormBwdArgs)                            \
  X(batch_norm_stats, BatchNormStatsArgs)                    \
  X(batch_norm_train, BatchNormTrainArgs)                    \
  X(batch_norm_train_backward, BatchNormTrainBackwardArgs)   \
  X(batch_norm_backward_reduce, BatchNormBackwardReduceArgs) \
  X(batch_norm_affine, BatchNormAffineArgs)                  \
  X(group_norm_fwd, GroupNormFwdArgs)                        \
  X(group_norm_bwd, GroupNormBwdArgs)                        \
  X(slice_dots, SliceDotsArgs)                               \
  X(slice_axpby, SliceAxpbyArgs)                             \
  X(weight_norm_rows_fwd, WeightNormRowsFwdArgs)             \
  X(weight_norm_rows_bwd, WeightNormRowsBwdArgs)

#define NORM_EXT_DECLARE_CPU_KERNEL(name, Args) void name(const Args& args);

// Calls the instance of the instruction set that detect_isa() chose.
#define NORM_EXT_DISPATCH_CPU_KERNEL(name, Args) \
  inline void name(const Args& args) {           \
    switch (detect_isa()) {                      \
      case Isa::kAvx512:                         \
        return isa_avx512::name(args);           \
      case Isa::kAvx2:                           \
        return isa_avx2::name(args);             \
      default:                                   \
        return isa_default::name(args);          \
    }                                            \
  }

namespace norm_ext::cpu {
namespace isa_default {
NORM_EXT_CPU_KERNELS(NORM_EXT_DECLARE_CPU_KERNEL)
}
namespace isa_avx2 {
NORM_EXT_CPU_KERNELS(NORM_EXT_DECLARE_CPU_KERNEL)
}
namespace isa_avx512 {
NORM_EXT_CPU_KERNELS(NORM_EXT_DECLARE_CPU_KERNEL)
}

NORM_EXT_CPU_KERNELS(NORM_EXT_DISPATCH_CPU_KERNEL)
}  // namespace norm_ext::cpu

#undef NORM_EXT_DECLARE_CPU_KERNEL
#undef NORM_EXT_DISPATCH_CPU_KERNEL
