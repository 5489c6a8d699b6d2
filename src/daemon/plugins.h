// SPDX-License-Identifier: BSD-3-Clause
// Loading device plugins (sdk/plugin.h): the shared object opened with every
// symbol resolved at once, its descriptor found and checked against the
// plugin ABI and uvfio version of this uvfiod. Errors name the file.
#pragma once

#include <string>

#include "daemon/topology.h"
#include "sdk/plugin.h"

namespace uvfio::daemon {

class PluginHandle {
 public:
  PluginHandle() = default;
  PluginHandle(PluginHandle&& o) noexcept : handle_(o.handle_), desc_(o.desc_), path_(std::move(o.path_)) {
    o.handle_ = nullptr;
  }
  PluginHandle& operator=(PluginHandle&&) = delete;
  ~PluginHandle();

  static Result<PluginHandle, TopologyError> open(const std::string& path);
  const uvfio_plugin_descriptor& descriptor() const { return *desc_; }
  const std::string& path() const { return path_; }
  // "name (path)", for messages.
  std::string label() const;

 private:
  void* handle_ = nullptr;
  const uvfio_plugin_descriptor* desc_ = nullptr;
  std::string path_;
};

}  // namespace uvfio::daemon
