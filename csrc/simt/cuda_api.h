#pragma once
// The CUDA device API as the SIMT host build provides it: the kernels of csrc/cuda compile with the
// host compiler against this header (through cuda/device_api.h) and run on CPU fibers, one per CUDA
// thread, scheduled by csrc/simt/runtime.cpp with CUDA's semantics:
//   - threadIdx / blockIdx / blockDim / gridDim of the running thread;
//   - __syncthreads as a barrier of the block's threads, cluster.sync() of the cluster's;
//   - warp shuffles exchanging values among the lanes their mask names, following the PTX ISA's
//     definition of shfl.sync (segments of `width` lanes, out-of-range lanes read their own value);
//   - shared memory per block, allocated at its exact size, and distributed shared memory of the
//     other blocks of a cluster through map_shared_rank.
// Every entry point is an out-of-line call into the runtime: the runtime's own memory accesses then
// never appear inside a kernel's instrumented code (see checker.cpp).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

namespace norm_ext::simt {

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(const uint3& v) : x(v.x), y(v.y), z(v.z) {}
};

// By value: the kernel's reads of them are then of its own stack, not of the runtime's state, which
// the checked build would otherwise see as global-memory traffic.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

void sync_threads(const std::source_location& site);
void sync_warp(unsigned mask, const std::source_location& site);
[[noreturn]] void trap(const std::source_location& site);

enum class ShuffleMode { kIdx, kUp, kDown, kXor };
// Exchanges 64 bits among the lanes of `mask`. `arg` is the source lane (kIdx), the delta (kUp,
// kDown) or the lane mask (kXor). A source lane outside the mask yields poison (all bits set).
std::uint64_t shuffle(ShuffleMode mode, unsigned mask, std::uint64_t bits, int arg, int width,
                      const std::source_location& site);

// Shared memory of the running thread's block: one array per declaration site, allocated when the
// first thread of the block reaches it, `bytes` long, filled with poison (NaN for floats).
void* static_shared(const void* site, std::size_t bytes, std::size_t align, const char* name);
void* dynamic_shared();

unsigned cluster_block_rank();
unsigned cluster_num_blocks();
void cluster_sync(const std::source_location& site);
void* cluster_map_shared(const void* addr, unsigned rank, const std::source_location& site);

// A vector access of `bytes` at `p` must be aligned to `bytes`, as the GPU requires.
void check_vector_access(const void* p, std::size_t bytes, bool store, const std::source_location& site);

template <typename T>
T shuffle_as(ShuffleMode mode, unsigned mask, T value, int arg, int width, const std::source_location& site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(std::uint64_t), "shuffle of a wide type");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle(mode, mask, bits, arg, width, site);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace norm_ext::simt

using norm_ext::simt::dim3;
using norm_ext::simt::uint3;

#define threadIdx (::norm_ext::simt::thread_idx())
#define blockIdx (::norm_ext::simt::block_idx())
#define blockDim (::norm_ext::simt::block_dim())
#define gridDim (::norm_ext::simt::grid_dim())

// Kernels are exported so that error reports can name them (dladdr); everything else is hidden.
#define __global__ __attribute__((visibility("default"), noinline))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads(const std::source_location& site = std::source_location::current()) {
  norm_ext::simt::sync_threads(site);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const std::source_location& site = std::source_location::current()) {
  norm_ext::simt::sync_warp(mask, site);
}

[[noreturn]] inline void __trap(const std::source_location& site = std::source_location::current()) {
  norm_ext::simt::trap(site);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              const std::source_location& site = std::source_location::current()) {
  return norm_ext::simt::shuffle_as(norm_ext::simt::ShuffleMode::kIdx, mask, var, src_lane, width, site);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const std::source_location& site = std::source_location::current()) {
  return norm_ext::simt::shuffle_as(norm_ext::simt::ShuffleMode::kUp, mask, var, static_cast<int>(delta), width, site);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const std::source_location& site = std::source_location::current()) {
  return norm_ext::simt::shuffle_as(norm_ext::simt::ShuffleMode::kDown, mask, var, static_cast<int>(delta), width,
                                    site);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const std::source_location& site = std::source_location::current()) {
  return norm_ext::simt::shuffle_as(norm_ext::simt::ShuffleMode::kXor, mask, var, lane_mask, width, site);
}

// CUDA's math functions that have no host spelling of the same name.
inline float rsqrtf(float v) {
  return 1.0f / __builtin_sqrtf(v);
}
inline double rsqrt(double v) {
  return 1.0 / __builtin_sqrt(v);
}

namespace cooperative_groups {

// The running block's view of its thread-block cluster (a launch without clusters is a cluster of
// one block per block, as on the GPU).
class cluster_group {
 public:
  unsigned block_rank() const { return norm_ext::simt::cluster_block_rank(); }
  unsigned num_blocks() const { return norm_ext::simt::cluster_num_blocks(); }
  void sync(const std::source_location& site = std::source_location::current()) const {
    norm_ext::simt::cluster_sync(site);
  }
  template <typename T>
  T* map_shared_rank(T* addr, unsigned rank, const std::source_location& site = std::source_location::current()) const {
    return static_cast<T*>(norm_ext::simt::cluster_map_shared(addr, rank, site));
  }
};

inline cluster_group this_cluster() {
  return {};
}

}  // namespace cooperative_groups
