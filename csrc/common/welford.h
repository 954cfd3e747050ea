#pragma once
// Welford accumulation and Chan's pairwise merge, shared by host and device code.
//
// Every norm in this library computes variance from (count, mean, m2) so that a row or channel with
// a large offset (mean 1e4, std 1e-2) keeps its variance: E[x^2] - E[x]^2 cancels catastrophically
// in fp32 there. The count is carried as the accumulation type so that merges stay branch-free on the
// GPU; fp32 represents counts exactly up to 2^24 per partial, and partials are merged pairwise.

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NORM_EXT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NORM_EXT_HOST_DEVICE inline
#endif

namespace norm_ext {

template <typename acc_t>
struct WelfordState {
  acc_t count;
  acc_t mean;
  acc_t m2;
};

template <typename acc_t>
NORM_EXT_HOST_DEVICE WelfordState<acc_t> welford_init() {
  return {acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
NORM_EXT_HOST_DEVICE void welford_update(WelfordState<acc_t>& s, acc_t x) {
  s.count += acc_t(1);
  const acc_t delta = x - s.mean;
  s.mean += delta / s.count;
  s.m2 += delta * (x - s.mean);
}

// Chan et al.'s parallel merge. An empty side is handled without a branch on the data: when both
// sides are empty the ratio is forced to zero instead of 0/0.
template <typename acc_t>
NORM_EXT_HOST_DEVICE WelfordState<acc_t> welford_merge(const WelfordState<acc_t>& a, const WelfordState<acc_t>& b) {
  const acc_t count = a.count + b.count;
  const acc_t b_frac = count > acc_t(0) ? b.count / count : acc_t(0);
  const acc_t delta = b.mean - a.mean;
  WelfordState<acc_t> out;
  out.count = count;
  out.mean = a.mean + delta * b_frac;
  out.m2 = a.m2 + b.m2 + delta * delta * a.count * b_frac;
  return out;
}

}  // namespace norm_ext
