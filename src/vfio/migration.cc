// SPDX-License-Identifier: BSD-3-Clause
#include "vfio/migration.h"

namespace uvfio::vfio {
namespace {

using S = MigState;
constexpr S E = S::kError, ST = S::kStop, R = S::kRunning, SC = S::kStopCopy, RS = S::kResuming,
            RP = S::kRunningP2P, PC = S::kPreCopy, PP = S::kPreCopyP2P;

// reference/kernel-vfio.md §3.3, indexed [cur][target].
constexpr S kTable[kNumMigStates][kNumMigStates] = {
    /* ERROR        */ {E, E, E, E, E, E, E, E},
    /* STOP         */ {E, ST, RP, SC, RS, RP, RP, RP},
    /* RUNNING      */ {E, RP, R, RP, RP, RP, PC, RP},
    /* STOP_COPY    */ {E, ST, ST, SC, ST, ST, E, E},
    /* RESUMING     */ {E, ST, ST, ST, RS, ST, ST, ST},
    /* RUNNING_P2P  */ {E, ST, R, ST, ST, RP, R, PP},
    /* PRE_COPY     */ {E, R, R, PP, R, R, PC, PP},
    /* PRE_COPY_P2P */ {E, RP, RP, SC, RP, RP, PC, PP},
};

}  // namespace

const char* to_string(MigState s) {
  switch (s) {
    case S::kError: return "ERROR";
    case S::kStop: return "STOP";
    case S::kRunning: return "RUNNING";
    case S::kStopCopy: return "STOP_COPY";
    case S::kResuming: return "RESUMING";
    case S::kRunningP2P: return "RUNNING_P2P";
    case S::kPreCopy: return "PRE_COPY";
    case S::kPreCopyP2P: return "PRE_COPY_P2P";
  }
  return "?";
}

bool mig_state_supported(MigState s, uint64_t flags) {
  uint64_t need;
  switch (s) {
    case S::kStop: case S::kRunning: case S::kStopCopy: case S::kResuming: need = kMigStopCopy; break;
    case S::kRunningP2P: need = kMigStopCopy | kMigP2P; break;
    case S::kPreCopy: need = kMigStopCopy | kMigPreCopy; break;
    case S::kPreCopyP2P: need = kMigStopCopy | kMigP2P | kMigPreCopy; break;
    default: return false;
  }
  return (flags & need) == need;
}

MigState mig_table(MigState cur, MigState target) {
  auto c = static_cast<uint32_t>(cur), t = static_cast<uint32_t>(target);
  if (c >= kNumMigStates || t >= kNumMigStates) return S::kError;
  return kTable[c][t];
}

Result<MigState> mig_next_state(MigState cur, MigState target, uint64_t flags) {
  if (static_cast<uint32_t>(cur) >= kNumMigStates || !mig_state_supported(cur, flags))
    return Error(EINVAL, "current migration state unsupported");
  if (static_cast<uint32_t>(target) >= kNumMigStates || !mig_state_supported(target, flags))
    return Error(EINVAL, "target migration state unsupported");
  MigState next = mig_table(cur, target);
  // Skip unsupported optional states; stop on ERROR, which is never supported.
  while (next != S::kError && !mig_state_supported(next, flags)) next = mig_table(next, target);
  if (next == S::kError) return Error(EINVAL, "no path between these migration states");
  return next;
}

}  // namespace uvfio::vfio
