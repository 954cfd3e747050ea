#pragma once
// Vector helpers of the per-ISA kernel implementations: conversions between a storage dtype and the
// accumulation type, lane sums and streaming stores. Like the kernels, it is compiled once per
// instruction set, so the helpers live in that ISA's namespace with internal linkage.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <sys/mman.h>
#include <unistd.h>

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

// The sum of a vector's lanes.
template <typename acc_t>
acc_t reduce_lanes(const at::vec::Vectorized<acc_t>& v) {
  using Vec = at::vec::Vectorized<acc_t>;
  return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, v);
}

// kPairLanes elements, i.e. two acc_t vectors' worth, loaded from src_t and widened. Row loops step
// by pairs so that a bf16/half load or store stays one full-width access (256-bit, or 512-bit on
// AVX-512) and each loop carries two independent accumulation chains; widening in registers avoids
// a round trip through a buffer.
template <typename acc_t>
constexpr int64_t kPairLanes = 2 * at::vec::Vectorized<acc_t>::size();

// The sum over [begin, end) of a per-element term, in four independent accumulation chains: with
// one, a reduction waits on the add/FMA latency instead of the loads. add_pair(i, lo, hi) adds the
// terms of elements [i, i + kPairLanes) to two vector accumulators; scalar_term(i) is element i's
// term, for the tail.
template <typename acc_t, typename AddPair, typename ScalarTerm>
acc_t sum_four_chains(int64_t begin, int64_t end, const AddPair& add_pair, const ScalarTerm& scalar_term) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kStep = kPairLanes<acc_t>;
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t i = begin;
  for (; i + 2 * kStep <= end; i += 2 * kStep) {
    add_pair(i, a0, a1);
    add_pair(i + kStep, a2, a3);
  }
  for (; i + kStep <= end; i += kStep) add_pair(i, a0, a1);
  acc_t s = reduce_lanes<acc_t>((a0 + a1) + (a2 + a3));
  for (; i < end; ++i) s += scalar_term(i);
  return s;
}

// The same over [0, n) with the partial sums closed every `chunk` elements, so that rounding error
// grows with chunk / lanes + n / chunk rather than with n.
template <typename acc_t, typename AddPair, typename ScalarTerm>
acc_t chunked_sum_four_chains(int64_t n, int64_t chunk, const AddPair& add_pair, const ScalarTerm& scalar_term) {
  acc_t total = 0;
  for (int64_t start = 0; start < n; start += chunk) {
    total += sum_four_chains<acc_t>(start, std::min(n, start + chunk), add_pair, scalar_term);
  }
  return total;
}

// On AVX2 and AVX-512 the 16-bit conversions are spelled with ATen's raw-register helpers: going through
// convert_to_float / convert_from_float (which return a tuple of Vectorized) left GCC storing every
// converted vector to the stack and never reading it back, and in a loop bound by its output stores
// those dead stores took store-buffer slots from the real ones.
template <typename acc_t, typename src_t>
inline std::pair<at::vec::Vectorized<acc_t>, at::vec::Vectorized<acc_t>> load_pair(const src_t* p) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return {Vec::loadu(p), Vec::loadu(p + Vec::size())};
#if defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (std::is_same_v<src_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    const auto* q = reinterpret_cast<const __m128i*>(p);
    __m256 lo, hi;
    at::vec::cvtbf16_fp32(_mm_loadu_si128(q), lo);
    at::vec::cvtbf16_fp32(_mm_loadu_si128(q + 1), hi);
    return {Vec(lo), Vec(hi)};
  } else if constexpr (std::is_same_v<src_t, at::Half> && std::is_same_v<acc_t, float>) {
    const auto* q = reinterpret_cast<const __m128i*>(p);
    return {Vec(_mm256_cvtph_ps(_mm_loadu_si128(q))), Vec(_mm256_cvtph_ps(_mm_loadu_si128(q + 1)))};
#elif defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (std::is_same_v<src_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    const auto* q = reinterpret_cast<const __m256i*>(p);
    __m512 lo, hi;
    at::vec::cvtbf16_fp32(_mm256_loadu_si256(q), lo);
    at::vec::cvtbf16_fp32(_mm256_loadu_si256(q + 1), hi);
    return {Vec(lo), Vec(hi)};
  } else if constexpr (std::is_same_v<src_t, at::Half> && std::is_same_v<acc_t, float>) {
    const auto* q = reinterpret_cast<const __m256i*>(p);
    return {Vec(_mm512_cvtph_ps(_mm256_loadu_si256(q))), Vec(_mm512_cvtph_ps(_mm256_loadu_si256(q + 1)))};
#endif
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

#if defined(CPU_CAPABILITY_AVX512)
// 32 floats rounded to bf16 (to nearest even, NaN kept NaN) by vcvtne2ps2bf16: one instruction where
// the integer rounding at::vec spells (add the rounding bias, shift, blend NaNs back in, pack) takes
// a dozen, which bound the bf16 kernels rather than DRAM. The instruction flushes fp32 subnormals
// (|v| < 1.2e-38) to zero, so a pair holding one (found by vfpclassps, rarely) takes the integer
// rounding instead, which c10::BFloat16 and the other instruction sets' kernels match.
inline __m512i narrow_bf16(const __m512& lo, const __m512& hi) {
  constexpr int kSubnormal = 0x20;
  // kortest, not an OR of the masks moved to general registers, which GCC spells in three more instructions.
  if (C10_UNLIKELY(
          !_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, kSubnormal), _mm512_fpclass_ps_mask(hi, kSubnormal)))) {
    return at::vec::cvtfp32_bf16(lo, hi);
  }
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}
#endif

template <typename dst_t, typename acc_t>
inline void store_pair(dst_t* p, const at::vec::Vectorized<acc_t>& lo, const at::vec::Vectorized<acc_t>& hi) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<dst_t, acc_t>) {
    lo.store(p);
    hi.store(p + Vec::size());
#if defined(CPU_CAPABILITY_AVX2)
  } else if constexpr (std::is_same_v<dst_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(lo, hi));
  } else if constexpr (std::is_same_v<dst_t, at::Half> && std::is_same_v<acc_t, float>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_fp16(lo, hi));
#elif defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (std::is_same_v<dst_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    _mm512_storeu_si512(p, narrow_bf16(lo, hi));
  } else if constexpr (std::is_same_v<dst_t, at::Half> && std::is_same_v<acc_t, float>) {
    _mm512_storeu_si512(p, at::vec::cvtfp32_fp16(lo, hi));
#endif
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

// A kernel that reads a row (a group, a plane) from DRAM and then runs its later passes from L1/L2
// leaves DRAM idle during those passes; their last pass therefore pulls the next row of the same
// work item into L2, so that its first pass does not wait for DRAM.
template <typename T>
inline void prefetch_l2(const T* p) {
  __builtin_prefetch(p, 0, 2);
}

// prefetch_l2 of every cache line of [p, p + n); for a few lines at a time, interleaved with work,
// since a core keeps only a few dozen misses in flight and drops the prefetches beyond them.
template <typename T>
inline void prefetch_l2_span(const T* p, int64_t n) {
  constexpr int64_t kLine = 64;
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += kLine) prefetch_l2(bytes + off);
}

// Non-temporal stores, where this instruction set has them. A large output that nobody reads back
// soon then goes to DRAM without first being read into the cache for ownership, which is a third of
// the DRAM traffic of a kernel that reads x once and writes y once; glibc's memcpy does the same
// above a cache-sized threshold, so without them no kernel reaches the copy bandwidth.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kStreamingStores = true;
constexpr int64_t kStreamAlignBytes = 64;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kStreamingStores = true;
constexpr int64_t kStreamAlignBytes = 32;
#else
constexpr bool kStreamingStores = false;
constexpr int64_t kStreamAlignBytes = 1;
#endif

// The last-level cache one core can use. sysconf reports the whole package's L3, but on chiplet
// CPUs a core sees only its own complex's share (a VM here reports 256 MiB for 32 MiB per complex),
// hence the cap.
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    constexpr int64_t kMiB = int64_t(1) << 20;
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return std::clamp<int64_t>(l3 > 0 ? static_cast<int64_t>(l3) : 32 * kMiB, 4 * kMiB, 32 * kMiB);
  }();
  return bytes;
}

// Whether an output of `elements` values at p should be written with non-temporal stores. Only large outputs
// qualify: from half the last-level cache up, the pass's input (at least as large) and its output
// together fill the cache, which then could not keep the output anyway (measured at 24.5 MB, bf16
// BatchNorm: 1.05-1.23x over ordinary stores). And only memory that is already mapped in: a fresh
// allocation (torch's CPU allocator maps large blocks anew on every call) is zeroed by the kernel
// page by page on first touch, through the cache, so ordinary stores then hit lines that are
// already cached, whereas streaming stores would have to evict those dirty lines first (measured:
// 10% slower than ordinary stores there, 15% faster on reused memory).
template <typename T>
inline bool should_stream(const T* p, int64_t elements) {
  if (!kStreamingStores) return false;
  const int64_t bytes = elements * static_cast<int64_t>(sizeof(T));
  if (2 * bytes < last_level_cache_bytes()) return false;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  // The last page: an allocator that recycles a block has touched all of it, a fresh mapping none.
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes) - 1) & ~(page - 1);
  unsigned char resident = 0;
  return mincore(reinterpret_cast<void*>(last), page, &resident) == 0 && (resident & 1) != 0;
}

// Leading elements of p to store normally before p + k is aligned for streaming (at most n).
template <typename T>
inline int64_t elements_before_stream_alignment(const T* p, int64_t n) {
  const auto misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % kStreamAlignBytes);
  if (misalign == 0) return 0;
  if (misalign % static_cast<int64_t>(sizeof(T)) != 0) return n;  // never aligns: store it all normally
  return std::min(n, (kStreamAlignBytes - misalign) / static_cast<int64_t>(sizeof(T)));
}

// store_pair with non-temporal stores; p must be kStreamAlignBytes-aligned.
template <typename dst_t, typename acc_t>
inline void stream_pair(dst_t* p, const at::vec::Vectorized<acc_t>& lo, const at::vec::Vectorized<acc_t>& hi) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<dst_t, float> && std::is_same_v<acc_t, float>) {
    _mm256_stream_ps(p, lo);
    _mm256_stream_ps(p + 8, hi);
    return;
  } else if constexpr (std::is_same_v<dst_t, double> && std::is_same_v<acc_t, double>) {
    _mm256_stream_pd(p, lo);
    _mm256_stream_pd(p + 4, hi);
    return;
  } else if constexpr (std::is_same_v<dst_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(lo, hi));
    return;
  } else if constexpr (std::is_same_v<dst_t, at::Half> && std::is_same_v<acc_t, float>) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_fp16(lo, hi));
    return;
  }
#elif defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<dst_t, float> && std::is_same_v<acc_t, float>) {
    _mm512_stream_ps(p, lo);
    _mm512_stream_ps(p + 16, hi);
    return;
  } else if constexpr (std::is_same_v<dst_t, double> && std::is_same_v<acc_t, double>) {
    _mm512_stream_pd(p, lo);
    _mm512_stream_pd(p + 8, hi);
    return;
  } else if constexpr (std::is_same_v<dst_t, at::BFloat16> && std::is_same_v<acc_t, float>) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), narrow_bf16(lo, hi));
    return;
  } else if constexpr (std::is_same_v<dst_t, at::Half> && std::is_same_v<acc_t, float>) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), at::vec::cvtfp32_fp16(lo, hi));
    return;
  }
#endif
  store_pair(p, lo, hi);
}

// Orders this thread's streamed stores before whatever the caller does next (they are weakly ordered).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// out[i] = value of element i over [0, n): pair_value(i) gives elements [i, i + kPairLanes) as two
// vectors, scalar_value(i) one element. With stream, the aligned body goes out through non-temporal
// stores. Always inlined, so that what the lambdas capture lives in the caller's registers rather
// than behind the closure (GCC had left it out of line in the GroupNorm kernels).
template <typename acc_t, typename out_t, typename PairValue, typename ScalarValue>
C10_ALWAYS_INLINE void write_span(out_t* out, int64_t n, bool stream, const PairValue& pair_value,
                                  const ScalarValue& scalar_value) {
  constexpr int64_t kPair = kPairLanes<acc_t>;
  int64_t i = 0;
  if (stream) {
    for (const int64_t head = elements_before_stream_alignment(out, n); i < head; ++i) {
      out[i] = static_cast<out_t>(scalar_value(i));
    }
    for (; i + kPair <= n; i += kPair) {
      const auto [lo, hi] = pair_value(i);
      stream_pair(out + i, lo, hi);
    }
  } else {
    for (; i + kPair <= n; i += kPair) {
      const auto [lo, hi] = pair_value(i);
      store_pair(out + i, lo, hi);
    }
  }
  for (; i < n; ++i) out[i] = static_cast<out_t>(scalar_value(i));
}

}  // namespace
}  // namespace norm_ext::cpu::NORM_EXT_ISA_NAMESPACE
