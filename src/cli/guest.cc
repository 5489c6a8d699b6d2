// SPDX-License-Identifier: BSD-3-Clause
// uvfio-guest: a guest and its VMM in one program, for mlx5 VFs served over
// vfio-user. It owns memfd guest RAM, maps it for the VF, drives the VF's
// work queue with a deterministic DMA workload, checks every completion
// (cookies in order, exactly once) and checks guest RAM and device memory
// against a replay of the workload (the shadow model).
//
//   uvfio-guest run --socket A.sock
//   uvfio-guest migrate --from A.sock --to B.sock
//
// `migrate` moves the running VF from one daemon to another while the
// workload goes on: DMA logging of guest RAM, PRE_COPY rounds (device data
// and dirty guest pages) until the remaining bytes converge, STOP_COPY, the
// last dirty pages, RESUMING on the destination, RUNNING there, and the
// workload carries on at the destination, interrupts included. The data path
// between the two sides is a framed TCP stream (docs/migration-stream.md).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "base/result.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "cli/mig_channel.h"
#include <linux/pci_regs.h>

#include "hw/mlx5/mlx5_ifc.h"

namespace uvfio {
namespace {

using hw::mlx5::VfCompletion;
using hw::mlx5::VfDescriptor;
using hw::mlx5::VfOp;
namespace vfreg = hw::mlx5::vfreg;
using Clock = std::chrono::steady_clock;

// Guest RAM layout (IOVA == offset in RAM).
constexpr uint64_t kRing = 0x10000, kCq = 0x20000, kSlots = 0x100000;
constexpr uint32_t kEntries = 256, kSlotSize = 4096, kNumSlots = 64;
constexpr uint32_t kMaxOutstanding = 128;
constexpr uint64_t kPage = 4096;
constexpr uint64_t kCpuArea = 1 << 20;  // top of device memory: written by the CPU through the mmap only

std::string_view crash_at;  // --crash-at: die (SIGKILL) when reaching this step
void step(std::string_view name) {
  if (name == crash_at) {
    fmt::print(stderr, "uvfio-guest: crashing at step {}\n", name);
    kill(getpid(), SIGKILL);
  }
}

// FNV-1a 64, for reporting.
uint64_t hash(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Descriptor i of the workload: a pure function of i.
VfDescriptor descriptor(uint64_t i, uint64_t dev_size) {
  uint64_t dev_span = (dev_size - kCpuArea) / kSlotSize;
  VfDescriptor d{};
  d.length = kSlotSize;
  d.cookie = i;
  switch (i % 4) {
    case 0:
      d.opcode = static_cast<uint8_t>(VfOp::kFill);
      d.src = (i * 13 + 1) & 0xff;
      d.dst = kSlots + (i % kNumSlots) * kSlotSize;
      break;
    case 1:
      d.opcode = static_cast<uint8_t>(VfOp::kToDevice);
      d.src = kSlots + (i * 7 % kNumSlots) * kSlotSize;
      d.dst = (i * 37 % dev_span) * kSlotSize;
      break;
    case 2:
      d.opcode = static_cast<uint8_t>(VfOp::kFromDevice);
      d.src = (i * 11 % dev_span) * kSlotSize;
      d.dst = kSlots + (i * 5 % kNumSlots) * kSlotSize;
      break;
    default:
      d.opcode = static_cast<uint8_t>(VfOp::kCopy);
      d.src = kSlots + (i % kNumSlots) * kSlotSize;
      d.dst = kSlots + ((i + 17) % kNumSlots) * kSlotSize;
      break;
  }
  return d;
}

// CPU write n (through the BAR2 mmap): 8 bytes in the top MiB.
uint64_t cpu_write_offset(uint64_t n, uint64_t dev_size) { return dev_size - kCpuArea + (n * 4104) % (kCpuArea - 8); }

// The state of the guest's driver: what a VMM migrates as "CPU state".
struct GuestState {
  uint64_t posted = 0;      // descriptors posted (= next cookie = SQ tail)
  uint64_t completed = 0;   // completions consumed (= CQ head)
  uint64_t cpu_writes = 0;  // CPU writes into device memory
  uint64_t irqs = 0;        // interrupts seen
};

struct Device {
  std::unique_ptr<client::Client> c;
  uint64_t dev_size = 0;
  uint8_t* bar2 = nullptr;
  UniqueFd irq{eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  ~Device() {
    if (bar2) munmap(bar2, dev_size);
  }
  Result<uint32_t> r32(uint32_t reg) {
    uint32_t v = 0;
    TRY(c->region_read(0, reg, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), 4)));
    return v;
  }
  Result<void> w(uint32_t reg, uint64_t v, unsigned width = 4) {
    return c->region_write(0, reg, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), width));
  }
  Result<void> command(uint16_t v) {
    return c->region_write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND,
                           std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), 2));
  }
};

Result<std::unique_ptr<client::Client>> connect_retry(const std::string& path) {
  // The server may still be closing the previous client's session.
  for (int i = 0;; ++i) {
    auto c = client::Client::connect(path);
    if (c || i == 50 || (c.error().code != EBUSY && c.error().code != ECONNREFUSED)) return c;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

struct Ram {
  UniqueFd fd{memfd_create("guest-ram", MFD_CLOEXEC)};
  uint8_t* p = nullptr;
  uint64_t size = 0;
  explicit Ram(uint64_t n) : size(n) {
    if (fd.get() >= 0 && ftruncate(fd.get(), static_cast<off_t>(n)) == 0) {
      void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
      if (m != MAP_FAILED) p = static_cast<uint8_t*>(m);
    }
  }
  ~Ram() {
    if (p) munmap(p, size);
  }
};

// Connects, maps guest RAM, maps BAR2, wires MSI-X vector 0 to an eventfd and
// turns on bus mastering. `fresh`: reset the device and start a new queue.
Result<void> attach(Device& d, const std::string& path, Ram& ram, bool fresh) {
  d.c = TRY(connect_retry(path));
  auto bar2 = TRY(d.c->get_region_info(2));
  if (!bar2.mmap_fd || bar2.info.size <= kCpuArea) return Error(ENODEV, "BAR2 is not mmappable device memory");
  if (TRY(d.r32(vfreg::kId)) != vfreg::kIdValue) return Error(ENODEV, "not an mlx5 VF (BAR0 ID)");
  d.dev_size = bar2.info.size;
  void* m = mmap(nullptr, d.dev_size, PROT_READ | PROT_WRITE, MAP_SHARED, bar2.mmap_fd.get(),
                 static_cast<off_t>(bar2.info.offset));
  if (m == MAP_FAILED) return Error(errno, "mmap of BAR2");
  d.bar2 = static_cast<uint8_t*>(m);
  if (fresh) TRY(d.c->reset());
  TRY(d.c->dma_map(0, ram.size, ram.fd.get(), 0));
  TRY(d.command(PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY));
  int fds[1] = {d.irq.get()};
  TRY(d.c->set_irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, fds));
  if (fresh) {
    std::memset(d.bar2, 0, d.dev_size);
    TRY(d.w(vfreg::kSqBase, kRing, 8));
    TRY(d.w(vfreg::kSqSize, kEntries));
    TRY(d.w(vfreg::kCqBase, kCq, 8));
    TRY(d.w(vfreg::kCqSize, kEntries));
    TRY(d.w(vfreg::kCtrl, vfreg::kCtrlEnable));
    TRY(d.w(vfreg::kIrqVector, 0));
    TRY(d.w(vfreg::kIrqCtrl, 1));
  }
  return ok();
}

// The guest's driver: posts descriptors, consumes completions, checks them.
struct Workload {
  GuestState st;
  uint8_t* ram;
  uint64_t dev_size;

  // Consumes what completed, posts up to `budget` more; the CPU writes into
  // device memory through the mmap now and then.
  Result<void> pump(Device& d, uint64_t budget, bool cpu) {
    uint32_t tail = TRY(d.r32(vfreg::kCqTail));
    while (static_cast<uint32_t>(st.completed) != tail) {
      VfCompletion c;
      std::memcpy(&c, ram + kCq + (st.completed % kEntries) * sizeof(c), sizeof(c));
      uint64_t cookie = c.cookie;
      uint32_t status = c.status;
      if (cookie != st.completed) {
        fmt::print(stderr, "completion {} carries cookie {}\n", st.completed, cookie);
        return Error(EPROTO, "a completion out of order: work lost or done twice");
      }
      if (status != 0) {
        fmt::print(stderr, "descriptor {} failed: status {}\n", cookie, status);
        return Error(EIO, "a descriptor failed");
      }
      ++st.completed;
    }
    TRY(d.w(vfreg::kCqHead, static_cast<uint32_t>(st.completed)));
    uint64_t n = 0;
    while (n < budget && st.posted - st.completed < kMaxOutstanding) {
      VfDescriptor desc = descriptor(st.posted, dev_size);
      std::memcpy(ram + kRing + (st.posted % kEntries) * sizeof(desc), &desc, sizeof(desc));
      ++st.posted;
      ++n;
    }
    if (n) TRY(d.w(vfreg::kSqTail, static_cast<uint32_t>(st.posted)));
    if (cpu) {
      uint64_t v = st.cpu_writes;
      std::memcpy(d.bar2 + cpu_write_offset(st.cpu_writes, dev_size), &v, 8);
      ++st.cpu_writes;
    }
    uint64_t e;
    if (::read(d.irq.get(), &e, 8) == 8) st.irqs += e;
    return ok();
  }

  Result<void> drain(Device& d) {
    auto until = Clock::now() + std::chrono::seconds(20);
    while (st.completed != st.posted) {
      if (Clock::now() > until) return Error(ETIMEDOUT, "the device stopped completing descriptors");
      TRY(pump(d, 0, false));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return ok();
  }

  // Replays the workload from zeroed memory and compares.
  Result<void> verify(Device& d) const {
    std::vector<uint8_t> slots(kNumSlots * kSlotSize, 0);
    std::vector<uint8_t> dev(dev_size, 0);
    for (uint64_t i = 0; i < st.posted; ++i) {
      VfDescriptor x = descriptor(i, dev_size);
      switch (static_cast<VfOp>(x.opcode)) {
        case VfOp::kFill: std::memset(&slots[x.dst - kSlots], static_cast<int>(x.src), x.length); break;
        case VfOp::kToDevice: std::memcpy(&dev[x.dst], &slots[x.src - kSlots], x.length); break;
        case VfOp::kFromDevice: std::memcpy(&slots[x.dst - kSlots], &dev[x.src], x.length); break;
        default: std::memmove(&slots[x.dst - kSlots], &slots[x.src - kSlots], x.length); break;
      }
    }
    for (uint64_t n = 0; n < st.cpu_writes; ++n) std::memcpy(&dev[cpu_write_offset(n, dev_size)], &n, 8);
    uint64_t hs = hash(slots.data(), slots.size()), hd = hash(dev.data(), dev.size());
    uint64_t gs = hash(ram + kSlots, slots.size()), gd = hash(d.bar2, dev_size);
    fmt::print("verify: {} descriptors, {} CPU writes; guest RAM {:016x} (model {:016x}), device memory {:016x} "
               "(model {:016x})\n",
               st.posted, st.cpu_writes, gs, hs, gd, hd);
    if (gs != hs) return Error(EIO, "guest RAM differs from the model");
    if (gd != hd) return Error(EIO, "device memory differs from the model");
    return ok();
  }
};

Result<void> run_for(Workload& wl, Device& d, std::chrono::milliseconds t) {
  auto until = Clock::now() + t;
  while (Clock::now() < until) {
    TRY(wl.pump(d, 32, true));
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return ok();
}

// After (re)attaching: interrupts still arrive.
Result<void> check_irq(Workload& wl, Device& d) {
  uint64_t before = wl.st.irqs;
  TRY(wl.pump(d, 8, false));
  TRY(wl.drain(d));
  pollfd p{d.irq.get(), POLLIN, 0};
  if (wl.st.irqs == before && poll(&p, 1, 2000) != 1) return Error(ETIMEDOUT, "no MSI-X interrupt");
  uint64_t e;
  if (::read(d.irq.get(), &e, 8) == 8) wl.st.irqs += e;
  return ok();
}

// ---- The migration stream (docs/migration-stream.md, "transport") ----------

// kSync: the destination answers one byte once it has applied everything
// before it, so the source stops the device only when the destination has
// caught up (the downtime is then the stop-copy alone).
enum FrameKind : uint32_t { kRamPages = 1, kDeviceData = 2, kGuestCpu = 3, kEnd = 4, kSync = 5 };
struct __attribute__((packed)) Frame {
  uint32_t kind;
  uint32_t rsvd;
  uint64_t addr;  // kRamPages: guest offset
  uint64_t len;
};

Result<void> send_frame(mig::Channel& ch, uint32_t kind, uint64_t addr, const void* p, uint64_t len) {
  Frame f{kind, 0, addr, len};
  TRY(ch.write_all(&f, sizeof(f)));
  if (len) TRY(ch.write_all(p, len));
  return ok();
}

// A loopback TCP connection: the two ends of the data path when both VFs
// are driven by this process.
Result<std::pair<std::unique_ptr<mig::Channel>, std::unique_ptr<mig::Channel>>> local_pair() {
  UniqueFd l(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (l.get() < 0 || bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l.get(), 1) != 0 ||
      getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &al) != 0)
    return Error(errno, "TCP listen");
  UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (c.get() < 0 || connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
    return Error(errno, "TCP connect");
  UniqueFd s(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (s.get() < 0) return Error(errno, "TCP accept");
  int one = 1;
  setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return std::pair{mig::plain_channel(std::move(c)), mig::plain_channel(std::move(s))};
}

// ---- The header: what the source offers, checked before anything loads ----

// Sent first (after authentication); the destination answers a Verdict and
// enters RESUMING only if it accepts.
struct __attribute__((packed)) Hello {
  char magic[8];  // "UVFIOMIG"
  uint32_t version;
  uint32_t size;  // sizeof(Hello)
  uint16_t vendor, device, subsys_vendor, subsys_device;
  uint64_t dev_size;  // device memory (BAR2)
  uint64_t ram_size;  // guest RAM
};
constexpr char kMagic[8] = {'U', 'V', 'F', 'I', 'O', 'M', 'I', 'G'};
constexpr uint32_t kStreamVersion = 1;
struct __attribute__((packed)) Verdict {
  uint32_t code;  // 0: accepted, else an errno
  uint32_t len;   // the reason's length, at most kMaxReason
};
constexpr uint32_t kMaxReason = 512;

Result<Hello> hello_of(Device& d, uint64_t ram_size) {
  Hello h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kStreamVersion;
  h.size = sizeof(Hello);
  uint16_t ids[2], sub[2];
  TRY(d.c->region_read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_VENDOR_ID,
                       std::span<uint8_t>(reinterpret_cast<uint8_t*>(ids), 4)));
  TRY(d.c->region_read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_SUBSYSTEM_VENDOR_ID,
                       std::span<uint8_t>(reinterpret_cast<uint8_t*>(sub), 4)));
  h.vendor = ids[0];
  h.device = ids[1];
  h.subsys_vendor = sub[0];
  h.subsys_device = sub[1];
  h.dev_size = d.dev_size;
  h.ram_size = ram_size;
  return h;
}

// Empty when `offer` fits the destination `mine`, else why not.
std::string mismatch(const Hello& offer, const Hello& mine) {
  if (std::memcmp(offer.magic, kMagic, 8) != 0)
    return offer.magic[0] == 0x16 ? "not a uvfio migration stream (a TLS client? this end is plain TCP)"
                                  : "not a uvfio migration stream";
  if (offer.version != kStreamVersion || offer.size != sizeof(Hello))
    return fmt::format("stream version {} (size {}), this end speaks version {}", offer.version, offer.size,
                       kStreamVersion);
  if (offer.vendor != mine.vendor || offer.device != mine.device || offer.subsys_vendor != mine.subsys_vendor ||
      offer.subsys_device != mine.subsys_device)
    return fmt::format("device {:04x}:{:04x} (subsystem {:04x}:{:04x}), the destination VF is {:04x}:{:04x} "
                       "(subsystem {:04x}:{:04x})",
                       offer.vendor, offer.device, offer.subsys_vendor, offer.subsys_device, mine.vendor, mine.device,
                       mine.subsys_vendor, mine.subsys_device);
  if (offer.dev_size != mine.dev_size)
    return fmt::format("different device memory sizes: {} MiB offered, the destination VF has {} MiB",
                       offer.dev_size >> 20, mine.dev_size >> 20);
  if (offer.ram_size != mine.ram_size)
    return fmt::format("different guest RAM sizes: {} MiB offered, the destination has {} MiB (--ram)",
                       offer.ram_size >> 20, mine.ram_size >> 20);
  return "";
}

// Source: offer, and learn whether the destination takes it.
Result<void> offer(mig::Channel& ch, const Hello& h) {
  TRY(ch.write_all(&h, sizeof(h)));
  Verdict v{};
  if (auto r = ch.read_all(&v, sizeof(v)); !r) {
    if (r.error().code == EPIPE || r.error().code == ECONNRESET)
      return Error(ECONNRESET, "the destination closed the connection before accepting (does it use the same "
                               "--tls-* options, or --insecure on both ends?)");
    return r.error();
  }
  if (v.code == 0) return ok();
  std::string why(std::min(v.len, kMaxReason), '\0');
  TRY(ch.read_all(why.data(), why.size()));
  return mig::error_text(v.code, "the destination refused the migration: " + why);
}

// Destination: read the offer; one that does not fit is refused here (the
// peer hears why, if it speaks this protocol).
Result<void> check_offer(mig::Channel& ch, const Hello& mine) {
  Hello h{};
  TRY(ch.read_all(&h, sizeof(h)));
  std::string why = mismatch(h, mine);
  if (why.empty()) return ok();
  if (std::memcmp(h.magic, kMagic, 8) == 0) {
    Verdict v{static_cast<uint32_t>(EINVAL), static_cast<uint32_t>(std::min<size_t>(why.size(), kMaxReason))};
    TRY(ch.write_all(&v, sizeof(v)));
    TRY(ch.write_all(why.data(), v.len));
    TRY(ch.flush());
  }
  return mig::error_text(EINVAL, "the offer does not fit: " + why);
}

Result<void> accept_offer(mig::Channel& ch) {
  Verdict v{0, 0};
  TRY(ch.write_all(&v, sizeof(v)));
  return ch.flush();
}

// The destination: RESUMING, everything from the stream, RUNNING.
struct DestResult {
  Result<void> r = ok();
  GuestState st;
};
void destination(mig::Channel& in, Device& b, Ram& ram, DestResult& out) {
  auto body = [&]() -> Result<void> {
    TRY(b.c->set_mig_state(vfio::MigState::kResuming));
    std::vector<uint8_t> buf;
    for (;;) {
      Frame f;
      TRY(in.read_all(&f, sizeof(f)));
      if (f.kind == kEnd) break;
      if (f.kind == kSync) {
        uint8_t ack = 1;
        TRY(in.write_all(&ack, 1));
        continue;
      }
      if (f.len > (64u << 20)) return Error(EPROTO, "oversized frame");
      buf.resize(f.len);
      TRY(in.read_all(buf.data(), f.len));
      switch (f.kind) {
        case kRamPages:
          if (f.addr > ram.size || f.len > ram.size - f.addr) return Error(EPROTO, "RAM frame outside guest RAM");
          std::memcpy(ram.p + f.addr, buf.data(), f.len);
          break;
        case kDeviceData:
          for (size_t at = 0; at < buf.size(); at += 1 << 20)
            TRY(b.c->mig_data_write(std::span<const uint8_t>(buf.data() + at, std::min<size_t>(1 << 20, buf.size() - at))));
          break;
        case kGuestCpu:
          if (f.len != sizeof(GuestState)) return Error(EPROTO, "bad CPU frame");
          std::memcpy(&out.st, buf.data(), sizeof(GuestState));
          break;
        default: return Error(EPROTO, "unknown frame");
      }
    }
    step("loaded");
    TRY(b.c->set_mig_state(vfio::MigState::kRunning));
    uint8_t running = 1;  // tells the source the guest runs here now
    TRY(in.write_all(&running, 1));
    TRY(in.flush());
    return ok();
  };
  out.r = body();
}

// How long either end of a running stream waits for the other.
constexpr std::chrono::milliseconds kStreamTimeout{60000};

struct Options {
  std::string from, to, socket, to_tcp, listen;
  mig::TlsOptions tls;
  std::string ram = "8";  // MiB
  unsigned max_rounds = 10;
  double converge = 0.03;
  unsigned run_ms = 300;
};

// DMA logging of all guest RAM (page size 4 KiB), vfio-user layout: the
// ranges follow the control struct.
Result<void> logging_start(Device& d, uint64_t ram_size) {
  std::vector<uint8_t> p(16 + 16, 0);
  uint64_t page = kPage, iova = 0;
  uint32_t nr = 1;
  std::memcpy(p.data(), &page, 8);
  std::memcpy(p.data() + 8, &nr, 4);
  std::memcpy(p.data() + 16, &iova, 8);
  std::memcpy(p.data() + 24, &ram_size, 8);
  TRY(d.c->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, p));
  return ok();
}

// Pages the device wrote since the last report (and clears them).
Result<std::vector<uint64_t>> logging_report(Device& d, uint64_t ram_size) {
  uint64_t q[3] = {0, ram_size, kPage};
  uint64_t pages = ram_size / kPage;
  auto r = TRY(d.c->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                                   std::span<const uint8_t>(reinterpret_cast<uint8_t*>(q), sizeof(q)),
                                   sizeof(q) + (pages + 63) / 64 * 8));
  if (r.size() < 24 + (pages + 7) / 8) return Error(EPROTO, "short DMA logging report");
  std::vector<uint64_t> out;
  for (uint64_t p = 0; p < pages; ++p)
    if (r[24 + p / 8] >> (p % 8) & 1) out.push_back(p);
  return out;
}

Result<void> send_pages(mig::Channel& out, const Ram& ram, const std::vector<uint64_t>& pages) {
  for (uint64_t p : pages) TRY(send_frame(out, kRamPages, p * kPage, ram.p + p * kPage, kPage));
  return ok();
}

// The pages the guest's CPU writes: its descriptor ring (a VMM learns those
// from its own dirty log, not the device's).
std::vector<uint64_t> cpu_pages() {
  std::vector<uint64_t> v;
  for (uint64_t a = kRing; a < kRing + kEntries * sizeof(VfDescriptor); a += kPage) v.push_back(a / kPage);
  return v;
}

// The source side: everything of the guest goes to `out`; returns once the
// destination says the guest runs there.
Result<void> source(const Options& o, Device& a, Ram& ram_a, Workload& wl, mig::Channel& out) {
  uint64_t ram_size = ram_a.size;
  TRY(logging_start(a, ram_size));
  step("logging");
  TRY(a.c->set_mig_state(vfio::MigState::kPreCopy));
  step("precopy");
  // Round 0 sends all of RAM; later rounds the pages dirtied meanwhile.
  std::vector<uint64_t> all(ram_size / kPage);
  for (uint64_t p = 0; p < all.size(); ++p) all[p] = p;
  TRY(send_pages(out, ram_a, all));
  std::vector<uint8_t> buf(1 << 20);
  uint64_t initial = 0, total = 0;
  double secs = 0;  // time spent moving device data
  for (unsigned round = 0;; ++round) {
    uint64_t bytes = 0;
    auto r0 = Clock::now();
    for (;;) {
      auto n = a.c->mig_data_read(buf);
      if (!n && n.error().code == ENOMSG) break;
      if (!n) return n.error();
      if (*n == 0) return Error(EPROTO, "end of stream in PRE_COPY");
      TRY(send_frame(out, kDeviceData, 0, buf.data(), *n));
      bytes += *n;
      if (bytes > 4 * a.dev_size + (64u << 20)) return Error(EPROTO, "pre-copy round does not end");
    }
    auto dirty = TRY(logging_report(a, ram_size));
    auto cpu = cpu_pages();
    dirty.insert(dirty.end(), cpu.begin(), cpu.end());
    TRY(send_pages(out, ram_a, dirty));
    if (round == 0) initial = bytes;
    total += bytes;
    secs += std::chrono::duration<double>(Clock::now() - r0).count();
    double rate = static_cast<double>(total) / std::max(secs, 1e-6);
    fmt::print("pre-copy round {}: {} device bytes, {} guest pages; estimated downtime {:.1f} ms\n", round, bytes,
               dirty.size(), 1e3 * static_cast<double>(bytes + dirty.size() * kPage) / rate);
    std::fflush(stdout);
    step("round");
    if (round > 0 &&
        (static_cast<double>(bytes) <= o.converge * static_cast<double>(initial) || round + 1 >= o.max_rounds))
      break;
    TRY(run_for(wl, a, std::chrono::milliseconds(50)));  // the guest keeps working between rounds
  }
  TRY(send_frame(out, kSync, 0, nullptr, 0));
  uint8_t ack;
  TRY(out.read_all(&ack, 1));
  // Stop: the last device data, the last dirty pages, the CPU state.
  auto stop_at = Clock::now();
  TRY(a.c->set_mig_state(vfio::MigState::kStopCopy));
  step("stopcopy");
  uint64_t final_bytes = 0;
  for (;;) {
    size_t n = TRY(a.c->mig_data_read(buf));
    if (n == 0) break;
    TRY(send_frame(out, kDeviceData, 0, buf.data(), n));
    final_bytes += n;
  }
  auto dirty = TRY(logging_report(a, ram_size));
  auto cpu = cpu_pages();
  dirty.insert(dirty.end(), cpu.begin(), cpu.end());
  TRY(send_pages(out, ram_a, dirty));
  TRY(send_frame(out, kGuestCpu, 0, &wl.st, sizeof(wl.st)));
  TRY(send_frame(out, kEnd, 0, nullptr, 0));
  step("sent");
  uint8_t running = 0;
  if (!out.read_all(&running, 1) || running != 1) return Error(EIO, "the destination did not resume the device");
  TRY(a.c->set_mig_state(vfio::MigState::kStop));
  double downtime = std::chrono::duration<double, std::milli>(Clock::now() - stop_at).count();
  fmt::print("stop-copy: {} device bytes ({:.2f}% of the initial {}), {} guest pages; downtime {:.1f} ms\n",
             final_bytes, 100.0 * static_cast<double>(final_bytes) / static_cast<double>(std::max<uint64_t>(initial, 1)),
             initial, dirty.size(), downtime);
  return ok();
}

// The guest lives on at the destination: same CPU state, its RAM copy.
Result<void> carry_on(const Options& o, Device& b, Ram& ram_b, const GuestState& st) {
  step("running");
  Workload wb{st, ram_b.p, b.dev_size};
  TRY(check_irq(wb, b));
  TRY(run_for(wb, b, std::chrono::milliseconds(o.run_ms)));
  TRY(wb.drain(b));
  fmt::print("destination: {} descriptors done in all, every cookie once, {} interrupts after migration\n",
             wb.st.completed, wb.st.irqs - st.irqs);
  return wb.verify(b);
}

void warn_insecure(const std::string& where) {
  fmt::print(stderr,
             "uvfio-guest: warning: the migration stream {} is plain TCP (--insecure): anyone on the path reads the "
             "guest's memory and device state, and anyone who reaches it can feed the destination a device state\n",
             where);
}

Result<void> migrate(const Options& o) {
  uint64_t ram_size = std::stoull(o.ram) << 20;
  Ram ram_a(ram_size);
  if (!ram_a.p) return Error(ENOMEM, "guest RAM");
  Device a;
  TRY(attach(a, o.from, ram_a, true));
  step("connected");
  Hello mine = TRY(hello_of(a, ram_size));
  // The destination: a `uvfio-guest receive` (maybe on another host), or a
  // VF this program drives itself. Either way it accepts the offer before
  // the source VF leaves RUNNING.
  std::unique_ptr<mig::Channel> remote;
  std::optional<Ram> ram_b;
  Device b;
  if (!o.to_tcp.empty()) {
    if (o.tls.insecure) warn_insecure("to " + o.to_tcp);
    remote = TRY(mig::connect(o.to_tcp, o.tls));
    fmt::print("channel to {}: {}\n", o.to_tcp, o.tls.insecure ? "plain TCP (--insecure)" : remote->describe());
    TRY(offer(*remote, mine));
    remote->set_timeout(kStreamTimeout);
  } else {
    ram_b.emplace(ram_size);
    if (!ram_b->p) return Error(ENOMEM, "guest RAM");
    TRY(attach(b, o.to, *ram_b, true));
    if (auto why = mismatch(mine, TRY(hello_of(b, ram_size))); !why.empty())
      return mig::error_text(EINVAL, "the destination refused the migration: " + why);
  }
  Workload wl{{}, ram_a.p, a.dev_size};
  TRY(run_for(wl, a, std::chrono::milliseconds(o.run_ms)));
  TRY(check_irq(wl, a));
  fmt::print("source: {} descriptors done, {} interrupts; migrating ({} MiB device memory, {} MiB RAM) to {}\n",
             wl.st.completed, wl.st.irqs, a.dev_size >> 20, ram_size >> 20, remote ? o.to_tcp : o.to);
  if (remote) {
    auto t0 = Clock::now();
    auto r = source(o, a, ram_a, wl, *remote);
    remote->shutdown();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r)
      fmt::print("stream: {:.1f} MiB in {:.3f} s, {:.0f} MiB/s ({})\n", static_cast<double>(remote->bytes_out()) / (1 << 20),
                 secs, static_cast<double>(remote->bytes_out()) / (1 << 20) / secs, remote->describe());
    return r;
  }
  auto [out, in] = TRY(local_pair());
  DestResult dres;
  std::thread dest([&, in = in.get()] { destination(*in, b, *ram_b, dres); });
  auto result = source(o, a, ram_a, wl, *out);
  out->shutdown();  // a failed source: the destination sees the stream end
  dest.join();
  TRY(std::move(result));
  TRY(std::move(dres.r));
  return carry_on(o, b, *ram_b, dres.st);
}

// The destination side as its own program: takes one migration from a
// `migrate --to-tcp` and runs the guest on. A connection that fails
// authentication or offers what this VF cannot take is refused and
// reported, before anything is loaded; listening goes on.
Result<void> receive(const Options& o) {
  uint64_t ram_size = std::stoull(o.ram) << 20;
  Ram ram(ram_size);
  if (!ram.p) return Error(ENOMEM, "guest RAM");
  if (o.tls.insecure) warn_insecure("on " + o.listen);
  auto l = TRY(mig::Listener::listen(o.listen, o.tls));
  Device b;
  TRY(attach(b, o.socket, ram, true));
  Hello mine = TRY(hello_of(b, ram_size));
  fmt::print("listening on {} ({})\n", o.listen, o.tls.insecure ? "plain TCP, --insecure"
                                                  : !o.tls.x509_dir.empty() ? "TLS 1.3, X.509" : "TLS 1.3, PSK");
  std::fflush(stdout);
  auto in = TRY(l->next([&](mig::Channel& ch) { return check_offer(ch, mine); },
                        [](const std::string& why) {
                          fmt::print("{}\n", why);
                          std::fflush(stdout);
                        }));
  TRY(accept_offer(*in));
  fmt::print("channel: {}\n", in->describe());
  in->set_timeout(kStreamTimeout);
  DestResult dres;
  destination(*in, b, ram, dres);
  TRY(std::move(dres.r));
  return carry_on(o, b, ram, dres.st);
}

Result<void> run(const Options& o) {
  uint64_t ram_size = std::stoull(o.ram) << 20;
  Ram ram(ram_size);
  if (!ram.p) return Error(ENOMEM, "guest RAM");
  Device d;
  TRY(attach(d, o.socket, ram, true));
  Workload wl{{}, ram.p, d.dev_size};
  TRY(run_for(wl, d, std::chrono::milliseconds(o.run_ms)));
  TRY(check_irq(wl, d));
  TRY(wl.drain(d));
  fmt::print("{} descriptors done, every cookie once, {} interrupts\n", wl.st.completed, wl.st.irqs);
  return wl.verify(d);
}

}  // namespace
}  // namespace uvfio

int main(int argc, char** argv) {
  using namespace uvfio;
  CLI::App app{"uvfio-guest: a guest and its VMM for mlx5 VFs over vfio-user"};
  app.require_subcommand(1);
  Options o;
  std::string crash;
  auto* r = app.add_subcommand("run", "Run the DMA workload on one VF and check it");
  r->add_option("--socket", o.socket, "The VF's vfio-user socket")->required();
  r->add_option("--ms", o.run_ms, "How long to run")->capture_default_str();
  auto* m = app.add_subcommand("migrate", "Run the workload and migrate the VF to another daemon while it runs");
  m->add_option("--from", o.from, "Source VF's vfio-user socket")->required();
  auto* to = m->add_option("--to", o.to, "Destination VF's vfio-user socket (both sides in this process)");
  auto* to_tcp = m->add_option("--to-tcp", o.to_tcp, "A `uvfio-guest receive` at HOST:PORT ([IPV6]:PORT, a host name)");
  to->excludes(to_tcp);
  m->add_option("--max-rounds", o.max_rounds, "Most pre-copy rounds")->capture_default_str()->check(CLI::Range(1, 1000));
  m->add_option("--converge", o.converge, "Stop pre-copy when a round is below this fraction of the first")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  m->add_option("--ms", o.run_ms, "Workload time before and after the migration")->capture_default_str();
  m->add_option("--crash-at", crash,
                "Die (SIGKILL) at a step: connected, logging, precopy, round, stopcopy, sent, loaded, running")
      ->check(CLI::IsMember({"connected", "logging", "precopy", "round", "stopcopy", "sent", "loaded", "running"}));
  auto* rc = app.add_subcommand("receive", "Be the destination of a `migrate --to-tcp`, then run the guest on");
  rc->add_option("--socket", o.socket, "The destination VF's vfio-user socket")->required();
  rc->add_option("--listen", o.listen, "[HOST:]PORT to listen on ([IPV6]:PORT; PORT alone: every address)")->required();
  rc->add_option("--ms", o.run_ms, "Workload time after the migration")->capture_default_str();
  for (auto* s : {r, m, rc})
    s->add_option("--ram", o.ram, "Guest RAM in MiB")->capture_default_str()->check(CLI::Range(2, 4096));
  unsigned timeout_ms = 10000;
  for (auto* s : {m, rc}) {
    auto* x = s->add_option("--tls-x509-dir", o.tls.x509_dir,
                            "TLS 1.3 with X.509: DIR has ca-cert.pem and client-cert.pem/client-key.pem (migrate) or "
                            "server-cert.pem/server-key.pem (receive), as QEMU's tls-creds-x509");
    auto* p = s->add_option("--tls-psk-file", o.tls.psk_file,
                            "TLS 1.3 with a pre-shared key: FILE has lines IDENTITY:HEXKEY, as QEMU's tls-creds-psk");
    x->excludes(p);
    auto* i = s->add_flag("--insecure", o.tls.insecure,
                          "Plain TCP: no authentication, no encryption (anyone on the path reads the guest)");
    i->excludes(x)->excludes(p);
    s->add_option("--timeout-ms", timeout_ms, "Connecting, the TLS handshake and the header each within this")
        ->capture_default_str()
        ->check(CLI::Range(100u, 600000u));
  }
  m->add_option("--tls-psk-user", o.tls.psk_user, "The PSK identity to use")->capture_default_str();
  rc->add_option("--tls-authz", o.tls.authz,
                 "With --tls-x509-dir: admit only sources whose certificate has this common name (repeatable)");
  m->add_option("--tls-hostname", o.tls.hostname,
                "The name the destination's certificate must carry (default: the host of --to-tcp)");
  CLI11_PARSE(app, argc, argv);
  // A peer that goes away (the destination daemon, the other uvfio-guest)
  // is an error reported in words with a non-zero exit, never a SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  // Progress lines reach a log file as they happen, not at exit.
  setvbuf(stdout, nullptr, _IOLBF, 0);
  crash_at = crash;
  o.tls.timeout = std::chrono::milliseconds(timeout_ms);
  bool over_tcp = (app.got_subcommand(m) && !o.to_tcp.empty()) || app.got_subcommand(rc);
  if (over_tcp && !o.tls.tls() && !o.tls.insecure) {
    fmt::print(stderr, "uvfio-guest: the migration stream over TCP needs credentials: --tls-x509-dir DIR or "
                       "--tls-psk-file FILE (or --insecure for plain TCP)\n");
    return 2;
  }
  if (!o.tls.authz.empty() && o.tls.x509_dir.empty()) {
    fmt::print(stderr, "uvfio-guest: --tls-authz needs --tls-x509-dir\n");
    return 2;
  }
  if (!over_tcp && (o.tls.tls() || o.tls.insecure)) {
    fmt::print(stderr, "uvfio-guest: --tls-*/--insecure apply to --to-tcp and receive only\n");
    return 2;
  }
  if (app.got_subcommand(m) && o.to.empty() && o.to_tcp.empty()) {
    fmt::print(stderr, "uvfio-guest: migrate needs --to SOCKET or --to-tcp HOST:PORT\n");
    return 2;
  }
  auto res = app.got_subcommand(m) ? migrate(o) : app.got_subcommand(rc) ? receive(o) : run(o);
  if (!res) {
    fmt::print(stderr, "uvfio-guest: {}\n", to_string(res.error()));
    return 1;
  }
  return 0;
}
