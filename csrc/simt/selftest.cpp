// Kernels with planted bugs, one per checker of the SIMT backend, and their correct twins. The tests
// (tests/test_simt_checkers.py) run each and assert that the bug is reported, naming the kernel, the
// block, the thread and the address, and that the twin runs clean: a checker that stops catching its
// bug fails them.

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
  out[threadIdx.x] = slots[kThreads - 1 - threadIdx.x];
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

// Reads a shared slot that no thread wrote (the bug), or one that thread 0 wrote before the barrier.
template <bool kWritten>
__global__ void read_slot(float* out) {
  NORM_EXT_SHARED(float, slots, [2]);
  if (kWritten && threadIdx.x == 0) slots[1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = slots[1];
}

// A kernel with nothing to do, for the launch checks.
__global__ void idle() {}

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
    c["uninitialized_shared_read"] = [s] {
      Buffers b(kThreads);
      launch(read_slot<false>, launch_shape(1, kThreads), s, b.out.get());
    };
    c["initialized_shared_read"] = [s] {
      Buffers b(kThreads);
      launch(read_slot<true>, launch_shape(1, kThreads), s, b.out.get());
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
