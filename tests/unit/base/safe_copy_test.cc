// SPDX-License-Identifier: BSD-3-Clause
// safe_memcpy against memory that vanishes under its mapping (a client's
// memfd shrunk after DMA_MAP). Runs in every build: the optimizer once removed
// the store the SIGBUS handler needed, and only the Release build died.
#include "base/safe_copy.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "base/unique_fd.h"

namespace uvfio {
namespace {

struct Shrunk {
  UniqueFd fd{memfd_create("safe_copy_test", MFD_CLOEXEC)};
  size_t size = 4 * 4096;
  uint8_t* p = nullptr;
  Shrunk() {
    EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
    p = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0));
    EXPECT_NE(p, MAP_FAILED);
    std::memset(p, 0xab, size);
    EXPECT_EQ(ftruncate(fd.get(), 4096), 0);  // pages 1..3 are gone: SIGBUS on touch
  }
  ~Shrunk() { munmap(p, size); }
};

TEST(SafeCopy, CopiesLikeMemcpy) {
  std::vector<uint8_t> a(10000), b(10000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i * 7);
  EXPECT_TRUE(safe_memcpy(b.data(), a.data(), a.size()));
  EXPECT_EQ(a, b);
  EXPECT_TRUE(safe_memcpy(b.data(), a.data(), 0));
}

TEST(SafeCopy, ReadFromShrunkFileFailsInsteadOfKillingTheProcess) {
  Shrunk s;
  std::vector<uint8_t> out(s.size);
  EXPECT_TRUE(safe_memcpy(out.data(), s.p, 4096));  // still backed
  EXPECT_EQ(out[0], 0xab);
  EXPECT_FALSE(safe_memcpy(out.data(), s.p, s.size));
  EXPECT_FALSE(safe_memcpy(out.data(), s.p + 2 * 4096, 16));
}

TEST(SafeCopy, WriteToShrunkFileFails) {
  Shrunk s;
  std::vector<uint8_t> in(s.size, 0x5a);
  EXPECT_FALSE(safe_memcpy(s.p + 4096, in.data(), 4096));
  EXPECT_TRUE(safe_memcpy(s.p, in.data(), 4096));
  EXPECT_EQ(s.p[100], 0x5a);
}

// Many faults in a row and from several threads: the signal mask is restored
// after each jump (a SIGBUS arriving blocked kills the process).
TEST(SafeCopy, RepeatedFaultsOnManyThreads) {
  Shrunk s;
  std::vector<std::thread> ts;
  std::atomic<int> failed{0};
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      std::vector<uint8_t> out(4096);
      for (int i = 0; i < 200; ++i)
        if (!safe_memcpy(out.data(), s.p + 3 * 4096, 4096)) failed.fetch_add(1);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failed.load(), 800);
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, nullptr, &now);
  EXPECT_FALSE(sigismember(&now, SIGBUS));
}

// A SIGBUS outside safe_memcpy still kills the process as it would have
// (a sanitizer reports it and ends the process itself: a failure exit, or
// SIGABRT with abort_on_error).
bool died_of_the_fault(int status) {
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
}

TEST(SafeCopyDeathTest, OtherFaultsAreNotSwallowed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Shrunk s;
        std::vector<uint8_t> out(16);
        (void)safe_memcpy(out.data(), s.p, 16);  // installs the handler
        volatile uint8_t* v = s.p + 2 * 4096;
        (void)*v;
      },
      died_of_the_fault, "");
}

}  // namespace
}  // namespace uvfio
