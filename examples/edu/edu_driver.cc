// SPDX-License-Identifier: BSD-3-Clause
// edu_vfio_pci, written as a Linux VFIO variant driver is: vfio-pci-core
// does everything (config space, BARs, interrupts, reset); the variant adds
// migration. The stream is a small header and the device's state, read
// from and written to the device's state window (edu_ifc.h) while it is
// stopped: STOP -> STOP_COPY saves, RESUMING -> STOP loads.
#include "edu_driver.h"

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "edu_ifc.h"
#include "vfio/migration.h"
#include "vfio/pci_core/core.h"

namespace edu {
namespace {

using uvfio::Error;
using uvfio::Result;
using uvfio::vfio::MigState;

struct StreamHeader {
  uint32_t magic;    // kStreamMagic
  uint32_t version;  // 1
  uint64_t size;     // bytes of state that follow (kStateSize)
};
constexpr uint32_t kStreamMagic = 0x4d554445;  // "EDUM"

// The saving side: the whole stream, built at STOP -> STOP_COPY.
class SaveFile : public uvfio::vfio::MigrationFile {
 public:
  explicit SaveFile(std::vector<uint8_t> data) : data_(std::move(data)) {}
  Result<size_t> read(std::span<uint8_t> out) override {
    std::lock_guard lk(mu_);
    if (ended_) return Error(ENODEV, "migration session over");
    size_t n = std::min(out.size(), data_.size() - at_);
    std::memcpy(out.data(), data_.data() + at_, n);
    at_ += n;
    return n;
  }
  void end() {
    std::lock_guard lk(mu_);
    ended_ = true;
  }

 private:
  std::mutex mu_;
  std::vector<uint8_t> data_;  // guarded by mu_
  size_t at_ = 0;              // guarded by mu_
  bool ended_ = false;         // guarded by mu_
};

// The resuming side: bytes gathered, checked at RESUMING -> STOP.
class LoadFile : public uvfio::vfio::MigrationFile {
 public:
  Result<size_t> write(std::span<const uint8_t> in) override {
    std::lock_guard lk(mu_);
    if (ended_) return Error(ENODEV, "migration session over");
    if (in.size() > sizeof(StreamHeader) + kStateSize - data_.size()) {
      data_.clear();
      poisoned_ = true;
    }
    if (poisoned_) return Error(EINVAL, "more than an edu stream holds");
    data_.insert(data_.end(), in.begin(), in.end());
    return in.size();
  }
  // The state, if the stream was exactly one.
  Result<std::vector<uint8_t>> take() {
    std::lock_guard lk(mu_);
    ended_ = true;
    StreamHeader h{};
    if (poisoned_ || data_.size() != sizeof(h) + kStateSize) return Error(EINVAL, "incomplete edu stream");
    std::memcpy(&h, data_.data(), sizeof(h));
    if (h.magic != kStreamMagic || h.version != 1 || h.size != kStateSize)
      return Error(EINVAL, "not an edu stream of this version");
    State s;
    std::memcpy(&s, data_.data() + sizeof(h), sizeof(s));
    if (s.magic != kStateMagic) return Error(EINVAL, "not an edu state");
    return std::vector<uint8_t>(data_.begin() + sizeof(h), data_.end());
  }
  void end() {
    std::lock_guard lk(mu_);
    ended_ = true;
  }

 private:
  std::mutex mu_;
  std::vector<uint8_t> data_;  // guarded by mu_
  bool poisoned_ = false;      // guarded by mu_
  bool ended_ = false;         // guarded by mu_
};

class EduVfioDevice : public uvfio::vfio::pci::CoreDevice {
 public:
  using CoreDevice::CoreDevice;

  uint64_t migration_flags() const override { return uvfio::vfio::kMigStopCopy; }

  Result<std::shared_ptr<uvfio::vfio::MigrationFile>> migration_arc(MigState from, MigState to) override {
    if (from == MigState::kRunning && to == MigState::kStop) {
      // Let a transfer in flight finish (it may wait for the VMM's memory:
      // bounded), so the state saved next is whole.
      for (int i = 0; i < 1000; ++i) {
        auto cmd = pdev().bar_read(0, kRegDmaCmd, 8);
        if (!cmd || !(*cmd & kDmaStart)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return nullptr;
    }
    if (from == MigState::kStop && to == MigState::kStopCopy) {
      std::vector<uint8_t> data(sizeof(StreamHeader) + kStateSize);
      StreamHeader h{kStreamMagic, 1, kStateSize};
      std::memcpy(data.data(), &h, sizeof(h));
      TRY(pdev().bar_read_block(0, kRegState, std::span(data).subspan(sizeof(h))));
      auto f = std::make_shared<SaveFile>(std::move(data));
      save_ = f;
      return std::shared_ptr<uvfio::vfio::MigrationFile>(f);
    }
    if (from == MigState::kStopCopy && to == MigState::kStop) {
      if (save_) save_->end();
      save_.reset();
      return nullptr;
    }
    if (from == MigState::kStop && to == MigState::kResuming) {
      load_ = std::make_shared<LoadFile>();
      return std::shared_ptr<uvfio::vfio::MigrationFile>(load_);
    }
    if (from == MigState::kResuming && to == MigState::kStop) {
      auto load = std::move(load_);
      if (!load) return Error(EINVAL, "no resuming stream");
      std::vector<uint8_t> state = TRY(load->take());
      TRY(pdev().bar_write_block(0, kRegState, state));
      return nullptr;
    }
    return nullptr;  // STOP -> RUNNING: the device goes on from its registers
  }

  // A reset ends the sessions (as mlx5vf_pci_aer_reset_done does).
  void reset_done() override {
    if (save_) save_->end();
    if (load_) load_->end();
    save_.reset();
    load_.reset();
  }

 private:
  std::shared_ptr<SaveFile> save_;
  std::shared_ptr<LoadFile> load_;
};

class EduVfioPci : public uvfio::bus::pci::PciDriver {
 public:
  explicit EduVfioPci(uvfio::vfio::Registry& r) : PciDriver(kDriverName, {{kVendor, kDevice}}), r_(r) {}
  Result<std::unique_ptr<uvfio::driver::Binding>> probe(uvfio::bus::pci::PciDevice& dev,
                                                       const uvfio::bus::pci::PciDeviceId&) override {
    auto core = std::make_unique<EduVfioDevice>(dev, *this, r_);
    TRY(core->register_device());
    return std::unique_ptr<uvfio::driver::Binding>(std::move(core));
  }

 private:
  uvfio::vfio::Registry& r_;
};

}  // namespace

std::unique_ptr<uvfio::bus::pci::PciDriver> make_driver(uvfio::vfio::Registry& registry) {
  return std::make_unique<EduVfioPci>(registry);
}

}  // namespace edu
