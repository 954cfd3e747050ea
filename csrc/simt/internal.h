#pragma once
// State of a running SIMT launch, shared by the scheduler (runtime.cpp) and the memory checker of
// the checked build (checker.cpp). Not part of the API the kernels see.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <source_location>
#include <string>
#include <vector>

#include "plans/device.h"
#include "simt/cuda_api.h"
#include "simt/fiber.h"
#include "simt/runtime.h"

namespace norm_ext::simt {

struct BlockState;
struct ClusterState;
struct Launch;

// The checked build's record of the last accesses to one byte of shared memory. Thread ids are
// indices within the cluster plus one (0: none). Two accesses are ordered when they come from the
// same thread, or a cluster barrier lies between them, or they come from one block with a block
// barrier between them (epochs count the barriers passed).
struct ShadowCell {
  std::uint32_t writer = 0;
  std::uint32_t reader = 0;  // kManyReaders: several threads read since the last ordered point
  std::uint16_t writer_block_epoch = 0;
  std::uint16_t writer_cluster_epoch = 0;
  std::uint16_t reader_block_epoch = 0;
  std::uint16_t reader_cluster_epoch = 0;
  std::uint16_t writer_block = 0;  // rank of the writer's block in the cluster
  std::uint16_t reader_block = 0;  // kMixedBlocks when readers came from several blocks
};
inline constexpr std::uint32_t kManyReaders = 0xffffffffu;
inline constexpr std::uint16_t kMixedBlocks = 0xffffu;

// One shared-memory array of a block: a static __shared__ declaration, or the dynamic allocation.
struct SharedArray {
  const void* site = nullptr;  // declaration site; null for dynamic shared memory
  const char* name = "";
  char* data = nullptr;
  std::size_t bytes = 0;
  std::unique_ptr<ShadowCell[]> shadow;  // checked build only
};

enum class Wait : std::uint8_t { kRunnable, kBlockBarrier, kClusterBarrier, kShuffle, kExited };

struct ThreadState {
  FiberContext ctx;
  uint3 tid{};
  unsigned linear = 0;         // within the block
  unsigned cluster_index = 0;  // within the cluster: rank * threads per block + linear
  unsigned lane = 0;
  unsigned warp = 0;
  BlockState* block = nullptr;
  Wait wait = Wait::kRunnable;
  std::source_location site;  // where it waits
  // Shuffle operands and result.
  ShuffleMode mode = ShuffleMode::kIdx;
  unsigned mask = 0;
  int arg = 0;
  int width = 32;
  std::uint64_t value = 0;
  std::uint64_t result = 0;
};

// Lanes of one warp waiting at one shuffle; several groups with disjoint masks may be pending.
struct ShuffleGroup {
  unsigned mask = 0;
  unsigned arrived = 0;
  std::source_location site;
};

// Arrivals at a block's or a cluster's barrier since it last completed, and where the first waits.
struct Barrier {
  unsigned arrived = 0;
  std::source_location site;
};

struct WarpState {
  unsigned lanes = 32;  // lanes the block gives this warp (the last warp may be partial)
  unsigned exited = 0;  // mask of exited lanes
  std::vector<ShuffleGroup> groups;
};

struct BlockState {
  uint3 idx{};
  unsigned rank = 0;         // within the cluster
  std::uint64_t linear = 0;  // within the grid
  ClusterState* cluster = nullptr;
  std::vector<ThreadState> threads;
  std::vector<WarpState> warps;
  std::deque<SharedArray> arrays;  // static shared memory, in order of first use (stable addresses)
  SharedArray dynamic;
  std::int64_t static_bytes = 0;
  Barrier barrier;
  unsigned cluster_arrived = 0;  // threads of this block waiting at cluster.sync()
  unsigned exited = 0;
  std::uint32_t epoch = 0;  // barriers (block or cluster) completed
  bool finished = false;
};

struct ClusterState {
  std::vector<std::unique_ptr<BlockState>> blocks;
  unsigned threads = 0;
  Barrier barrier;
  unsigned exited = 0;
  std::uint32_t epoch = 0;
};

struct Launch {
  const void* kernel = nullptr;
  plans::LaunchShape shape;
  dim3 grid;
  dim3 block;
  unsigned threads_per_block = 0;
  void (*body)(const void*) = nullptr;
  const void* body_ctx = nullptr;
  std::size_t body_ctx_bytes = 0;
  Schedule schedule = Schedule::kForward;
  std::mt19937_64 rng;
  std::uint64_t number = 0;  // launches since the schedule was set
  FiberContext host;
  ClusterState* cluster = nullptr;
  std::deque<ThreadState*> ready;
  std::vector<ThreadState*> release_buffer;  // reused to queue the threads a barrier releases
  bool failed = false;
  std::string error;
  std::int64_t threads_run = 0;
  // Whether the launch log records this launch: only then does the checked build gather `access`,
  // which costs every global access a few hash-map updates.
  bool logged = false;
  AccessStats access;
  std::int64_t max_static_smem = 0;
};

// The runtime's thread-locals use the initial-exec model: they are read on every memory access of a
// kernel in the checked build, and the general-dynamic model of a dlopen'ed library would make each
// read a call (__tls_get_addr, which AddressSanitizer intercepts besides). They are few and small,
// which the static TLS glibc reserves for dlopen'ed libraries holds.
#define NORM_EXT_SIMT_TLS thread_local __attribute__((tls_model("initial-exec")))

extern NORM_EXT_SIMT_TLS Launch* tls_launch;
extern NORM_EXT_SIMT_TLS ThreadState* tls_thread;
// False only while kernel code runs: the checker leaves every other access to AddressSanitizer. A
// property of the OS thread, not of a fiber: fibers switch inside the runtime and resume inside it.
extern NORM_EXT_SIMT_TLS bool tls_in_runtime;

// In the checked build, a function the checker's instrumentation leaves alone. Changes of
// tls_in_runtime go through such functions: an instrumented store to it would reach the checker
// while it still says "kernel", as a kernel thread's write. (LLVM does not inline a function
// without the sanitizer into one with it.)
#if defined(NORM_EXT_SIMT_CHECKED)
#define NORM_EXT_SIMT_UNCHECKED __attribute__((no_sanitize("address"), noinline))
#else
#define NORM_EXT_SIMT_UNCHECKED
#endif
NORM_EXT_SIMT_UNCHECKED bool in_runtime();
NORM_EXT_SIMT_UNCHECKED void set_in_runtime(bool value);

// Marks the running code as the runtime's for a scope (an API call from a kernel).
class RuntimeScope {
 public:
  RuntimeScope() : outer_(in_runtime()) { set_in_runtime(true); }
  ~RuntimeScope() { set_in_runtime(outer_); }
  RuntimeScope(const RuntimeScope&) = delete;
  RuntimeScope& operator=(const RuntimeScope&) = delete;

 private:
  bool outer_;
};

// Ends the launch with `what` about the running thread: records the report and leaves the fiber for
// good. Outside a fiber it throws.
[[noreturn]] void fail(const std::string& what);

// "block (x, y, z) thread (x, y, z)" of a thread, "(x, y, z)" of a block.
std::string describe(const ThreadState& t);
std::string describe(const BlockState& b);
std::string where(const std::source_location& site);

// Hooks of the checked build (checker.cpp); no-ops in the plain build.
void checker_launch_begin(Launch& launch);
// The running launch's use of global memory (runtime.h). A thread works when it wrote a byte, or
// read a byte that at most one other thread read (a value many threads read, such as a per-channel
// coefficient, is no thread's work).
AccessStats checker_access_stats(const Launch& launch);
void checker_launch_end();
void checker_cluster_begin(ClusterState& cluster);
void checker_array_allocated(SharedArray& array, BlockState& owner);

}  // namespace norm_ext::simt
