// SPDX-License-Identifier: BSD-3-Clause
// Migration v2 (reference/kernel-vfio.md §3): the state graph every driver
// walks one arc at a time, and the data stream of a migration session.
#pragma once

#include <span>

#include "base/result.h"
#include "vfio/uapi.h"

namespace uvfio::vfio {

const char* to_string(MigState s);

// Is `s` a state a device with migration `flags` supports? ERROR never is.
bool mig_state_supported(MigState s, uint64_t flags);

// vfio_mig_get_next_state(): the next single arc from `cur` towards
// `target`, skipping states the device does not support. EINVAL for an
// unsupported or out-of-range state and when the path leads to ERROR (the
// skip loop stops there: the upstream soft-lockup is not repeated).
Result<MigState> mig_next_state(MigState cur, MigState target, uint64_t flags);

// The kernel's next-step table (row = current, column = target).
MigState mig_table(MigState cur, MigState target);

// One migration session's stream (the kernel's data fd). Saving streams are
// read, resuming streams written; the other direction fails with EINVAL.
// Implementations are thread-safe against the device's state changes.
class MigrationFile {
 public:
  virtual ~MigrationFile() = default;
  // Saving: bytes read; 0 = end of stream (STOP_COPY); ENOMSG = nothing more
  // for now (PRE_COPY). A file whose session ended fails with ENODEV.
  virtual Result<size_t> read(std::span<uint8_t> out) { (void)out; return Error(EINVAL, "not a saving stream"); }
  // Resuming: bytes accepted. Errors poison the stream.
  virtual Result<size_t> write(std::span<const uint8_t> in) { (void)in; return Error(EINVAL, "not a resuming stream"); }
  // VFIO_MIG_GET_PRECOPY_INFO: only in PRE_COPY/PRE_COPY_P2P, else EINVAL.
  virtual Result<vfio_precopy_info> precopy_info() { return Error(EINVAL, "not in PRE_COPY"); }
};

}  // namespace uvfio::vfio
