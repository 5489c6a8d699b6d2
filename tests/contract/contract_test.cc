// SPDX-License-Identifier: BSD-3-Clause
// The VFIO contract, run against every (driver, device) pair: vfio_pci on
// the generic endpoint, vfio_pci on an mlx5 VF, mlx5_vfio_pci on an mlx5 VF.
// Mirrors what the kernel's VFIO selftests check, plus the config-space
// virtualization rules of vfio_pci_config.c as table-driven cases.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "daemon/system.h"

namespace uvfio {
namespace {

using vfio::Device;
using vfio::IrqSet;

const char* kTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"

[[device]]
address = "0000:00:04.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60      # VF0 = 0000:00:10.0
num_vfs = 1
vf_driver_override = "vfio-pci"

[[device]]
address = "0000:00:05.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60      # VF0 = 0000:00:11.0
num_vfs = 1
vf_driver_override = "mlx5_vfio_pci"
)";

struct Pair {
  const char* name;
  const char* driver;
  Bdf bdf;
  bool is_vf;
};

void PrintTo(const Pair& p, std::ostream* os) { *os << p.name; }

const Pair kPairs[] = {
    {"vfio_pci_endpoint", "vfio-pci", Bdf(0, 0, 3, 0), false},
    {"vfio_pci_mlx5_vf", "vfio-pci", Bdf(0, 0, 0x10, 0), true},
    {"mlx5_vfio_pci_mlx5_vf", "mlx5_vfio_pci", Bdf(0, 0, 0x11, 0), true},
};

UniqueFd make_eventfd() { return UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)); }

// Reads an eventfd's counter: -1 when nothing was signalled (EAGAIN).
int64_t efd_read(int fd) {
  uint64_t v;
  if (::read(fd, &v, sizeof(v)) != sizeof(v)) return -1;
  return static_cast<int64_t>(v);
}

class Contract : public ::testing::TestWithParam<Pair> {
 protected:
  void SetUp() override {
    auto spec = daemon::parse_topology(kTopology, "contract.toml");
    ASSERT_TRUE(spec) << spec.error().message;
    auto s = daemon::System::create(*spec);
    ASSERT_TRUE(s) << s.error().message;
    sys = std::move(*s);
    sys->vfio_registry().set_request_interval(std::chrono::milliseconds(20));
    pdev = sys->pci().find(GetParam().bdf);
    ASSERT_NE(pdev, nullptr);
    ASSERT_NE(pdev->driver(), nullptr);
    ASSERT_EQ(pdev->driver()->name(), GetParam().driver);
    dev = sys->vfio_device(GetParam().bdf);
    ASSERT_NE(dev, nullptr);
    ASSERT_TRUE(dev->open());
  }
  void TearDown() override {
    if (dev) dev->close();
    sys.reset();
  }
  uint32_t cfg_read(uint16_t off, unsigned width) {
    uint32_t v = 0;
    auto r = dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), width));
    EXPECT_TRUE(r) << "config read at " << off;
    return v;
  }
  void cfg_write(uint16_t off, unsigned width, uint32_t v) {
    auto r = dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, off,
                               std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&v), width));
    EXPECT_TRUE(r) << "config write at " << off;
  }
  // Walks the user's view of the standard capability chain.
  std::vector<uint8_t> user_caps() {
    std::vector<uint8_t> ids;
    if (!(cfg_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST)) return ids;
    uint8_t pos = static_cast<uint8_t>(cfg_read(PCI_CAPABILITY_LIST, 1));
    for (int i = 0; i < 48 && pos >= 0x40; ++i) {
      ids.push_back(static_cast<uint8_t>(cfg_read(pos, 1)));
      pos = static_cast<uint8_t>(cfg_read(pos + 1, 1));
    }
    return ids;
  }
  uint16_t user_cap(uint8_t id) {
    uint8_t pos = static_cast<uint8_t>(cfg_read(PCI_CAPABILITY_LIST, 1));
    for (int i = 0; i < 48 && pos >= 0x40; ++i) {
      if (cfg_read(pos, 1) == id) return pos;
      pos = static_cast<uint8_t>(cfg_read(pos + 1, 1));
    }
    return 0;
  }
  Result<void> irqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count, std::vector<int> fds = {},
                    std::vector<uint8_t> bools = {}) {
    IrqSet s;
    s.flags = flags;
    s.index = index;
    s.start = start;
    s.count = count;
    s.bools = std::move(bools);
    for (int fd : fds) s.fds.emplace_back(fd >= 0 ? dup(fd) : -1);
    return dev->set_irqs(std::move(s));
  }
  std::string sysfs(const std::string& attr) {
    return *sys->core().tree().read("bus/pci/devices/" + GetParam().bdf.str() + "/" + attr);
  }

  std::unique_ptr<daemon::System> sys;
  bus::pci::PciDevice* pdev = nullptr;
  // The model behind the device, as the test (not the driver) reaches it.
  hw::Function& hwf() { return *sys->fabric().find(GetParam().bdf); }
  Device* dev = nullptr;
};

// ---- Device info and regions ------------------------------------------------------

TEST_P(Contract, DeviceInfo) {
  auto i = dev->get_info();
  ASSERT_TRUE(i);
  EXPECT_TRUE(i->flags & VFIO_DEVICE_FLAGS_PCI);
  EXPECT_EQ(static_cast<bool>(i->flags & VFIO_DEVICE_FLAGS_RESET), hwf().flr_capable());
  EXPECT_GE(i->num_regions, 9u);
  EXPECT_EQ(i->num_irqs, 5u);
}

TEST_P(Contract, RegionsAndEveryMmappableBarMaps) {
  for (uint32_t bar = 0; bar < 6; ++bar) {
    auto r = dev->get_region_info(bar);
    ASSERT_TRUE(r);
    const hw::BarDesc& d = hwf().bar_desc(bar);
    if (!d.implemented()) {
      EXPECT_EQ(r->info.size, 0u) << bar;
      EXPECT_EQ(r->info.flags, 0u) << bar;
      EXPECT_FALSE(dev->region_mmap(bar)) << bar;
      continue;
    }
    EXPECT_EQ(r->info.size, pdev->resource(bar).size()) << bar;
    EXPECT_TRUE(r->info.flags & VFIO_REGION_INFO_FLAG_READ);
    EXPECT_TRUE(r->info.flags & VFIO_REGION_INFO_FLAG_WRITE);
    bool can_map = r->info.flags & VFIO_REGION_INFO_FLAG_MMAP;
    EXPECT_EQ(can_map, d.mmappable) << bar;
    auto m = dev->region_mmap(bar);
    ASSERT_EQ(static_cast<bool>(m), can_map) << bar;
    if (!can_map) continue;
    EXPECT_EQ(m->size, r->info.size);
    void* p = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, static_cast<off_t>(m->fd_offset));
    ASSERT_NE(p, MAP_FAILED) << bar;
    // What the mapping writes, region reads see (away from the MSI-X table).
    uint64_t at = m->size - 8, v = 0x1122334455667788ull, got = 0;
    std::memcpy(static_cast<uint8_t*>(p) + at, &v, 8);
    ASSERT_TRUE(dev->region_read(bar, at, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&got), 8)));
    EXPECT_EQ(got, v);
    munmap(p, m->size);
  }
  auto cfg = dev->get_region_info(VFIO_PCI_CONFIG_REGION_INDEX);
  EXPECT_EQ(cfg->info.size, 4096u);
  EXPECT_EQ(cfg->info.offset, uint64_t{VFIO_PCI_CONFIG_REGION_INDEX} << 40);
  EXPECT_EQ(dev->get_region_info(VFIO_PCI_ROM_REGION_INDEX)->info.size, 0u);
  EXPECT_EQ(dev->get_region_info(VFIO_PCI_VGA_REGION_INDEX).error().code, EINVAL);
  EXPECT_EQ(dev->get_region_info(9).error().code, EINVAL);
  uint8_t b;
  EXPECT_EQ(dev->region_write(VFIO_PCI_ROM_REGION_INDEX, 0, std::span<const uint8_t>(&b, 1)).error().code, EINVAL);
  EXPECT_EQ(dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, 4096, std::span<uint8_t>(&b, 1)).error().code, EFAULT);
}

TEST_P(Contract, MsixBarCarriesMsixMappableAndTheArgszRule) {
  uint16_t cap = hwf().find_capability(PCI_CAP_ID_MSIX);
  ASSERT_NE(cap, 0);
  uint32_t bar = pdev->config_read(cap + PCI_MSIX_TABLE, 4) & PCI_MSIX_TABLE_BIR;
  auto r = dev->get_region_info(bar);
  ASSERT_TRUE(r);
  if (!(r->info.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
    EXPECT_TRUE(r->caps.empty());
    return;
  }
  ASSERT_FALSE(r->caps.empty());
  auto small = vfio::encode_region_info(*r, sizeof(vfio_region_info));
  vfio_region_info i;
  std::memcpy(&i, small.data(), sizeof(i));
  EXPECT_EQ(small.size(), sizeof(i));
  EXPECT_TRUE(i.flags & VFIO_REGION_INFO_FLAG_CAPS);
  EXPECT_EQ(i.cap_offset, 0u);
  EXPECT_GT(i.argsz, sizeof(i));
  auto full = vfio::encode_region_info(*r, i.argsz);
  std::memcpy(&i, full.data(), sizeof(i));
  ASSERT_EQ(full.size(), i.argsz);
  EXPECT_EQ(i.cap_offset, sizeof(i));
  vfio_info_cap_header h;
  std::memcpy(&h, full.data() + i.cap_offset, sizeof(h));
  EXPECT_EQ(h.id, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE);
  EXPECT_EQ(h.next, 0u);
}

// ---- Config space -----------------------------------------------------------------

TEST_P(Contract, IdsMatchSysfsAndBusMasterToggles) {
  EXPECT_EQ(cfg_read(PCI_VENDOR_ID, 2), std::stoul(sysfs("vendor"), nullptr, 16));
  EXPECT_EQ(cfg_read(PCI_DEVICE_ID, 2), std::stoul(sysfs("device"), nullptr, 16));
  EXPECT_EQ(cfg_read(PCI_CLASS_REVISION, 4) >> 8, std::stoul(sysfs("class"), nullptr, 16));
  uint16_t cmd = static_cast<uint16_t>(cfg_read(PCI_COMMAND, 2));
  EXPECT_FALSE(cmd & PCI_COMMAND_MASTER);  // cleared at open
  cfg_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MASTER);
  EXPECT_TRUE(cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);
  EXPECT_TRUE(pdev->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);  // reaches hardware
  cfg_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MASTER);
  EXPECT_FALSE(cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);
}

TEST_P(Contract, BarSizingThroughAllOnes) {
  for (unsigned bar = 0; bar < 6; ++bar) {
    uint16_t reg = static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * bar);
    const bus::pci::Resource& res = pdev->resource(bar);
    uint32_t orig = cfg_read(reg, 4);
    cfg_write(reg, 4, 0xffffffff);
    uint32_t lo = cfg_read(reg, 4);
    if (!res.flags) {
      EXPECT_EQ(lo, 0u) << "BAR" << bar;
      continue;
    }
    uint64_t mask = ~(res.size() - 1);
    if (res.flags & bus::pci::kResIo) {
      EXPECT_EQ(lo, (static_cast<uint32_t>(mask) & ~3u) | PCI_BASE_ADDRESS_SPACE_IO) << "BAR" << bar;
    } else {
      EXPECT_EQ(lo & ~0xfu, static_cast<uint32_t>(mask) & ~0xfu) << "BAR" << bar;
      EXPECT_EQ(lo & 0xf, res.flags & 0xf) << "BAR" << bar;  // type bits kept
    }
    if (res.flags & bus::pci::kResMem64) {
      cfg_write(reg + 4, 4, 0xffffffff);
      EXPECT_EQ(cfg_read(reg + 4, 4), static_cast<uint32_t>(mask >> 32)) << "BAR" << bar << " upper";
      ++bar;
    }
    cfg_write(reg, 4, orig);
  }
  // Whatever the user writes never reaches the hardware's BARs.
  EXPECT_EQ(pdev->config_read(PCI_BASE_ADDRESS_0, 4) & ~0xfu,
            pdev->is_virtfn() ? 0u : static_cast<uint32_t>(pdev->resource(0).start) & ~0xfu);
}

struct DropCase {
  const char* name;
  uint16_t off;
  unsigned width;
  uint32_t value;
};

TEST_P(Contract, WritesToReadOnlyBitsAreDroppedSilently) {
  const DropCase cases[] = {
      {"vendor/device", PCI_VENDOR_ID, 4, 0xdeadbeef},
      {"revision/class", PCI_CLASS_REVISION, 4, 0x12345678},
      {"header type", PCI_HEADER_TYPE, 1, 0x7f},
      {"subsystem ids", PCI_SUBSYSTEM_VENDOR_ID, 4, 0x11112222},
      {"capability pointer", PCI_CAPABILITY_LIST, 1, 0x00},
      {"interrupt pin", PCI_INTERRUPT_PIN, 1, 0x03},
      {"status cap list", PCI_STATUS, 2, 0x0000},
  };
  for (const DropCase& c : cases) {
    uint32_t before = cfg_read(c.off, c.width);
    cfg_write(c.off, c.width, c.value);
    EXPECT_EQ(cfg_read(c.off, c.width), before) << c.name;
  }
  // Capabilities: every ID/next byte is read-only, and so are the PCIe
  // capability registers other than the controls.
  uint16_t exp = user_cap(PCI_CAP_ID_EXP);
  ASSERT_NE(exp, 0);
  uint32_t devcap = cfg_read(exp + PCI_EXP_DEVCAP, 4);
  cfg_write(exp + PCI_EXP_DEVCAP, 4, ~devcap);
  EXPECT_EQ(cfg_read(exp + PCI_EXP_DEVCAP, 4), devcap);
  uint8_t next = static_cast<uint8_t>(cfg_read(exp + 1, 1));
  cfg_write(exp + 1, 1, 0x40);
  EXPECT_EQ(cfg_read(exp + 1, 1), next);
}

TEST_P(Contract, InterruptLineIsVirtualScratch) {
  uint32_t hw_line = pdev->config_read(PCI_INTERRUPT_LINE, 1);
  cfg_write(PCI_INTERRUPT_LINE, 1, 0x5a);
  EXPECT_EQ(cfg_read(PCI_INTERRUPT_LINE, 1), 0x5au);
  EXPECT_EQ(pdev->config_read(PCI_INTERRUPT_LINE, 1), hw_line);
}

TEST_P(Contract, MsiEnableCannotBeSetThroughConfig) {
  uint16_t msi = user_cap(PCI_CAP_ID_MSI);
  if (!msi) GTEST_SKIP() << "no MSI capability";
  cfg_write(msi + PCI_MSI_FLAGS, 2, cfg_read(msi + PCI_MSI_FLAGS, 2) | PCI_MSI_FLAGS_ENABLE);
  EXPECT_FALSE(cfg_read(msi + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE);
  EXPECT_FALSE(pdev->config_read(msi + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE);
  // Address and data are virtual: the guest's values never reach hardware.
  cfg_write(msi + PCI_MSI_ADDRESS_LO, 4, 0xfee0beef & ~3u);
  EXPECT_EQ(cfg_read(msi + PCI_MSI_ADDRESS_LO, 4), 0xfee0beecu);
  EXPECT_NE(pdev->config_read(msi + PCI_MSI_ADDRESS_LO, 4), 0xfee0beecu);
}

TEST_P(Contract, MsixControlWritesAreDropped) {
  uint16_t msix = user_cap(PCI_CAP_ID_MSIX);
  ASSERT_NE(msix, 0);
  uint32_t before = cfg_read(msix + PCI_MSIX_FLAGS, 2);
  cfg_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
  EXPECT_EQ(cfg_read(msix + PCI_MSIX_FLAGS, 2), before);
  EXPECT_FALSE(pdev->config_read(msix + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE);
}

TEST_P(Contract, HiddenCapabilitiesAreUnlinked) {
  auto ids = user_caps();
  for (uint8_t id : ids) EXPECT_NE(id, PCI_CAP_ID_SSVID);
  // What hardware has and vfio keeps is still there.
  EXPECT_NE(std::find(ids.begin(), ids.end(), PCI_CAP_ID_MSIX), ids.end());
  EXPECT_NE(std::find(ids.begin(), ids.end(), PCI_CAP_ID_EXP), ids.end());
  // Extended chain: no PASID; a hidden first capability leaves an id-0
  // placeholder with the real next pointer.
  uint16_t pos = 0x100;
  std::vector<uint16_t> ext;
  for (int i = 0; i < 64 && pos >= 0x100; ++i) {
    uint32_t h = cfg_read(pos, 4);
    if (!h) break;
    ext.push_back(PCI_EXT_CAP_ID(h));
    pos = PCI_EXT_CAP_NEXT(h);
  }
  for (uint16_t id : ext) EXPECT_NE(id, PCI_EXT_CAP_ID_PASID);
  if (hwf().find_ext_capability(PCI_EXT_CAP_ID_PASID) == 0x100) {
    ASSERT_FALSE(ext.empty());
    EXPECT_EQ(ext[0], 0);  // the placeholder
    EXPECT_NE(std::find(ext.begin(), ext.end(), PCI_EXT_CAP_ID_DSN), ext.end());
  }
  if (hwf().find_capability(PCI_CAP_ID_SSVID)) {
    EXPECT_NE(hwf().find_capability(PCI_CAP_ID_SSVID), 0);  // hardware unchanged
  }
}

TEST_P(Contract, BarAccessRefusedWhileMemClear) {
  uint32_t bar = 0;
  uint32_t v = 0;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
  ASSERT_TRUE(dev->region_read(bar, 0, buf));
  uint16_t cmd = static_cast<uint16_t>(cfg_read(PCI_COMMAND, 2));
  cfg_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
  EXPECT_FALSE(cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY);  // the user reads what it wrote
  if (GetParam().is_vf) {
    // A VF has no Command.MEM of its own (no_command_memory): access stays.
    EXPECT_TRUE(dev->region_read(bar, 0, buf));
  } else {
    EXPECT_EQ(dev->region_read(bar, 0, buf).error().code, EIO);
    EXPECT_EQ(dev->region_write(bar, 0, buf).error().code, EIO);
  }
  cfg_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY);
  EXPECT_TRUE(dev->region_read(bar, 0, buf));
  // Out of range is EINVAL either way.
  EXPECT_EQ(dev->region_read(bar, pdev->resource(0).size(), buf).error().code, EINVAL);
}

// vfio_pci_core_do_io_rw() gates memory BARs on memory decode (test_mem)
// and I/O BARs on nothing: an I/O BAR answers with I/O decode off.
TEST_P(Contract, VfioPciCoreDoIoRwGatesMemoryBarsOnly) {
  bool any = false;
  for (uint32_t bar = 0; bar < 6; ++bar) {
    if (!(pdev->resource(bar).flags & bus::pci::kResIo)) continue;
    any = true;
    uint32_t v = 0;
    std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
    uint16_t cmd = static_cast<uint16_t>(cfg_read(PCI_COMMAND, 2));
    cfg_write(PCI_COMMAND, 2, cmd & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
    EXPECT_FALSE(cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_IO);
    EXPECT_TRUE(dev->region_read(bar, 0, buf)) << "BAR" << bar;
    EXPECT_TRUE(dev->region_write(bar, 0, buf)) << "BAR" << bar;
    cfg_write(PCI_COMMAND, 2, cmd);
  }
  if (!any) GTEST_SKIP() << "no I/O BAR";
}

TEST_P(Contract, MsixTableReadsAllOnesAndDropsWrites) {
  uint16_t cap = hwf().find_capability(PCI_CAP_ID_MSIX);
  uint32_t t = pdev->config_read(cap + PCI_MSIX_TABLE, 4);
  uint32_t bar = t & PCI_MSIX_TABLE_BIR, off = t & PCI_MSIX_TABLE_OFFSET;
  uint32_t v = 0x12345678;
  ASSERT_TRUE(dev->region_write(bar, off + 8, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), 4)));
  ASSERT_TRUE(dev->region_read(bar, off + 8, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), 4)));
  EXPECT_EQ(v, 0xffffffffu);
  EXPECT_NE(*hwf().mmio_read(bar, off + 8, 4), 0x12345678u);
}

TEST_P(Contract, VfSpecifics) {
  if (!GetParam().is_vf) GTEST_SKIP() << "not a VF";
  EXPECT_EQ(pdev->config_read(PCI_VENDOR_ID, 4), 0xffffffffu);  // hardware
  EXPECT_EQ(cfg_read(PCI_VENDOR_ID, 4), 0x101e15b3u);            // the user's view
  EXPECT_EQ(cfg_read(PCI_INTERRUPT_PIN, 1), 0u);
  EXPECT_EQ(dev->get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)->count, 0u);
}

TEST_P(Contract, PcieFlrThroughConfigResetsTheFunction) {
  uint16_t exp = user_cap(PCI_CAP_ID_EXP);
  unsigned before = hwf().flr_count();
  uint16_t ctl = static_cast<uint16_t>(cfg_read(exp + PCI_EXP_DEVCTL, 2));
  cfg_write(exp + PCI_EXP_DEVCTL, 2, ctl | PCI_EXP_DEVCTL_BCR_FLR);
  EXPECT_EQ(hwf().flr_count(), before + 1);
  EXPECT_FALSE(cfg_read(exp + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_BCR_FLR);  // always reads 0
  // MPS is virtual: the user's value stays in vconfig, hardware keeps its own.
  uint16_t hw_ctl = static_cast<uint16_t>(pdev->config_read(exp + PCI_EXP_DEVCTL, 2));
  cfg_write(exp + PCI_EXP_DEVCTL, 2, (ctl & ~PCI_EXP_DEVCTL_PAYLOAD) | (2 << 5));
  EXPECT_EQ(cfg_read(exp + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_PAYLOAD, 2u << 5);
  EXPECT_EQ(pdev->config_read(exp + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_PAYLOAD, hw_ctl & PCI_EXP_DEVCTL_PAYLOAD);
}

// ---- Interrupts ---------------------------------------------------------------------

TEST_P(Contract, IrqInfo) {
  auto intx = dev->get_irq_info(VFIO_PCI_INTX_IRQ_INDEX);
  EXPECT_EQ(intx->count, GetParam().is_vf ? 0u : 1u);
  EXPECT_EQ(intx->flags, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED);
  EXPECT_EQ(dev->get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)->count, hwf().msix_table_size());
  EXPECT_EQ(dev->get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)->flags, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE);
  EXPECT_EQ(dev->get_irq_info(VFIO_PCI_ERR_IRQ_INDEX)->count, 1u);
  EXPECT_EQ(dev->get_irq_info(VFIO_PCI_REQ_IRQ_INDEX)->count, 1u);
  EXPECT_EQ(dev->get_irq_info(5).error().code, EINVAL);
}

TEST_P(Contract, MsiAndMsixEnableTriggerDisable) {
  int tested = 0;
  for (uint32_t index : {VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX}) {
    uint32_t count = dev->get_irq_info(index)->count;
    if (!count) continue;
    uint32_t n = std::min<uint32_t>(count, 16);
    std::vector<UniqueFd> efds;
    std::vector<int> raw;
    for (uint32_t i = 0; i < n; ++i) {
      efds.push_back(make_eventfd());
      raw.push_back(efds.back().get());
    }
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, n, raw)) << index;
    EXPECT_EQ(static_cast<bool>(hwf().irq_mode() == (index == VFIO_PCI_MSIX_IRQ_INDEX ? hw::IrqMode::kMsix : hw::IrqMode::kMsi)), true);
    for (uint32_t i = 0; i < n; ++i) {
      EXPECT_EQ(efd_read(raw[i]), -1) << "vector " << i << " readable before trigger";
      ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, i, 1));
      EXPECT_EQ(efd_read(raw[i]), 1) << "vector " << i;
    }
    // BOOL loopback: only the vectors with a true.
    std::vector<uint8_t> bools(n, 0);
    bools[n - 1] = 1;
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, n, {}, bools));
    EXPECT_EQ(efd_read(raw[0]), n == 1 ? 1 : -1);
    if (n > 1) {
      EXPECT_EQ(efd_read(raw[n - 1]), 1);
    }
    // The device itself raising a vector reaches the same eventfd.
    hwf().raise_irq(0);
    EXPECT_EQ(efd_read(raw[0]), 1) << "device-raised vector 0, index " << index;
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0));
    EXPECT_EQ(hwf().irq_mode() == hw::IrqMode::kMsix || hwf().irq_mode() == hw::IrqMode::kMsi, false);
    ++tested;
  }
  if (!tested) GTEST_SKIP() << "no MSI or MSI-X";
}

TEST_P(Contract, MsixVectorWithoutTriggerPendsUntilAttached) {
  UniqueFd e0 = make_eventfd();
  // QEMU enables MSI-X with no vectors attached, then attaches per vector.
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {-1}));
  hwf().raise_irq(0);
  EXPECT_TRUE(hwf().msix_pending(0));
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {e0.get()}));
  EXPECT_EQ(efd_read(e0.get()), 1);  // the pending message went out on unmask
  EXPECT_FALSE(hwf().msix_pending(0));
}

TEST_P(Contract, ErrAndReqTriggers) {
  for (uint32_t index : {VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX}) {
    UniqueFd e = make_eventfd();
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 1, {e.get()}));
    EXPECT_EQ(efd_read(e.get()), -1);
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 1));
    EXPECT_EQ(efd_read(e.get()), 1);
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 1, {}, {1}));
    EXPECT_EQ(efd_read(e.get()), 1);
    ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0));  // release
    // vfio_pci_set_ctx_trigger_single(): DATA_NONE with no eventfd to signal
    // or release falls through to EINVAL.
    EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 1).error().code, EINVAL);
    EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0).error().code, EINVAL);
    EXPECT_EQ(efd_read(e.get()), -1);
    EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, index, 0, 1).error().code, ENOTTY);
  }
}

TEST_P(Contract, IntxIsAutomaskedUntilUnmask) {
  if (!dev->get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)->count) GTEST_SKIP() << "no INTx";
  UniqueFd e = make_eventfd();
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, {e.get()}));
  hwf().set_intx(true);
  EXPECT_EQ(efd_read(e.get()), 1);
  hwf().set_intx(false);
  hwf().set_intx(true);
  EXPECT_EQ(efd_read(e.get()), -1);  // masked until the user unmasks
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1));
  EXPECT_EQ(efd_read(e.get()), 1);  // still asserted: fires again at once
  hwf().set_intx(false);
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1));
  EXPECT_EQ(efd_read(e.get()), -1);
  // The virtual INTx Disable bit masks too.
  cfg_write(PCI_COMMAND, 2, cfg_read(PCI_COMMAND, 2) | PCI_COMMAND_INTX_DISABLE);
  hwf().set_intx(true);
  EXPECT_EQ(efd_read(e.get()), -1);
  cfg_write(PCI_COMMAND, 2, cfg_read(PCI_COMMAND, 2) & ~PCI_COMMAND_INTX_DISABLE);
  EXPECT_EQ(efd_read(e.get()), 1);
  // MSI cannot be enabled while INTx is.
  UniqueFd m = make_eventfd();
  EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {m.get()})
                .error()
                .code,
            EINVAL);
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 0));
}

struct IrqErr {
  const char* name;
  uint32_t flags, index, start, count;
  int nfds;
  int expect;
};

TEST_P(Contract, SetIrqsValidation) {
  uint32_t nmsix = dev->get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)->count;
  const uint32_t T = VFIO_IRQ_SET_ACTION_TRIGGER, E = VFIO_IRQ_SET_DATA_EVENTFD, N = VFIO_IRQ_SET_DATA_NONE,
                 B = VFIO_IRQ_SET_DATA_BOOL;
  const IrqErr cases[] = {
      {"index out of range", N | T, 5, 0, 1, 0, EINVAL},
      {"unknown flag", N | T | (1u << 6), VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, EINVAL},
      {"two data types", N | B | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, EINVAL},
      {"no data type", T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, EINVAL},
      {"no action", N, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, ENOTTY},
      {"two actions", N | T | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, ENOTTY},
      {"MSI-X mask", N | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, ENOTTY},
      {"count beyond vectors", E | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, nmsix + 1, static_cast<int>(nmsix) + 1, EINVAL},
      {"start beyond vectors", E | T, VFIO_PCI_MSIX_IRQ_INDEX, nmsix, 1, 1, EINVAL},
      {"start+count wraps", N | T, VFIO_PCI_MSIX_IRQ_INDEX, 1, UINT32_MAX, 0, EINVAL},
      {"eventfds shorter than count", E | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, 1, EINVAL},
      {"bools shorter than count", B | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, 0, EINVAL},
      {"loopback on a disabled index", N | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, 0, EINVAL},
      {"ERR with count 2", N | T, VFIO_PCI_ERR_IRQ_INDEX, 0, 2, 0, EINVAL},
      // vfio_pci_set_ctx_trigger_single(): EVENTFD and BOOL need their one datum.
      {"ERR eventfd with count 0", E | T, VFIO_PCI_ERR_IRQ_INDEX, 0, 0, 0, EINVAL},
      {"REQ eventfd with count 0", E | T, VFIO_PCI_REQ_IRQ_INDEX, 0, 0, 0, EINVAL},
      {"ERR bool with count 0", B | T, VFIO_PCI_ERR_IRQ_INDEX, 0, 0, 0, EINVAL},
      {"REQ bool with count 0", B | T, VFIO_PCI_REQ_IRQ_INDEX, 0, 0, 0, EINVAL},
      {"INTx unmask while disabled", N | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, 0, EINVAL},
  };
  for (const IrqErr& c : cases) {
    std::vector<UniqueFd> keep;
    std::vector<int> fds;
    for (int i = 0; i < c.nfds; ++i) {
      keep.push_back(make_eventfd());
      fds.push_back(keep.back().get());
    }
    auto r = irqs(c.flags, c.index, c.start, c.count, fds);
    ASSERT_FALSE(r) << c.name;
    if (GetParam().is_vf && c.index == VFIO_PCI_INTX_IRQ_INDEX) {
      EXPECT_EQ(r.error().code, EINVAL) << c.name;  // no INTx at all: any call fails
    } else {
      EXPECT_EQ(r.error().code, c.expect) << c.name;
    }
  }
  // An fd that is not an eventfd.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  EXPECT_EQ(irqs(E | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {pipefd[0]}).error().code, EINVAL);
  close(pipefd[0]);
  close(pipefd[1]);
  // Nothing was left enabled by the failures.
  EXPECT_EQ(static_cast<vfio::pci::CoreDevice*>(dev)->irq_type(), -1);
}

// ---- Reset, open/close ------------------------------------------------------------

TEST_P(Contract, ResetKeepsInterruptsWorking) {
  ASSERT_TRUE(dev->get_info()->flags & VFIO_DEVICE_FLAGS_RESET);
  UniqueFd e = make_eventfd();
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {e.get()}));
  unsigned before = hwf().flr_count();
  ASSERT_TRUE(dev->reset());
  EXPECT_EQ(hwf().flr_count(), before + 1);
  hwf().raise_irq(0);
  EXPECT_EQ(efd_read(e.get()), 1);
  EXPECT_EQ(dev->mig_state(), vfio::MigState::kRunning);
}

// vfio_pci_ioctl_reset() -> pci_dev_save_and_disable(): a function in
// D3hot is woken to D0 before the reset, and is in D0 after it, so BAR
// access works again. The same through sysfs `reset` (pci_reset_function).
TEST_P(Contract, VfioPciIoctlResetLeavesTheFunctionInD0) {
  uint16_t pm = hwf().find_capability(PCI_CAP_ID_PM);
  if (!pm) GTEST_SKIP() << "no power management capability";
  if (!(dev->get_info()->flags & VFIO_DEVICE_FLAGS_RESET)) GTEST_SKIP() << "no reset";
  uint32_t v = 0;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
  cfg_write(pm + PCI_PM_CTRL, 2, (cfg_read(pm + PCI_PM_CTRL, 2) & ~PCI_PM_CTRL_STATE_MASK) | 3);
  ASSERT_EQ(pdev->config_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK, 3u);
  EXPECT_EQ(dev->region_read(0, 0, buf).error().code, EIO) << "BAR access in D3hot";
  ASSERT_TRUE(dev->reset());
  EXPECT_EQ(pdev->config_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK, 0u) << "the hardware";
  EXPECT_EQ(cfg_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK, 0u) << "what the user reads";
  EXPECT_TRUE(dev->region_read(0, 0, buf));
  // pci_reset_function() (sysfs reset), the function in D3hot again.
  cfg_write(pm + PCI_PM_CTRL, 2, (cfg_read(pm + PCI_PM_CTRL, 2) & ~PCI_PM_CTRL_STATE_MASK) | 3);
  ASSERT_EQ(pdev->config_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK, 3u);
  ASSERT_TRUE(pdev->reset_function());
  EXPECT_EQ(pdev->config_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK, 0u);
}

TEST_P(Contract, ExclusiveOpenAndClosedDevice) {
  EXPECT_EQ(dev->open().error().code, EBUSY);
  std::vector<uint8_t> mem(4096);
  ASSERT_TRUE(dev->iommu().map_host(0x10000, 4096, mem.data(), hw::kDmaRead | hw::kDmaWrite));
  dev->close();
  EXPECT_EQ(dev->iommu().num_maps(), 0u);  // the user's DMA maps go with it
  EXPECT_EQ(dev->get_info().error().code, EBADF);
  uint8_t b;
  EXPECT_EQ(dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, std::span<uint8_t>(&b, 1)).error().code, EBADF);
  ASSERT_TRUE(dev->open());
}

TEST_P(Contract, FeatureDispatch) {
  uint8_t buf[64] = {};
  EXPECT_EQ(dev->device_feature(VFIO_DEVICE_FEATURE_GET | (1u << 19), buf).error().code, EINVAL);  // unknown flag
  EXPECT_EQ(dev->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION, buf)
                .error()
                .code,
            EINVAL);
  EXPECT_EQ(dev->device_feature(VFIO_DEVICE_FEATURE_GET | 0x1234, buf).error().code, ENOTTY);  // unknown feature
  // Migration and DMA logging: the mlx5 variant has them (through its PF),
  // the generic driver does not (ENOTTY).
  auto mig = dev->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, buf);
  auto stop = dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, buf);
  if (std::string(GetParam().driver) == "mlx5_vfio_pci") {
    ASSERT_TRUE(mig);
    uint64_t flags;
    std::memcpy(&flags, mig->data.data(), 8);
    EXPECT_EQ(flags, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY);
    EXPECT_TRUE(stop);  // not started: nothing to stop
  } else {
    ASSERT_FALSE(mig);
    EXPECT_EQ(mig.error().code, ENOTTY);
    ASSERT_FALSE(stop);
    EXPECT_EQ(stop.error().code, ENOTTY);
  }
  // VF token is a PF's feature only.
  EXPECT_EQ(dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, buf).error().code, ENOTTY);
}

// ---- Unbind while open ----------------------------------------------------------------

TEST_P(Contract, UnbindWhileOpenSignalsReqAndWaitsForClose) {
  UniqueFd req = make_eventfd();
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1, {req.get()}));
  std::atomic<bool> done{false};
  Result<void> result = ok();
  std::thread unbinder([&] {
    result = sys->core().tree().write(std::string("bus/pci/drivers/") + GetParam().driver + "/unbind",
                                      GetParam().bdf.str());
    done = true;
  });
  pollfd p{req.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "no REQ signal";
  EXPECT_GE(efd_read(req.get()), 1);
  // Asked again: the unbind is still waiting (it re-signals only while the
  // device is open).
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "REQ not repeated";
  EXPECT_GE(efd_read(req.get()), 1);
  EXPECT_FALSE(done) << "unbind finished while the device was open";
  dev->close();
  unbinder.join();
  EXPECT_TRUE(done);
  EXPECT_TRUE(result);
  EXPECT_EQ(pdev->driver(), nullptr);
  EXPECT_EQ(sys->vfio_device(GetParam().bdf), nullptr);
  dev = nullptr;
}

// vfio_basic_config_write(): a one-byte write at Command's offset updates
// the virtual Memory and I/O Space bits that gate BAR access.
TEST_P(Contract, OneByteCommandWriteGatesBarAccess) {
  if (GetParam().is_vf) GTEST_SKIP() << "a VF's memory decode is not the Command bit (no_command_memory)";
  uint32_t v = 0;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
  uint8_t lo = static_cast<uint8_t>(cfg_read(PCI_COMMAND, 1));
  cfg_write(PCI_COMMAND, 1, lo & ~PCI_COMMAND_MEMORY);
  EXPECT_FALSE(cfg_read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY);
  EXPECT_EQ(dev->region_read(0, 0, buf).error().code, EIO);
  cfg_write(PCI_COMMAND, 1, lo | PCI_COMMAND_MEMORY);
  EXPECT_TRUE(dev->region_read(0, 0, buf));
}

// vfio_pci_core_disable(): close restores the state saved at open
// (pci_store_saved_state), not what a user's reset saved on the way: a
// device reset with Bus Master on is not left bus-mastering.
TEST_P(Contract, CloseAfterAUserResetRestoresTheOpenTimeState) {
  if (!(dev->get_info()->flags & VFIO_DEVICE_FLAGS_RESET)) GTEST_SKIP() << "no reset";
  cfg_write(PCI_COMMAND, 2, cfg_read(PCI_COMMAND, 2) | PCI_COMMAND_MASTER);
  ASSERT_TRUE(pdev->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);
  ASSERT_TRUE(dev->reset());
  ASSERT_TRUE(pdev->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER) << "the reset keeps the user's state";
  dev->close();
  EXPECT_FALSE(pdev->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER) << "bus mastering after close";
  ASSERT_TRUE(dev->open());
}

// vfio_pci_set_msi_trigger() -> vfio_msi_enable(start + count): enabling
// with no vectors is pci_alloc_irq_vectors(1, 0), ERANGE.
TEST_P(Contract, MsiEventfdWithNoVectorsIsRefused) {
  for (uint32_t index : {VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX}) {
    if (!dev->get_irq_info(index)->count) continue;
    EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0).error().code, ERANGE);
    EXPECT_TRUE(hwf().irq_mode() != hw::IrqMode::kMsi && hwf().irq_mode() != hw::IrqMode::kMsix)
        << "index " << index << " enabled with no vectors";
  }
}

// vfio_msi_set_block(): a vector that fails leaves every vector the call
// touched without a trigger; an index the call enabled is disabled again.
TEST_P(Contract, AFailedMsixBlockIsRolledBack) {
  uint32_t n = dev->get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)->count;
  if (n < 3) GTEST_SKIP() << "fewer than 3 MSI-X vectors";
  UniqueFd a = make_eventfd(), b = make_eventfd(), c = make_eventfd();
  UniqueFd not_an_eventfd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  // Enabling with a bad fd in the block: nothing stays enabled.
  EXPECT_FALSE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2,
                    {a.get(), not_an_eventfd.get()}));
  EXPECT_NE(hwf().irq_mode(), hw::IrqMode::kMsix) << "left enabled by a failed call";
  // Enabled with three vectors; a later block fails on its second fd.
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 3,
                   {a.get(), b.get(), c.get()}));
  EXPECT_FALSE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2,
                    {a.get(), not_an_eventfd.get()}));
  EXPECT_EQ(hwf().irq_mode(), hw::IrqMode::kMsix) << "the index was enabled before: it stays";
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 3));
  EXPECT_EQ(efd_read(a.get()), -1) << "vector 0 kept a trigger after the failed block";
  EXPECT_EQ(efd_read(b.get()), -1) << "vector 1 kept a trigger after the failed block";
  EXPECT_EQ(efd_read(c.get()), 1) << "vector 2 was not in the block";
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0));
}

// vfio_pci_set_intx_unmask() with an eventfd (vfio_virqfd): a write to it
// unmasks, as the UNMASK ioctl does; -1 removes it; MASK by eventfd stays
// ENOTTY.
TEST_P(Contract, IntxUnmaskByEventfd) {
  if (!dev->get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)->count) GTEST_SKIP() << "no INTx";
  UniqueFd trigger = make_eventfd(), unmask = make_eventfd();
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, {trigger.get()}));
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, {unmask.get()}));
  EXPECT_EQ(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, {unmask.get()})
                .error()
                .code,
            ENOTTY);
  hwf().set_intx(true);
  ASSERT_EQ(efd_read(trigger.get()), 1);  // fired, now masked
  // Still asserted: unmasking through the eventfd fires again at once.
  uint64_t one = 1;
  ASSERT_EQ(::write(unmask.get(), &one, sizeof(one)), 8);
  pollfd p{trigger.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "the unmask eventfd did not unmask";
  EXPECT_EQ(efd_read(trigger.get()), 1);
  // Removed: writes to it no longer unmask (the UNMASK ioctl still does).
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, {-1}));
  ASSERT_EQ(::write(unmask.get(), &one, sizeof(one)), 8);
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1));
  EXPECT_EQ(efd_read(trigger.get()), 1);
  EXPECT_EQ(efd_read(unmask.get()), 1) << "nothing read the removed unmask eventfd";
  ASSERT_TRUE(irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 0));
}

// vfio_pci_bar_rw(): an access starting inside a BAR and running past its
// end is cut at the end (a short count); one starting past it is EINVAL.
TEST_P(Contract, AccessPastABarsEndIsCut) {
  uint64_t size = pdev->resource(0).size();
  ASSERT_GE(size, 8u);
  std::vector<uint8_t> buf(16, 0xcc);
  auto r = dev->region_read(0, size - 4, buf);
  ASSERT_TRUE(r) << errno_name(r.error().code);
  EXPECT_EQ(*r, 4u);
  auto w = dev->region_write(0, size - 4, std::span<const uint8_t>(buf.data(), 8));
  ASSERT_TRUE(w);
  EXPECT_EQ(*w, 4u);
  EXPECT_EQ(dev->region_read(0, size, buf).error().code, EINVAL);
}

TEST_P(Contract, SysfsShowsTheVfioDevice) {
  auto& t = sys->core().tree();
  auto l = t.list("bus/pci/devices/" + GetParam().bdf.str() + "/vfio-dev");
  ASSERT_TRUE(l);
  ASSERT_EQ(l->size(), 1u);
  EXPECT_EQ((*l)[0].name.rfind("vfio", 0), 0u);
}

INSTANTIATE_TEST_SUITE_P(AllDrivers, Contract, ::testing::ValuesIn(kPairs),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace uvfio
