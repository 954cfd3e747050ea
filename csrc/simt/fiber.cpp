#include "simt/no_checks_begin.h"

#include "simt/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NORM_EXT_SIMT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define NORM_EXT_SIMT_ASAN 1
#endif
#ifdef NORM_EXT_SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
// Saves the callee-saved registers on the running stack, stores the stack pointer in *from_sp and
// resumes the stack at to_sp. A new fiber's stack is laid out as if it had switched away: six
// register slots (r12 = argument, r13 = entry) and the trampoline as the return address.
extern "C" void norm_ext_simt_switch(void** from_sp, void* to_sp);
extern "C" void norm_ext_simt_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl norm_ext_simt_switch
  .hidden norm_ext_simt_switch
  .type norm_ext_simt_switch,@function
norm_ext_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size norm_ext_simt_switch, .-norm_ext_simt_switch

  .p2align 4
  .globl norm_ext_simt_trampoline
  .hidden norm_ext_simt_trampoline
  .type norm_ext_simt_trampoline,@function
norm_ext_simt_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size norm_ext_simt_trampoline, .-norm_ext_simt_trampoline
)");
#endif

namespace norm_ext::simt {

namespace {

// Initial-exec, as the runtime's others (see internal.h): read at every switch.
#define NORM_EXT_SIMT_FIBER_TLS thread_local __attribute__((tls_model("initial-exec")))

#ifdef NORM_EXT_SIMT_ASAN
// The context that switched to the running one: where AddressSanitizer reports the stack we came from.
NORM_EXT_SIMT_FIBER_TLS FiberContext* tls_switched_from = nullptr;

// Completes AddressSanitizer's record of a switch to the running context (fake_stack: the one this
// context saved when it left), noting the bounds of the stack the switch came from.
void finish_switch(void* fake_stack) {
  const void* bottom = nullptr;
  std::size_t size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
  tls_switched_from->stack_bottom = bottom;
  tls_switched_from->stack_size = size;
}
#endif

#if !defined(__x86_64__)
// makecontext passes int arguments only: the entry and its argument travel through these.
thread_local void (*tls_entry)(void*) = nullptr;
thread_local void* tls_arg = nullptr;
void ucontext_entry() {
  tls_entry(tls_arg);
}
#endif

}  // namespace

FiberStack::FiberStack(std::size_t size, std::size_t color)
    : guard_(static_cast<std::size_t>(sysconf(_SC_PAGESIZE))), size_(size), color_(color) {
  void* p = mmap(nullptr, size_ + guard_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  base_ = static_cast<char*>(p);
  mprotect(base_, guard_, PROT_NONE);
}

FiberStack::~FiberStack() {
  munmap(base_, size_ + guard_);
}

void fiber_prepare(FiberContext& ctx, FiberStack& stack, void (*entry)(void*), void* arg) {
  ctx.stack_bottom = stack.bottom();
  ctx.stack_size = stack.size();
#ifdef NORM_EXT_SIMT_ASAN
  if (stack.abandoned) __asan_unpoison_memory_region(stack.bottom(), stack.size());
#endif
  stack.abandoned = false;
#if defined(__x86_64__)
  // 64 bytes of headroom, and a 16-byte aligned stack pointer after the trampoline's return.
  auto top =
      (reinterpret_cast<std::uintptr_t>(stack.bottom()) + stack.size() - 64 - stack.color()) & ~std::uintptr_t{15};
  auto* slots = reinterpret_cast<void**>(top) - 7;
  slots[0] = nullptr;                                             // r15
  slots[1] = nullptr;                                             // r14
  slots[2] = reinterpret_cast<void*>(entry);                      // r13
  slots[3] = arg;                                                 // r12
  slots[4] = nullptr;                                             // rbx
  slots[5] = nullptr;                                             // rbp
  slots[6] = reinterpret_cast<void*>(&norm_ext_simt_trampoline);  // return address
  ctx.sp = slots;
#else
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.bottom();
  ctx.uc.uc_stack.ss_size = stack.size();
  ctx.uc.uc_link = nullptr;
  tls_entry = entry;
  tls_arg = arg;
  makecontext(&ctx.uc, ucontext_entry, 0);
#endif
}

void fiber_switch(FiberContext& from, FiberContext& to, bool from_finished) {
#ifdef NORM_EXT_SIMT_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to.stack_bottom, to.stack_size);
  tls_switched_from = &from;
#else
  (void)from_finished;
#endif
#if defined(__x86_64__)
  norm_ext_simt_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#ifdef NORM_EXT_SIMT_ASAN
  finish_switch(fake_stack);
#endif
}

void fiber_started() {
#ifdef NORM_EXT_SIMT_ASAN
  finish_switch(nullptr);
#endif
}

void StackPool::abandon(std::size_t count) {
  for (std::size_t i = 0; i < count && i < stacks_.size(); ++i) stacks_[i]->abandoned = true;
}

FiberStack& StackPool::get(std::size_t i) {
  // 256 colors a cache line apart spread the stack tops over 16 KB of cache sets.
  while (stacks_.size() <= i) stacks_.push_back(std::make_unique<FiberStack>(stack_size_, (stacks_.size() % 256) * 64));
  return *stacks_[i];
}

}  // namespace norm_ext::simt

#include "simt/no_checks_end.h"
