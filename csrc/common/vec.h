#pragma once
// Vector load/store helpers. A 128-bit access is used only when the pointer and the row stride are
// both aligned to it; callers fall back to scalar accesses otherwise, so offset views of a tensor
// (x[:, 1:]) stay correct.

#include <cstdint>

#include "welford.h"

namespace norm_ext {

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

template <typename T, int N>
NORM_EXT_HOST_DEVICE AlignedVector<T, N> load_vector(const T* ptr) {
  return *reinterpret_cast<const AlignedVector<T, N>*>(ptr);
}

template <typename T, int N>
NORM_EXT_HOST_DEVICE void store_vector(T* ptr, const AlignedVector<T, N>& v) {
  *reinterpret_cast<AlignedVector<T, N>*>(ptr) = v;
}

}  // namespace norm_ext
