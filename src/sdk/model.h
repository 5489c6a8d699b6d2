// SPDX-License-Identifier: BSD-3-Clause
// What a plugin's device model sees of uvfiod (sdk/plugin.h): the
// topology's parameters and the factory's signature. A model's sources
// include this and the hardware headers (hw/), nothing of the drivers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "base/result.h"
#include "hw/function.h"

namespace uvfio::sdk {

// The [[device]] table of a plugin's model: every key but `address`,
// `model` and `driver_override`. Each accessor checks the type and range and
// marks the key used; uvfiod refuses a device with a key its factory never
// asked for (a typo is an error, as for the built-in models).
class ModelParams {
 public:
  using Value = std::variant<int64_t, std::string, bool>;
  explicit ModelParams(std::map<std::string, Value> values = {}) : values_(std::move(values)) {}

  Result<int64_t> integer(const std::string& key, int64_t lo, int64_t hi, int64_t dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const int64_t* v = std::get_if<int64_t>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected an integer"));
    if (*v < lo || *v > hi) return fail(key, Error(ERANGE, "out of range"));
    return *v;
  }
  Result<std::string> string(const std::string& key, const std::string& dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const std::string* v = std::get_if<std::string>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected a string"));
    return *v;
  }
  Result<bool> boolean(const std::string& key, bool dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const bool* v = std::get_if<bool>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected true or false"));
    return *v;
  }
  // The key of the last accessor that failed ("" if none did): uvfiod names
  // it in its error.
  const std::string& failed_key() const { return failed_key_; }
  // Keys present that no accessor asked for.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (auto& [k, v] : values_)
      if (!used_.count(k)) out.push_back(k);
    return out;
  }

 private:
  Error fail(const std::string& key, Error e) const {
    failed_key_ = key;
    return e;
  }
  std::map<std::string, Value> values_;
  mutable std::set<std::string> used_;
  mutable std::string failed_key_;
};

// Builds one function of a model (a PF, an endpoint: anything placed at an
// address of the topology). VFs are made by the PF's SR-IOV capability.
using ModelFactory = std::function<Result<std::unique_ptr<hw::Function>>(const ModelParams&)>;

}  // namespace uvfio::sdk
