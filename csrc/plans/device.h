#pragma once
// What a launch plan needs to know about a GPU, the checks every launch passes before it runs, and an
// occupancy model. Plain C++ (no CUDA, no torch), so that plans are unit-tested on any machine.
//
// The CUDA build fills DeviceProps from cudaGetDeviceProperties and asks the driver for occupancy;
// the SIMT host build (csrc/simt) uses kH200 and the model below, so that on a CPU the wrappers pick
// the paths an H100/H200 SXM would.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

namespace norm_ext::plans {

struct DeviceProps {
  int sm_count;
  int major;
  int minor;
  int max_threads_per_block;
  int max_threads_per_sm;
  int max_blocks_per_sm;
  int regs_per_sm;
  int reg_alloc_unit;      // registers are allocated per warp in units of this many per thread
  int64_t smem_per_sm;     // shared memory an SM has for blocks
  int64_t smem_per_block;  // without the opt-in attribute
  int64_t smem_per_block_optin;
  int64_t smem_reserved_per_block;  // the driver's share of each resident block
  std::array<int64_t, 3> max_grid;
  int max_cluster_portable;
  int max_cluster_nonportable;
  // SMs per GPC: a cluster's blocks run within one GPC.
  std::array<int, 8> gpc_sms;
};

// H100/H200 SXM (sm_90): 132 SMs in 8 GPCs, 228 KB of shared memory per SM (227 KB per block with the
// opt-in), 64K registers per SM.
inline constexpr DeviceProps kH200{
    /*sm_count=*/132,
    /*major=*/9,
    /*minor=*/0,
    /*max_threads_per_block=*/1024,
    /*max_threads_per_sm=*/2048,
    /*max_blocks_per_sm=*/32,
    /*regs_per_sm=*/65536,
    /*reg_alloc_unit=*/8,
    /*smem_per_sm=*/233472,
    /*smem_per_block=*/49152,
    /*smem_per_block_optin=*/232448,
    /*smem_reserved_per_block=*/1024,
    /*max_grid=*/{2147483647, 65535, 65535},
    /*max_cluster_portable=*/8,
    /*max_cluster_nonportable=*/16,
    /*gpc_sms=*/{18, 18, 18, 18, 16, 16, 14, 14},
};

// What one launch asks for. grid and block are 3-D, cluster is along x only (the only kind the
// kernels use).
struct LaunchShape {
  std::array<int64_t, 3> grid{1, 1, 1};
  std::array<int64_t, 3> block{1, 1, 1};
  int64_t dynamic_smem = 0;
  int64_t cluster = 1;
};

// Per-kernel settings made with cudaFuncSetAttribute.
struct KernelAttributes {
  int64_t max_dynamic_smem = 0;  // 0: not raised, the 48 KB default applies
  bool non_portable_cluster = false;
};

inline int64_t threads_of(const LaunchShape& s) {
  return s.block[0] * s.block[1] * s.block[2];
}

// The reason a launch would fail or misbehave, or "" when it is valid. static_smem is the kernel's
// static shared memory where known (the SIMT build measures it; pass 0 otherwise).
inline std::string launch_error(const LaunchShape& s, const KernelAttributes& attrs, const DeviceProps& d,
                                int64_t static_smem = 0) {
  const auto str = [](int64_t v) { return std::to_string(v); };
  for (int i = 0; i < 3; ++i) {
    if (s.grid[i] <= 0) {
      return "empty grid (" + str(s.grid[0]) + ", " + str(s.grid[1]) + ", " + str(s.grid[2]) +
             "): a wrapper must return before launching on empty input";
    }
    if (s.grid[i] > d.max_grid[i]) {
      return "grid dimension " + std::string(1, "xyz"[i]) + " = " + str(s.grid[i]) + " exceeds the limit " +
             str(d.max_grid[i]);
    }
    if (s.block[i] <= 0) return "empty block dimension " + std::string(1, "xyz"[i]);
  }
  if (s.block[2] > 64) return "block dimension z = " + str(s.block[2]) + " exceeds 64";
  if (threads_of(s) > d.max_threads_per_block) {
    return "block of " + str(threads_of(s)) + " threads exceeds " + str(d.max_threads_per_block);
  }
  if (s.dynamic_smem < 0) return "negative dynamic shared memory";
  const int64_t smem = s.dynamic_smem + static_smem;
  const int64_t smem_limit = std::max(d.smem_per_block, std::min(attrs.max_dynamic_smem, d.smem_per_block_optin));
  if (smem > smem_limit) {
    std::string why = smem > d.smem_per_block_optin ? " (the device's maximum)"
                      : attrs.max_dynamic_smem > 0  ? " (the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize)"
                                                    : " without cudaFuncAttributeMaxDynamicSharedMemorySize";
    return "block needs " + str(smem) + " bytes of shared memory (" + str(static_smem) + " static + " +
           str(s.dynamic_smem) + " dynamic), more than " + str(smem_limit) + why;
  }
  if (s.cluster < 1) return "cluster size " + str(s.cluster) + " is not positive";
  if (s.cluster > 1) {
    if (d.major < 9) return "thread-block clusters need sm_90 or later";
    const int64_t limit = attrs.non_portable_cluster ? d.max_cluster_nonportable : d.max_cluster_portable;
    if (s.cluster > limit) {
      return "cluster of " + str(s.cluster) + " blocks exceeds " + str(limit) +
             (attrs.non_portable_cluster ? "" : " (more needs cudaFuncAttributeNonPortableClusterSizeAllowed)");
    }
    if (s.grid[0] % s.cluster != 0) {
      return "cluster size " + str(s.cluster) + " does not divide grid dimension x = " + str(s.grid[0]);
    }
  }
  return "";
}

// Registers one thread of a kernel holds, as the occupancy model assumes them when nothing better is
// known: 64, which lets 1024 threads share an SM (ptxas reports the real figure; see issue notes).
inline constexpr int kAssumedRegsPerThread = 64;

// Resident blocks per SM for a launch of `threads` threads with `smem` bytes of shared memory each,
// limited by threads, blocks, registers (allocated per warp) and shared memory.
inline int occupancy_blocks_per_sm(const DeviceProps& d, int64_t threads, int64_t smem,
                                   int regs_per_thread = kAssumedRegsPerThread) {
  if (threads <= 0 || threads > d.max_threads_per_block) return 0;
  const int64_t warps = (threads + 31) / 32;
  const int64_t regs_per_warp =
      ((static_cast<int64_t>(regs_per_thread) + d.reg_alloc_unit - 1) / d.reg_alloc_unit) * d.reg_alloc_unit * 32;
  int64_t blocks = std::min<int64_t>(d.max_blocks_per_sm, d.max_threads_per_sm / (warps * 32));
  blocks = std::min<int64_t>(blocks, d.regs_per_sm / (regs_per_warp * warps));
  const int64_t smem_per_block = smem + d.smem_reserved_per_block;
  blocks = std::min<int64_t>(blocks, d.smem_per_sm / smem_per_block);
  return static_cast<int>(std::max<int64_t>(blocks, 0));
}

// Clusters of `cluster` blocks that can be resident at once: a cluster's blocks share one GPC.
inline int occupancy_max_clusters(const DeviceProps& d, int64_t cluster, int64_t threads, int64_t smem,
                                  int regs_per_thread = kAssumedRegsPerThread) {
  const int per_sm = occupancy_blocks_per_sm(d, threads, smem, regs_per_thread);
  if (per_sm == 0 || cluster < 1) return 0;
  int64_t clusters = 0;
  for (const int sms : d.gpc_sms) clusters += static_cast<int64_t>(sms) * per_sm / cluster;
  return static_cast<int>(std::min<int64_t>(clusters, std::numeric_limits<int>::max()));
}

inline constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace norm_ext::plans
