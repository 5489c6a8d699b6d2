// SPDX-License-Identifier: BSD-3-Clause
#include "base/safe_copy.h"

#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace uvfio {

namespace {

// Set while this thread copies. volatile: the handler reads it, and nothing
// the compiler can see does. A plain store followed by memcpy and a store of
// nullptr is a dead store to the optimizer (memcpy is a builtin it knows
// does not read t_jump), and -O2 removed it: the handler then found nothing
// to jump back to and the daemon died of the client's SIGBUS.
thread_local sigjmp_buf* volatile t_jump = nullptr;
struct sigaction g_previous;

void on_sigbus(int sig, siginfo_t* info, void* ctx) {
  if (sigjmp_buf* j = t_jump) {
    t_jump = nullptr;
    // The jump skips the handler's return, which is what would restore the
    // thread's signal mask: restore it here (the kernel, or a sanitizer's
    // wrapper, may block SIGBUS and more while the handler runs; a SIGBUS
    // arriving blocked kills the process).
    if (ctx) pthread_sigmask(SIG_SETMASK, &static_cast<ucontext_t*>(ctx)->uc_sigmask, nullptr);
    siglongjmp(*j, 1);
  }
  // Not ours: the previous handler, or the default action (the fault
  // repeats when we return and the process dies as it would have).
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, ctx);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    return g_previous.sa_handler(sig);
  }
  signal(SIGBUS, SIG_DFL);
}

void install() {
  struct sigaction sa {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_previous);
}

// Kept out of line and free of anything with a destructor: the jump back
// skips nothing but this frame's own state. The signal fences keep the copy
// between the two volatile stores (a compiler may move ordinary memory
// accesses across a volatile one, not across a fence).
__attribute__((noinline)) bool copy_guarded(void* dst, const void* src, size_t n) {
  sigjmp_buf jump;
  if (sigsetjmp(jump, 0) != 0) return false;  // came back from the handler
  t_jump = &jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(dst, src, n);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_jump = nullptr;
  return true;
}

}  // namespace

bool safe_memcpy(void* dst, const void* src, size_t n) {
  static std::once_flag once;
  std::call_once(once, install);
  return copy_guarded(dst, src, n);
}

}  // namespace uvfio
