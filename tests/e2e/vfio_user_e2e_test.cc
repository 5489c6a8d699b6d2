// SPDX-License-Identifier: BSD-3-Clause
// QEMU 10.2's vfio-user-pci connect sequence (reference/vfio-user.md §2.1),
// played byte for byte against uvfiod, then a guest-like workload: BAR
// registers, the mmapped BAR, device DMA into memfd guest RAM, MSI-X and
// INTx delivered, system reset, and a reconnect that keeps device state.
#include <poll.h>
#include <future>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "e2e/harness.h"
#include "client/client.h"
#include "hw/endpoint.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

const char* kTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

using EP = hw::GenericEndpoint;
constexpr uint64_t kRam = 0x100000, kRamSize = 2 << 20;

int64_t efd_wait(int fd, int ms = 2000) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, ms) != 1) return -1;
  uint64_t v;
  if (::read(fd, &v, 8) != 8) return -1;
  return static_cast<int64_t>(v);
}

struct Guest {
  UniqueFd mem{memfd_create("guest-ram", MFD_CLOEXEC)};
  uint8_t* ram = nullptr;
  Guest() {
    EXPECT_EQ(ftruncate(mem.get(), kRamSize), 0);
    ram = static_cast<uint8_t*>(mmap(nullptr, kRamSize, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
  }
  ~Guest() { munmap(ram, kRamSize); }
};

class QemuSequence : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = make_tmpdir("qemu");
    std::ofstream(dir + "/topo.toml") << kTopology;
    d = std::make_unique<Daemon>(std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse"}, "qemu");
    ASSERT_TRUE(d->wait_ready()) << d->log();
    sock = d->rundir() + "/vfio-user/0000:00:03.0.sock";
  }
  void TearDown() override {
    EXPECT_EQ(d->stop(), 0) << d->log();
    d.reset();
    sh("rm -rf " + dir);
  }
  uint32_t read32(Raw& r, uint32_t region, uint64_t off) {
    Message m;
    EXPECT_EQ(r.call(kRegionRead, region_access(region, off, 4), {}, &m), 0);
    uint32_t v = 0;
    if (m.payload.size() == 20) std::memcpy(&v, m.payload.data() + 16, 4);
    return v;
  }
  void write32(Raw& r, uint32_t region, uint64_t off, uint32_t v) {
    std::vector<uint8_t> data(4);
    std::memcpy(data.data(), &v, 4);
    EXPECT_EQ(r.call(kRegionWrite, region_access(region, off, 4, data)), 0);
  }
  // DMA_GO is posted: the copy's status, once it is done.
  uint32_t dma_status(Raw& r) {
    uint32_t v = EP::kDmaBusy;
    for (int i = 0; i < 1000 && v == EP::kDmaBusy; ++i) {
      v = read32(r, 0, EP::kRegDmaStatus);
      if (v == EP::kDmaBusy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return v;
  }
  void write64(Raw& r, uint32_t region, uint64_t off, uint64_t v) {
    std::vector<uint8_t> data(8);
    std::memcpy(data.data(), &v, 8);
    EXPECT_EQ(r.call(kRegionWrite, region_access(region, off, 8, data)), 0);
  }
  int set_irqs(Raw& r, uint32_t flags, uint32_t index, uint32_t start, uint32_t count, std::vector<int> fds = {}) {
    vfio_irq_set s{sizeof(vfio_irq_set), flags, index, start, count};
    auto p = b(s);
    p.resize(sizeof(vfio_irq_set));
    return r.call(kDeviceSetIrqs, p, fds);
  }

  std::string dir, sock;
  std::unique_ptr<Daemon> d;
};

TEST_F(QemuSequence, ConnectRealizeAndGuestWorkload) {
  Raw r(sock);
  ASSERT_TRUE(r.connected());
  // 1. VERSION, exactly QEMU's 214-byte message.
  std::string js =
      R"({"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}})";
  std::vector<uint8_t> v{0, 0, 0, 0};
  v.insert(v.end(), js.begin(), js.end());
  v.push_back(0);
  ASSERT_EQ(16 + v.size(), 214u);
  Message m;
  ASSERT_EQ(r.call(kVersion, v, {}, &m), 0);
  ASSERT_LE(16 + m.payload.size(), 214u) << "reply larger than QEMU's receive buffer";
  ASSERT_GT(m.payload.size(), 4u);
  EXPECT_EQ(m.payload.back(), 0) << "JSON not NUL-terminated";
  uint16_t major, minor;
  std::memcpy(&major, m.payload.data(), 2);
  std::memcpy(&minor, m.payload.data() + 2, 2);
  EXPECT_EQ(major, 0);
  EXPECT_EQ(minor, 0);
  auto caps = nlohmann::json::parse(std::string(reinterpret_cast<char*>(m.payload.data()) + 4))["capabilities"];
  EXPECT_LE(caps["max_msg_fds"].get<int>(), 16);
  EXPECT_LE(caps["max_data_xfer_size"].get<uint64_t>(), 64u << 20);
  EXPECT_EQ(caps["pgsizes"].get<uint64_t>() & 0xfff, 0u);
  EXPECT_LE(caps["max_dma_maps"].get<int>(), 65535);
  EXPECT_FALSE(caps.contains("twin_socket"));

  // 2. Pipelined DMA_MAPs before GET_INFO: RAM with its memfd, a ROM without.
  Guest g;
  DmaMapMsg ram{32, kDmaFlagRead | kDmaFlagWrite, 0, kRam, kRamSize};
  DmaMapMsg rom{32, kDmaFlagRead, 0, 0xc0000, 0x40000};
  r.send(kDmaMap, b(ram), 0, {g.mem.get()});
  r.send(kDmaMap, b(rom));
  EXPECT_EQ(r.reply_errno(), 0);
  EXPECT_EQ(r.reply_errno(), 0);

  // 3. GET_INFO, QEMU's 16 bytes (VFIOUserDeviceInfo); the reply is 16 too.
  DeviceInfoMsg info{16, 0, 0, 0};
  ASSERT_EQ(r.call(kDeviceGetInfo, b(info), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u);
  std::memcpy(&info, m.payload.data(), sizeof(info));
  EXPECT_TRUE(info.flags & VFIO_DEVICE_FLAGS_PCI);
  EXPECT_TRUE(info.flags & VFIO_DEVICE_FLAGS_RESET);
  EXPECT_GE(info.num_regions, 8u);
  EXPECT_LE(info.num_regions, 100u);
  EXPECT_GE(info.num_irqs, 3u);
  EXPECT_LE(info.num_irqs, 50u);

  // 4. GET_REGION_INFO 0-5 then 7, argsz 32 first.
  UniqueFd bar2_fd;
  vfio_region_info bar2{};
  for (uint32_t idx : {0u, 1u, 2u, 3u, 4u, 5u, 7u}) {
    vfio_region_info q{};
    q.argsz = 32;
    q.index = idx;
    Message rm;
    ASSERT_EQ(r.call(kDeviceGetRegionInfo, b(q), {}, &rm), 0) << idx;
    ASSERT_LE(rm.payload.size(), 32u) << "reply beyond argsz, index " << idx;
    vfio_region_info got;
    std::memcpy(&got, rm.payload.data(), sizeof(got));
    EXPECT_LE(rm.fds.size(), 1u);
    if ((got.flags & VFIO_REGION_INFO_FLAG_CAPS) && got.cap_offset == 0) {
      ASSERT_GT(got.argsz, 32u);
      q.argsz = got.argsz;
      ASSERT_EQ(r.call(kDeviceGetRegionInfo, b(q), {}, &rm), 0);
      std::memcpy(&got, rm.payload.data(), sizeof(got));
      EXPECT_GE(got.cap_offset, 32u);
      EXPECT_LE(got.cap_offset, got.argsz);
      EXPECT_EQ(rm.payload.size(), got.argsz);
    }
    if (idx == 7) {
      EXPECT_EQ(got.size, 4096u);
    }
    if (idx == 2) {
      ASSERT_TRUE(got.flags & VFIO_REGION_INFO_FLAG_MMAP);
      ASSERT_EQ(rm.fds.size(), 1u);
      bar2 = got;
      bar2_fd = std::move(rm.fds[0]);
    }
  }

  // 6. Config space: one read of all of it, ROM BAR sizing, pin.
  Message cm;
  ASSERT_EQ(r.call(kRegionRead, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4096), {}, &cm), 0);
  ASSERT_EQ(cm.payload.size(), 16u + 4096);
  uint32_t id;
  std::memcpy(&id, cm.payload.data() + 16, 4);
  EXPECT_EQ(id, 0x00051b36u);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_ROM_ADDRESS, 0xfffff800);
  EXPECT_EQ(read32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_ROM_ADDRESS), 0u);  // no ROM
  EXPECT_EQ(read32(r, VFIO_PCI_CONFIG_REGION_INDEX, 0x3c) >> 8 & 0xff, 1u);  // pin A
  // Guest config writes are forwarded, BARs included; bus master for DMA.
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_BASE_ADDRESS_0, 0xfe000000);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

  // 5/7. IRQ info and setup: ERR, then MSI-X. QEMU enables MSI-X with no
  // vectors; with NORESIZE, when the guest uses more it disables all and
  // re-enables the whole range, fds chunked by max_msg_fds.
  vfio_irq_info ii{sizeof(vfio_irq_info), 0, VFIO_PCI_MSIX_IRQ_INDEX, 0};
  ASSERT_EQ(r.call(kDeviceGetIrqInfo, b(ii), {}, &m), 0);
  std::memcpy(&ii, m.payload.data(), sizeof(ii));
  EXPECT_EQ(ii.count, 8u);
  EXPECT_TRUE(ii.flags & VFIO_IRQ_INFO_NORESIZE);
  UniqueFd err(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_ERR_IRQ_INDEX, 0, 1,
                     {err.get()}),
            0);
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1), 0);
  std::vector<UniqueFd> vec;
  std::vector<int> raw;
  for (uint32_t i = 0; i < 8; ++i) {
    vec.emplace_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    raw.push_back(vec.back().get());
  }
  // Vector 1 is beyond what was enabled: refused without resizing.
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 1, 1,
                     {raw[1]}),
            EINVAL);
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0), 0);
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 8, raw),
            0);
  // A chunk with the EVENTFD flag and no fds de-assigns (vector 7), and one
  // vector can be re-assigned alone.
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 7, 1), 0);
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 6, 1,
                     {raw[6]}),
            0);

  // Guest workload: registers.
  EXPECT_EQ(read32(r, 0, EP::kRegId), EP::kIdValue);
  write32(r, 0, EP::kRegScratch, 0xcafef00d);
  EXPECT_EQ(read32(r, 0, EP::kRegScratch), 0xcafef00du);
  // The mmapped BAR and REGION_READ/WRITE see the same bytes.
  void* p = mmap(nullptr, bar2.size, PROT_READ | PROT_WRITE, MAP_SHARED, bar2_fd.get(), static_cast<off_t>(bar2.offset));
  ASSERT_NE(p, MAP_FAILED);
  static_cast<uint32_t*>(p)[100] = 0x12345678;
  EXPECT_EQ(read32(r, 2, 400), 0x12345678u);
  write32(r, 2, 404, 0x9abcdef0);
  EXPECT_EQ(static_cast<uint32_t*>(p)[101], 0x9abcdef0u);
  munmap(p, bar2.size);
  // Interrupts: the device raises MSI-X vector 3.
  write32(r, 0, EP::kRegIrq, 3);
  EXPECT_EQ(efd_wait(vec[3].get()), 1);
  EXPECT_EQ(efd_wait(vec[2].get(), 50), -1);
  write32(r, 0, EP::kRegIrq, 7);  // de-assigned: nothing
  EXPECT_EQ(efd_wait(vec[7].get(), 50), -1);
  // DMA: the device copies one page of guest RAM to another, through the
  // memfd the client mapped.
  for (int i = 0; i < 4096; ++i) g.ram[i] = static_cast<uint8_t>(i * 7);
  write64(r, 0, EP::kRegDmaSrc, kRam);
  write64(r, 0, EP::kRegDmaDst, kRam + 8192);
  write32(r, 0, EP::kRegDmaLen, 4096);
  write32(r, 0, EP::kRegDmaGo, 1);
  EXPECT_EQ(dma_status(r), 0u);
  EXPECT_EQ(std::memcmp(g.ram, g.ram + 8192, 4096), 0);
  // DMA into the read-only ROM map, and to unmapped space: refused.
  write64(r, 0, EP::kRegDmaDst, 0xc0000);
  write32(r, 0, EP::kRegDmaGo, 1);
  EXPECT_EQ(dma_status(r), static_cast<uint32_t>(EPERM));
  write64(r, 0, EP::kRegDmaDst, 0x40000000);
  write32(r, 0, EP::kRegDmaGo, 1);
  EXPECT_EQ(dma_status(r), static_cast<uint32_t>(EFAULT));

  // INTx under TCG: trigger eventfd, automask, UNMASK with DATA_NONE (0x11).
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0), 0);
  UniqueFd intx(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 1,
                     {intx.get()}),
            0);
  write32(r, 0, EP::kRegIrq, 0);  // INTx mode now: asserts the pin
  EXPECT_EQ(efd_wait(intx.get()), 1);
  EXPECT_EQ(set_irqs(r, 0x11, VFIO_PCI_INTX_IRQ_INDEX, 0, 1), 0);  // EOI while still asserted: fires again
  EXPECT_EQ(efd_wait(intx.get()), 1);
  write32(r, 0, EP::kRegIntx, 0);
  EXPECT_EQ(set_irqs(r, 0x11, VFIO_PCI_INTX_IRQ_INDEX, 0, 1), 0);
  EXPECT_EQ(efd_wait(intx.get(), 50), -1);

  // 8. System reset: INTx off, a COMMAND write, DEVICE_RESET, INTx re-armed.
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 0), 0);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 0);
  EXPECT_EQ(r.call(kDeviceReset, {}), 0);
  EXPECT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 1,
                     {intx.get()}),
            0);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY);
  EXPECT_EQ(read32(r, 0, EP::kRegScratch), 0u);  // the function was reset
  EXPECT_EQ(read32(r, 0, EP::kRegId), EP::kIdValue);
}

// Tenant isolation: the next client of a device finds nothing of the last
// one — as the kernel's last close of a device fd (vfio_pci_core_disable:
// interrupts off, the function reset, its open-time state restored) and
// libvfio-user's reset on a lost connection.
TEST_F(QemuSequence, DisconnectResetsTheDeviceForTheNextClient) {
  Guest g;
  uint32_t cmd0;
  {
    Raw r(sock);
    r.version();
    cmd0 = read32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND) & 0xffff;  // as an open leaves it
    DmaMapMsg ram{32, kDmaFlagRead | kDmaFlagWrite, 0, kRam, kRamSize};
    ASSERT_EQ(r.call(kDmaMap, b(ram), {g.mem.get()}), 0);
    write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    write32(r, 0, EP::kRegScratch, 0x5a5a5a5a);
    write32(r, 0, 0x100, 0x11223344);  // plain BAR0 memory past the registers
  }
  Raw r(sock);
  for (int i = 0; i < 100 && !r.connected(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  r.version();
  EXPECT_EQ(read32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND) & 0xffff, cmd0) << "the last client's Command";
  EXPECT_EQ(cmd0 & PCI_COMMAND_MASTER, 0u);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY);
  EXPECT_EQ(read32(r, 0, EP::kRegScratch), 0u) << "the last client's register";
  EXPECT_EQ(read32(r, 0, 0x100), 0u) << "the last client's data";
  EXPECT_EQ(read32(r, 0, EP::kRegId), EP::kIdValue);
  write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  write64(r, 0, EP::kRegDmaSrc, kRam);
  write64(r, 0, EP::kRegDmaDst, kRam + 4096);
  write32(r, 0, EP::kRegDmaLen, 64);
  write32(r, 0, EP::kRegDmaGo, 1);
  EXPECT_EQ(dma_status(r), static_cast<uint32_t>(EFAULT));  // the maps went with the client
}

// uvfiod --keep-state-on-disconnect: the spec's "client disconnects" (maps
// and eventfds dropped, the device's state kept for a client that comes back).
TEST_F(QemuSequence, KeepStateOnDisconnectDropsMapsAndKeepsState) {
  d->stop();
  d = std::make_unique<Daemon>(
      std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse", "--keep-state-on-disconnect"}, "qemu");
  ASSERT_TRUE(d->wait_ready()) << d->log();
  sock = d->rundir() + "/vfio-user/0000:00:03.0.sock";
  Guest g;
  {
    Raw r(sock);
    r.version();
    DmaMapMsg ram{32, kDmaFlagRead | kDmaFlagWrite, 0, kRam, kRamSize};
    ASSERT_EQ(r.call(kDmaMap, b(ram), {g.mem.get()}), 0);
    write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    write32(r, 0, EP::kRegScratch, 0x5a5a5a5a);
  }
  Raw r(sock);
  for (int i = 0; i < 100 && !r.connected(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  r.version();
  EXPECT_EQ(read32(r, 0, EP::kRegScratch), 0x5a5a5a5au);  // state kept
  write64(r, 0, EP::kRegDmaSrc, kRam);
  write64(r, 0, EP::kRegDmaDst, kRam + 4096);
  write32(r, 0, EP::kRegDmaLen, 64);
  write32(r, 0, EP::kRegDmaGo, 1);
  EXPECT_EQ(dma_status(r), static_cast<uint32_t>(EFAULT));  // the maps went with the client
  DmaMapMsg ram{32, kDmaFlagRead | kDmaFlagWrite, 0, kRam, kRamSize};
  EXPECT_EQ(r.call(kDmaMap, b(ram), {g.mem.get()}), 0);  // and can be made again
}

TEST_F(QemuSequence, UnbindAsksTheClientToLeave) {
  auto c = client::Client::connect(sock);
  ASSERT_TRUE(c);
  UniqueFd req(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  int fds[1] = {req.get()};
  ASSERT_TRUE((*c)->set_irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1, fds));
  auto unbind = std::async(std::launch::async, [&] {
    return sh(d->ctl("write bus/pci/drivers/vfio-pci/unbind 0000:00:03.0"));
  });
  EXPECT_EQ(efd_wait(req.get(), 15000), 1) << "no REQ";
  EXPECT_NE(unbind.wait_for(std::chrono::milliseconds(100)), std::future_status::ready);
  EXPECT_NE(access(sock.c_str(), F_OK), 0) << "the socket stays while unbinding";
  c->reset();  // the VMM lets go
  auto res = unbind.get();
  EXPECT_EQ(res.status, 0) << res.err;
  EXPECT_EQ(sh(d->ctl("readlink bus/pci/devices/0000:00:03.0/driver")).status, 1);
}

// uvfiod --no-stats: the files are there, and nothing counts.
}  // namespace
}  // namespace uvfio::e2e

namespace uvfio::e2e {
namespace {

TEST_F(QemuSequence, DeviceDmaToMapsWithoutAnFdGoesThroughMessages) {
  auto c = client::Client::connect(sock);
  ASSERT_TRUE(c);
  std::vector<uint8_t> ram(64 << 10), rom(4096, 0xee);
  for (size_t i = 0; i < 16384; ++i) ram[i] = static_cast<uint8_t>(i * 13);
  ASSERT_TRUE((*c)->dma_map_local(0x40000, ram.size(), ram.data()));
  ASSERT_TRUE((*c)->dma_map_local(0x100000, rom.size(), rom.data(), /*writable=*/false));
  auto w32 = [&](uint32_t region, uint64_t off, uint32_t v) {
    ASSERT_TRUE((*c)->region_write(region, off, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), 4)));
  };
  auto w64 = [&](uint64_t off, uint64_t v) {
    ASSERT_TRUE((*c)->region_write(0, off, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), 8)));
  };
  auto r32 = [&](uint64_t off) {
    uint32_t v = 0;
    EXPECT_TRUE((*c)->region_read(0, off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), 4)));
    return v;
  };
  // DMA_GO is posted; the client serves the device's DMA messages while it
  // polls the status.
  auto status = [&] {
    uint32_t v = EP::kDmaBusy;
    for (int i = 0; i < 1000 && v == EP::kDmaBusy; ++i) v = r32(EP::kRegDmaStatus);
    return v;
  };
  w32(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  // 16 KiB copy inside the local RAM: DMA_READ then DMA_WRITE messages,
  // answered by the client while it waits for its replies.
  w64(EP::kRegDmaSrc, 0x40000);
  w64(EP::kRegDmaDst, 0x48000);
  w32(0, EP::kRegDmaLen, 16384);
  w32(0, EP::kRegDmaGo, 1);
  EXPECT_EQ(status(), 0u);
  EXPECT_EQ(std::memcmp(ram.data(), ram.data() + 0x8000, 16384), 0);
  // From the read-only map into RAM works; into it is refused by the map.
  w64(EP::kRegDmaSrc, 0x100000);
  w64(EP::kRegDmaDst, 0x40000);
  w32(0, EP::kRegDmaLen, 4096);
  w32(0, EP::kRegDmaGo, 1);
  EXPECT_EQ(status(), 0u);
  EXPECT_EQ(ram[0], 0xee);
  w64(EP::kRegDmaDst, 0x100000);
  w64(EP::kRegDmaSrc, 0x40000);
  w32(0, EP::kRegDmaGo, 1);
  EXPECT_EQ(status(), static_cast<uint32_t>(EPERM));
  EXPECT_EQ(rom[0], 0xee);
}

// uvfiod --no-stats: the files are there, and nothing counts.
}  // namespace
}  // namespace uvfio::e2e

namespace uvfio::e2e {
namespace {

// The counters under vfio-dev/vfioN/stats/ after a workload whose every
// byte is known, read as an admin reads them (uvfioctl stats, cat).
TEST_F(QemuSequence, StatsCountWhatTheClientAndDeviceDid) {
  Guest g;
  int reads = 0;
  {
    Raw r(sock);
    r.version();                                                                    // VERSION
    DmaMapMsg ram{32, kDmaFlagRead | kDmaFlagWrite, 0, kRam, kRamSize};
    ASSERT_EQ(r.call(kDmaMap, b(ram), {g.mem.get()}), 0);                             // DMA_MAP
    write32(r, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);  // 4 written
    UniqueFd vec(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ASSERT_EQ(set_irqs(r, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1,
                       {vec.get()}),
              0);                                                                     // SET_IRQS
    EXPECT_EQ(read32(r, 0, EP::kRegId), EP::kIdValue);                               // 4 read
    write32(r, 0, EP::kRegIrq, 0);                                                   // 4 written, 1 interrupt
    EXPECT_EQ(efd_wait(vec.get()), 1);
    write64(r, 0, EP::kRegDmaSrc, kRam);                                             // 8
    write64(r, 0, EP::kRegDmaDst, kRam + 8192);                                      // 8
    write32(r, 0, EP::kRegDmaLen, 4096);                                             // 4
    write32(r, 0, EP::kRegDmaGo, 1);                                                 // 4: a read and a write of 4096
    uint32_t st = EP::kDmaBusy;
    for (int i = 0; i < 2000 && st == EP::kDmaBusy; ++i, ++reads) {
      st = read32(r, 0, EP::kRegDmaStatus);
      if (st == EP::kDmaBusy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(st, 0u);
    EXPECT_EQ(r.call(99, {}), ENOSYS);                                               // UNKNOWN
    EXPECT_EQ(r.call(kRegionRead, region_access(20, 0, 4)), EINVAL);                  // no region 20
    EXPECT_EQ(r.call(kRegionRead, region_access(21, 0, 4)), EINVAL);
  }
  auto res = sh(d->ctl("stats 0000:00:03.0 --json"));
  ASSERT_EQ(res.status, 0) << res.err;
  auto j = nlohmann::json::parse(res.out);
  EXPECT_EQ(j["address"], "0000:00:03.0");
  EXPECT_EQ(j["migration_state"], "RUNNING");
  EXPECT_EQ(j["region_bytes_read"].get<uint64_t>(), 4u + 4u * static_cast<uint64_t>(reads));
  EXPECT_EQ(j["region_bytes_written"].get<uint64_t>(), 4u + 4 + 8 + 8 + 4 + 4);
  EXPECT_EQ(j["interrupts"].get<uint64_t>(), 1u);
  EXPECT_EQ(j["dma_ops"].get<uint64_t>(), 2u);
  EXPECT_EQ(j["dma_bytes"].get<uint64_t>(), 8192u);
  EXPECT_EQ(j["migration_bytes"].get<uint64_t>(), 0u);
  nlohmann::json want_requests{{"VERSION", 1},     {"DMA_MAP", 1},        {"DEVICE_SET_IRQS", 1},
                               {"REGION_READ", 1 + reads + 2}, {"REGION_WRITE", 6}, {"UNKNOWN", 1}};
  EXPECT_EQ(j["requests"], want_requests) << j.dump();
  EXPECT_EQ(j["errors"], (nlohmann::json{{"EINVAL", 2}, {"ENOSYS", 1}})) << j.dump();
  // The same numbers, one per file, as sysfs has them.
  std::string st = "bus/pci/devices/0000:00:03.0/vfio-dev/vfio0/stats/";
  EXPECT_EQ(sh(d->ctl("cat " + st + "dma_bytes")).out, "8192\n");
  EXPECT_EQ(sh(d->ctl("cat " + st + "clients")).out, "1 accepted 0 refused 0 dropped\n");
  auto req = sh(d->ctl("cat " + st + "requests")).out;
  EXPECT_NE(req.find("           1 DMA_MAP\n"), std::string::npos) << req;
  EXPECT_NE(req.find("           0 DMA_UNMAP\n"), std::string::npos) << req;
  // The table and a frame of top name the device.
  res = sh(d->ctl("stats"));
  EXPECT_NE(res.out.find("0000:00:03.0  vfio0   RUNNING"), std::string::npos) << res.out;
  res = sh(d->ctl("top -n 1 -d 0.1"));
  ASSERT_EQ(res.status, 0) << res.err;
  EXPECT_NE(res.out.find("0000:00:03.0"), std::string::npos) << res.out;
  // Not a VFIO device: a clear error.
  res = sh(d->ctl("stats 0000:00:00.0"));
  EXPECT_NE(res.status, 0);
  EXPECT_NE(res.err.find("not bound to a VFIO driver"), std::string::npos) << res.err;
}

// uvfiod --no-stats: the files are there, and nothing counts.
TEST(NoStats, CountersStayZero) {
  std::string dir = make_tmpdir("nostats");
  std::ofstream(dir + "/topo.toml") << kTopology;
  Daemon d({"--config", dir + "/topo.toml", "--no-fuse", "--no-stats"}, "nostats");
  ASSERT_TRUE(d.wait_ready()) << d.log();
  {
    Raw r(d.rundir() + "/vfio-user/0000:00:03.0.sock");
    r.version();
    EXPECT_EQ(r.call(kRegionRead, region_access(0, 0, 4)), 0);
    EXPECT_EQ(r.call(kRegionRead, region_access(20, 0, 4)), EINVAL);
  }
  auto res = sh(d.ctl("stats 0000:00:03.0 --json"));
  ASSERT_EQ(res.status, 0) << res.err;
  auto j = nlohmann::json::parse(res.out);
  EXPECT_EQ(j["region_bytes_read"].get<uint64_t>(), 0u) << res.out;
  EXPECT_TRUE(j["requests"].empty()) << res.out;
  EXPECT_TRUE(j["errors"].empty()) << res.out;
  EXPECT_EQ(d.stop(), 0) << d.log();
  sh("rm -rf " + dir);
}

}  // namespace
}  // namespace uvfio::e2e
