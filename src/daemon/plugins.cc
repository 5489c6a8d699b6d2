// SPDX-License-Identifier: BSD-3-Clause
#include "daemon/plugins.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstring>

namespace uvfio::daemon {

PluginHandle::~PluginHandle() {
  if (handle_) dlclose(handle_);
}

std::string PluginHandle::label() const {
  return desc_ ? fmt::format("plugin {} ({})", desc_->name ? desc_->name : "?", path_) : "plugin " + path_;
}

Result<PluginHandle, TopologyError> PluginHandle::open(const std::string& path) {
  PluginHandle p;
  p.path_ = path;
  // RTLD_NOW: a symbol the plugin needs and uvfiod does not have is an
  // error here, not a crash when a device first uses it.
  p.handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!p.handle_) {
    const char* e = dlerror();
    return TopologyError{fmt::format("plugin {}: cannot load: {}", path, e ? e : "unknown error")};
  }
  dlerror();
  void* sym = dlsym(p.handle_, UVFIO_PLUGIN_SYMBOL);
  if (!sym)
    return TopologyError{fmt::format("plugin {}: not a uvfio plugin (no {} symbol: built without UVFIO_PLUGIN?)",
                                     path, UVFIO_PLUGIN_SYMBOL)};
  p.desc_ = static_cast<const uvfio_plugin_descriptor*>(sym);
  if (p.desc_->abi != UVFIO_PLUGIN_ABI)
    return TopologyError{fmt::format("plugin {}: built for plugin ABI {}, this uvfiod has ABI {}: rebuild it against "
                                     "this uvfio",
                                     path, p.desc_->abi, UVFIO_PLUGIN_ABI)};
  if (!p.desc_->uvfio_version || std::strcmp(p.desc_->uvfio_version, UVFIO_VERSION_STRING) != 0)
    return TopologyError{fmt::format("plugin {}: built against uvfio {}, this is uvfio {}: rebuild it against this "
                                     "uvfio",
                                     path, p.desc_->uvfio_version ? p.desc_->uvfio_version : "(none)",
                                     UVFIO_VERSION_STRING)};
  if (!p.desc_->name || !*p.desc_->name || std::strlen(p.desc_->name) > 64 || !p.desc_->init)
    return TopologyError{fmt::format("plugin {}: its descriptor has no name or no init function", path)};
  return p;
}

}  // namespace uvfio::daemon
