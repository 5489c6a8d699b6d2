// SPDX-License-Identifier: BSD-3-Clause
#include "cli/mig_channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <condition_variable>
#include <system_error>
#include <thread>
#include <vector>

namespace uvfio::mig {

Error error_text(int code, std::string text) {
  static std::mutex mu;
  static std::deque<std::string> texts;
  std::lock_guard lk(mu);
  texts.push_back(std::move(text));
  return Error(code, texts.back().c_str());
}

namespace {

using Clock = std::chrono::steady_clock;

void set_io_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(t.count() % 1000 * 1000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

std::string peer_name(int fd) {
  sockaddr_storage a{};
  socklen_t l = sizeof(a);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &l) != 0) return "?";
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&a), l, host, sizeof(host), serv, sizeof(serv),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return a.ss_family == AF_INET6 ? fmt::format("[{}]:{}", host, serv) : fmt::format("{}:{}", host, serv);
}

// Writes are gathered here and sent in large pieces: a frame header and its
// page become one TCP send (or one TLS record) instead of two.
class Buffered : public Channel {
 public:
  uint64_t bytes_out() const override { return bytes_out_; }
  Result<void> write_all(const void* p, size_t n) override {
    auto* b = static_cast<const uint8_t*>(p);
    bytes_out_ += n;
    if (out_.size() + n > kBuf) TRY(flush());
    if (n >= kBuf) return send_raw(b, n);
    out_.insert(out_.end(), b, b + n);
    return ok();
  }
  Result<void> read_all(void* p, size_t n) override {
    TRY(flush());
    auto* b = static_cast<uint8_t*>(p);
    while (n) {
      size_t k = TRY(recv_some(b, n));
      b += k;
      n -= k;
    }
    return ok();
  }
  Result<void> flush() override {
    if (out_.empty()) return ok();
    auto r = send_raw(out_.data(), out_.size());
    out_.clear();
    return r;
  }

 protected:
  static constexpr size_t kBuf = 256 << 10;
  virtual Result<void> send_raw(const uint8_t* p, size_t n) = 0;
  virtual Result<size_t> recv_some(uint8_t* p, size_t n) = 0;
  std::vector<uint8_t> out_;
  uint64_t bytes_out_ = 0;
};

class Plain : public Buffered {
 public:
  explicit Plain(UniqueFd fd) : fd_(std::move(fd)) { out_.reserve(kBuf); }
  void shutdown() override {
    (void)flush();
    ::shutdown(fd_.get(), SHUT_RDWR);
  }
  void set_timeout(std::chrono::milliseconds t) override { set_io_timeout(fd_.get(), t); }
  std::string describe() const override { return "plain TCP"; }

 private:
  Result<void> send_raw(const uint8_t* b, size_t n) override {
    while (n) {
      ssize_t k = ::send(fd_.get(), b, n, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Error(ETIMEDOUT, "stream send: peer stalled");
      if (k <= 0) return Error(errno ? errno : EPIPE, "stream send");
      b += k;
      n -= static_cast<size_t>(k);
    }
    return ok();
  }
  Result<size_t> recv_some(uint8_t* b, size_t n) override {
    for (;;) {
      ssize_t k = ::recv(fd_.get(), b, n, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Error(ETIMEDOUT, "stream recv: peer silent");
      if (k == 0) return Error(EPIPE, "stream ended early");
      if (k < 0) return Error(errno, "stream recv");
      return static_cast<size_t>(k);
    }
  }
  UniqueFd fd_;
};

// ---- TLS (GnuTLS) ----------------------------------------------------------

Error tls_error(const char* what, int rc) {
  if (rc == GNUTLS_E_PUSH_ERROR || rc == GNUTLS_E_PULL_ERROR || rc == GNUTLS_E_PREMATURE_TERMINATION)
    return error_text(EPIPE, fmt::format("{}: the peer closed the connection", what));
  int code = rc == GNUTLS_E_AGAIN ? ETIMEDOUT : EPROTO;
  return error_text(code, fmt::format("{}: {}", what, gnutls_strerror(rc)));
}

// TLS 1.3 only. PSK: the key exchanges with (EC)DHE, so a leaked key does not
// open recorded streams.
// AES-GCM first: the CPU does it (AES-NI), the bulk of a migration is data.
constexpr const char* kPrioX509 =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305";
constexpr const char* kPrioPsk =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:-KX-ALL:+ECDHE-PSK:"
    "+DHE-PSK";

bool numeric_host(const std::string& h) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, h.c_str(), &a4) == 1 || inet_pton(AF_INET6, h.c_str(), &a6) == 1;
}

bool readable_file(const std::string& p) { return access(p.c_str(), R_OK) == 0; }

// After an alert: end our side and let what the peer already sent drain
// (briefly), so the close does not reset the connection before the peer
// reads the alert.
void linger(int fd) {
  ::shutdown(fd, SHUT_WR);
  char sink[4096];
  auto until = Clock::now() + std::chrono::milliseconds(300);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) return;
    if (::recv(fd, sink, sizeof(sink), MSG_DONTWAIT) <= 0) return;
  }
}

}  // namespace

struct Creds {
  gnutls_certificate_credentials_t x509 = nullptr;
  gnutls_psk_server_credentials_t psk_server = nullptr;
  gnutls_psk_client_credentials_t psk_client = nullptr;
  ~Creds() {
    if (x509) gnutls_certificate_free_credentials(x509);
    if (psk_server) gnutls_psk_free_server_credentials(psk_server);
    if (psk_client) gnutls_psk_free_client_credentials(psk_client);
  }
};

namespace {

Result<std::unique_ptr<Creds>> load_creds(const TlsOptions& o, bool server) {
  auto c = std::make_unique<Creds>();
  if (!o.x509_dir.empty()) {
    std::string ca = o.x509_dir + "/ca-cert.pem";
    std::string cert = o.x509_dir + (server ? "/server-cert.pem" : "/client-cert.pem");
    std::string key = o.x509_dir + (server ? "/server-key.pem" : "/client-key.pem");
    for (auto* f : {&ca, &cert, &key})
      if (!readable_file(*f)) return error_text(ENOENT, fmt::format("cannot read {}", *f));
    if (int rc = gnutls_certificate_allocate_credentials(&c->x509); rc < 0) return tls_error("credentials", rc);
    int n = gnutls_certificate_set_x509_trust_file(c->x509, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (n <= 0) return error_text(EINVAL, fmt::format("{}: no CA certificate in it", ca));
    if (int rc = gnutls_certificate_set_x509_key_file(c->x509, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM); rc < 0)
      return tls_error(fmt::format("{} / {}", cert, key).c_str(), rc);
  } else {
    if (!readable_file(o.psk_file)) return error_text(ENOENT, fmt::format("cannot read {}", o.psk_file));
    if (server) {
      if (int rc = gnutls_psk_allocate_server_credentials(&c->psk_server); rc < 0) return tls_error("credentials", rc);
      if (int rc = gnutls_psk_set_server_credentials_file(c->psk_server, o.psk_file.c_str()); rc < 0)
        return tls_error(o.psk_file.c_str(), rc);
    } else {
      // The identity's key from the same file format the server reads.
      std::string key;
      FILE* f = std::fopen(o.psk_file.c_str(), "r");
      if (!f) return error_text(errno, fmt::format("cannot read {}", o.psk_file));
      char line[1024];
      while (std::fgets(line, sizeof(line), f)) {
        std::string_view l(line);
        while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.remove_suffix(1);
        auto colon = l.find(':');
        if (colon != std::string_view::npos && l.substr(0, colon) == o.psk_user) key = std::string(l.substr(colon + 1));
      }
      std::fclose(f);
      if (key.empty()) return error_text(ENOENT, fmt::format("{}: no key for identity '{}'", o.psk_file, o.psk_user));
      if (int rc = gnutls_psk_allocate_client_credentials(&c->psk_client); rc < 0) return tls_error("credentials", rc);
      gnutls_datum_t k{reinterpret_cast<unsigned char*>(key.data()), static_cast<unsigned>(key.size())};
      if (int rc = gnutls_psk_set_client_credentials(c->psk_client, o.psk_user.c_str(), &k, GNUTLS_PSK_KEY_HEX); rc < 0)
        return tls_error(fmt::format("{}: the key of '{}'", o.psk_file, o.psk_user).c_str(), rc);
    }
  }
  return c;
}

class Tls : public Buffered {
 public:
  Tls(UniqueFd fd, std::shared_ptr<Creds> creds) : fd_(std::move(fd)), creds_(std::move(creds)) {
    out_.reserve(kBuf);
  }
  ~Tls() override {
    if (s_) gnutls_deinit(s_);
  }
  // Handshake (bounded by the socket timeout already set) and verification.
  Result<void> handshake(bool server, const TlsOptions& o) {
    // GNUTLS_NO_SIGNAL: a peer gone mid-stream is an EPIPE error, not a
    // SIGPIPE that kills the program without a word.
    if (int rc = gnutls_init(&s_, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL); rc < 0)
      return tls_error("TLS", rc);
    bool x509 = creds_->x509 != nullptr;
    const char* err_pos = nullptr;
    if (int rc = gnutls_priority_set_direct(s_, x509 ? kPrioX509 : kPrioPsk, &err_pos); rc < 0)
      return tls_error("TLS priorities", rc);
    if (x509) {
      gnutls_credentials_set(s_, GNUTLS_CRD_CERTIFICATE, creds_->x509);
      if (server) {
        // Both ends authenticated: the source shows a certificate of our CA.
        gnutls_certificate_server_set_request(s_, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(s_, nullptr, 0);
      } else {
        if (!numeric_host(o.hostname))  // SNI carries names only
          gnutls_server_name_set(s_, GNUTLS_NAME_DNS, o.hostname.data(), o.hostname.size());
        gnutls_session_set_verify_cert(s_, o.hostname.c_str(), 0);
      }
    } else if (server) {
      gnutls_credentials_set(s_, GNUTLS_CRD_PSK, creds_->psk_server);
    } else {
      gnutls_credentials_set(s_, GNUTLS_CRD_PSK, creds_->psk_client);
    }
    gnutls_transport_set_int(s_, fd_.get());
    int rc;
    do rc = gnutls_handshake(s_);
    while (rc < 0 && !gnutls_error_is_fatal(rc) && rc != GNUTLS_E_AGAIN);
    if (rc < 0) {
      // Tell the peer why (a bad certificate, a decrypt error) before closing.
      if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_PULL_ERROR && rc != GNUTLS_E_PUSH_ERROR &&
          rc != GNUTLS_E_PREMATURE_TERMINATION && rc != GNUTLS_E_FATAL_ALERT_RECEIVED) {
        gnutls_alert_send_appropriate(s_, rc);
        linger(fd_.get());
      }
      if (rc == GNUTLS_E_PULL_ERROR || rc == GNUTLS_E_PREMATURE_TERMINATION)
        return error_text(ECONNRESET, "the peer closed the connection during the TLS handshake");
      if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        unsigned status = gnutls_session_get_verify_cert_status(s_);
        gnutls_datum_t txt{};
        gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0);
        std::string why = txt.data ? std::string(reinterpret_cast<char*>(txt.data), txt.size) : "not trusted";
        gnutls_free(txt.data);
        return error_text(EACCES, fmt::format("the peer's certificate is refused: {}", why));
      }
      if (rc == GNUTLS_E_WARNING_ALERT_RECEIVED || rc == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        return error_text(EACCES, fmt::format("TLS handshake refused by the peer: {}{}",
                                              gnutls_alert_get_name(gnutls_alert_get(s_)),
                                              x509 ? "" : " (a different pre-shared key or identity?)"));
      }
      if (rc == GNUTLS_E_AGAIN) return error_text(ETIMEDOUT, "TLS handshake: no answer within the timeout");
      return error_text(EACCES, fmt::format("TLS handshake failed: {}{}", gnutls_strerror(rc),
                                            x509 ? "" : " (a different pre-shared key or identity?)"));
    }
    if (gnutls_protocol_get_version(s_) != GNUTLS_TLS1_3) return error_text(EPROTO, "the peer did not negotiate TLS 1.3");
    if (server && x509 && !o.authz.empty()) {
      std::string cn = peer_common_name();
      if (std::find(o.authz.begin(), o.authz.end(), cn) == o.authz.end()) {
        gnutls_alert_send(s_, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
        linger(fd_.get());
        return error_text(EACCES, fmt::format("the peer's certificate names '{}', not one --tls-authz admits", cn));
      }
    }
    const char* group = gnutls_group_get_name(gnutls_group_get(s_));
    desc_ = fmt::format("TLS 1.3, {}, {}, {}", gnutls_cipher_get_name(gnutls_cipher_get(s_)), group ? group : "no DH",
                        x509 ? "X.509, both ends verified" : "pre-shared key");
    return ok();
  }
  // The common name of the peer's (verified) certificate.
  std::string peer_common_name() {
    unsigned n = 0;
    const gnutls_datum_t* certs = gnutls_certificate_get_peers(s_, &n);
    if (!certs || n == 0) return "";
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0) return "";
    std::string cn;
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) >= 0) {
      char buf[256];
      size_t len = sizeof(buf);
      if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &len) >= 0) cn.assign(buf, len);
    }
    gnutls_x509_crt_deinit(crt);
    return cn;
  }
  void shutdown() override {
    (void)flush();
    if (s_) gnutls_bye(s_, GNUTLS_SHUT_WR);
    ::shutdown(fd_.get(), SHUT_RDWR);
  }
  void set_timeout(std::chrono::milliseconds t) override { set_io_timeout(fd_.get(), t); }
  std::string describe() const override { return desc_; }

 private:
  Result<void> send_raw(const uint8_t* b, size_t n) override {
    while (n) {
      ssize_t k = gnutls_record_send(s_, b, n);
      if (k == GNUTLS_E_INTERRUPTED) continue;
      if (k < 0) return tls_error("stream send", static_cast<int>(k));
      b += k;
      n -= static_cast<size_t>(k);
    }
    return ok();
  }
  Result<size_t> recv_some(uint8_t* b, size_t n) override {
    for (;;) {
      ssize_t k = gnutls_record_recv(s_, b, n);
      if (k == GNUTLS_E_INTERRUPTED) continue;
      if (k == 0) return Error(EPIPE, "stream ended early");
      // TLS 1.3: the server checks our certificate after we finished; its
      // verdict arrives as an alert on the first read.
      if (k == GNUTLS_E_FATAL_ALERT_RECEIVED)
        return error_text(EACCES, fmt::format("TLS: refused by the peer: {}", gnutls_alert_get_name(gnutls_alert_get(s_))));
      if (k < 0) return tls_error("stream recv", static_cast<int>(k));
      return static_cast<size_t>(k);
    }
  }
  UniqueFd fd_;
  std::shared_ptr<Creds> creds_;
  gnutls_session_t s_ = nullptr;
  std::string desc_;
};

struct AddrInfo {
  addrinfo* p = nullptr;
  ~AddrInfo() {
    if (p) freeaddrinfo(p);
  }
};

Result<void> resolve(const HostPort& hp, bool passive, AddrInfo& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;  // no AI_ADDRCONFIG: a host with loopback only still migrates locally
  int rc = getaddrinfo(hp.host.empty() ? nullptr : hp.host.c_str(), hp.port.c_str(), &hints, &out.p);
  if (rc != 0)
    return error_text(rc == EAI_SYSTEM ? errno : EHOSTUNREACH,
                      fmt::format("cannot resolve '{}': {}", hp.host, gai_strerror(rc)));
  return ok();
}

// One attempt at one address, bounded by the deadline.
Result<UniqueFd> connect_one(const addrinfo* ai, Clock::time_point deadline) {
  UniqueFd s(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (s.get() < 0) return Error(errno, "socket");
  if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return Error(errno, "connect");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd p{s.get(), POLLOUT, 0};
    int n = poll(&p, 1, static_cast<int>(std::max<long>(left, 0)));
    if (n == 0) return Error(ETIMEDOUT, "connect");
    int err = 0;
    socklen_t l = sizeof(err);
    getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &l);
    if (n < 0 || err) return Error(n < 0 ? errno : err, "connect");
  }
  int fl = fcntl(s.get(), F_GETFL);
  fcntl(s.get(), F_SETFL, fl & ~O_NONBLOCK);
  int one = 1;
  setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return s;
}

}  // namespace

std::unique_ptr<Channel> plain_channel(UniqueFd fd) { return std::make_unique<Plain>(std::move(fd)); }

Result<HostPort> parse_hostport(std::string_view s) {
  HostPort hp;
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return Error(EINVAL, "bad address: [IPV6]:PORT");
    hp.host = std::string(s.substr(1, close - 1));
    port = s.substr(close + 2);
  } else if (auto colon = s.rfind(':'); colon != std::string_view::npos) {
    if (s.find(':') != colon) return Error(EINVAL, "bad address: an IPv6 address goes in brackets, [IPV6]:PORT");
    hp.host = std::string(s.substr(0, colon));
    port = s.substr(colon + 1);
  } else {
    port = s;
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(port)) > 65535)
    return Error(EINVAL, "bad port (HOST:PORT)");
  hp.port = std::string(port);
  return hp;
}

Result<std::unique_ptr<Channel>> connect(const std::string& hostport, const TlsOptions& o) {
  HostPort hp = TRY(parse_hostport(hostport));
  if (hp.host.empty()) return Error(EINVAL, "bad address: HOST:PORT (the destination's host is missing)");
  TlsOptions opt = o;
  if (opt.hostname.empty()) opt.hostname = hp.host;
  std::shared_ptr<Creds> creds;
  if (opt.tls()) creds = TRY(load_creds(opt, false));
  AddrInfo ai;
  TRY(resolve(hp, false, ai));
  auto deadline = Clock::now() + opt.timeout;
  for (;;) {
    Error last(ETIMEDOUT);
    UniqueFd fd;
    // A refused connection is tried again until the deadline (the receiver
    // may not listen yet); anything else at once fails that address.
    while (fd.get() < 0) {
      bool refused = false;
      for (auto* a = ai.p; a && fd.get() < 0; a = a->ai_next) {
        auto s = connect_one(a, deadline);
        if (s) fd = std::move(*s);
        else {
          last = s.error();
          refused |= last.code == ECONNREFUSED;
        }
      }
      if (fd.get() >= 0) break;
      if (!refused || Clock::now() + std::chrono::milliseconds(50) >= deadline)
        return error_text(last.code, fmt::format("cannot reach the destination {}{}", hostport,
                                                 last.code == ECONNREFUSED || last.code == ETIMEDOUT
                                                     ? fmt::format(" (tried for {} ms)", opt.timeout.count())
                                                     : ""));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    set_io_timeout(fd.get(), std::max(left, std::chrono::milliseconds(100)));
    if (!opt.tls()) {
      set_io_timeout(fd.get(), opt.timeout);
      return plain_channel(std::move(fd));
    }
    auto t = std::make_unique<Tls>(std::move(fd), creds);
    auto r = t->handshake(false, opt);
    if (r) {
      t->set_timeout(opt.timeout);
      return std::unique_ptr<Channel>(std::move(t));
    }
    // Closed without a word during the handshake: the destination dropped
    // us (it keeps room for new connections when silent ones hold it), or
    // is not a TLS listener. Tried again within the timeout; a refusal with
    // a reason (an alert) is final.
    if (r.error().code == ECONNRESET && Clock::now() + std::chrono::milliseconds(100) < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    return error_text(r.error().code, fmt::format("{}: {}", hostport, r.error().context));
  }
}

Listener::~Listener() = default;

Result<std::unique_ptr<Listener>> Listener::listen(const std::string& hostport, const TlsOptions& o) {
  HostPort hp = TRY(parse_hostport(hostport));
  std::unique_ptr<Listener> l(new Listener());
  l->o_ = o;
  if (o.tls()) l->creds_ = TRY(load_creds(o, true));
  AddrInfo ai;
  TRY(resolve(hp, true, ai));
  // Every address: one IPv6 socket takes IPv4 too, where the host has IPv6.
  std::vector<const addrinfo*> order;
  for (auto* a = ai.p; a; a = a->ai_next)
    if (a->ai_family == AF_INET6) order.push_back(a);
  for (auto* a = ai.p; a; a = a->ai_next)
    if (a->ai_family != AF_INET6) order.push_back(a);
  Error last(EADDRNOTAVAIL);
  for (auto* a : order) {
    UniqueFd s(socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (s.get() < 0) {
      last = Error(errno);
      continue;
    }
    int one = 1, zero = 0;
    setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ai_family == AF_INET6 && hp.host.empty()) setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(s.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(s.get(), kMaxInProgress) != 0) {
      last = Error(errno);
      continue;
    }
    l->fd_ = std::move(s);
    l->address_ = hostport;
    return l;
  }
  return error_text(last.code, fmt::format("cannot listen on {}: {}", hostport, errno_name(last.code)));
}

namespace {
// The address without the port: what "one source" means for the limits.
std::string source_of(const std::string& peer) {
  size_t colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}
}  // namespace

// Each connection is handled on a thread of its own (a handshake blocks);
// the threads are joined as soon as they finish, so what a stream of
// connections costs is bounded by the limits, not by how many came.
// Unauthenticated connections (before the TLS handshake completes, or before
// the header of a plain one is read) are bounded per source and in total; a
// new one takes the place of the oldest of its own source, or, at the total
// limit, of the oldest of the source holding the most, so silent peers cannot
// keep a legitimate one out (the source retries within its timeout if its
// connection was the one dropped).
Result<std::unique_ptr<Channel>> Listener::next(const Admit& admit, const Report& report) {
  struct Pending {
    int fd;
    std::string source;
    Clock::time_point since;
    bool authenticated = false;
    bool evicted = false;
  };
  std::mutex mu;
  std::condition_variable done_cv;
  std::unique_ptr<Channel> winner;
  std::map<int, Pending> pending;      // connection number -> its state, while it is being handled
  std::map<int, std::thread> workers;  // connection number -> its thread
  std::vector<int> finished;           // threads to join
  auto work = [&](UniqueFd c, int id, std::string peer) {
    std::unique_ptr<Channel> ch;
    Result<void> r = ok();
    if (o_.tls()) {
      auto t = std::make_unique<Tls>(std::move(c), creds_);
      r = t->handshake(true, o_);
      ch = std::move(t);
      if (r) {
        std::lock_guard lk(mu);
        if (auto it = pending.find(id); it != pending.end()) it->second.authenticated = true;
      }
    } else {
      ch = plain_channel(std::move(c));
    }
    if (r) r = admit(*ch);
    std::lock_guard lk(mu);
    bool evicted = pending.count(id) && pending[id].evicted;
    pending.erase(id);
    finished.push_back(id);
    done_cv.notify_all();
    if (r && !winner) {
      winner = std::move(ch);
      return;
    }
    if (!winner) {
      report(fmt::format("refused a connection from {}: {}", peer,
                         evicted ? "dropped, unauthenticated, for a newer connection"
                         : r     ? "another was accepted"
                                 : r.error().context));
    }
  };
  // Drops the oldest unauthenticated connection of `source` (or, empty, of
  // the source holding the most). With `mu` held.
  auto evict_oldest = [&](const std::string& source) {
    std::map<std::string, int> per;
    for (auto& [id, p] : pending)
      if (!p.authenticated && !p.evicted) per[p.source]++;
    std::string from = source;
    if (from.empty()) {
      int most = 0;
      for (auto& [src, n] : per)
        if (n > most) most = n, from = src;
    }
    Pending* oldest = nullptr;
    for (auto& [id, p] : pending)
      if (!p.authenticated && !p.evicted && p.source == from && (!oldest || p.since < oldest->since)) oldest = &p;
    if (!oldest) return false;
    oldest->evicted = true;
    ::shutdown(oldest->fd, SHUT_RDWR);  // its handshake or header read ends now
    return true;
  };
  auto reap = [&] {
    std::vector<int> ids;
    {
      std::lock_guard lk(mu);
      ids.swap(finished);
    }
    for (int id : ids) {
      auto it = workers.find(id);
      if (it == workers.end()) continue;
      it->second.join();
      workers.erase(it);
    }
  };
  Error failed(EIO, "listener stopped");  // why the loop ended without a winner
  for (int id = 0;; ++id) {
    reap();
    {
      std::lock_guard lk(mu);
      if (winner) break;
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int n = poll(&p, 1, 100);
    if (n <= 0) {
      if (n < 0 && errno != EINTR) {
        failed = Error(errno, "poll");
        break;
      }
      continue;
    }
    UniqueFd c(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (c.get() < 0) {
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN || errno == EMFILE || errno == ENFILE) continue;
      failed = Error(errno, "accept");
      break;
    }
    std::string peer = peer_name(c.get());
    std::string source = source_of(peer);
    int one = 1;
    setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    set_io_timeout(c.get(), o_.timeout);
    std::unique_lock lk(mu);
    int unauth = 0, from_source = 0;
    for (auto& [i, q] : pending) {
      if (q.authenticated || q.evicted) continue;
      ++unauth;
      from_source += q.source == source;
    }
    if (from_source >= kMaxPendingPerSource) {
      evict_oldest(source);
    } else if (unauth >= kMaxPending) {
      evict_oldest("");
    }
    // Authenticated peers are trusted, but threads are not free: a bound on
    // everything in progress (evicted ones leave within moments).
    if (static_cast<int>(pending.size()) >= kMaxInProgress) {
      done_cv.wait_for(lk, std::chrono::seconds(1),
                       [&] { return static_cast<int>(pending.size()) < kMaxInProgress || winner; });
      if (static_cast<int>(pending.size()) >= kMaxInProgress) {
        report(fmt::format("refused a connection from {}: {} connections in progress", peer, kMaxInProgress));
        continue;
      }
    }
    int fd = c.get();
    pending[id] = Pending{fd, source, Clock::now()};
    lk.unlock();
    try {
      workers.emplace(id, std::thread(work, std::move(c), id, peer));
    } catch (const std::system_error& e) {
      // No thread to be had (a limit of the host): this connection only.
      lk.lock();
      pending.erase(id);
      lk.unlock();
      ::shutdown(fd, SHUT_RDWR);
      report(fmt::format("refused a connection from {}: no thread for it ({})", peer, e.what()));
    }
  }
  {
    std::lock_guard lk(mu);  // the rest lose: their reads end now
    for (auto& [id, q] : pending) ::shutdown(q.fd, SHUT_RDWR);
  }
  for (auto& [id, t] : workers) t.join();
  if (winner) return winner;
  return failed;
}

}  // namespace uvfio::mig
