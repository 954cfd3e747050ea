#pragma once
// Vector load/store helpers. A 128-bit access is used only when the pointer and the row stride are
// both aligned to it; callers fall back to scalar accesses otherwise, so offset views of a tensor
// (x[:, 1:]) stay correct.

#include <cstdint>

#include "common/welford.h"
#include "cuda/device_api.h"

#ifdef NORM_EXT_SIMT
// The SIMT build checks every vector access for the alignment the GPU needs, and names the caller.
#define NORM_EXT_VECTOR_SITE , const std::source_location& site = std::source_location::current()
#else
#define NORM_EXT_VECTOR_SITE
#endif

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

template <typename T>
constexpr int vec_width_128() {
  return 16 / static_cast<int>(sizeof(T));
}

template <int kBytes>
NORM_EXT_HOST_DEVICE bool is_aligned(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % kBytes == 0;
}

// Every vector access of the kernels goes through these two.
template <typename T, int N>
NORM_EXT_HOST_DEVICE AlignedVector<T, N> load_vector(const T* ptr NORM_EXT_VECTOR_SITE) {
#ifdef NORM_EXT_SIMT
  if constexpr (N > 1) simt::check_vector_access(ptr, sizeof(AlignedVector<T, N>), false, site);
#endif
  return *reinterpret_cast<const AlignedVector<T, N>*>(ptr);
}

template <typename T, int N>
NORM_EXT_HOST_DEVICE void store_vector(T* ptr, const AlignedVector<T, N>& v NORM_EXT_VECTOR_SITE) {
#ifdef NORM_EXT_SIMT
  if constexpr (N > 1) simt::check_vector_access(ptr, sizeof(AlignedVector<T, N>), true, site);
#endif
  *reinterpret_cast<AlignedVector<T, N>*>(ptr) = v;
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
