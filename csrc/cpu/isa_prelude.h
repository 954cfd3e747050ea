// Included first by kernels_avx2.cpp and kernels_avx512.cpp (see kernels.h), after they define
// NORM_EXT_TARGET_AVX2 or NORM_EXT_TARGET_AVX512; no include guard on purpose.
//
// Headers other than at::vec are included before the target pragma, so they compile for the
// baseline ISA: their inline functions (c10 dtypes, dispatch, parallel_for, our Welford helpers) may
// be emitted out of line, and the linker keeps one copy per symbol for the whole library, which
// baseline callers on a CPU without AVX2 then use. at::vec's SIMD code lives in a namespace of its
// capability (at::vec::AVX2, at::vec::AVX512) and our kernels in isa_avx2 / isa_avx512 with internal
// linkage, so nothing compiled after the pragma is shared with another build.
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
#if defined(NORM_EXT_TARGET_AVX512)
#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#elif defined(NORM_EXT_TARGET_AVX2)
#pragma GCC target("avx,avx2,fma,f16c")
#else
#error "define NORM_EXT_TARGET_AVX2 or NORM_EXT_TARGET_AVX512 before including isa_prelude.h"
#endif
// at::vec passes SIMD vectors by value; GCC notes ABI changes from 2011 and 2013 that concern no caller.
#pragma GCC diagnostic ignored "-Wpsabi"
// The pragma does not define the ISA macros; at::vec (CPU_CAPABILITY_*) and sleef's declarations
// select their code by them.
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
#if defined(NORM_EXT_TARGET_AVX512)
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#ifndef __AVX512BF16__
#define __AVX512BF16__ 1
#endif
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
// GCC 12 reports the deliberately undefined operand of _mm512_undefined_ps(), which at::vec's lane
// reductions pass to a shuffle, as maybe used uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#else
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#endif
#endif

#if defined(NORM_EXT_TARGET_AVX512)
#define NORM_EXT_ISA_NAMESPACE isa_avx512
#else
#define NORM_EXT_ISA_NAMESPACE isa_avx2
#endif
