// SPDX-License-Identifier: BSD-3-Clause
// The kernel's VFIO uAPI (<linux/vfio.h> from Debian's linux-libc-dev), plus
// what the 6.1 headers lack (PRE_COPY, precopy info, MIG_DATA_SIZE: Linux
// 6.2), defined here only when missing, with the kernel's values.
#pragma once

#include <linux/vfio.h>

#include <cstdint>

#ifndef VFIO_MIGRATION_PRE_COPY
#define VFIO_MIGRATION_PRE_COPY (1 << 2)
#endif

#ifndef VFIO_MIG_GET_PRECOPY_INFO
struct vfio_precopy_info {
  __u32 argsz;
  __u32 flags;
  __aligned_u64 initial_bytes;
  __aligned_u64 dirty_bytes;
};
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
#endif

#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
struct vfio_device_feature_mig_data_size {
  __aligned_u64 stop_copy_length;
};
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
#endif

namespace uvfio::vfio {

// enum vfio_device_mig_state, with the two 6.2 states.
enum class MigState : uint32_t {
  kError = 0,
  kStop = 1,
  kRunning = 2,
  kStopCopy = 3,
  kResuming = 4,
  kRunningP2P = 5,
  kPreCopy = 6,
  kPreCopyP2P = 7,
};
inline constexpr uint32_t kNumMigStates = 8;

inline constexpr uint64_t kMigStopCopy = VFIO_MIGRATION_STOP_COPY;
inline constexpr uint64_t kMigP2P = VFIO_MIGRATION_P2P;
inline constexpr uint64_t kMigPreCopy = VFIO_MIGRATION_PRE_COPY;

inline constexpr uint32_t kPciNumRegions = VFIO_PCI_NUM_REGIONS;  // 9
inline constexpr uint32_t kPciNumIrqs = VFIO_PCI_NUM_IRQS;        // 5
inline constexpr uint32_t kFeatureFlagsMask =
    VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
inline constexpr uint32_t kDmaLoggingMaxRanges = 256;  // one 4 KiB page of ranges

}  // namespace uvfio::vfio
