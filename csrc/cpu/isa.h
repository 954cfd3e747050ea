#pragma once
// Runtime choice of the CPU kernels' instruction set. Each kernel family is compiled twice from one
// implementation header: for the baseline x86-64 ISA, where at::vec falls back to its portable
// (scalar-array) Vectorized, and for AVX2+FMA+F16C, where at::vec uses 256-bit intrinsics. The AVX2
// build is 1.5-3x faster on memory-bound rows; the baseline keeps the library loadable everywhere.
// NORM_EXT_CPU_ISA=default forces the baseline kernels (to test them, or to rule them out).

#include <cstdlib>
#include <cstring>

namespace norm_ext::cpu {

enum class Isa { kDefault, kAvx2 };

inline Isa detect_isa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("NORM_EXT_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return Isa::kDefault;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      return Isa::kAvx2;
    }
#endif
    return Isa::kDefault;
  }();
  return isa;
}

}  // namespace norm_ext::cpu
