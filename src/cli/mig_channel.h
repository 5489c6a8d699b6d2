// SPDX-License-Identifier: BSD-3-Clause
// The migration channel of uvfio-guest: the byte stream between `migrate
// --to-tcp` and `receive --listen`. TLS 1.3 (GnuTLS) with both ends
// authenticated, by X.509 certificates or a pre-shared key, in the style of
// QEMU's tls-creds-x509 / tls-creds-psk; plain TCP only when asked for
// (--insecure). IPv4, IPv6 and host names; one timeout bounds connecting,
// the handshake and the header exchange.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace uvfio::mig {

struct TlsOptions {
  // QEMU's tls-creds-x509 directory: ca-cert.pem, and server-cert.pem +
  // server-key.pem (receive) or client-cert.pem + client-key.pem (migrate).
  std::string x509_dir;
  // QEMU's tls-creds-psk file: lines "identity:hexkey".
  std::string psk_file;
  std::string psk_user = "uvfio";  // the identity migrate uses
  // The name the destination's certificate must carry (migrate; default:
  // the host part of the address, as QEMU's tls-hostname).
  std::string hostname;
  // (receive) When not empty, the source's certificate must carry one of
  // these common names (as QEMU's tls-authz lists the peers it admits).
  std::vector<std::string> authz;
  bool insecure = false;  // plain TCP
  std::chrono::milliseconds timeout{10000};
  bool tls() const { return !x509_dir.empty() || !psk_file.empty(); }
};

// An Error whose text is built at run time (Error::context must outlive it):
// kept for the life of the process; a CLI makes few of them.
Error error_text(int code, std::string text);

class Channel {
 public:
  virtual ~Channel() = default;
  // Writes are buffered; read_all() and flush() send what is buffered.
  virtual Result<void> write_all(const void* p, size_t n) = 0;
  virtual Result<void> read_all(void* p, size_t n) = 0;
  virtual Result<void> flush() = 0;
  // Ends the stream for the peer (it reads end of stream).
  virtual void shutdown() = 0;
  // After the handshake and header: the stream's own idle timeout.
  virtual void set_timeout(std::chrono::milliseconds t) = 0;
  // "TLS 1.3, AES-256-GCM, ..." / "plain TCP".
  virtual std::string describe() const = 0;
  // Payload bytes written so far (before TLS framing).
  virtual uint64_t bytes_out() const = 0;
};

// A channel over a connected stream socket, without TLS.
std::unique_ptr<Channel> plain_channel(UniqueFd fd);

struct HostPort {
  std::string host;  // empty: every address (listen)
  std::string port;
};
// HOST:PORT, [V6ADDR]:PORT, or PORT alone (listen: every address).
Result<HostPort> parse_hostport(std::string_view s);

// Connects to a `receive` at `hostport` (a refused connection is retried
// until the timeout: the receiver may be starting) and authenticates.
Result<std::unique_ptr<Channel>> connect(const std::string& hostport, const TlsOptions& o);

struct Creds;  // loaded TLS credentials

class Listener {
 public:
  static Result<std::unique_ptr<Listener>> listen(const std::string& hostport, const TlsOptions& o);
  ~Listener();
  // Serves connections until one authenticates and `admit` takes it (the
  // stream's header: it may refuse); returns that one. Handshakes run side
  // by side (a silent or slow peer holds up nobody). Unauthenticated
  // connections are bounded per source (kMaxPendingPerSource) and in all
  // (kMaxPending): a new one replaces the oldest of its source, or of the
  // source holding the most; everything in progress is bounded by
  // kMaxInProgress. Every refused connection is closed and reported, its
  // thread joined when it ends, and the listener stays open for the next
  // call.
  using Admit = std::function<Result<void>(Channel&)>;
  using Report = std::function<void(const std::string&)>;
  Result<std::unique_ptr<Channel>> next(const Admit& admit, const Report& report);
  static constexpr int kMaxPending = 32;
  static constexpr int kMaxPendingPerSource = 4;
  static constexpr int kMaxInProgress = 64;
  std::string address() const { return address_; }

 private:
  Listener() = default;
  UniqueFd fd_;
  TlsOptions o_;
  std::string address_;
  std::shared_ptr<Creds> creds_;
};

}  // namespace uvfio::mig
