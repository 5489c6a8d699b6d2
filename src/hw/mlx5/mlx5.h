// The emulated mlx5 functions (a model of a ConnectX-like NIC, not the real
// ConnectX interface): the PF (15b3:101d) with SR-IOV, and its VF (15b3:101e).
//
// This layer defines identity, capabilities and BARs. The PF's command
// interface and the VF's work queue and device memory behaviour are built on
// top of these (docs/devices/mlx5-pf.md, mlx5-vf.md).
#pragma once

#include <memory>

#include "base/result.h"
#include "hw/function.h"
#include "hw/sriov.h"

namespace uvfio::hw::mlx5 {

inline constexpr uint16_t kVendorMellanox = 0x15b3;
inline constexpr uint16_t kDevicePf = 0x101d;
inline constexpr uint16_t kDeviceVf = 0x101e;
inline constexpr uint32_t kClassEthernet = 0x020000;

inline constexpr uint64_t kPfBar0Size = 1 << 20;
inline constexpr uint64_t kVfBar0Size = 64 << 10;
inline constexpr uint32_t kMsixTableOffset = 0x2000;
inline constexpr uint32_t kMsixPbaOffset = 0x3000;
inline constexpr unsigned kPfMsixVectors = 64;
inline constexpr unsigned kVfMsixVectors = 8;
inline constexpr uint64_t kDefaultDeviceMemory = 16 << 20;

struct PfParams {
  uint16_t total_vfs = 8;
  uint16_t first_vf_offset = 1;
  uint16_t vf_stride = 1;
  uint64_t vf_device_memory = kDefaultDeviceMemory;  // VF BAR2, a power of two
  uint64_t serial = 0;
};

class Vf;

class Pf : public Function {
 public:
  static Result<std::unique_ptr<Pf>> create(const PfParams& p);
  SriovCapability& sriov() { return *sriov_; }
  const PfParams& params() const { return params_; }

 protected:
  void on_config_write(uint16_t off, unsigned width, uint32_t old_value) override;
  void before_reset() override;
  void on_reset() override;

 private:
  explicit Pf(const PfParams& p) : Function("mlx5-pf"), params_(p) {}
  PfParams params_;
  std::unique_ptr<SriovCapability> sriov_;
};

class Vf : public Function {
 public:
  static Result<std::unique_ptr<Vf>> create(Pf& pf, uint16_t index);
  uint16_t index() const { return index_; }

 protected:
  void on_reset() override;

 private:
  Vf(Pf& pf, uint16_t index) : Function("mlx5-vf"), index_(index) { set_physfn(&pf); }
  uint16_t index_;
};

}  // namespace uvfio::hw::mlx5
