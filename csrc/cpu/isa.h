#pragma once
// Runtime choice of the CPU kernels' instruction set. Every kernel family is compiled three times from
// its implementation header, once in each of kernels_{default,avx2,avx512}.cpp (see kernels.h):
//   - for the baseline x86-64 ISA, where at::vec falls back to its portable (scalar-array) Vectorized
//     and the library stays loadable everywhere;
//   - for AVX2+FMA+F16C, where at::vec uses 256-bit intrinsics (1.5-3x the baseline on memory-bound
//     rows);
//   - for AVX-512 F/BW/VL/DQ with BF16 (Zen 4, Sapphire Rapids and later), 512-bit vectors and one
//     instruction for a correctly rounded bf16 narrowing, which on AVX2 costs a dozen (the bf16
//     kernels are bound by their conversions, not by DRAM). CPUs with AVX-512 but without its BF16
//     extension (Skylake-X, Ice Lake) take the AVX2 kernels rather than a fourth build.
// NORM_EXT_CPU_ISA=default or =avx2 caps the choice (to test those kernels, or to rule them out).

#include <cstdlib>
#include <cstring>

namespace norm_ext::cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

inline Isa best_supported_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kDefault;
}

inline Isa detect_isa() {
  static const Isa isa = [] {
    const Isa best = best_supported_isa();
    const char* cap = std::getenv("NORM_EXT_CPU_ISA");
    if (cap != nullptr && std::strcmp(cap, "default") == 0) return Isa::kDefault;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best == Isa::kAvx512) return Isa::kAvx2;
    return best;
  }();
  return isa;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace norm_ext::cpu
