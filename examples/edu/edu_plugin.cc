// SPDX-License-Identifier: BSD-3-Clause
// The edu plugin: registers the model and its variant driver with uvfiod.
#include <cerrno>
#include <cstdio>

#include "edu_driver.h"
#include "edu_model.h"
#include "sdk/plugin.h"

namespace {

int init(uvfio::sdk::Host* host, char* err, size_t err_size) {
  if (auto r = host->add_model("edu", edu::make_model); !r) return r.error().code;
  if (auto r = host->add_pci_driver(edu::make_driver(host->vfio_registry())); !r) return r.error().code;
  (void)err;
  (void)err_size;
  return 0;
}

}  // namespace

UVFIO_PLUGIN("edu", init);
