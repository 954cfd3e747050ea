#pragma once
// Conversions between a storage dtype and the accumulation type for the per-ISA kernel
// implementations. Like them, it is compiled once per instruction set, so the helpers live in that
// ISA's namespace with internal linkage.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

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


// kPairLanes elements, i.e. two acc_t vectors' worth, loaded from src_t and widened. Row loops step
// by pairs so that a bf16/half load or store stays one 256-bit access and each loop carries two
// independent accumulation chains; widening in registers avoids a round trip through a buffer.
template <typename acc_t>
constexpr int64_t kPairLanes = 2 * at::vec::Vectorized<acc_t>::size();

template <typename acc_t, typename src_t>
inline std::pair<at::vec::Vectorized<acc_t>, at::vec::Vectorized<acc_t>> load_pair(const src_t* p) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return {Vec::loadu(p), Vec::loadu(p + Vec::size())};
  } else if constexpr ((std::is_same_v<src_t, at::BFloat16> || std::is_same_v<src_t, at::Half>) &&
                       std::is_same_v<acc_t, float>) {
    const auto [lo, hi] = at::vec::convert_to_float<src_t>(at::vec::Vectorized<src_t>::loadu(p));
    return {lo, hi};
  } else {
    acc_t tmp[kPairLanes<acc_t>];
    for (int64_t i = 0; i < kPairLanes<acc_t>; ++i) tmp[i] = static_cast<acc_t>(p[i]);
    return {Vec::loadu(tmp), Vec::loadu(tmp + Vec::size())};
  }
}

template <typename dst_t, typename acc_t>
inline void store_pair(dst_t* p, const at::vec::Vectorized<acc_t>& lo, const at::vec::Vectorized<acc_t>& hi) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<dst_t, acc_t>) {
    lo.store(p);
    hi.store(p + Vec::size());
  } else if constexpr ((std::is_same_v<dst_t, at::BFloat16> || std::is_same_v<dst_t, at::Half>) &&
                       std::is_same_v<acc_t, float>) {
    at::vec::convert_from_float<dst_t>(lo, hi).store(p);
  } else {
    acc_t tmp[kPairLanes<acc_t>];
    lo.store(tmp);
    hi.store(tmp + Vec::size());
    for (int64_t i = 0; i < kPairLanes<acc_t>; ++i) p[i] = static_cast<dst_t>(tmp[i]);
  }
}

// The pair rounded to dst_t and widened back: what a reader of the stored dst_t values will see.
template <typename dst_t, typename acc_t>
inline std::pair<at::vec::Vectorized<acc_t>, at::vec::Vectorized<acc_t>> round_pair(
    const at::vec::Vectorized<acc_t>& lo, const at::vec::Vectorized<acc_t>& hi) {
  if constexpr (std::is_same_v<dst_t, acc_t>) {
    return {lo, hi};
  } else {
    dst_t tmp[kPairLanes<acc_t>];
    store_pair(tmp, lo, hi);
    return load_pair<acc_t>(tmp);
  }
}

}  // namespace
}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
