// HttpServer — the OpenAI-compatible HTTP API over a ServingEngine (on HttpTransport, http_transport.h):
//   POST /v1/completions, POST /v1/chat/completions (stream: true as server-sent events ending with
//   "data: [DONE]"), GET /v1/models, GET /health, GET /metrics (Prometheus text 0.0.4),
//   POST /tokenize, POST /detokenize.
// Errors are OpenAI error JSON: 400 invalid request or malformed HTTP, 401 bad or missing API key
// (`Authorization: Bearer KEY`, scheme in any case, key compared in constant time), 404 unknown path
// or model, 405 wrong method, 408 request too slow, 413 body over max_body_bytes (chunked too), 431
// header over max_header_bytes, 501 unsupported transfer coding, 500 internal error (every request's
// failure is caught). A request naming a model other than the served name gets 404 model_not_found (as the
// OpenAI API and vLLM do); an empty or absent model is accepted.
// The process binds and listens only after the model is loaded, so /health answers 200 whenever the
// server is reachable (no 503 "loading" state is ever visible).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "server/http_transport.h"
#include "server/serving_engine.h"

namespace swiftkv::server {

struct HttpServerOptions {
    std::string host = "127.0.0.1";
    int port = 8000;                           // 0: any free port (see HttpServer::port())
    std::string api_key;                       // empty: no authentication
    std::string served_model_name;             // the id /v1/models lists and requests may name
    HttpLimits limits;                         // body and header sizes, timeouts, connection threads
};

class HttpServer {
public:
    HttpServer(ServingEngine& backend, HttpServerOptions options);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds the listening socket; false (with a message in error()) when it cannot.
    bool bind();
    int port() const;
    // Serves until stop(); returns after in-flight requests ended.
    bool listen();
    // Stops accepting, aborts running requests (thread-safe; callable from any thread).
    void stop();
    const std::string& error() const;

    // The /metrics body (for tests and the endpoint).
    std::string metrics_text() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace swiftkv::server
