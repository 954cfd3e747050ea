// Kernels with planted bugs, one per checker of the SIMT backend, and their correct twins: the tests
// (tests/test_simt_checkers.py) run each and assert that the bug is reported, naming the kernel, the
// block, the thread and the address, and that the twin runs clean, so a checker that stops catching
// its bug fails them. And probes of the runtime's semantics (tests/test_simt_runtime.py): shuffles,
// thread and block indices, clusters, schedules.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/vec.h"
#include "cuda/launch.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {
namespace selftest {

constexpr int kThreads = 64;

// Each thread stores its value in shared memory, then reads its neighbour's: the barrier between
// the two is what the bug leaves out.
template <bool kBarrier>
__global__ void neighbour_exchange(const float* in, float* out) {
  NORM_EXT_SHARED(float, slots, [kThreads]);
  const unsigned t = threadIdx.x;
  slots[t] = 0.0f;
  __syncthreads();
  slots[t] = in[t];
  if (kBarrier) __syncthreads();
  out[t] = slots[(t + 1) % kThreads];
}

// Copies n values; the bug's loop bound is i <= n.
template <bool kOffByOne>
__global__ void copy_tail(const float* in, float* out, int64_t n) {
  const int64_t end = kOffByOne ? n + 1 : n;
  for (int64_t i = threadIdx.x; i < end; i += blockDim.x) out[i] = in[i];
}

// Stages a block's values in a shared array of blockDim elements; the bug writes one past it.
template <bool kOffByOne>
__global__ void shared_tail(const float* in, float* out) {
  NORM_EXT_SHARED(float, stage, [kThreads]);
  const unsigned t = threadIdx.x;
  stage[kOffByOne ? t + 1 : t] = in[t];
  __syncthreads();
  out[t] = stage[kOffByOne ? t + 1 : t];
}

// A butterfly sum over a warp with a full mask, launched with a block of 48 threads whose second
// warp has 16 lanes (the bug), or 64.
__global__ void warp_sum(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, mask);
  out[threadIdx.x] = v;
}

// A barrier inside a branch only some threads take.
template <bool kDivergent>
__global__ void branch_barrier(float* out) {
  NORM_EXT_SHARED(float, slots, [kThreads]);
  slots[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (!kDivergent || threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = slots[threadIdx.x];
}

// Every thread writes the block's total to out[0] (the bug) instead of thread 0 alone.
template <bool kEveryThread>
__global__ void block_total(const float* in, float* out) {
  NORM_EXT_SHARED(float, slots, [kThreads]);
  slots[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  if (kEveryThread || threadIdx.x == 0) {
    float total = 0;
    for (int i = 0; i < kThreads; ++i) total += slots[i];
    out[0] = total;
  }
}

// Two blocks of a cluster swap a value through distributed shared memory. Without the final
// cluster.sync() (the bug) a block may exit while its peer still reads its shared memory.
template <bool kFinalSync>
__global__ void cluster_swap(const float* in, float* out) {
  NORM_EXT_SHARED(float, mine, [1]);
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  if (threadIdx.x == 0) mine[0] = in[blockIdx.x];
  cluster.sync();
  const unsigned peer = cluster.block_rank() ^ 1u;
  if (threadIdx.x == 0) out[blockIdx.x] = *cluster.map_shared_rank(&mine[0], peer);
  if (kFinalSync) cluster.sync();
}

// A float4 load of in + offset: offset 1 misaligns it.
__global__ void vector_load(const float* in, float* out, int offset) {
  const AlignedVector<float, 4> v = load_vector<float, 4>(in + offset + 4 * threadIdx.x);
  out[threadIdx.x] = v.val[0] + v.val[1] + v.val[2] + v.val[3];
}

// Access patterns whose coalescing and balance the checked build's launch log must see: each thread
// copies in[t * stride] (stride 8: a warp's 32 floats in 32 sectors), and in `lopsided_copy` block 0
// copies what the other blocks of the grid leave out.
__global__ void strided_copy(const float* in, float* out, int stride) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  out[t] = in[t * stride];
}

__global__ void lopsided_copy(const float* in, float* out, int64_t n) {
  if (blockIdx.x != 0) return;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = in[i];
}

// Reads a shared slot that no thread wrote (the bug), or one that thread 0 wrote before the barrier.
template <bool kWritten>
__global__ void read_slot(float* out) {
  NORM_EXT_SHARED(float, slots, [2]);
  if (kWritten && threadIdx.x == 0) slots[1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = slots[1];
}

// Half of a warp waits at a shuffle with a full mask while the other half waits at a barrier.
__global__ void shuffle_against_barrier(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

// A device-side assertion that fails.
__global__ void trapping(float* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1.0f;
}

// A kernel with nothing to do, for the launch checks.
__global__ void idle() {}

// ----- probes ---------------------------------------------------------------------------------------

// Lane l holds 100 + l; the lanes of `mask` shuffle it (mode 0: idx, 1: up, 2: down, 3: xor). arg < 0
// with idx: each lane reads lane (7 * l + 3) % 32. Lanes outside the mask write -2.
__global__ void shuffle_probe(int mode, unsigned mask, int arg, int width, long long* out) {
  const unsigned lane = threadIdx.x;
  long long v = 100 + lane;
  if (((mask >> lane) & 1u) == 0) {
    out[lane] = -2;
    return;
  }
  switch (mode) {
    case 0:
      v = __shfl_sync(mask, v, arg < 0 ? static_cast<int>((7 * lane + 3) % 32) : arg, width);
      break;
    case 1:
      v = __shfl_up_sync(mask, v, static_cast<unsigned>(arg), width);
      break;
    case 2:
      v = __shfl_down_sync(mask, v, static_cast<unsigned>(arg), width);
      break;
    default:
      v = __shfl_xor_sync(mask, v, arg, width);
      break;
  }
  out[lane] = v;
}

// Each thread writes its block and thread index (6 values) at its place in the grid.
__global__ void index_probe(long long* out) {
  const long long block = (static_cast<long long>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const long long thread = (static_cast<long long>(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  long long* slot = out + 6 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  slot[0] = blockIdx.x;
  slot[1] = blockIdx.y;
  slot[2] = blockIdx.z;
  slot[3] = threadIdx.x;
  slot[4] = threadIdx.y;
  slot[5] = threadIdx.z;
}

// Block b of a cluster publishes 1000 * rank + b in its shared memory; after a cluster barrier its
// thread r reads rank r's value through distributed shared memory.
__global__ void cluster_probe(long long* out) {
  NORM_EXT_SHARED(long long, mine, [1]);
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  if (threadIdx.x == 0) mine[0] = 1000LL * cluster.block_rank() + blockIdx.x;
  cluster.sync();
  if (threadIdx.x < cluster.num_blocks()) {
    out[blockIdx.x * cluster.num_blocks() + threadIdx.x] = *cluster.map_shared_rank(&mine[0], threadIdx.x);
  }
  cluster.sync();
}

// Every thread writes its index to one slot between two barriers, then reads the slot: the value left
// is the last writer's, so it shows the schedule (and the checked build reports the race).
__global__ void schedule_probe(long long* out) {
  NORM_EXT_SHARED(long long, last, [1]);
  if (threadIdx.x == 0) last[0] = -1;
  __syncthreads();
  last[0] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = last[0];
}

// `count` block barriers: the cost of a barrier of blockDim threads.
__global__ void barrier_probe(int count) {
  for (int i = 0; i < count; ++i) __syncthreads();
}

struct Buffers {
  std::unique_ptr<float[]> in;
  std::unique_ptr<float[]> out;
  explicit Buffers(int64_t n) : in(new float[n]), out(new float[n]) {
    for (int64_t i = 0; i < n; ++i) in[i] = static_cast<float>(i % 7);
  }
};

using Case = std::function<void()>;

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> all = [] {
    std::map<std::string, Case> c;
    const Stream s = nullptr;
    c["missing_barrier"] = [s] {
      Buffers b(kThreads);
      launch(neighbour_exchange<false>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["missing_barrier_fixed"] = [s] {
      Buffers b(kThreads);
      launch(neighbour_exchange<true>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["global_tail_off_by_one"] = [s] {
      Buffers b(100);
      launch(copy_tail<true>, launch_shape(1, kThreads), s, b.in.get(), b.out.get(), int64_t{100});
    };
    c["global_tail_fixed"] = [s] {
      Buffers b(100);
      launch(copy_tail<false>, launch_shape(1, kThreads), s, b.in.get(), b.out.get(), int64_t{100});
    };
    c["shared_tail_off_by_one"] = [s] {
      Buffers b(kThreads);
      launch(shared_tail<true>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["shared_tail_fixed"] = [s] {
      Buffers b(kThreads);
      launch(shared_tail<false>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["partial_warp_full_mask"] = [s] {
      Buffers b(48);
      launch(warp_sum, launch_shape(1, 48), s, b.in.get(), b.out.get());
    };
    c["full_warps_full_mask"] = [s] {
      Buffers b(kThreads);
      launch(warp_sum, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["divergent_barrier"] = [s] {
      Buffers b(kThreads);
      launch(branch_barrier<true>, launch_shape(1, kThreads), s, b.out.get());
    };
    c["uniform_barrier"] = [s] {
      Buffers b(kThreads);
      launch(branch_barrier<false>, launch_shape(1, kThreads), s, b.out.get());
    };
    c["write_write_race"] = [s] {
      Buffers b(kThreads);
      launch(block_total<true>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["single_writer"] = [s] {
      Buffers b(kThreads);
      launch(block_total<false>, launch_shape(1, kThreads), s, b.in.get(), b.out.get());
    };
    c["exited_cluster_peer"] = [s] {
      Buffers b(2);
      launch(cluster_swap<false>, launch_shape(2, 32, 0, 2), s, b.in.get(), b.out.get());
    };
    c["cluster_final_sync"] = [s] {
      Buffers b(2);
      launch(cluster_swap<true>, launch_shape(2, 32, 0, 2), s, b.in.get(), b.out.get());
    };
    c["misaligned_float4"] = [s] {
      Buffers b(4 * 32 + 4);
      launch(vector_load, launch_shape(1, 32), s, b.in.get(), b.out.get(), 1);
    };
    c["aligned_float4"] = [s] {
      Buffers b(4 * 32 + 4);
      launch(vector_load, launch_shape(1, 32), s, b.in.get(), b.out.get(), 0);
    };
    c["coalesced_copy"] = [s] {
      Buffers b(4 * kThreads);
      launch(strided_copy, launch_shape(4, kThreads), s, b.in.get(), b.out.get(), 1);
    };
    c["strided_copy"] = [s] {
      Buffers b(8 * 4 * kThreads);
      launch(strided_copy, launch_shape(4, kThreads), s, b.in.get(), b.out.get(), 8);
    };
    c["lopsided_copy"] = [s] {
      Buffers b(4 * kThreads);
      launch(lopsided_copy, launch_shape(4, kThreads), s, b.in.get(), b.out.get(), int64_t{4 * kThreads});
    };
    c["uninitialized_shared_read"] = [s] {
      Buffers b(kThreads);
      launch(read_slot<false>, launch_shape(1, kThreads), s, b.out.get());
    };
    c["initialized_shared_read"] = [s] {
      Buffers b(kThreads);
      launch(read_slot<true>, launch_shape(1, kThreads), s, b.out.get());
    };
    c["shuffle_against_barrier"] = [s] {
      Buffers b(32);
      launch(shuffle_against_barrier, launch_shape(1, 32), s, b.out.get());
    };
    c["trap"] = [s] {
      Buffers b(32);
      launch(trapping, launch_shape(1, 32), s, b.out.get());
    };
    c["too_many_threads"] = [s] { launch(idle, launch_shape(1, 1025), s); };
    c["empty_grid"] = [s] { launch(idle, launch_shape(0, 32), s); };
    c["grid_y_too_large"] = [s] { launch(idle, launch_shape({1, 65536, 1}, {32, 1, 1}), s); };
    c["dynamic_smem_without_opt_in"] = [s] { launch(idle, launch_shape(1, 32, 64 * 1024), s); };
    c["cluster_not_dividing_grid"] = [s] { launch(idle, launch_shape(3, 32, 0, 2), s); };
    c["non_portable_cluster_without_attribute"] = [s] { launch(idle, launch_shape(16, 32, 0, 16), s); };
    return c;
  }();
  return all;
}

}  // namespace selftest
}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext

namespace norm_ext::simt {

std::vector<long long> probe_shuffle(int mode, unsigned mask, int arg, int width) {
  std::vector<long long> out(32);
  launch(selftest::shuffle_probe, launch_shape(1, 32), nullptr, mode, mask, arg, width, out.data());
  return out;
}

std::vector<long long> probe_indices(const std::array<int64_t, 3>& grid, const std::array<int64_t, 3>& block) {
  std::vector<long long> out(6 * grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2], -1);
  launch(selftest::index_probe, launch_shape(grid, block), nullptr, out.data());
  return out;
}

std::vector<long long> probe_cluster(int64_t blocks, int64_t cluster) {
  std::vector<long long> out(blocks * cluster, -1);
  if (cluster > 8) {
    plans::KernelAttributes attrs = kernel_attributes(reinterpret_cast<const void*>(selftest::cluster_probe));
    attrs.non_portable_cluster = true;
    record_kernel_attributes(reinterpret_cast<const void*>(selftest::cluster_probe), attrs);
  }
  launch(selftest::cluster_probe, launch_shape(blocks, 32, 0, cluster), nullptr, out.data());
  return out;
}

std::vector<long long> probe_schedule(int64_t threads) {
  std::vector<long long> out(threads, -1);
  launch(selftest::schedule_probe, launch_shape(1, threads), nullptr, out.data());
  return out;
}

void probe_barriers(int64_t threads, int count) {
  launch(selftest::barrier_probe, launch_shape(1, threads), nullptr, count);
}

std::vector<std::string> selftest_names() {
  std::vector<std::string> names;
  for (const auto& [name, run] : selftest::cases()) names.push_back(name);
  return names;
}

void run_selftest(const std::string& name) {
  const auto& all = selftest::cases();
  const auto it = all.find(name);
  TORCH_CHECK(it != all.end(), "norm_ext SIMT: no self-test named ", name);
  it->second();
}

}  // namespace norm_ext::simt
