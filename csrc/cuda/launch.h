#pragma once
// The host side of a GPU backend, shared by the CUDA build and the SIMT build of csrc/cuda: the
// device the backend serves, its guard and stream, device properties and occupancy queries, kernel
// attributes, and the one launcher through which every kernel starts. Every launch is validated
// against the device's limits first (plans::launch_error), so a bad plan is a clear error, never a
// truncated grid or a failed launch discovered later.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "cuda/device_api.h"
#include "ops/common.h"
#include "plans/device.h"

#ifdef NORM_EXT_SIMT
#include "simt/runtime.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

#ifdef NORM_EXT_SIMT
// The SIMT backend serves CPU tensors.
inline constexpr c10::DeviceType kGpuDeviceType = c10::DeviceType::CPU;
using Stream = const void*;
using DeviceGuard = NoDeviceGuard;
inline Stream current_stream() {
  return nullptr;
}
inline const plans::DeviceProps& device_props() {
  return plans::kH200;
}
#else
inline constexpr c10::DeviceType kGpuDeviceType = c10::DeviceType::CUDA;
using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;
inline Stream current_stream() {
  return at::cuda::getCurrentCUDAStream();
}
// The current device's properties, read once per device.
inline const plans::DeviceProps& device_props() {
  static std::mutex mutex;
  static std::map<int, plans::DeviceProps> cache;
  const int device = at::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  const cudaDeviceProp& p = *at::cuda::getDeviceProperties(device);
  plans::DeviceProps d = plans::kH200;
  d.sm_count = p.multiProcessorCount;
  d.major = p.major;
  d.minor = p.minor;
  d.max_threads_per_block = p.maxThreadsPerBlock;
  d.max_threads_per_sm = p.maxThreadsPerMultiProcessor;
  d.max_blocks_per_sm = p.maxBlocksPerMultiProcessor;
  d.regs_per_sm = p.regsPerMultiprocessor;
  d.smem_per_sm = static_cast<int64_t>(p.sharedMemPerMultiprocessor);
  d.smem_per_block = static_cast<int64_t>(p.sharedMemPerBlock);
  d.smem_per_block_optin = static_cast<int64_t>(p.sharedMemPerBlockOptin);
  d.smem_reserved_per_block = static_cast<int64_t>(p.reservedSharedMemPerBlock);
  d.max_grid = {p.maxGridSize[0], p.maxGridSize[1], p.maxGridSize[2]};
  return cache.emplace(device, d).first->second;
}
#endif

// Kernel attributes this library sets, recorded for the launch checks.
#ifdef NORM_EXT_SIMT
inline plans::KernelAttributes kernel_attributes(const void* kernel) {
  return simt::kernel_attributes(kernel);
}
inline void record_kernel_attributes(const void* kernel, const plans::KernelAttributes& attrs) {
  simt::set_kernel_attributes(kernel, attrs);
}
#else
inline std::mutex& kernel_attribute_mutex() {
  static std::mutex mutex;
  return mutex;
}
inline std::map<const void*, plans::KernelAttributes>& kernel_attribute_table() {
  static std::map<const void*, plans::KernelAttributes> table;
  return table;
}
inline plans::KernelAttributes kernel_attributes(const void* kernel) {
  const std::lock_guard<std::mutex> lock(kernel_attribute_mutex());
  const auto it = kernel_attribute_table().find(kernel);
  return it == kernel_attribute_table().end() ? plans::KernelAttributes{} : it->second;
}
inline void record_kernel_attributes(const void* kernel, const plans::KernelAttributes& attrs) {
  const std::lock_guard<std::mutex> lock(kernel_attribute_mutex());
  kernel_attribute_table()[kernel] = attrs;
}
#endif

// Allows clusters of up to 16 blocks for `kernel`; false where the device refuses.
inline bool allow_non_portable_clusters(const void* kernel) {
  plans::KernelAttributes attrs = kernel_attributes(kernel);
  if (attrs.non_portable_cluster) return true;
#ifndef NORM_EXT_SIMT
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
#endif
  attrs.non_portable_cluster = true;
  record_kernel_attributes(kernel, attrs);
  return true;
}

// An occupancy answer cached per device, kernel and the query's two numbers, so that a launch makes
// no driver query after the first of its shape (the row norms ask on every call). Each call site's
// Query is its own lambda type, hence its own cache.
template <typename Query>
int cached_occupancy(const void* kernel, int64_t a, int64_t b, Query query) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int64_t, int64_t>, int> cache;
#ifdef NORM_EXT_SIMT
  const int device = 0;
#else
  const int device = at::cuda::current_device();
#endif
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, kernel, a, b);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int value = query();
  cache.emplace(key, value);
  return value;
}

// Resident blocks of `kernel` per SM at this block size and dynamic shared memory.
inline int max_active_blocks_per_sm(const void* kernel, int threads, int64_t smem) {
  return cached_occupancy(kernel, threads, smem, [&] {
#ifdef NORM_EXT_SIMT
    return plans::occupancy_blocks_per_sm(device_props(), threads, smem);
#else
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, static_cast<size_t>(smem)));
    return blocks;
#endif
  });
}

// Clusters of `blocks` blocks of `kernel` that fit on the device at once; 0 when it cannot launch
// them (no sm_90 code in the build, a refused non-portable size, or a shape that does not fit).
inline int max_active_clusters(const void* kernel, int blocks, int threads) {
  return cached_occupancy(kernel, blocks, threads, [&] {
    const bool allowed = blocks <= device_props().max_cluster_portable || allow_non_portable_clusters(kernel);
#ifdef NORM_EXT_SIMT
    return allowed ? plans::occupancy_max_clusters(device_props(), blocks, threads, 0) : 0;
#else
    // The kernel's code for this device may lack the cluster path: the build may target sm_80 only,
    // and a GPU running JIT-compiled sm_80 PTX reports major 9 but has no such code.
    cudaFuncAttributes attrs{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = blocks;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(threads);
    config.attrs = &attr;
    config.numAttrs = 1;
    int clusters = 0;
    // A shape the device cannot schedule answers with an error rather than a zero.
    if (!allowed || attrs.ptxVersion < 90 || cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
      (void)cudaGetLastError();
      clusters = 0;
    }
    return clusters;
#endif
  });
}

// A launch's shape from its grid and block sizes; cluster blocks along x.
inline plans::LaunchShape launch_shape(std::array<int64_t, 3> grid, std::array<int64_t, 3> block,
                                       int64_t dynamic_smem = 0, int64_t cluster = 1) {
  return {grid, block, dynamic_smem, cluster};
}

inline plans::LaunchShape launch_shape(int64_t grid, int64_t block, int64_t dynamic_smem = 0, int64_t cluster = 1) {
  return {{grid, 1, 1}, {block, 1, 1}, dynamic_smem, cluster};
}

// Starts `kernel` with `args` as `shape` on `stream`. The SIMT backend runs it to completion before
// returning and throws what its checkers found.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), const plans::LaunchShape& shape, Stream stream, Args&&... args) {
  const void* key = reinterpret_cast<const void*>(kernel);
#ifdef NORM_EXT_SIMT
  (void)stream;
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> args;
  };
  const Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  simt::run_launch(
      key, shape,
      [](const void* p) {
        const Call& c = *static_cast<const Call*>(p);
        std::apply(c.kernel, c.args);
      },
      &call, sizeof(call));
#else
  const std::string err = plans::launch_error(shape, kernel_attributes(key), device_props());
  TORCH_CHECK(err.empty(), "norm_ext: invalid kernel launch: ", err);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(shape.cluster);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(shape.grid[0]), static_cast<unsigned>(shape.grid[1]),
                        static_cast<unsigned>(shape.grid[2]));
  config.blockDim = dim3(static_cast<unsigned>(shape.block[0]), static_cast<unsigned>(shape.block[1]),
                         static_cast<unsigned>(shape.block[2]));
  config.dynamicSmemBytes = static_cast<size_t>(shape.dynamic_smem);
  config.stream = stream;
  config.attrs = shape.cluster > 1 ? &attr : nullptr;
  config.numAttrs = shape.cluster > 1 ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
#endif
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
