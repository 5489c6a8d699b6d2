// SPDX-License-Identifier: BSD-3-Clause
// Shared by the QEMU e2e tests: one QEMU process with its serial console in
// a file, and whether a missing QEMU or guest is a failure (CI) or a skip.
#pragma once

#include <sys/wait.h>

#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e/harness.h"

namespace uvfio::e2e {

inline bool required() { return std::getenv("UVFIO_REQUIRE_QEMU") != nullptr; }

inline bool exists(const std::string& p) { return access(p.c_str(), R_OK) == 0; }

// Waits (5 s at most) until every socket accepts a connection.
inline bool wait_sockets(const std::vector<std::string>& sockets) {
  for (const auto& s : sockets) {
    bool up = false;
    for (int i = 0; i < 500 && !(up = can_connect(s)); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!up) return false;
  }
  return true;
}

// A failed run's evidence under `dir`: NAME-qemu.log (the serial console
// from `qemu_log`) and NAME-uvfiod.log (`daemon_log`).
inline void keep_artifacts(const std::string& dir, const std::string& name, const std::string& qemu_log,
                           const std::string& daemon_log) {
  sh("mkdir -p " + dir);
  sh("cp " + qemu_log + " " + dir + "/" + name + "-qemu.log");
  std::ofstream(dir + "/" + name + "-uvfiod.log") << daemon_log;
}

// The start of every QEMU command line of these tests: the binary, its
// firmware directory (share/ beside bin/), the machine, TCG.
inline std::vector<std::string> qemu_command(const std::string& qemu, const std::string& machine) {
  return {qemu, "-L", qemu.substr(0, qemu.rfind("/bin/")) + "/share", "-M", machine, "-accel", "tcg"};
}

// The rest: no display, the serial console on stdout, our kernel, its
// initramfs and command line, and each socket's VF as a vfio-user-pci
// device (vf0, vf1, ...).
inline void add_guest(std::vector<std::string>& a, const std::string& kernel, const std::string& initrd,
                      const std::string& append, const std::vector<std::string>& vf_sockets) {
  for (std::string x : {"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none", "-kernel",
                        kernel.c_str(), "-initrd", initrd.c_str(), "-append", append.c_str()})
    a.push_back(x);
  for (size_t i = 0; i < vf_sockets.size(); ++i) {
    a.push_back("-device");
    a.push_back(std::string(R"({"driver":"vfio-user-pci","id":"vf)") + std::to_string(i) +
                R"(","socket":{"type":"unix","path":")" + vf_sockets[i] + R"("}})");
  }
}

// One QEMU process; its serial console (stdout) and stderr go to `log`.
class Qemu {
 public:
  Qemu(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    std::vector<std::string> a = args;
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (posix_spawn(&pid_, a[0].c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Qemu() { kill(); }
  bool started() const { return pid_ > 0; }
  std::string output() const { return slurp(log_); }
  // Waits until `marker` appears in the output or QEMU exits.
  bool wait_for(const std::string& marker, int timeout_s) {
    for (int i = 0; i < timeout_s * 10; ++i) {
      if (output().find(marker) != std::string::npos) return true;
      if (reap(false)) return output().find(marker) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // Exit status, or -1 on timeout.
  int wait_exit(int timeout_s) {
    for (int i = 0; i < timeout_s * 10 && pid_ > 0; ++i) {
      if (reap(false)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return pid_ > 0 ? -1 : status_;
  }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    reap(true);
  }

 private:
  bool reap(bool block) {
    int st;
    if (waitpid(pid_, &st, block ? 0 : WNOHANG) != pid_) return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid_ = -1;
    return true;
  }
  std::string log_;
  pid_t pid_ = -1;
  int status_ = -1;
};

}  // namespace uvfio::e2e
