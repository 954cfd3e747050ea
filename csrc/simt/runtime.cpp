// The SIMT runtime: runs CUDA kernels compiled for the host on fibers, with CUDA's semantics for
// threads, barriers, warp shuffles, shared memory and thread-block clusters (see runtime.h).

#include "simt/no_checks_begin.h"

#include "simt/runtime.h"

#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <span>
#include <sstream>

#include "simt/internal.h"

#ifdef NORM_EXT_SIMT_CHECKED
#include <sanitizer/asan_interface.h>
#endif

namespace norm_ext::simt {

NORM_EXT_SIMT_TLS Launch* tls_launch = nullptr;
NORM_EXT_SIMT_TLS ThreadState* tls_thread = nullptr;
NORM_EXT_SIMT_TLS bool tls_in_runtime = true;

namespace {

#if defined(NORM_EXT_SIMT_CHECKED)
constexpr bool kChecked = true;
// AddressSanitizer's red zones and the checker's calls need deeper stacks.
constexpr std::size_t kStackSize = 256 * 1024;
#else
constexpr bool kChecked = false;
constexpr std::size_t kStackSize = 64 * 1024;
#endif
// Guard bytes around each shared array. The plain build checks the ones after the array when the
// block finishes; the checked build poisons both sides for AddressSanitizer, which also keeps any
// other allocation out of the range where the checker attributes an access to the array.
constexpr std::size_t kGuardBefore = kChecked ? 64 : 0;
constexpr std::size_t kGuardBytes = 64;
constexpr unsigned char kGuardByte = 0xa5;
// Fresh and released shared memory reads as this byte: NaN for float and double, -1 for integers.
constexpr unsigned char kPoisonByte = 0xff;
constexpr unsigned kFullMask = 0xffffffffu;

std::atomic<int> g_schedule{static_cast<int>(Schedule::kRandom)};
std::atomic<std::uint64_t> g_seed{0x5eed};
std::atomic<std::uint64_t> g_launch_number{0};

std::mutex g_attr_mutex;
std::map<const void*, plans::KernelAttributes> g_attrs;

std::mutex g_log_mutex;
bool g_log_enabled = false;
std::vector<LaunchRecord> g_log;

std::mutex g_name_mutex;
std::map<const void*, std::string> g_names;

// Per host thread (a pointer: read without a thread-local initialization guard).
NORM_EXT_SIMT_TLS StackPool* tls_stacks = nullptr;

StackPool& stacks() {
  if (tls_stacks == nullptr) tls_stacks = new StackPool(kStackSize);
  return *tls_stacks;
}

// An API call from a kernel: the runtime's code runs, for the thread `t`.
struct RuntimeEntry {
  RuntimeScope scope;
  ThreadState* t;
  RuntimeEntry() : t(tls_thread) {
    if (t == nullptr) fail("a CUDA device function was called outside a kernel launch");
  }
};

Launch& launch() {
  return *tls_launch;
}

std::string xyz(const uint3& v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

// Queues `threads` in the schedule's order. The random order of a cluster-wide release runs the
// blocks one after the other, in a random order of blocks and of threads: a block then finishes while
// its peers still have work, which is how a missing cluster barrier before exit shows.
template <typename Container>
void enqueue(Launch& l, Container& threads, bool whole_cluster = false) {
  switch (l.schedule) {
    case Schedule::kForward:
      break;
    case Schedule::kReverse:
      std::reverse(threads.begin(), threads.end());
      break;
    case Schedule::kRandom:
      std::shuffle(threads.begin(), threads.end(), l.rng);
      if (whole_cluster && l.cluster->blocks.size() > 1) {
        std::vector<unsigned> position(l.cluster->blocks.size());
        for (unsigned r = 0; r < position.size(); ++r) position[r] = r;
        std::shuffle(position.begin(), position.end(), l.rng);
        std::stable_sort(threads.begin(), threads.end(), [&](const ThreadState* a, const ThreadState* b) {
          return position[a->block->rank] < position[b->block->rank];
        });
      }
      break;
  }
  for (ThreadState* t : threads) {
    t->wait = Wait::kRunnable;
    l.ready.push_back(t);
  }
}

// Leaves the running thread (queued already, or waiting) for the next ready one, switching to it
// directly; to the host when none is ready. `finished`: t never runs again.
void switch_away(ThreadState* t, bool finished) {
  Launch& l = launch();
  if (l.ready.empty() || l.failed) {
    fiber_switch(t->ctx, l.host, finished);
    return;
  }
  ThreadState* next = l.ready.front();
  l.ready.pop_front();
  if (next == t) return;
  tls_thread = next;
  fiber_switch(t->ctx, next->ctx, finished);
}

void yield(ThreadState* t) {
  switch_away(t, false);
}

std::string lanes_of(unsigned mask) {
  std::string out;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((mask >> lane) & 1u) out += (out.empty() ? "" : ",") + std::to_string(lane);
  }
  return out.empty() ? "none" : out;
}

// Allocates a shared array of `bytes` for `owner`, poisoned, between guard bytes.
void allocate_array(SharedArray& a, std::size_t bytes, BlockState& owner) {
  a.bytes = bytes;
  char* raw = static_cast<char*>(::operator new(kGuardBefore + bytes + kGuardBytes, std::align_val_t{16}));
  a.data = raw + kGuardBefore;
  std::memset(a.data, kPoisonByte, bytes);
  std::memset(a.data + bytes, kGuardByte, kGuardBytes);
#ifdef NORM_EXT_SIMT_CHECKED
  ASAN_POISON_MEMORY_REGION(raw, kGuardBefore);
  ASAN_POISON_MEMORY_REGION(a.data + bytes, kGuardBytes);
#endif
  checker_array_allocated(a, owner);
}

void free_array(SharedArray& a) {
  if (a.data == nullptr) return;
  char* raw = a.data - kGuardBefore;
#ifdef NORM_EXT_SIMT_CHECKED
  ASAN_UNPOISON_MEMORY_REGION(raw, kGuardBefore + a.bytes + kGuardBytes);
#endif
  ::operator delete(raw, std::align_val_t{16});
  a.data = nullptr;
}

// A shared array of `b` for a declaration site, allocated on first use (by `b`'s own threads, or by
// a peer mapping it through distributed shared memory before `b` reached the declaration).
SharedArray& array_for_site(BlockState& b, const void* site, std::size_t bytes, const char* name) {
  for (SharedArray& a : b.arrays) {
    if (a.site != site) continue;
    if (a.bytes != bytes) {
      fail(describe(*tls_thread) + ": shared array `" + name + "` declared with " + std::to_string(bytes) +
           " bytes where the block has it with " + std::to_string(a.bytes));
    }
    return a;
  }
  Launch& l = launch();
  const std::int64_t static_bytes = b.static_bytes + static_cast<std::int64_t>(bytes);
  const std::string err = plans::launch_error(l.shape, kernel_attributes(l.kernel), plans::kH200, static_bytes);
  if (!err.empty()) fail(describe(*tls_thread) + ": static shared array `" + name + "`: " + err);
  b.static_bytes = static_bytes;
  l.max_static_smem = std::max(l.max_static_smem, static_bytes);
  b.arrays.emplace_back();
  SharedArray& a = b.arrays.back();
  a.site = site;
  a.name = name;
  allocate_array(a, bytes, b);
  return a;
}

// Checks the guard bytes of a finished block's arrays, then poisons them: a peer that still reads
// them after the block exited reads NaN (and the checked build reports the access).
void finish_block(BlockState& b) {
  const auto check = [&](const SharedArray& a) {
    if (kChecked) return;  // AddressSanitizer reports the access itself
    for (std::size_t i = 0; i < kGuardBytes; ++i) {
      if (static_cast<unsigned char>(a.data[a.bytes + i]) != kGuardByte) {
        fail("block " + xyz(b.idx) + ": shared memory written past the end of `" + a.name + "` (" +
             std::to_string(a.bytes) + " bytes), at offset " + std::to_string(a.bytes + i));
      }
    }
  };
  for (SharedArray& a : b.arrays) {
    check(a);
    std::memset(a.data, kPoisonByte, a.bytes);
  }
  check(b.dynamic);
  std::memset(b.dynamic.data, kPoisonByte, b.dynamic.bytes);
  b.finished = true;
}

[[noreturn]] void thread_exit(ThreadState* t) {
  BlockState& b = *t->block;
  ClusterState& c = *b.cluster;
  if (b.barrier.arrived > 0) {
    fail(describe(*t) + ": exited while " + std::to_string(b.barrier.arrived) +
         " threads of its block wait at __syncthreads() at " + where(b.barrier.site) +
         " (a barrier must be reached by every thread of the block)");
  }
  if (c.barrier.arrived > 0) {
    fail(describe(*t) + ": exited while " + std::to_string(c.barrier.arrived) +
         " threads of its cluster wait at cluster.sync() at " + where(c.barrier.site));
  }
  WarpState& w = b.warps[t->warp];
  for (const ShuffleGroup& g : w.groups) {
    if ((g.mask >> t->lane) & 1u) {
      fail(describe(*t) + ": exited while lanes " + lanes_of(g.arrived) + " of its warp wait at the shuffle at " +
           where(g.site) + " whose mask " + hex(g.mask) + " names it");
    }
  }
  w.exited |= 1u << t->lane;
  t->wait = Wait::kExited;
  ++b.exited;
  ++c.exited;
  if (b.exited == b.threads.size()) finish_block(b);
  switch_away(t, /*finished=*/true);
  __builtin_unreachable();
}

void thread_main(void* arg) {
  fiber_started();
  auto* t = static_cast<ThreadState*>(arg);
  Launch& l = launch();
  try {
    set_in_runtime(false);
    l.body(l.body_ctx);
    set_in_runtime(true);
  } catch (const std::exception& e) {
    fail(describe(*t) + ": " + e.what());
  } catch (...) {
    fail(describe(*t) + ": an unknown exception");
  }
  thread_exit(t);
}

std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t x = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return x;
}

// Why the ready queue ran dry before every thread exited.
[[noreturn]] void deadlock(ClusterState& c) {
  std::ostringstream msg;
  msg << "deadlock: no thread can run, and these wait:";
  int shown = 0;
  for (const auto& b : c.blocks) {
    for (const ThreadState& t : b->threads) {
      if (t.wait == Wait::kExited || t.wait == Wait::kRunnable) continue;
      if (shown++ == 8) {
        msg << " ...";
        break;
      }
      const char* what = t.wait == Wait::kBlockBarrier     ? "__syncthreads()"
                         : t.wait == Wait::kClusterBarrier ? "cluster.sync()"
                                                           : "a shuffle";
      msg << "\n  " << describe(t) << " at " << what << " at " << where(t.site);
    }
  }
  fail(msg.str());
}

void run_cluster(Launch& l, ClusterState& c) {
  l.cluster = &c;
  checker_cluster_begin(c);
  std::vector<ThreadState*>& order = l.release_buffer;
  order.clear();
  std::size_t stack = 0;
  for (auto& b : c.blocks) {
    for (ThreadState& t : b->threads) {
      fiber_prepare(t.ctx, stacks().get(stack++), thread_main, &t);
      order.push_back(&t);
    }
  }
  enqueue(l, order, /*whole_cluster=*/true);
  // The threads switch among themselves and come back here when none is ready.
  if (!l.ready.empty()) {
    ThreadState* t = l.ready.front();
    l.ready.pop_front();
    tls_thread = t;
    fiber_switch(l.host, t->ctx);
    tls_thread = nullptr;
    if (l.failed) {
      stacks().abandon(c.threads);
      return;
    }
  }
  if (c.exited != c.threads) {
    stacks().abandon(c.threads);
    deadlock(c);
  }
}

std::unique_ptr<BlockState> make_block(Launch& l, ClusterState& c, uint3 idx, unsigned rank) {
  auto b = std::make_unique<BlockState>();
  b->idx = idx;
  b->rank = rank;
  b->linear = (static_cast<std::uint64_t>(idx.z) * l.grid.y + idx.y) * l.grid.x + idx.x;
  b->cluster = &c;
  b->threads.resize(l.threads_per_block);
  const unsigned warps = (l.threads_per_block + 31) / 32;
  b->warps.resize(warps);
  b->warps.back().lanes = l.threads_per_block - (warps - 1) * 32;
  unsigned i = 0;
  for (unsigned z = 0; z < l.block.z; ++z) {
    for (unsigned y = 0; y < l.block.y; ++y) {
      for (unsigned x = 0; x < l.block.x; ++x, ++i) {
        ThreadState& t = b->threads[i];
        t.tid = {x, y, z};
        t.linear = i;
        t.cluster_index = rank * l.threads_per_block + i;
        t.lane = i % 32;
        t.warp = i / 32;
        t.block = b.get();
      }
    }
  }
  b->dynamic.name = "dynamic shared memory";
  allocate_array(b->dynamic, static_cast<std::size_t>(l.shape.dynamic_smem), *b);
  return b;
}

void free_cluster(ClusterState& c) {
  for (auto& b : c.blocks) {
    for (SharedArray& a : b->arrays) free_array(a);
    free_array(b->dynamic);
  }
}

}  // namespace

[[noreturn]] void fail(const std::string& what) {
  Launch* l = tls_launch;
  ThreadState* t = tls_thread;
  const std::string report = "norm_ext SIMT: kernel " + (l != nullptr ? kernel_name(l->kernel) : std::string("?")) +
                             ": " + what + "\n  (schedule " +
                             (schedule() == Schedule::kForward   ? "forward"
                              : schedule() == Schedule::kReverse ? "reverse"
                                                                 : "random, seed " + std::to_string(schedule_seed())) +
                             ")";
  if (l == nullptr || t == nullptr) TORCH_CHECK(false, report);
  if (!l->failed) {
    l->failed = true;
    l->error = report;
  }
  set_in_runtime(true);
  fiber_switch(t->ctx, l->host, /*from_finished=*/true);
  __builtin_unreachable();
}

bool in_runtime() {
  return tls_in_runtime;
}

void set_in_runtime(bool value) {
  tls_in_runtime = value;
}

std::string describe(const ThreadState& t) {
  return "block " + xyz(t.block->idx) + " thread " + xyz(t.tid);
}

std::string describe(const BlockState& b) {
  return xyz(b.idx);
}

std::string where(const std::source_location& site) {
  const char* file = site.file_name();
  const char* slash = std::strrchr(file, '/');
  return std::string(slash != nullptr ? slash + 1 : file) + ":" + std::to_string(site.line());
}

void set_schedule(Schedule s, std::uint64_t seed) {
  g_schedule = static_cast<int>(s);
  g_seed = seed;
  g_launch_number = 0;
}

Schedule schedule() {
  return static_cast<Schedule>(g_schedule.load());
}

std::uint64_t schedule_seed() {
  return g_seed.load();
}

void set_kernel_attributes(const void* kernel, const plans::KernelAttributes& attrs) {
  const std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_attrs[kernel] = attrs;
}

plans::KernelAttributes kernel_attributes(const void* kernel) {
  const std::lock_guard<std::mutex> lock(g_attr_mutex);
  const auto it = g_attrs.find(kernel);
  return it == g_attrs.end() ? plans::KernelAttributes{} : it->second;
}

const char* flavour() {
  return kChecked ? "checked" : "plain";
}

void set_launch_log(bool enabled) {
  const std::lock_guard<std::mutex> lock(g_log_mutex);
  g_log_enabled = enabled;
  g_log.clear();
}

std::vector<LaunchRecord> take_launch_log() {
  const std::lock_guard<std::mutex> lock(g_log_mutex);
  return std::exchange(g_log, {});
}

std::string kernel_name(const void* kernel) {
  const std::lock_guard<std::mutex> lock(g_name_mutex);
  const auto it = g_names.find(kernel);
  if (it != g_names.end()) return it->second;
  std::string name = "kernel at " + hex(reinterpret_cast<std::uintptr_t>(kernel));
  Dl_info info{};
  if (dladdr(kernel, &info) != 0 && info.dli_sname != nullptr) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
    std::free(demangled);
  }
  g_names.emplace(kernel, name);
  return name;
}

void run_launch(const void* kernel, const plans::LaunchShape& shape, void (*body)(const void*), const void* ctx,
                std::size_t ctx_bytes) {
  TORCH_CHECK(tls_launch == nullptr, "norm_ext SIMT: a kernel launched another kernel");
  const std::string err = plans::launch_error(shape, kernel_attributes(kernel), plans::kH200);
  TORCH_CHECK(err.empty(), "norm_ext SIMT: launch of ", kernel_name(kernel), " rejected: ", err);

  Launch l;
  l.kernel = kernel;
  l.shape = shape;
  l.grid = dim3(shape.grid[0], shape.grid[1], shape.grid[2]);
  l.block = dim3(shape.block[0], shape.block[1], shape.block[2]);
  l.threads_per_block = static_cast<unsigned>(plans::threads_of(shape));
  l.body = body;
  l.body_ctx = ctx;
  l.body_ctx_bytes = ctx_bytes;
  l.schedule = schedule();
  l.number = g_launch_number++;
  l.rng.seed(mix(schedule_seed(), l.number));

  // Clusters in the schedule's order; the blocks of one cluster are consecutive along x.
  const unsigned cluster = static_cast<unsigned>(shape.cluster);
  std::vector<uint3> firsts;
  for (unsigned z = 0; z < l.grid.z; ++z) {
    for (unsigned y = 0; y < l.grid.y; ++y) {
      for (unsigned x = 0; x < l.grid.x; x += cluster) firsts.push_back({x, y, z});
    }
  }
  if (l.schedule == Schedule::kReverse) std::reverse(firsts.begin(), firsts.end());
  if (l.schedule == Schedule::kRandom) std::shuffle(firsts.begin(), firsts.end(), l.rng);

  {
    const std::lock_guard<std::mutex> lock(g_log_mutex);
    l.logged = g_log_enabled;
  }
  tls_launch = &l;
  checker_launch_begin(l);
  std::string error;
  for (const uint3& first : firsts) {
    ClusterState c;
    for (unsigned r = 0; r < cluster; ++r) {
      c.blocks.push_back(make_block(l, c, {first.x + r, first.y, first.z}, r));
      c.threads += l.threads_per_block;
    }
    try {
      run_cluster(l, c);
    } catch (const c10::Error& e) {
      l.failed = true;
      l.error = e.what_without_backtrace();
    }
    l.threads_run += c.exited;
    l.cluster = nullptr;
    l.ready.clear();
    free_cluster(c);
    if (l.failed) break;
  }
  if (!l.failed && l.logged) l.access = checker_access_stats(l);
  checker_launch_end();
  tls_launch = nullptr;
  TORCH_CHECK(!l.failed, l.error);

  const std::lock_guard<std::mutex> lock(g_log_mutex);
  if (g_log_enabled) g_log.push_back({kernel_name(kernel), shape, l.max_static_smem, l.threads_run, l.access});
}

// ----- the API the kernels call (simt/cuda_api.h) -------------------------------------------------

uint3 thread_idx() {
  return tls_thread->tid;
}

uint3 block_idx() {
  return tls_thread->block->idx;
}

dim3 block_dim() {
  return tls_launch->block;
}

dim3 grid_dim() {
  return tls_launch->grid;
}

// A thread's arrival at `barrier`, which `expected` threads of its block or cluster (`scope`) must
// reach, none having exited. Returns whether it completes the barrier.
bool arrive(ThreadState* t, Barrier& barrier, unsigned expected, unsigned exited, const char* what, const char* scope,
            const std::source_location& site) {
  if (exited > 0) {
    fail(describe(*t) + ": " + what + " at " + where(site) + " after " + std::to_string(exited) + " threads of the " +
         scope + " exited (a barrier must be reached by every thread of the " + scope + ")");
  }
  if (barrier.arrived == 0) {
    barrier.site = site;
  } else if (!same_site(barrier.site, site)) {
    fail(describe(*t) + ": divergent barrier: " + what + " at " + where(site) + " while " +
         std::to_string(barrier.arrived) + " threads of the " + scope + " wait at " + what + " at " +
         where(barrier.site));
  }
  t->site = site;
  return ++barrier.arrived == expected;
}

void sync_threads(const std::source_location& site) {
  RuntimeEntry entry;
  ThreadState* t = entry.t;
  BlockState& b = *t->block;
  if (b.cluster_arrived > 0) {
    fail(describe(*t) + ": divergent barrier: __syncthreads() at " + where(site) + " while " +
         std::to_string(b.cluster_arrived) + " threads of the block wait at cluster.sync() at " +
         where(b.cluster->barrier.site));
  }
  t->wait = Wait::kBlockBarrier;
  if (arrive(t, b.barrier, static_cast<unsigned>(b.threads.size()), b.exited, "__syncthreads()", "block", site)) {
    b.barrier.arrived = 0;
    ++b.epoch;
    std::vector<ThreadState*>& all = launch().release_buffer;
    all.clear();
    for (ThreadState& u : b.threads) all.push_back(&u);
    enqueue(launch(), all);
  }
  yield(t);
}

void cluster_sync(const std::source_location& site) {
  RuntimeEntry entry;
  ThreadState* t = entry.t;
  BlockState& b = *t->block;
  ClusterState& c = *b.cluster;
  if (b.barrier.arrived > 0) {
    fail(describe(*t) + ": divergent barrier: cluster.sync() at " + where(site) + " while " +
         std::to_string(b.barrier.arrived) + " threads of the block wait at __syncthreads() at " +
         where(b.barrier.site));
  }
  t->wait = Wait::kClusterBarrier;
  ++b.cluster_arrived;
  if (arrive(t, c.barrier, c.threads, c.exited, "cluster.sync()", "cluster", site)) {
    c.barrier.arrived = 0;
    ++c.epoch;
    std::vector<ThreadState*>& all = launch().release_buffer;
    all.clear();
    for (auto& peer : c.blocks) {
      peer->cluster_arrived = 0;
      ++peer->epoch;
      for (ThreadState& u : peer->threads) all.push_back(&u);
    }
    enqueue(launch(), all, /*whole_cluster=*/true);
  }
  yield(t);
}

std::uint64_t shuffle(ShuffleMode mode, unsigned mask, std::uint64_t bits, int arg, int width,
                      const std::source_location& site) {
  RuntimeEntry entry;
  ThreadState* t = entry.t;
  BlockState& b = *t->block;
  WarpState& w = b.warps[t->warp];
  const auto at = [&] { return " at " + where(site); };
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(describe(*t) + ": shuffle width " + std::to_string(width) + at() + " is not a power of two in [1, 32]");
  }
  if (((mask >> t->lane) & 1u) == 0) {
    fail(describe(*t) + ": lane " + std::to_string(t->lane) + " calls a shuffle" + at() + " whose mask " + hex(mask) +
         " does not include it");
  }
  const unsigned present = w.lanes == 32 ? kFullMask : (1u << w.lanes) - 1;
  if ((mask & ~present) != 0) {
    fail(describe(*t) + ": the shuffle" + at() + " has mask " + hex(mask) + ", which names lanes " +
         lanes_of(mask & ~present) + " that this warp does not have (the block has " +
         std::to_string(b.threads.size()) + " threads)");
  }
  if ((mask & w.exited) != 0) {
    fail(describe(*t) + ": the shuffle" + at() + " has mask " + hex(mask) + ", which names lanes " +
         lanes_of(mask & w.exited) + " that have exited");
  }
  ShuffleGroup* group = nullptr;
  for (ShuffleGroup& g : w.groups) {
    if (g.mask == mask) {
      group = &g;
    } else if ((g.mask & mask) != 0) {
      fail(describe(*t) + ": divergent shuffle" + at() + " with mask " + hex(mask) + " while lanes " +
           lanes_of(g.arrived) + " wait at the shuffle at " + where(g.site) + " with the overlapping mask " +
           hex(g.mask));
    }
  }
  if (group == nullptr) {
    w.groups.push_back({mask, 0, site});
    group = &w.groups.back();
  } else if (!same_site(group->site, site)) {
    fail(describe(*t) + ": divergent shuffle: lane " + std::to_string(t->lane) + " is" + at() + " while lanes " +
         lanes_of(group->arrived) + " are at the shuffle at " + where(group->site) + " (same mask " + hex(mask) + ")");
  }
  t->wait = Wait::kShuffle;
  t->site = site;
  t->mode = mode;
  t->mask = mask;
  t->arg = arg;
  t->width = width;
  t->value = bits;
  group->arrived |= 1u << t->lane;
  if (group->arrived == mask) {
    // Every lane of the mask is here: each reads its source lane as shfl.sync defines it.
    ThreadState* warp_threads = &b.threads[t->warp * 32];
    std::array<ThreadState*, 32> lanes{};
    unsigned released = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (((mask >> lane) & 1u) == 0) continue;
      ThreadState& u = warp_threads[lane];
      const int segmask = (32 - u.width) & 31;
      const int l = static_cast<int>(lane);
      const int clamp = u.mode == ShuffleMode::kUp ? 0 : 31;
      const int max_lane = (l & segmask) | (clamp & ~segmask);
      const int min_lane = l & segmask;
      int j = l;
      bool in_range = false;
      switch (u.mode) {
        case ShuffleMode::kUp:
          j = l - u.arg;
          in_range = j >= max_lane;
          break;
        case ShuffleMode::kDown:
          j = l + u.arg;
          in_range = j <= max_lane;
          break;
        case ShuffleMode::kXor:
          j = l ^ u.arg;
          in_range = j <= max_lane;
          break;
        case ShuffleMode::kIdx:
          j = min_lane | (u.arg & ~segmask & 31);
          in_range = j <= max_lane;
          break;
      }
      if (!in_range) j = l;
      const bool source_in_mask = j >= 0 && j < 32 && ((mask >> j) & 1u) != 0;
      u.result = source_in_mask ? warp_threads[j].value : ~std::uint64_t{0};
      lanes[released++] = &u;
    }
    w.groups.erase(w.groups.begin() + (group - w.groups.data()));
    std::span<ThreadState*> view(lanes.data(), released);
    enqueue(launch(), view);
  }
  yield(t);
  return t->result;
}

void* static_shared(const void* site, std::size_t bytes, std::size_t align, const char* name) {
  RuntimeEntry entry;
  if (align > 16) fail(describe(*entry.t) + ": shared array `" + name + "` needs alignment above 16");
  return array_for_site(*entry.t->block, site, bytes, name).data;
}

void* dynamic_shared() {
  RuntimeEntry entry;
  return entry.t->block->dynamic.data;
}

unsigned cluster_block_rank() {
  return tls_thread->block->rank;
}

unsigned cluster_num_blocks() {
  return static_cast<unsigned>(tls_thread->block->cluster->blocks.size());
}

void* cluster_map_shared(const void* addr, unsigned rank, const std::source_location& site) {
  RuntimeEntry entry;
  ThreadState* t = entry.t;
  BlockState& b = *t->block;
  ClusterState& c = *b.cluster;
  const auto at = [&] { return " at " + where(site); };
  if (rank >= c.blocks.size()) {
    fail(describe(*t) + ": map_shared_rank" + at() + " of rank " + std::to_string(rank) + " in a cluster of " +
         std::to_string(c.blocks.size()) + " blocks");
  }
  BlockState& peer = *c.blocks[rank];
  if (peer.finished) {
    fail(describe(*t) + ": map_shared_rank" + at() + " reads the shared memory of block " + xyz(peer.idx) + " (rank " +
         std::to_string(rank) +
         " of the cluster), which has exited: a cluster.sync() before exit is "
         "missing");
  }
  const char* p = static_cast<const char*>(addr);
  const auto inside = [&](const SharedArray& a) { return p >= a.data && p < a.data + a.bytes; };
  if (inside(b.dynamic)) return peer.dynamic.data + (p - b.dynamic.data);
  for (const SharedArray& a : b.arrays) {
    if (inside(a)) return array_for_site(peer, a.site, a.bytes, a.name).data + (p - a.data);
  }
  fail(describe(*t) + ": map_shared_rank" + at() + " of " + hex(reinterpret_cast<std::uintptr_t>(addr)) +
       ", which is not in this block's shared memory");
}

void check_vector_access(const void* p, std::size_t bytes, bool store, const std::source_location& site) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes == 0) return;
  RuntimeEntry entry;
  fail(describe(*entry.t) + ": misaligned " + std::to_string(bytes) + "-byte vector " + (store ? "store" : "load") +
       " at " + hex(reinterpret_cast<std::uintptr_t>(p)) + " (" + where(site) +
       "): the address must be a multiple of " + std::to_string(bytes));
}

void trap(const std::source_location& site) {
  RuntimeEntry entry;
  fail(describe(*entry.t) + ": __trap() at " + where(site));
}

}  // namespace norm_ext::simt

#include "simt/no_checks_end.h"
