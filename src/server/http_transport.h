// HttpTransport — HTTP/1.1 for the server: listening socket, a bounded pool of connection threads,
// and per connection a loop that parses requests with Boost.Beast's request parser and writes
// responses with its serializer. It knows nothing of OpenAI or the engine: handlers are registered
// per method and path, and error bodies come from a formatter the caller gives.
//
// Why not cpp-httplib (Debian 12 ships 0.11): it cannot enforce a body limit on chunked bodies
// (a 256 MiB chunked body was read whole), drops pipelined requests (its read buffer lives per
// request), hides why a request was refused ("400"), accepts smuggling shapes (no Host, two
// Content-Lengths, Transfer-Encoding with Content-Length), and gives a handler no view of its socket.
// Beast's parser does the parsing (header and body limits for every transfer coding, strict
// Content-Length/Transfer-Encoding rules, a buffer kept across requests); this file owns what a
// parser cannot: sockets, deadlines, which connection gets a thread, and what each failure answers.
//
// What every connection gets, however the request arrives:
//  - a header larger than max_header_bytes: 431; a body larger than max_body_bytes: 413 as soon as
//    the limit is passed (a Content-Length over it before any body byte is read; a chunked body once
//    its decoded bytes pass it), and the rest is not read;
//  - malformed or smuggling-shaped requests (no Host in HTTP/1.1, conflicting Content-Lengths,
//    Transfer-Encoding with Content-Length, a bad Content-Length or chunk size): 400 naming the
//    cause; a transfer coding other than chunked: 501. After any of these the connection closes.
//  - deadlines: a request's header must arrive within read_timeout of its first byte; while a body
//    arrives, no gap may exceed read_timeout and the whole request must arrive within
//    max(60 s, 6 x read_timeout); otherwise 408 and close. An idle keep-alive connection closes
//    after keep_alive_timeout (at once when other connections wait for a thread). A write that
//    cannot proceed for write_timeout ends the connection.
//  - pipelined requests are answered in order; TCP_NODELAY is set; `Expect: 100-continue` is
//    answered after the header has been accepted (route, method, authorization).
//  - connections beyond threads + max_pending_connections are refused with 503.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace swiftkv::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpLimits {
    size_t max_header_bytes = size_t(64) << 10;
    size_t max_body_bytes = size_t(8) << 20;
    int read_timeout_s = 10;
    int write_timeout_s = 30;
    int keep_alive_timeout_s = 5;
    int threads = 32;                  // connections served at once
    int max_pending_connections = -1;  // accepted, waiting for a thread; -1: 4 x threads
};

struct HttpRequest {
    std::string method;  // as sent, e.g. "POST"
    std::string path;    // the target without its query
    std::string query;   // after '?', without it
    int version = 11;    // 10 or 11
    HttpHeaders headers;
    std::string body;

    // The first header of that name (case-insensitive), or nullopt.
    std::optional<std::string_view> header(std::string_view name) const;
};

// An error a hook or the transport answers with: status and a message for the formatter.
struct HttpError {
    HttpError(int status_, std::string message_, HttpHeaders headers_ = {})
        : status(status_), message(std::move(message_)), headers(std::move(headers_)) {}
    int status;  // 0: nothing to answer (the client is gone)
    std::string message;
    HttpHeaders headers;  // e.g. Allow for 405
};

// The response side of one request. A handler either calls respond() once, or start_stream(),
// write() any number of times and finish_stream(). A handler that returns without answering gets a
// 500. Not thread-safe: use it from the handler's thread.
class HttpExchange {
public:
    void respond(int status, std::string_view content_type, std::string body, const HttpHeaders& headers = {});
    // Chunked for HTTP/1.1 (the connection stays usable); for HTTP/1.0 the body runs to the close.
    // false when the client is gone (then write() is false too).
    bool start_stream(int status, std::string_view content_type, const HttpHeaders& headers = {});
    bool write(std::string_view data);
    void finish_stream();
    // True once the client has closed its side or the connection failed. Cheap (one non-blocking
    // peek); bytes of a pipelined next request count as alive.
    bool client_closed() const;
    // The client is gone: nothing more is written and the connection closes.
    void abandon();
    bool answered() const { return state_ != State::open; }

private:
    friend class HttpTransport;
    enum class State { open, streaming, done, abandoned };
    struct Connection* conn_ = nullptr;
    State state_ = State::open;
};

class HttpTransport {
public:
    using Handler = std::function<void(const HttpRequest&, HttpExchange&)>;
    // Called with the request's header (body still unread) once its route and method are known;
    // an error is answered at once and the body never read (authorization belongs here).
    using HeaderCheck = std::function<std::optional<HttpError>(const HttpRequest&)>;
    // Turns an error into a body (with its content type) in the API's format.
    using ErrorFormatter = std::function<std::pair<std::string, std::string>(int status, std::string_view message)>;

    HttpTransport(HttpLimits limits, ErrorFormatter format_error);
    ~HttpTransport();
    HttpTransport(const HttpTransport&) = delete;
    HttpTransport& operator=(const HttpTransport&) = delete;

    // Routes: exact paths. HEAD is answered by the GET handler without its body. Another method on a
    // known path gets 405 with Allow; an unknown path 404. Register before listen().
    void route(const std::string& method, const std::string& path, Handler handler);
    void set_header_check(HeaderCheck check);

    // Binds and listens; port 0 picks a free port. false with a message in error().
    bool bind(const std::string& host, int port);
    int port() const;
    // Serves until stop(); returns once every connection thread has ended.
    bool serve();
    // Stops accepting and ends idle connections; requests in progress finish (thread-safe).
    void stop();
    bool stopping() const;
    const std::string& error() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace swiftkv::server
