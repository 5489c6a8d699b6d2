// SPDX-License-Identifier: BSD-3-Clause
// The edu model's factory: `model = "edu"` in the topology, with an
// optional dma_mask_bits (28..64, default 28 as QEMU's dma_mask).
#pragma once

#include "sdk/model.h"

namespace edu {
uvfio::Result<std::unique_ptr<uvfio::hw::Function>> make_model(const uvfio::sdk::ModelParams& p);
}
