// SPDX-License-Identifier: BSD-3-Clause
// e2e harness: start uvfiod in a private run directory, run commands (our
// CLI, coreutils, pciutils) against it, stop it with SIGTERM.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace uvfio::e2e {

struct CmdResult {
  int status = -1;  // exit code
  std::string out;  // stdout
  std::string err;  // stderr
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string make_tmpdir(const char* tag) {
  std::string t = std::string("/tmp/uvfio-e2e-") + tag + "-XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) return "";
  return buf.data();
}

// Runs `cmd` with bash (whose echo reports the errno text, as an admin sees
// it); captures stdout and stderr separately.
inline CmdResult sh(const std::string& cmd) {
  // Several threads of a test may run commands at once (the soak): each
  // gets its own files.
  static std::atomic<int> seq{0};
  std::string base = "/tmp/uvfio-e2e-cmd-" + std::to_string(getpid()) + "-" + std::to_string(seq++);
  std::ofstream(base + ".sh") << cmd << "\n";
  std::string full = "bash " + base + ".sh >" + base + ".out 2>" + base + ".err";
  CmdResult r;
  int st = std::system(full.c_str());
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  unlink((base + ".out").c_str());
  unlink((base + ".err").c_str());
  unlink((base + ".sh").c_str());
  return r;
}

inline bool can_connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

inline bool is_mounted(const std::string& path) {
  std::string mi = slurp("/proc/self/mountinfo");
  return mi.find(" " + path + " ") != std::string::npos;
}

// The fds a process has open now.
inline int count_fds(pid_t pid) {
  int n = 0;
  std::string d = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* dir = opendir(d.c_str())) {
    while (dirent* e = readdir(dir)) n += e->d_name[0] != '.';
    closedir(dir);
  }
  return n;
}

// What a process holds: threads, open fds, resident memory, and its
// threads' names (for a failure message).
struct Usage {
  long threads = 0, fds = 0, rss_kb = 0;
  std::string names;
};
// Whether a missing FUSE fails the FUSE tests (CI sets UVFIO_REQUIRE_FUSE:
// the only tests of reset, unbind and sriov through a real mount must not
// skip there) or skips them.
inline bool fuse_required() { return std::getenv("UVFIO_REQUIRE_FUSE") != nullptr; }

inline Usage usage(pid_t pid) {
  Usage u;
  std::string st = slurp("/proc/" + std::to_string(pid) + "/status");
  auto field = [&](const char* key) {
    size_t at = st.find(key);
    return at == std::string::npos ? -1 : std::strtol(st.c_str() + at + std::strlen(key), nullptr, 10);
  };
  u.threads = field("Threads:");
  u.rss_kb = field("VmRSS:");
  u.fds = count_fds(pid);
  u.names = sh("cat /proc/" + std::to_string(pid) + "/task/*/comm | sort | uniq -c | tr -s ' \\n' ' '").out;
  return u;
}

// A baseline of `usage`: sampled until the fd and thread counts have held
// for 300 ms (a client the daemon has not yet seen leave, an idle worker
// about to exit, would otherwise be counted in it).
inline Usage settled_usage(pid_t pid) {
  Usage base = usage(pid);
  for (int still = 0, i = 0; still < 6 && i < 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Usage now = usage(pid);
    still = now.fds == base.fds && now.threads == base.threads ? still + 1 : 0;
    base = now;
  }
  return base;
}

// After the work: the usage once fds are back to `base` and threads at or
// below it, or what it is after `seconds` (idle pool workers leave after 5 s).
inline Usage usage_back_to(pid_t pid, const Usage& base, int seconds = 15) {
  Usage after = usage(pid);
  for (int i = 0; i < seconds * 20 && (after.threads > base.threads || after.fds != base.fds); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    after = usage(pid);
  }
  return after;
}

class Daemon {
 public:
  // `reuse`: the directory of an earlier Daemon (kept with keep_dir()), for
  // a restart on the same run directory.
  explicit Daemon(std::vector<std::string> extra = {}, const char* tag = "d", std::string reuse = "") {
    dir_ = reuse.empty() ? make_tmpdir(tag) : reuse;
    rundir_ = dir_ + "/run";
    log_ = dir_ + "/uvfiod.log";
    std::vector<std::string> args{UVFIOD_PATH, "--rundir", rundir_};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&pid_, UVFIOD_PATH, &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Daemon() {
    if (pid_ > 0) stop();
    if (!keep_dir_) sh("rm -rf " + dir_);
  }
  // The directory (run directory, log) outlives this Daemon.
  const std::string& keep_dir() {
    keep_dir_ = true;
    return dir_;
  }

  // Waits until the control socket answers (or the daemon exits).
  bool wait_ready(int timeout_ms = 10000) {
    for (int i = 0; i < timeout_ms / 10; ++i) {
      if (can_connect(control())) return true;
      int st;
      if (pid_ > 0 && waitpid(pid_, &st, WNOHANG) == pid_) {
        exit_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // Exit status after waiting (e.g. for a refused config).
  int wait_exit(int timeout_ms = 10000) {
    for (int i = 0; i < timeout_ms / 10 && pid_ > 0; ++i) {
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        exit_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return exit_;
  }
  int stop(int sig = SIGTERM) {
    if (pid_ <= 0) return exit_;
    kill(pid_, sig);
    int rc = wait_exit(20000);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    return rc;
  }

  pid_t pid() const { return pid_; }
  const std::string& rundir() const { return rundir_; }
  const std::string& dir() const { return dir_; }  // the test's directory (rundir and log inside)
  std::string sys() const { return rundir_ + "/sys"; }
  std::string control() const { return rundir_ + "/control.sock"; }
  std::string log() const { return slurp(log_); }
  std::string ctl(const std::string& args) const {
    return std::string(UVFIOCTL_PATH) + " --rundir " + rundir_ + " " + args;
  }

 private:
  std::string dir_, rundir_, log_;
  bool keep_dir_ = false;
  pid_t pid_ = -1;
  int exit_ = -1;
};

}  // namespace uvfio::e2e
