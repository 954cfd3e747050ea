// Included first by every *_kernel_avx2.cpp (see isa.h); no include guard on purpose.
//
// Headers other than at::vec are included before the target pragma, so they compile for the
// baseline ISA: their inline functions (c10 dtypes, dispatch, parallel_for, our Welford helpers) may
// be emitted out of line, and the linker keeps one copy per symbol for the whole library, which
// baseline callers on a CPU without AVX2 then use. at::vec's AVX2 code lives in its own namespace
// (at::vec::AVX2) and our kernels in isa_avx2 with internal linkage, so nothing compiled after the
// pragma is shared with the baseline build.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/welford.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx,avx2,fma,f16c")
// at::vec passes 256-bit vectors by value; GCC notes an ABI change from 2011 that concerns no caller.
#pragma GCC diagnostic ignored "-Wpsabi"
// The pragma does not define the ISA macros; at::vec (CPU_CAPABILITY_AVX2) and sleef's 256-bit
// declarations select their code by them.
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
