// SPDX-License-Identifier: BSD-3-Clause
// Result<T>: a value or an Error (errno code + short static context).
//
// Why: every fallible call in uvfio reports an errno that must travel unchanged
// to the wire or to the CLI. g++ 12 has no std::expected in C++20, so this is a
// small type with std::expected's member names. It is [[nodiscard]]: an
// ignored Result is a compile error under -Werror.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

namespace uvfio {

// Linux's internal "probe again later" code (include/linux/errno.h). Never
// crosses a user-visible boundary: the driver core consumes it.
inline constexpr int kEProbeDefer = 517;

// An errno plus where it came from. `context` must be a string literal (or
// otherwise outlive every copy); errors stay cheap to pass around.
struct Error {
  int code = EINVAL;
  const char* context = "";

  constexpr Error() = default;
  constexpr Error(int c, const char* ctx = "") : code(c), context(ctx) {}
  bool operator==(const Error& o) const { return code == o.code; }
};

// Human text for an errno ("No such device").
std::string errno_name(int code);
std::string to_string(const Error& e);

template <class T, class E = Error>
class [[nodiscard]] Result {
 public:
  using value_type = T;
  using error_type = E;

  template <class U = T,
            std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                 !std::is_same_v<std::decay_t<U>, Result> &&
                                 !std::is_same_v<std::decay_t<U>, E>,
                             int> = 0>
  Result(U&& v) : ok_(true) {  // NOLINT: implicit like std::expected
    new (&val_) T(std::forward<U>(v));
  }
  Result(E e) : ok_(false) { new (&err_) E(std::move(e)); }  // NOLINT
  Result(const Result& o) : ok_(o.ok_) {
    if (ok_) new (&val_) T(o.val_); else new (&err_) E(o.err_);
  }
  Result(Result&& o) noexcept : ok_(o.ok_) {
    if (ok_) new (&val_) T(std::move(o.val_)); else new (&err_) E(std::move(o.err_));
  }
  Result& operator=(Result o) noexcept {
    destroy();
    ok_ = o.ok_;
    if (ok_) new (&val_) T(std::move(o.val_)); else new (&err_) E(std::move(o.err_));
    return *this;
  }
  ~Result() { destroy(); }

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }

  T& value() & { check(true); return val_; }
  const T& value() const& { check(true); return val_; }
  T&& value() && { check(true); return std::move(val_); }
  const E& error() const { check(false); return err_; }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  template <class U>
  T value_or(U&& d) const& { return ok_ ? val_ : T(std::forward<U>(d)); }

 private:
  void check(bool want) const { if (ok_ != want) std::abort(); }  // our bug, not input
  void destroy() { if (ok_) val_.~T(); else err_.~E(); }
  bool ok_;
  union { T val_; E err_; };
};

template <class E>
class [[nodiscard]] Result<void, E> {
 public:
  using value_type = void;
  using error_type = E;
  Result() = default;
  Result(E e) : ok_(false), err_(std::move(e)) {}  // NOLINT
  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const { if (!ok_) std::abort(); }
  const E& error() const { if (ok_) std::abort(); return err_; }

 private:
  bool ok_ = true;
  E err_{};
};

// An explicit success for Result<void>.
inline Result<void> ok() { return {}; }

}  // namespace uvfio

// TRY(expr): evaluate a Result; on error return its error from the enclosing
// function, else yield the value (void for Result<void>).
#define UVFIO_CONCAT_(a, b) a##b
#define UVFIO_CONCAT(a, b) UVFIO_CONCAT_(a, b)
#define TRY(expr)                                              \
  ({                                                           \
    auto&& UVFIO_CONCAT(try_r_, __LINE__) = (expr);            \
    if (!UVFIO_CONCAT(try_r_, __LINE__))                       \
      return UVFIO_CONCAT(try_r_, __LINE__).error();           \
    std::move(UVFIO_CONCAT(try_r_, __LINE__)).value();         \
  })
