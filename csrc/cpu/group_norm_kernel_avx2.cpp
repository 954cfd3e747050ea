// GroupNorm CPU kernels for AVX2+FMA+F16C (see isa.h). The target pragma must precede every include so
// that the intrinsics compile; the pragma does not define the ISA macros, so they are set by hand for
// at::vec (CPU_CAPABILITY_AVX2 selects its 256-bit implementation) and for sleef's 256-bit
// declarations. isa.h only calls into this translation unit on CPUs that report those features.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx,avx2,fma,f16c")
// at::vec passes 256-bit vectors by value; GCC notes an ABI change from 2011 that concerns no caller.
#pragma GCC diagnostic ignored "-Wpsabi"
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#endif
#define NORM_EXT_ISA_NAMESPACE isa_avx2
#include "cpu/group_norm_kernel_impl.h"
