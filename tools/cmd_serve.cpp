// swiftkv serve — the OpenAI-compatible HTTP server. Loads the model first, then binds and listens
// (so /health is 200 as soon as the port accepts connections); SIGINT/SIGTERM stop accepting, abort
// running requests and exit 0.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "cli_common.h"
#include "core/error.h"
#include "server/http_server.h"
#include "server/serving_engine.h"

using namespace swiftkv;

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) { g_signal.store(sig); }

}  // namespace

int cmd_serve(const cli::ModelArgs& model_args, const ServeArgs& args) {
    server::HttpServerOptions opt;
    opt.host = args.host;
    opt.port = args.port;
    opt.api_key = args.api_key;
    if (opt.api_key.empty()) {
        if (const char* env = std::getenv("SWIFTKV_API_KEY"); env != nullptr) opt.api_key = env;
    }
    // Each streaming request holds an HTTP thread for its whole life: room for every sequence the
    // engine can run at once, plus some for /health, /metrics and queued requests.
    opt.limits.threads = args.http_threads > 0 ? args.http_threads
                                             : int(std::min<int64_t>(args.max_num_seqs, 4096) + 16);
    opt.limits.max_body_bytes = size_t(args.max_body_bytes);
    opt.limits.max_header_bytes = size_t(args.max_header_bytes);
    opt.limits.read_timeout_s = args.read_timeout_s;
    opt.limits.keep_alive_timeout_s = args.keep_alive_timeout_s;
    EngineOptions eopt = cli::engine_options(model_args);
    eopt.model.synthetic = args.synthetic;
    eopt.model.synthetic_swiftkv = args.synthetic_swiftkv;
    if (!eopt.model.synthetic.empty()) eopt.model.path = "synthetic:" + eopt.model.synthetic +
                                                   (eopt.model.synthetic_swiftkv.empty() ? "" : "@" + eopt.model.synthetic_swiftkv);
    opt.served_model_name = args.served_model_name;
    if (!eopt.model.synthetic.empty() && opt.served_model_name.empty()) opt.served_model_name = "synthetic-" + eopt.model.synthetic;
    if (opt.served_model_name.empty()) {
        std::filesystem::path p(eopt.model.path);
        if (!p.has_filename()) p = p.parent_path();
        opt.served_model_name = std::filesystem::is_directory(p) ? p.filename().string() : p.stem().string();
    }

    // Signals: handled by a flag that a watcher thread turns into a graceful stop.
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
#ifdef SIGPIPE
    std::signal(SIGPIPE, SIG_IGN);
#endif

    std::fprintf(stderr, "loading %s ...\n", eopt.model.path.c_str());
    eopt.max_num_seqs = args.max_num_seqs;
    eopt.max_batched_tokens = args.max_batched_tokens;
    eopt.prefix_caching = !args.no_prefix_caching;
    eopt.overlap = !args.no_overlap;
    auto engine = std::make_unique<Engine>(eopt);
    const int64_t ctx = engine->context_length();
    server::ServingEngine backend(std::move(engine));
    server::HttpServer http(backend, opt);
    if (g_signal.load() != 0) return 0;
    SKV_CHECK(http.bind(), "{}", http.error());

    std::atomic<bool> finished{false};
    std::thread watcher([&] {
        while (!finished.load()) {
            if (g_signal.load() != 0) {
                std::fprintf(stderr, "signal %d: shutting down\n", g_signal.load());
                http.stop();
                // In-flight requests are aborted; idle connections and half-read requests end within
                // 0.1 s. Past a deadline (a client that reads nothing), exit anyway.
                for (int i = 0; i < 200 && !finished.load(); ++i)
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
                if (!finished.load()) {
                    std::fprintf(stderr, "connections still open after 10 s: exiting\n");
                    std::fflush(stdout);
                    std::fflush(stderr);
                    std::_Exit(0);
                }
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });
    std::printf("model %s (context %lld tokens) served as \"%s\"%s\n", eopt.model.path.c_str(), (long long)ctx,
                opt.served_model_name.c_str(), opt.api_key.empty() ? "" : ", API key required");
    std::printf("listening on http://%s:%d\n", opt.host.c_str(), http.port());
    std::fflush(stdout);
    const bool ok = http.listen();
    finished = true;
    watcher.join();
    http.stop();
    if (!ok && g_signal.load() == 0) {
        std::cerr << "error: the HTTP server stopped unexpectedly\n";
        return 1;
    }
    return 0;
}
