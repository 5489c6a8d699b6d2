// SPDX-License-Identifier: BSD-3-Clause
// uvfiod: hosts the emulated topology, its drivers and the attribute tree.
// Foreground; logs to stderr; SIGTERM/SIGINT shut it down cleanly (FUSE
// unmounted, sockets removed, every device unbound and removed).
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "base/log.h"
#include "base/rundir.h"
#include "base/stats.h"
#include "daemon/rundir.h"
#include "daemon/system.h"
#include "daemon/topology.h"
#include "hw/mlx5/vf.h"
#include "sysfs/control.h"
#include "base/eventfd.h"
#include "sysfs/fuse_fs.h"
#include "vfio_user/connection.h"
#include "vfio_user/server.h"
#include "vfio_user/trace.h"

using namespace uvfio;

namespace {

// Each VFIO device holds a few fds (its socket, BAR memfds) and each client
// more (its socket, eventfds, DMA map fds): take the hard limit, and say
// what it allows.
void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t was = rl.rlim_cur;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) (void)getrlimit(RLIMIT_NOFILE, &rl);
  }
  constexpr rlim_t kPerDevice = 8, kReserve = 64;
  rlim_t room = rl.rlim_cur > kReserve ? (rl.rlim_cur - kReserve) / kPerDevice : 0;
  log::info("uvfiod", "file descriptors: limit {} (was {}): room for about {} VFIO devices with clients",
            static_cast<unsigned long long>(rl.rlim_cur), static_cast<unsigned long long>(was),
            static_cast<unsigned long long>(room));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"uvfiod — vfio-pci-core in userspace: emulated PCIe hardware, driver core, sysfs"};
  std::string rundir = default_rundir();
  std::string config;
  bool print_seed = false, no_fuse = false, verbose = false, busy_poll = false;
  daemon::SystemOptions opts;
  app.add_option("--rundir", rundir, "Directory for control.sock, sys/ and vfio-user sockets")->capture_default_str();
  auto* config_opt = app.add_option("--config", config, "Topology file (TOML); default: the seed topology");
  std::string config_if_present;
  app.add_option("--config-if-present", config_if_present,
                 "Topology file used when it exists (the seed topology otherwise): the systemd unit's "
                 "/etc/uvfio/topology.toml")
      ->excludes(config_opt);
  app.add_flag("--print-seed", print_seed, "Print the seed topology as TOML and exit");
  app.add_flag("--no-fuse", no_fuse, "Do not mount the attribute tree with FUSE");
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  std::string dma_layout = "auto";
  app.add_option("--dma-layout", dma_layout,
                 "DMA_READ/DMA_WRITE layout for clients without fd-backed memory: auto (probed per "
                 "connection), spec, or qemu (QEMU 10.x's u32 count, data at 12)")
      ->check(CLI::IsMember({"auto", "spec", "qemu"}))
      ->capture_default_str();
  app.add_flag("--busy-poll", busy_poll,
               "vfio-user reactor threads spin on epoll instead of sleeping: lower latency, one CPU "
               "busy per reactor");
  unsigned poll_us = 20;
  app.add_option("--poll-us", poll_us,
                 "After serving a request, a vfio-user reactor polls for the next one this many microseconds "
                 "before it sleeps (0: sleeps at once); it stops polling while it shares its CPU with "
                 "someone who needs it")
      ->check(CLI::Range(0u, 10000u))
      ->capture_default_str();
  unsigned reactors = 0;
  app.add_option("--reactors", reactors, "vfio-user reactor threads (0: one per core)")->capture_default_str();
  unsigned client_timeout_ms = 10000;
  app.add_option("--client-timeout-ms", client_timeout_ms,
                 "Drop a vfio-user client that sends no VERSION, stops mid-message or leaves its "
                 "replies unread for this long")
      ->check(CLI::Range(100u, 3600000u))
      ->capture_default_str();
  app.add_flag("--vfio-pci-enable-sriov", opts.vfio_pci_enable_sriov,
               "Let vfio_pci enable SR-IOV on PFs it drives (the vfio-pci module's enable_sriov)");
  bool keep_state = false;
  app.add_flag("--keep-state-on-disconnect", keep_state,
               "Keep a VFIO device open, with its state (config space, queues, device memory), from one "
               "vfio-user client to the next; by default the device is reset, restored and scrubbed when "
               "its client disconnects, as on the kernel's last close");
  bool no_stats = false;
  app.add_flag("--no-stats", no_stats,
               "Do not count (the stats/ files under vfio-dev/vfioN stay at 0): for measuring what counting costs");
  CLI11_PARSE(app, argc, argv);
  if (no_stats) g_stats_enabled.store(false);
  if (verbose) log::set_level(log::Level::kDebug);
  if (print_seed) {
    std::cout << daemon::seed_topology_toml();
    return 0;
  }

  if (!config_if_present.empty()) {
    struct stat cst;
    if (::stat(config_if_present.c_str(), &cst) == 0) config = config_if_present;
    else if (errno != ENOENT) {
      std::fprintf(stderr, "uvfiod: %s: %s\n", config_if_present.c_str(), std::strerror(errno));
      return 1;
    }
  }
  daemon::TopologySpec spec;
  if (config.empty()) {
    spec = daemon::seed_topology();
  } else {
    auto r = daemon::load_topology_file(config);
    if (!r) {
      std::fprintf(stderr, "uvfiod: %s\n", r.error().message.c_str());
      return 1;
    }
    spec = std::move(*r);
  }

  // Signals are taken synchronously by sigwait below; every thread started
  // from here on inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // The thread that keeps a client's full eventfd from blocking ours: there
  // from the start, not born under the first client.
  eventfd_guard_start();
  if (unsigned n = hw::mlx5::vf_copy_fault_every())
    log::warn("uvfiod", "TEST FAULT INJECTION: every {}th VF copy fails with EIO (UVFIO_TEST_FAULT_VF_COPY)", n);

  // The run directory is ours alone: a second daemon, a symlink or a
  // directory someone else owns or can write is refused before anything is
  // created in it.
  auto rd = daemon::RunDir::claim(rundir);
  if (!rd) {
    std::fprintf(stderr, "uvfiod: %s\n", rd.error().message.c_str());
    return 1;
  }
  auto vudir = rd->subdir("vfio-user", 0700);
  if (!vudir) {
    std::fprintf(stderr, "uvfiod: %s\n", vudir.error().message.c_str());
    return 1;
  }
  raise_fd_limit();

  auto sys = daemon::System::create(spec, opts);
  if (!sys) {
    std::fprintf(stderr, "uvfiod: %s\n", sys.error().message.c_str());
    return 1;
  }
  driver::Tree& tree = (*sys)->core().tree();

  // Every VFIO device on its own vfio-user socket.
  vfio_user::ServerOptions vopts;
  vopts.busy_poll = busy_poll;
  vopts.reactors = reactors;
  vopts.poll_window = std::chrono::microseconds(poll_us);
  vopts.keep_state = keep_state;
  vopts.client_timeout = std::chrono::milliseconds(client_timeout_ms);
  vopts.dma_layout = *vfio_user::parse_dma_layout(dma_layout);  // checked by CLI11 above
  auto vu = vfio_user::Server::start((*sys)->vfio_registry(), *vudir, vopts);
  if (!vu) {
    std::fprintf(stderr, "uvfiod: vfio-user: %s\n", to_string(vu.error()).c_str());
    return 1;
  }

  std::unique_ptr<sysfs::FuseMount> fuse;
  std::string mnt = rundir + "/sys";
  if (!no_fuse) {
    struct stat st;
    // A dead daemon's mount (we hold the lock: no live one can be there).
    if (lstat(mnt.c_str(), &st) < 0 && errno == ENOTCONN) umount2(mnt.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
    auto sysdir = rd->subdir("sys", 0755);
    if (!sysdir) {
      std::fprintf(stderr, "uvfiod: %s\n", sysdir.error().message.c_str());
      return 1;
    }
    auto m = sysfs::FuseMount::mount(tree, mnt);
    if (m) {
      fuse = std::move(*m);
      log::info("uvfiod", "attribute tree mounted at {}", mnt);
    } else {
      log::warn("uvfiod", "FUSE unavailable ({}): serving the control socket only", to_string(m.error()));
    }
  }
  // uvfioctl trace: a live, decoded stream of devices' vfio-user requests.
  std::map<std::string, sysfs::ControlServer::Stream> streams;
  streams["trace"] = [](int fd, const nlohmann::json& req, int stop_fd) {
    std::vector<std::string> devices, commands;
    auto strings = [&](const char* key, std::vector<std::string>& out) {
      if (!req.contains(key) || !req[key].is_array()) return;
      for (auto& v : req[key])
        if (v.is_string()) out.push_back(v.get<std::string>());
    };
    strings("devices", devices);
    strings("commands", commands);
    vfio_user::serve_tracer(fd, devices, commands, stop_fd);
  };
  auto ctl = sysfs::ControlServer::start(tree, rundir + "/control.sock", std::move(streams));
  if (!ctl) {
    std::fprintf(stderr, "uvfiod: control socket %s/control.sock: %s\n", rundir.c_str(), to_string(ctl.error()).c_str());
    fuse.reset();
    return 1;
  }
  log::info("uvfiod", "ready: control socket {}/control.sock", rundir);

  int sig = 0;
  while (sigwait(&sigs, &sig) != 0 || sig == SIGHUP) {
  }
  log::info("uvfiod", "signal {}: shutting down", sig);
  // vfio-user first: its clients are dropped and its devices closed, which
  // ends any unbind (or sriov_numvfs change) still waiting for a client, so
  // the control socket's requests in progress can finish and be joined.
  vu->reset();
  ctl->reset();
  ::rmdir((rundir + "/vfio-user").c_str());
  if (fuse) {
    fuse.reset();
    ::rmdir(mnt.c_str());
  }
  sys->reset();
  log::info("uvfiod", "stopped");
  return 0;
}
