#include "server/http_transport.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

namespace swiftkv::server {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

int ms_until(Clock::time_point t) {
    const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
    return int(std::clamp<long long>(d, 0, 1 << 30));
}

// A blocking socket as Beast's SyncReadStream/SyncWriteStream, with deadlines: every wait is a
// poll() bounded by the current read or write budget, so a silent or slow peer costs a thread for a
// bounded time only. The socket itself is non-blocking.
class FdStream {
public:
    FdStream(int fd, const std::atomic<bool>& stopping) : fd_(fd), stopping_(stopping) {}

    // Reads: each read_some may wait at most `gap` and never past `until`.
    void set_read_deadline(Clock::time_point until, std::chrono::milliseconds gap) {
        read_until_ = until;
        read_gap_ = gap;
    }
    void set_write_timeout(std::chrono::milliseconds t) { write_timeout_ = t; }

    template <class MutableBuffers>
    size_t read_some(const MutableBuffers& buffers, beast::error_code& ec) {
        for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers); ++it) {
            net::mutable_buffer b = *it;
            if (b.size() > 0) return recv_some(b.data(), b.size(), ec);
        }
        ec = {};
        return 0;
    }
    template <class MutableBuffers>
    size_t read_some(const MutableBuffers& buffers) {
        beast::error_code ec;
        const size_t n = read_some(buffers, ec);
        if (ec) throw beast::system_error(ec);
        return n;
    }

    template <class ConstBuffers>
    size_t write_some(const ConstBuffers& buffers, beast::error_code& ec) {
        iovec iov[16];
        int n = 0;
        for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers) && n < 16; ++it) {
            net::const_buffer b = *it;
            if (b.size() == 0) continue;
            iov[n].iov_base = const_cast<void*>(b.data());
            iov[n].iov_len = b.size();
            ++n;
        }
        ec = {};
        if (n == 0) return 0;
        const auto until = Clock::now() + write_timeout_;
        for (;;) {
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = size_t(n);
            const ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (r >= 0) return size_t(r);
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                ec = beast::error_code(errno, beast::system_category());
                return 0;
            }
            if (!wait(POLLOUT, until, ec)) return 0;
        }
    }
    template <class ConstBuffers>
    size_t write_some(const ConstBuffers& buffers) {
        beast::error_code ec;
        const size_t n = write_some(buffers, ec);
        if (ec) throw beast::system_error(ec);
        return n;
    }

private:
    size_t recv_some(void* data, size_t size, beast::error_code& ec) {
        const auto until = std::min(read_until_, Clock::now() + read_gap_);
        for (;;) {
            const ssize_t r = ::recv(fd_, data, size, MSG_DONTWAIT);
            if (r > 0) {
                ec = {};
                return size_t(r);
            }
            if (r == 0) {
                ec = net::error::eof;
                return 0;
            }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                ec = beast::error_code(errno, beast::system_category());
                return 0;
            }
            if (!wait(POLLIN, until, ec)) return 0;
        }
    }

    // Reads give up when the server stops (a half-sent request is not worth waiting for); writes
    // go on, so answers in progress are delivered.
    bool wait(short events, Clock::time_point until, beast::error_code& ec) {
        for (;;) {
            const int ms = ms_until(until);
            if (ms == 0 || (events == POLLIN && stopping_)) {
                ec = beast::error::timeout;
                return false;
            }
            pollfd p{fd_, events, 0};
            const int r = ::poll(&p, 1, std::min(ms, 100));
            if (r > 0) return true;  // ready, or an error/hang-up the next call reports
            if (r < 0 && errno != EINTR) {
                ec = beast::error_code(errno, beast::system_category());
                return false;
            }
        }
    }

    int fd_;
    const std::atomic<bool>& stopping_;
    Clock::time_point read_until_ = Clock::time_point::max();
    std::chrono::milliseconds read_gap_{10000};
    std::chrono::milliseconds write_timeout_{30000};
};

// What a parse failure answers; status 0: say nothing, just close (the client went away).
HttpError parse_error(const beast::error_code& ec, const HttpLimits& limits) {
    using E = http::error;
    if (ec == beast::error::timeout)
        return {408, "the request did not arrive in time (a header must arrive within " +
                         std::to_string(limits.read_timeout_s) + " s of its first byte, and no pause in a body may exceed it)"};
    if (ec == E::header_limit || ec == E::buffer_overflow)
        return {431, "the request header is larger than the limit of " + std::to_string(limits.max_header_bytes) + " bytes"};
    if (ec == E::body_limit)
        return {413, "the request body is larger than the limit of " + std::to_string(limits.max_body_bytes) + " bytes"};
    if (ec == E::bad_method) return {400, "malformed request line: invalid method"};
    if (ec == E::bad_target) return {400, "malformed request line: invalid request target"};
    if (ec == E::bad_version) return {400, "malformed request line: the version must be HTTP/1.0 or HTTP/1.1"};
    if (ec == E::bad_line_ending) return {400, "malformed request: lines must end with CRLF"};
    if (ec == E::bad_field) return {400, "malformed request: invalid header field name"};
    if (ec == E::bad_value) return {400, "malformed request: invalid header field value"};
    if (ec == E::bad_obs_fold) return {400, "malformed request: obsolete line folding in a header field"};
    if (ec == E::bad_content_length)
        return {400, "invalid Content-Length: it must be a non-negative decimal integer, and a request may not "
                     "carry both Content-Length and Transfer-Encoding"};
    if (ec == E::multiple_content_length) return {400, "conflicting Content-Length headers"};
    if (ec == E::bad_transfer_encoding)
        return {400, "invalid Transfer-Encoding: it may appear once, and a request may not carry both "
                     "Transfer-Encoding and Content-Length"};
    if (ec == E::bad_chunk) return {400, "malformed chunked body: invalid chunk size line"};
    if (ec == E::bad_chunk_extension) return {400, "malformed chunked body: invalid chunk extension"};
    if (ec == E::bad_alloc) return {413, "the request is too large to hold"};
    return {0, {}};  // end of stream, partial message, reset: nobody left to answer
}

}  // namespace

std::optional<std::string_view> HttpRequest::header(std::string_view name) const {
    for (const auto& [k, v] : headers)
        if (iequals(k, name)) return std::string_view(v);
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------

struct Connection {
    int fd = -1;
    FdStream stream;
    beast::flat_buffer buffer;
    int version = 11;
    bool head = false;        // a HEAD request: headers only
    bool keep_alive = false;  // after this response
    bool failed = false;      // a write failed or timed out: close
    bool linger = false;      // an error was answered: request bytes may still be on their way
    Connection(int f, size_t buffer_limit, const std::atomic<bool>& stopping)
        : fd(f), stream(f, stopping), buffer(buffer_limit) {}
};

void HttpExchange::respond(int status, std::string_view content_type, std::string body, const HttpHeaders& headers) {
    if (state_ != State::open) return;
    state_ = State::done;
    if (conn_->failed) return;
    http::response<http::string_body> res;
    res.version(conn_->version);
    res.result(unsigned(status));
    res.set(http::field::server, "swiftkv");
    res.set(http::field::content_type, content_type);
    for (const auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(conn_->keep_alive);
    res.body() = std::move(body);
    res.prepare_payload();
    beast::error_code ec;
    if (conn_->head) {
        http::response_serializer<http::string_body> sr(res);
        http::write_header(conn_->stream, sr, ec);
    } else {
        http::write(conn_->stream, res, ec);
    }
    if (ec) conn_->failed = true;
}

bool HttpExchange::start_stream(int status, std::string_view content_type, const HttpHeaders& headers) {
    if (state_ != State::open) return false;
    state_ = State::streaming;
    if (conn_->failed) return false;
    http::response<http::empty_body> res;
    res.version(conn_->version);
    res.result(unsigned(status));
    res.set(http::field::server, "swiftkv");
    res.set(http::field::content_type, content_type);
    for (const auto& [k, v] : headers) res.set(k, v);
    if (conn_->version >= 11) {
        res.chunked(true);
    } else {
        conn_->keep_alive = false;  // HTTP/1.0 has no chunking: the body runs to the close
    }
    res.keep_alive(conn_->keep_alive);
    http::response_serializer<http::empty_body> sr(res);
    beast::error_code ec;
    http::write_header(conn_->stream, sr, ec);
    if (ec) conn_->failed = true;
    return !conn_->failed;
}

bool HttpExchange::write(std::string_view data) {
    if (state_ != State::streaming || conn_->failed) return false;
    if (data.empty() || conn_->head) return true;
    beast::error_code ec;
    if (conn_->version >= 11) net::write(conn_->stream, http::make_chunk(net::const_buffer(data.data(), data.size())), ec);
    else net::write(conn_->stream, net::const_buffer(data.data(), data.size()), ec);
    if (ec) conn_->failed = true;
    return !conn_->failed;
}

void HttpExchange::finish_stream() {
    if (state_ != State::streaming) return;
    state_ = State::done;
    if (conn_->failed || conn_->head || conn_->version < 11) return;
    beast::error_code ec;
    net::write(conn_->stream, http::make_chunk_last(), ec);
    if (ec) conn_->failed = true;
}

void HttpExchange::abandon() {
    state_ = State::abandoned;
    conn_->failed = true;
}

bool HttpExchange::client_closed() const {
    if (conn_->failed) return true;
    char c;
    const ssize_t n = ::recv(conn_->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return false;
    if (n == 0) return true;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

// ---------------------------------------------------------------------------------------------

struct HttpTransport::Impl {
    HttpLimits limits;
    ErrorFormatter format_error;
    HeaderCheck header_check;
    std::map<std::string, std::map<std::string, Handler>> routes;  // path -> method -> handler
    int listen_fd = -1;
    int bound_port = -1;
    std::string error;
    std::atomic<bool> stopping{false};

    std::mutex mu;
    std::condition_variable cv;
    std::deque<int> pending;  // accepted connections waiting for a thread

    Impl(HttpLimits l, ErrorFormatter f) : limits(l), format_error(std::move(f)) {
        limits.threads = std::max(limits.threads, 1);
        if (limits.max_pending_connections < 0) limits.max_pending_connections = 4 * limits.threads;
    }

    bool others_waiting() {
        std::lock_guard<std::mutex> lock(mu);
        return !pending.empty();
    }

    // Waits for the first byte of the next request. false: close (timeout, stop, or, on a kept-alive
    // connection, another connection needs the thread).
    bool wait_for_request(int fd, bool kept_alive) {
        const auto until = Clock::now() + std::chrono::seconds(kept_alive ? limits.keep_alive_timeout_s : limits.read_timeout_s);
        for (;;) {
            if (stopping) return false;
            if (kept_alive && others_waiting()) return false;
            const int ms = std::min(ms_until(until), 100);
            if (ms == 0) return false;
            pollfd p{fd, POLLIN, 0};
            const int r = ::poll(&p, 1, ms);
            if (r > 0) return true;  // data, or EOF/error that the read reports
            if (r < 0 && errno != EINTR) return false;
        }
    }

    void send_error(Connection& conn, const HttpError& err) {
        conn.linger = true;
        HttpExchange ex;
        ex.conn_ = &conn;
        auto [body, type] = format_error(err.status, err.message);
        ex.respond(err.status, type, std::move(body), err.headers);
    }

    // Half-closes, then reads and drops what the client still sends (nginx's lingering close), so
    // that our answer is not destroyed by a reset when unread request bytes are pending at close: a
    // client that writes its whole body before reading (most do) then still reads the 413. Bounded:
    // 5 s in all, 1 s of silence, 64 MiB dropped; nothing is kept.
    static void lingering_close(int fd) {
        ::shutdown(fd, SHUT_WR);
        const auto until = Clock::now() + std::chrono::seconds(5);
        size_t dropped = 0;
        char buf[65536];
        while (dropped < (size_t(64) << 20)) {
            const int ms = std::min(ms_until(until), 1000);
            if (ms == 0) break;
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, ms) <= 0) break;
            const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
            if (n > 0) dropped += size_t(n);
        }
        ::close(fd);
    }

    void serve_connection(int fd) {
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        Connection conn(fd, limits.max_header_bytes + (size_t(64) << 10), stopping);
        conn.stream.set_write_timeout(std::chrono::seconds(limits.write_timeout_s));
        bool kept_alive = false;
        while (serve_request(conn, kept_alive)) kept_alive = true;
        if (conn.linger) lingering_close(fd);
        else ::close(fd);
    }

    // One request and its answer; true when the connection stays open for another.
    bool serve_request(Connection& conn, bool kept_alive) {
        if (conn.buffer.size() == 0 && !wait_for_request(conn.fd, kept_alive)) return false;
        const auto start = Clock::now();
        const auto gap = std::chrono::seconds(limits.read_timeout_s);
        conn.version = 11;
        conn.head = false;
        conn.keep_alive = false;

        http::request_parser<http::string_body> parser;
        parser.header_limit(std::uint32_t(std::min<size_t>(limits.max_header_bytes, UINT32_MAX)));
        parser.body_limit(std::uint64_t(limits.max_body_bytes));
        conn.stream.set_read_deadline(start + gap, gap);
        beast::error_code ec;
        http::read_header(conn.stream, conn.buffer, parser, ec);
        if (ec) {
            const HttpError err = parse_error(ec, limits);
            if (err.status != 0) send_error(conn, err);
            return false;
        }

        const auto& msg = parser.get();
        HttpRequest req;
        req.method = std::string(msg.method_string());
        const std::string_view target = msg.target();
        const size_t q = target.find('?');
        req.path = std::string(target.substr(0, q));
        if (q != std::string_view::npos) req.query = std::string(target.substr(q + 1));
        req.version = msg.version() >= 11 ? 11 : 10;
        for (const auto& f : msg) req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
        conn.version = req.version;
        conn.head = req.method == "HEAD";
        conn.keep_alive = parser.keep_alive() && !stopping;

        const bool body_pending = parser.chunked() || (parser.content_length() && *parser.content_length() > 0);
        // An answer given before the body is read ends the connection when a body is on its way.
        auto refuse = [&](const HttpError& err) {
            if (body_pending) conn.keep_alive = false;
            send_error(conn, err);
            return conn.keep_alive && !conn.failed;
        };
        if (auto err = check_header(req, parser.chunked())) {
            conn.keep_alive = false;
            send_error(conn, *err);
            return false;
        }
        const Handler* handler = nullptr;
        if (auto err = find_route(req, handler)) return refuse(*err);
        if (header_check)
            if (auto err = header_check(req)) return refuse(*err);
        if (auto expect = req.header("Expect")) {
            if (!iequals(trim(*expect), "100-continue"))
                return refuse({417, "unsupported Expect: " + std::string(*expect) + " (only 100-continue)"});
            if (body_pending && req.version >= 11) {
                static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
                net::write(conn.stream, net::const_buffer(kContinue.data(), kContinue.size()), ec);
                if (ec) return false;
            }
        }
        if (!parser.is_done()) {
            conn.stream.set_read_deadline(start + std::chrono::seconds(std::max(60, 6 * limits.read_timeout_s)), gap);
            http::read(conn.stream, conn.buffer, parser, ec);
            if (ec) {
                const HttpError err = parse_error(ec, limits);
                conn.keep_alive = false;
                if (err.status != 0) send_error(conn, err);
                return false;
            }
        }
        req.body = std::move(parser.get().body());

        HttpExchange ex;
        ex.conn_ = &conn;
        try {
            (*handler)(req, ex);
        } catch (const std::exception& e) {
            if (!ex.answered()) send_error(conn, {500, std::string("internal error: ") + e.what()});
        } catch (...) {
            if (!ex.answered()) send_error(conn, {500, "internal error"});
        }
        if (ex.state_ == HttpExchange::State::open) send_error(conn, {500, "internal error: the request got no answer"});
        if (ex.state_ == HttpExchange::State::streaming) return false;  // abandoned mid-stream
        return conn.keep_alive && !conn.failed && !stopping;
    }

    // Smuggling shapes and codings Beast's parser leaves to the server.
    static std::optional<HttpError> check_header(const HttpRequest& req, bool chunked) {
        int hosts = 0;
        for (const auto& [k, v] : req.headers) hosts += iequals(k, "Host") ? 1 : 0;
        if (req.version >= 11 && hosts == 0) return HttpError{400, "missing Host header (HTTP/1.1 requires one)"};
        if (hosts > 1) return HttpError{400, "more than one Host header"};
        if (auto te = req.header("Transfer-Encoding")) {
            if (!chunked || !iequals(trim(*te), "chunked"))
                return HttpError{501, "unsupported Transfer-Encoding: " + std::string(*te) + " (only chunked)"};
        }
        return std::nullopt;
    }

    std::optional<HttpError> find_route(const HttpRequest& req, const Handler*& handler) const {
        auto it = routes.find(req.path);
        if (it == routes.end()) return HttpError{404, "no such endpoint: " + req.method + " " + req.path};
        const std::string method = req.method == "HEAD" && !it->second.count("HEAD") ? "GET" : req.method;
        auto m = it->second.find(method);
        if (m == it->second.end()) {
            std::string allow;
            for (const auto& [name, h] : it->second) allow += (allow.empty() ? "" : ", ") + name;
            return HttpError{405, "method " + req.method + " is not allowed for " + req.path + "; use " + allow,
                             {{"Allow", allow}}};
        }
        handler = &m->second;
        return std::nullopt;
    }

    void worker() {
        for (;;) {
            int fd;
            {
                std::unique_lock<std::mutex> lock(mu);
                cv.wait(lock, [&] { return stopping || !pending.empty(); });
                if (pending.empty()) return;
                fd = pending.front();
                pending.pop_front();
            }
            if (stopping) {
                ::close(fd);
                continue;
            }
            serve_connection(fd);
        }
    }

    // A canned 503 for a connection nobody can take; best effort, never blocks.
    void refuse_busy(int fd) {
        auto [body, type] = format_error(503, "the server is busy: too many connections");
        const std::string head = "HTTP/1.1 503 Service Unavailable\r\nServer: swiftkv\r\nConnection: close\r\nContent-Type: " +
                                 type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
        const std::string all = head + body;
        [[maybe_unused]] const ssize_t n = ::send(fd, all.data(), all.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        ::close(fd);
    }
};

HttpTransport::HttpTransport(HttpLimits limits, ErrorFormatter format_error)
    : impl_(std::make_unique<Impl>(limits, std::move(format_error))) {}

HttpTransport::~HttpTransport() {
    stop();
    if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
}

void HttpTransport::route(const std::string& method, const std::string& path, Handler handler) {
    impl_->routes[path][method] = std::move(handler);
}

void HttpTransport::set_header_check(HeaderCheck check) { impl_->header_check = std::move(check); }

bool HttpTransport::bind(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string service = std::to_string(port);
    if (int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0) {
        impl_->error = "cannot resolve " + host + ": " + gai_strerror(rc);
        return false;
    }
    std::string why;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
            sockaddr_storage ss{};
            socklen_t len = sizeof(ss);
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
            impl_->bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                                          : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
            impl_->listen_fd = fd;
            break;
        }
        why = std::strerror(errno);
        ::close(fd);
    }
    ::freeaddrinfo(res);
    if (impl_->listen_fd < 0) {
        impl_->error = "cannot bind to " + host + ":" + service + " (" + (why.empty() ? "no usable address" : why) + ")";
        return false;
    }
    return true;
}

int HttpTransport::port() const { return impl_->bound_port; }

bool HttpTransport::serve() {
    Impl& s = *impl_;
    if (s.listen_fd < 0) {
        s.error = "serve() before a successful bind()";
        return false;
    }
    std::vector<std::thread> workers;
    workers.reserve(size_t(s.limits.threads));
    for (int i = 0; i < s.limits.threads; ++i) workers.emplace_back([&s] { s.worker(); });
    while (!s.stopping) {
        pollfd p{s.listen_fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        const int fd = ::accept4(s.listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            // Out of descriptors or a transient error: back off instead of spinning.
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            continue;
        }
        bool queued = false;
        {
            std::lock_guard<std::mutex> lock(s.mu);
            if (int(s.pending.size()) < s.limits.max_pending_connections) {
                s.pending.push_back(fd);
                queued = true;
            }
        }
        if (queued) s.cv.notify_one();
        else s.refuse_busy(fd);
    }
    s.cv.notify_all();
    for (auto& t : workers) t.join();
    return true;
}

void HttpTransport::stop() {
    impl_->stopping = true;
    impl_->cv.notify_all();
}

bool HttpTransport::stopping() const { return impl_->stopping; }

const std::string& HttpTransport::error() const { return impl_->error; }

}  // namespace swiftkv::server
