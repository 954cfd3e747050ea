#pragma once
// Host side of the SIMT runtime: running a kernel launch on fibers, the schedule that orders the
// threads, per-kernel attributes, and the launch log.
//
// A launch runs its clusters (a block is a cluster of one without the cluster attribute) one after
// the other on the calling thread. All threads of a cluster are fibers that run concurrently: each
// runs until it blocks at a barrier or a shuffle, and when a barrier completes the waiting threads
// are queued again in the schedule's order. Between two barriers the threads therefore run one after
// the other in an order the schedule picks (forward, reverse, or shuffled from a seed), so a kernel
// whose result depends on that order gives different results under different schedules.
//
// Errors (divergent barriers, shuffles naming absent lanes, misaligned vector accesses, a peer block
// that exited, deadlocks, and with the checked build races and out-of-bounds accesses) stop the
// launch and are thrown as c10::Error naming the kernel, block, thread and address.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "plans/device.h"

namespace norm_ext::simt {

enum class Schedule { kForward, kReverse, kRandom };

// The order in which the threads of a cluster, and the clusters of a launch, run. kRandom draws a
// fresh order at every barrier from a generator seeded by `seed` and the launch's number.
void set_schedule(Schedule schedule, std::uint64_t seed);
Schedule schedule();
std::uint64_t schedule_seed();

// Per-kernel attributes, set as with cudaFuncSetAttribute.
void set_kernel_attributes(const void* kernel, const plans::KernelAttributes& attrs);
plans::KernelAttributes kernel_attributes(const void* kernel);

// "plain" or "checked" (compiled with the race, uninitialized-read and AddressSanitizer checks).
const char* flavour();

// How a launch's threads used global memory, counted by the checked build, which sees every access;
// -1 each in the plain build.
struct AccessStats {
  // Threads that had global memory of their own (a byte written, or read by at most two threads): the
  // lanes that did the launch's work.
  std::int64_t threads_working = -1;
  // Over the warps' memory requests (the accesses of one warp's lanes at one instruction, the k-th
  // time each lane runs it): the 32-byte sectors they touched, and the fewest that their distinct
  // bytes could fill. Their ratio is the coalescing a GPU's memory system would see.
  std::int64_t sectors = -1;
  std::int64_t ideal_sectors = -1;
  // Global bytes accessed by the launch, and by its busiest block: a block holding far more than an
  // SM's even share keeps the launch running while the other SMs idle (a tail).
  std::int64_t bytes = -1;
  std::int64_t busiest_block_bytes = -1;
};

struct LaunchRecord {
  std::string kernel;
  plans::LaunchShape shape;
  std::int64_t static_smem;
  std::int64_t threads_run;  // total threads that executed
  AccessStats access;
};

// Records every launch while enabled.
void set_launch_log(bool enabled);
std::vector<LaunchRecord> take_launch_log();

// The checked build counts, per byte, the global memory that kernel threads read and write between
// traffic_start and traffic_stop: what the tests hold each op's traffic to. The plain build does not
// see the kernels' accesses and throws. Counts are of the last window until the next one starts.
struct TrafficCount {
  std::uint64_t read = 0, written = 0;                    // bytes, every access counted
  std::uint64_t distinct_read = 0, distinct_written = 0;  // bytes accessed at least once
  std::uint64_t reread = 0, rewritten = 0;                // bytes accessed more than once
};
void traffic_start();
void traffic_stop();
TrafficCount traffic_of(std::uintptr_t begin, std::uint64_t bytes);
// Of every byte of global memory.
TrafficCount traffic_total();

// Name of a kernel for reports: its demangled symbol where the dynamic linker knows it.
std::string kernel_name(const void* kernel);

// Runs `body` (the kernel called with its arguments, `ctx`) as the launch `shape` of `kernel`. Validates
// the shape first (plans::launch_error) and throws on an invalid one without running anything. The
// `ctx_bytes` bytes at `ctx` are the launch's parameter space: the checked build neither counts reads
// of it as global-memory traffic nor as a thread's work.
void run_launch(const void* kernel, const plans::LaunchShape& shape, void (*body)(const void*), const void* ctx,
                std::size_t ctx_bytes);

}  // namespace norm_ext::simt
