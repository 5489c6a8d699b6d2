// SPDX-License-Identifier: BSD-3-Clause
// A small logger: one line per message on stderr, with a level and an optional
// device prefix ("0000:08:00.0 mlx5_vfio_pci: ...") as the kernel's dev_info().
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace uvfio::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void set_level(Level l);
Level level();
void write(Level l, std::string_view prefix, std::string_view msg);

template <class... A>
void emit(Level l, std::string_view prefix, fmt::format_string<A...> f, A&&... a) {
  if (l < level()) return;
  write(l, prefix, fmt::format(f, std::forward<A>(a)...));
}

template <class... A> void debug(std::string_view p, fmt::format_string<A...> f, A&&... a) { emit(Level::kDebug, p, f, std::forward<A>(a)...); }
template <class... A> void info(std::string_view p, fmt::format_string<A...> f, A&&... a) { emit(Level::kInfo, p, f, std::forward<A>(a)...); }
template <class... A> void warn(std::string_view p, fmt::format_string<A...> f, A&&... a) { emit(Level::kWarn, p, f, std::forward<A>(a)...); }
template <class... A> void error(std::string_view p, fmt::format_string<A...> f, A&&... a) { emit(Level::kError, p, f, std::forward<A>(a)...); }

}  // namespace uvfio::log
