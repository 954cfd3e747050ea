#pragma once
// Fibers for the SIMT runtime: one stack per emulated CUDA thread and a context switch that saves only
// the callee-saved registers (x86-64 and AArch64; other targets fall back to ucontext). A switch costs
// about 10 ns where swapcontext, which makes a sigprocmask system call, costs about 300 ns, and an OS
// thread handoff tens of microseconds (../shared/design/simt-host-build.md has the measurements).

#include <cstddef>
#include <memory>
#include <vector>

#if !defined(__x86_64__) && !defined(__aarch64__)
#include <ucontext.h>
#endif

namespace norm_ext::simt {

// A fiber's stack: mmap'd, with an inaccessible guard page below it so that an overflow faults
// instead of corrupting the neighbouring stack.
class FiberStack {
 public:
  // color: bytes kept free at the top. Stacks are page-aligned, so without it every fiber's live
  // frames would sit at the same offset and compete for the same cache sets; switching among
  // thousands of fibers would then miss the cache at every resume.
  FiberStack(std::size_t size, std::size_t color);
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  char* bottom() const { return base_ + guard_; }
  std::size_t size() const { return size_; }
  std::size_t color() const { return color_; }
  // A fiber that never finished (its launch stopped at an error) left AddressSanitizer's red zones of
  // its frames poisoned on this stack; the next fiber prepared on it clears them.
  bool abandoned = false;

 private:
  char* base_;
  std::size_t guard_;
  std::size_t size_;
  std::size_t color_;
};

struct FiberContext {
#if defined(__x86_64__) || defined(__aarch64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  // Where this context's stack lies (null for the host thread's own stack), for AddressSanitizer.
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
};

// Prepares `ctx` to run entry(arg) on `stack` when first switched to. entry must never return: a
// finished fiber switches away for good.
void fiber_prepare(FiberContext& ctx, FiberStack& stack, void (*entry)(void*), void* arg);

// Saves the running context into `from` and resumes `to`. `from_finished`: the running fiber will
// never be resumed (lets AddressSanitizer drop its fake stack).
void fiber_switch(FiberContext& from, FiberContext& to, bool from_finished = false);

// First call in a fiber's entry function (AddressSanitizer bookkeeping of the stack switch).
void fiber_started();

// Stacks reused across launches; the pool grows to the largest number of threads run at once.
class StackPool {
 public:
  explicit StackPool(std::size_t stack_size) : stack_size_(stack_size) {}
  FiberStack& get(std::size_t i);
  // Marks the first `count` stacks as abandoned.
  void abandon(std::size_t count);

 private:
  std::size_t stack_size_;
  std::vector<std::unique_ptr<FiberStack>> stacks_;
};

}  // namespace norm_ext::simt
