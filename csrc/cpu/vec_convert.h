#pragma once
// Conversions between a storage dtype and the accumulation type for the per-ISA kernel
// implementations. Like them, it is compiled once per instruction set, so the helpers live in that
// ISA's namespace with internal linkage.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE {
namespace {

// src widened to acc_t. at::vec::convert has no vectorized BFloat16/Half -> float overload (only the
// narrowing direction), so its generic element loop would cost more than the reduction itself.
template <typename src_t, typename acc_t>
void widen(const src_t* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else if constexpr (std::is_same_v<src_t, at::BFloat16> || std::is_same_v<src_t, at::Half>) {
    using SrcVec = at::vec::Vectorized<src_t>;
    constexpr int64_t kLanes = at::vec::Vectorized<float>::size();
    int64_t i = 0;
    for (; i + SrcVec::size() <= n; i += SrcVec::size()) {
      const auto [lo, hi] = at::vec::convert_to_float<src_t>(SrcVec::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + kLanes);
    }
    for (; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
  } else {
    at::vec::convert(src, dst, n);
  }
}

template <typename acc_t, typename dst_t>
void narrow(const acc_t* src, dst_t* dst, int64_t n) {
  if constexpr (std::is_same_v<acc_t, dst_t>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// The data as acc_t: the pointer itself when no conversion is needed, else `buf` filled from it.
template <typename src_t, typename acc_t>
const acc_t* as_acc(const src_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return src;
  } else {
    widen(src, buf, n);
    return buf;
  }
}

}  // namespace
}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
