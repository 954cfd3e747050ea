#pragma once
// The prelude of the device code in csrc/cuda. That code compiles twice: by nvcc into the CUDA
// backend, and with NORM_EXT_SIMT by the host compiler into the SIMT backend, which runs the same
// kernels on CPU fibers (csrc/simt). The few spellings that differ between the two live here.

#ifdef NORM_EXT_SIMT
#include "simt/cuda_api.h"
#else
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

// Symbols of the two builds of the same code stay apart (both libraries may be loaded in one
// process): everything compiled from csrc/cuda lives in an inline namespace named for its backend.
#ifdef NORM_EXT_SIMT
#define NORM_EXT_GPU_NAMESPACE simt_backend
#else
#define NORM_EXT_GPU_NAMESPACE cuda_backend
#endif

// Thread-block clusters exist from sm_90 on, and in the SIMT backend, which emulates an H200.
#if defined(NORM_EXT_SIMT) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define NORM_EXT_CLUSTER_KERNELS 1
#else
#define NORM_EXT_CLUSTER_KERNELS 0
#endif

// A static shared array: NORM_EXT_SHARED(float, slots, [33]) declares `slots` as float[33] in the
// block's shared memory. The SIMT backend allocates one per block at its exact size (an overrun
// reaches a guard, not a neighbour) and hands each thread a reference to it.
#ifdef NORM_EXT_SIMT
#define NORM_EXT_SHARED(T, name, dims)   \
  static constexpr char name##_site = 0; \
  auto& name = *static_cast<T(*) dims>(::norm_ext::simt::static_shared(&name##_site, sizeof(T dims), alignof(T), #name))
#define NORM_EXT_DYNAMIC_SHARED(name) \
  unsigned char* const name = static_cast<unsigned char*>(::norm_ext::simt::dynamic_shared())
#else
#define NORM_EXT_SHARED(T, name, dims) __shared__ T name dims
#define NORM_EXT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
