#include "server/http_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/openai_protocol.h"

namespace swiftkv::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------------------------------------
// Metrics

class Histogram {
public:
    explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
    void observe(double v) {
        std::lock_guard<std::mutex> lock(mu_);
        size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
        counts_[i] += 1;
        sum_ += v;
        count_ += 1;
    }
    void write(std::ostringstream& os, const std::string& name, const std::string& help, const std::string& labels) const {
        std::lock_guard<std::mutex> lock(mu_);
        os << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
        uint64_t cum = 0;
        for (size_t i = 0; i < bounds_.size(); ++i) {
            cum += counts_[i];
            os << name << "_bucket{" << labels << ",le=\"" << fmt_double(bounds_[i]) << "\"} " << cum << "\n";
        }
        cum += counts_.back();
        os << name << "_bucket{" << labels << ",le=\"+Inf\"} " << cum << "\n";
        os << name << "_sum{" << labels << "} " << fmt_double(sum_) << "\n";
        os << name << "_count{" << labels << "} " << count_ << "\n";
    }
    static std::string fmt_double(double v) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%.17g", v);
        std::string s = buf;
        if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
        return s;
    }

private:
    mutable std::mutex mu_;
    std::vector<double> bounds_;
    std::vector<uint64_t> counts_;
    double sum_ = 0;
    uint64_t count_ = 0;
};

struct Metrics {
    Histogram ttft{{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0}};
    Histogram tpot{{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5}};
    Histogram e2e{{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0}};
    std::mutex mu;
    std::map<std::string, uint64_t> success;  // finished_reason -> count
};

// ---------------------------------------------------------------------------------------------
// Per-request event queue between the backend's worker thread and the HTTP thread.

struct Event {
    bool finish = false;
    bool prompt = false;  // the prompt's logprobs (echo)
    int index = 0;
    std::string text;
    std::vector<TokenLogprobs> logprobs;
    GenerationResult result;
};

struct RequestState {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Event> events;
    bool done = false;
    std::string error;
    std::atomic<bool> client_gone{false};
    uint64_t id = 0;
    bool submitted = false;
    Clock::time_point arrival = Clock::now();
    std::optional<Clock::time_point> first_output;

    StreamCallbacks callbacks(const std::shared_ptr<RequestState>& self) {
        StreamCallbacks cb;
        cb.on_text = [self](int index, std::string_view text, std::vector<TokenLogprobs>&& lps) {
            std::lock_guard<std::mutex> lock(self->mu);
            if (!self->first_output) self->first_output = Clock::now();
            Event e;
            e.index = index;
            e.text = std::string(text);
            e.logprobs = std::move(lps);
            self->events.push_back(std::move(e));
            self->cv.notify_all();
            return !self->client_gone.load();
        };
        cb.on_finish = [self](int index, const GenerationResult& r, std::vector<TokenLogprobs>&& lps) {
            std::lock_guard<std::mutex> lock(self->mu);
            if (!self->first_output) self->first_output = Clock::now();
            Event e;
            e.finish = true;
            e.index = index;
            e.logprobs = std::move(lps);
            e.result = r;
            self->events.push_back(std::move(e));
            self->cv.notify_all();
        };
        cb.on_prompt_logprobs = [self](std::vector<TokenLogprobs>&& lps) {
            std::lock_guard<std::mutex> lock(self->mu);
            Event e;
            e.prompt = true;
            e.logprobs = std::move(lps);
            self->events.push_back(std::move(e));
            self->cv.notify_all();
        };
        cb.on_done = [self](const std::string& err) {
            std::lock_guard<std::mutex> lock(self->mu);
            self->done = true;
            self->error = err;
            self->cv.notify_all();
        };
        return cb;
    }
};

// A parsed, validated generation request ready to submit.
struct Prepared {
    bool chat = false;
    std::string id;
    int64_t created = 0;
    ServingRequest request;
    bool stream = false;
    bool include_usage = false;
    bool with_logprobs = false;
    std::string echo_prefix;  // completions echo: the prompt text, prepended to each choice
};

// The socket of a request's connection. cpp-httplib 0.11 (Debian 12) gives a handler no way to see
// that the client of a non-streaming request went away, so we find the connection's descriptor by
// its two endpoints among our open sockets; -1 if not found. The descriptor stays open (httplib
// holds it) until the handler returns, so it cannot be reused under us.
int find_connection_socket(const httplib::Request& req) {
    if (req.remote_port <= 0 || req.local_port <= 0) return -1;
    DIR* dir = opendir("/proc/self/fd");
    if (dir == nullptr) return -1;
    int found = -1;
    while (dirent* ent = readdir(dir)) {
        char* end = nullptr;
        const long fd = std::strtol(ent->d_name, &end, 10);
        if (end == ent->d_name || *end != '\0') continue;
        struct stat sb {};
        if (fstat(int(fd), &sb) != 0 || !S_ISSOCK(sb.st_mode)) continue;
        sockaddr_storage peer{}, local{};
        socklen_t pl = sizeof(peer), ll = sizeof(local);
        if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
        if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
        auto endpoint = [](const sockaddr_storage& a, std::string& ip, int& port) {
            char buf[INET6_ADDRSTRLEN] = {};
            if (a.ss_family == AF_INET) {
                const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
                inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
                port = ntohs(in->sin_port);
            } else if (a.ss_family == AF_INET6) {
                const auto* in = reinterpret_cast<const sockaddr_in6*>(&a);
                inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof(buf));
                port = ntohs(in->sin6_port);
            } else {
                return false;
            }
            ip = buf;
            return true;
        };
        std::string pip, lip;
        int pport = -1, lport = -1;
        if (!endpoint(peer, pip, pport) || !endpoint(local, lip, lport)) continue;
        if (pport == req.remote_port && lport == req.local_port && pip == req.remote_addr && lip == req.local_addr) {
            found = int(fd);
            break;
        }
    }
    closedir(dir);
    return found;
}

// True once the peer has closed its side (an orderly EOF or an error); pending request bytes
// (a pipelined request) count as alive.
bool connection_closed(int fd) {
    if (fd < 0) return false;
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return false;
    if (n == 0) return true;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

void set_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(dump_json(body), "application/json");
}

void set_error(httplib::Response& res, int status, std::string_view message, std::string_view param = {},
               std::string_view code = {}) {
    set_json(res, status, error_json(status, message, param, code));
}

bool is_protected_path(const std::string& path) {
    return path.rfind("/v1/", 0) == 0 || path == "/v1" || path == "/tokenize" || path == "/detokenize";
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct HttpServer::Impl {
    ServingBackend& backend;
    HttpServerOptions opt;
    httplib::Server svr;
    Metrics metrics;
    std::string error;
    int bound_port = -1;
    int64_t created = unix_time_now();
    std::atomic<bool> stopping{false};
    const std::map<std::string, std::string> routes = {
        {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"}, {"/v1/models", "GET"},
        {"/health", "GET"},         {"/metrics", "GET"},              {"/tokenize", "POST"},
        {"/detokenize", "POST"}};

    Impl(ServingBackend& b, HttpServerOptions o) : backend(b), opt(std::move(o)) { setup(); }

    // -- helpers ----------------------------------------------------------------------------

    std::vector<int32_t> encode(const std::string& text, bool add_special) const {
        const auto& tok = backend.tokenizer();
        const auto& spec = tok.spec();
        // A chat template that already wrote BOS must not get a second one.
        if (add_special && spec.bos_id >= 0 && text.rfind(tok.token_bytes(spec.bos_id), 0) == 0) add_special = false;
        return tok.encode(text, add_special, /*parse_special=*/true);
    }

    void check_model(const std::string& model) const {
        if (!model.empty() && model != opt.served_model_name)
            throw ProtocolError(404, "The model `" + model + "` does not exist.", "model", "", "model_not_found");
    }

    void check_context(int64_t n_prompt, int64_t max_tokens) const {
        const int64_t ctx = backend.model_info().context_length;
        if (n_prompt >= ctx || n_prompt + max_tokens > ctx) {
            throw ProtocolError(400,
                                "This model's maximum context length is " + std::to_string(ctx) +
                                    " tokens. However, you requested " + std::to_string(n_prompt + max_tokens) +
                                    " tokens (" + std::to_string(n_prompt) + " in the messages, " +
                                    std::to_string(max_tokens) +
                                    " in the completion). Please reduce the length of the messages or completion.",
                                "messages", "", "context_length_exceeded");
        }
    }

    TokenLogprob to_protocol(const TokenLogprobs& lp, int text_offset) const {
        const auto& tok = backend.tokenizer();
        TokenLogprob out;
        out.token = tok.token_bytes(lp.token);
        out.logprob = lp.logprob;
        out.text_offset = text_offset;
        for (const auto& [id, v] : lp.top) out.top.emplace_back(tok.token_bytes(id), v);
        return out;
    }

    // -- request preparation ----------------------------------------------------------------

    Prepared prepare_completion(const json& body) const {
        CompletionRequest r = parse_completion_request(body);
        check_model(r.model);
        Prepared p;
        p.id = make_request_id("cmpl-");
        p.created = unix_time_now();
        std::vector<int32_t> prompt;
        if (r.prompt_is_tokens) {
            const int64_t vocab = backend.model_info().vocab;
            for (int32_t t : r.prompt_tokens)
                if (t < 0 || t >= vocab)
                    throw ProtocolError(400, "prompt token id " + std::to_string(t) + " is outside the vocabulary", "prompt");
            prompt = r.prompt_tokens;
        } else {
            prompt = encode(r.prompt_text, true);
        }
        if (prompt.empty()) throw ProtocolError(400, "the prompt is empty", "prompt");
        if (r.max_tokens == 0 && !r.echo)
            throw ProtocolError(400, "max_tokens must be at least 1 (0 is allowed only with echo)", "max_tokens");
        if (r.echo) {
            p.echo_prefix = r.prompt_is_tokens ? backend.tokenizer().decode(prompt) : r.prompt_text;
            // Prompt logprobs: for a SwiftKV model every prompt token then runs every layer (the full
            // student), so they are the model's real logprobs. max_tokens 0 rides the same path.
            if (r.logprobs || r.max_tokens == 0) {
                if (!backend.supports_prompt_logprobs())
                    throw ProtocolError(400, "echo with logprobs (or max_tokens 0) needs --batching continuous", "echo");
                p.request.prompt_logprobs = true;
            }
        }
        check_context(int64_t(prompt.size()), r.max_tokens);
        p.request.gen = r.to_generation_request(std::move(prompt), r.max_tokens, backend.model_info().generation_defaults);
        if (r.logprobs) p.request.gen.logprobs = *r.logprobs;
        p.with_logprobs = r.logprobs.has_value();
        p.request.n = r.n;
        p.stream = r.stream;
        p.include_usage = r.include_usage;
        return p;
    }

    Prepared prepare_chat(const json& body) const {
        ChatCompletionRequest r = parse_chat_completion_request(body);
        check_model(r.model);
        if (!backend.model_info().has_chat_template)
            throw ProtocolError(400, "this model has no chat template; use /v1/completions", "messages");
        Prepared p;
        p.chat = true;
        p.id = make_request_id("chatcmpl-");
        p.created = unix_time_now();
        std::string text;
        try {
            text = backend.apply_chat_template(r.messages, r.add_generation_prompt);
        } catch (const std::exception& e) {
            throw ProtocolError(400, std::string("cannot apply the chat template: ") + e.what(), "messages");
        }
        std::vector<int32_t> prompt = encode(text, true);
        if (prompt.empty()) throw ProtocolError(400, "the prompt is empty", "messages");
        const int64_t ctx = backend.model_info().context_length;
        const int64_t n_prompt = int64_t(prompt.size());
        const int64_t max_tokens = r.max_tokens ? *r.max_tokens : std::max<int64_t>(ctx - n_prompt, 0);
        check_context(n_prompt, max_tokens);
        p.request.gen = r.to_generation_request(std::move(prompt), max_tokens, backend.model_info().generation_defaults);
        if (r.logprobs) p.request.gen.logprobs = r.top_logprobs;
        p.with_logprobs = r.logprobs;
        p.request.n = r.n;
        p.stream = r.stream;
        p.include_usage = r.include_usage;
        return p;
    }

    // -- metrics ------------------------------------------------------------------------------

    void record(const RequestState& st, const std::vector<std::string>& finish_reasons, int64_t completion_tokens,
                int n) {
        const auto now = Clock::now();
        const double e2e = std::chrono::duration<double>(now - st.arrival).count();
        metrics.e2e.observe(e2e);
        if (st.first_output) {
            const double ttft = std::chrono::duration<double>(*st.first_output - st.arrival).count();
            metrics.ttft.observe(ttft);
            const int64_t per_choice = n > 0 ? completion_tokens / n : completion_tokens;
            if (per_choice > 1) metrics.tpot.observe((e2e - ttft) / double(completion_tokens - n));
        }
        std::lock_guard<std::mutex> lock(metrics.mu);
        for (const auto& r : finish_reasons) metrics.success[r.empty() ? "abort" : r] += 1;
    }

    std::string metrics_text() const {
        const ServingStats s = backend.stats();
        std::ostringstream os;
        const std::string labels = "model_name=\"" + opt.served_model_name + "\"";
        auto gauge = [&](const char* name, const char* help, double v) {
            os << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n"
               << name << "{" << labels << "} " << Histogram::fmt_double(v) << "\n";
        };
        auto counter = [&](const char* name, const char* help, double v) {
            os << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n"
               << name << "{" << labels << "} " << Histogram::fmt_double(v) << "\n";
        };
        gauge("swiftkv:num_requests_running", "Number of requests currently running.", double(s.running));
        gauge("swiftkv:num_requests_waiting", "Number of requests waiting to run.", double(s.waiting));
        gauge("swiftkv:kv_cache_blocks_used", "KV cache blocks in use.", double(s.kv_blocks_used));
        gauge("swiftkv:kv_cache_blocks_total", "KV cache blocks in all.", double(s.kv_blocks_total));
        gauge("swiftkv:kv_cache_usage_perc", "KV cache usage (0 to 1).",
              s.kv_blocks_total > 0 ? double(s.kv_blocks_used) / double(s.kv_blocks_total) : 0.0);
        gauge("swiftkv:prefix_cache_hit_rate", "Prefix cache hit rate (0 to 1).", s.prefix_cache_hit_rate);
        counter("swiftkv:prompt_tokens_total", "Prompt tokens processed.", double(s.prompt_tokens_total));
        counter("swiftkv:generation_tokens_total", "Tokens generated.", double(s.generation_tokens_total));
        {
            os << "# HELP swiftkv:request_success_total Finished sequences by finish reason.\n"
                  "# TYPE swiftkv:request_success_total counter\n";
            std::map<std::string, uint64_t> success;
            {
                std::lock_guard<std::mutex> lock(const_cast<Metrics&>(metrics).mu);
                success = metrics.success;
            }
            for (const char* r : {"stop", "length", "abort"}) success.emplace(r, 0);
            for (const auto& [reason, count] : success)
                os << "swiftkv:request_success_total{" << labels << ",finished_reason=\"" << reason << "\"} " << count
                   << "\n";
        }
        metrics.ttft.write(os, "swiftkv:time_to_first_token_seconds", "Time to first token in seconds.", labels);
        metrics.tpot.write(os, "swiftkv:time_per_output_token_seconds", "Time per output token in seconds.", labels);
        metrics.e2e.write(os, "swiftkv:e2e_request_latency_seconds", "End-to-end request latency in seconds.", labels);
        return os.str();
    }

    // -- generation -------------------------------------------------------------------------

    void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat) {
        const json body = parse_json_body(req.body);
        auto prepared = std::make_shared<Prepared>(chat ? prepare_chat(body) : prepare_completion(body));
        if (stopping) throw ProtocolError(503, "the server is shutting down");
        auto st = std::make_shared<RequestState>();
        if (prepared->stream) {
            res.status = 200;
            res.set_header("Cache-Control", "no-cache");
            res.set_chunked_content_provider(
                "text/event-stream",
                [this, st, prepared](size_t, httplib::DataSink& sink) { return stream_provider(*prepared, st, sink); },
                [this, st](bool) {
                    if (st->submitted) {
                        bool done;
                        {
                            std::lock_guard<std::mutex> lock(st->mu);
                            done = st->done;
                        }
                        if (!done) {
                            st->client_gone = true;
                            backend.abort(st->id);
                        }
                    }
                });
            return;
        }
        const int conn = find_connection_socket(req);
        st->id = backend.submit(prepared->request, st->callbacks(st));
        st->submitted = true;
        std::unique_lock<std::mutex> lock(st->mu);
        // Wait for the result, checking a few times a second that the client is still there: a
        // client that hung up gets its request aborted, so its KV blocks are freed at once.
        while (!st->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return st->done; })) {
            if (!st->client_gone && connection_closed(conn)) {
                st->client_gone = true;
                lock.unlock();
                backend.abort(st->id);
                lock.lock();
            }
        }
        if (st->client_gone) {
            lock.unlock();
            record(*st, {""}, 0, prepared->request.n);
            res.status = 499;  // nginx's "client closed request"; nobody reads it
            return;
        }
        if (!st->error.empty()) {
            lock.unlock();
            record(*st, {""}, 0, prepared->request.n);
            if (st->error == "aborted" || st->error == "shutting down")
                throw ProtocolError(503, "the request was aborted: the server is shutting down");
            throw ProtocolError(500, "generation failed: " + st->error);
        }
        const int n = prepared->request.n;
        std::vector<ChoiceResult> choices(static_cast<size_t>(n));
        std::vector<int> offsets(static_cast<size_t>(n), 0);
        Usage usage;
        std::vector<std::string> reasons;
        for (int i = 0; i < n; ++i) {
            choices[size_t(i)].index = i;
            choices[size_t(i)].text = prepared->echo_prefix;
            offsets[size_t(i)] = int(prepared->echo_prefix.size());
        }
        for (auto& e : st->events) {
            if (e.prompt) {  // echo: every choice starts with the prompt's tokens
                for (auto& c : choices) {
                    int off = 0;
                    std::vector<TokenLogprob> lps;
                    for (const auto& lp : e.logprobs) {
                        lps.push_back(to_protocol(lp, off));
                        off += int(backend.tokenizer().token_bytes(lp.token).size());
                    }
                    c.logprobs.insert(c.logprobs.begin(), lps.begin(), lps.end());
                }
                continue;
            }
            ChoiceResult& c = choices[size_t(e.index)];
            for (const auto& lp : e.logprobs) {
                c.logprobs.push_back(to_protocol(lp, offsets[size_t(e.index)]));
                offsets[size_t(e.index)] += int(backend.tokenizer().token_bytes(lp.token).size());
            }
            if (e.finish) {
                c.finish_reason = e.result.finish_reason;
                c.token_ids = e.result.tokens;
                usage.prompt_tokens = e.result.prompt_tokens;
                usage.completion_tokens += int64_t(e.result.tokens.size());
                reasons.push_back(e.result.finish_reason);
            } else {
                c.text += e.text;
            }
        }
        lock.unlock();
        record(*st, reasons, usage.completion_tokens, n);
        const std::string& model = opt.served_model_name;
        json out = chat ? chat_completion_response(prepared->id, prepared->created, model, choices, usage, prepared->with_logprobs)
                        : completion_response(prepared->id, prepared->created, model, choices, usage, prepared->with_logprobs);
        set_json(res, 200, out);
    }

    bool stream_provider(const Prepared& p, const std::shared_ptr<RequestState>& st, httplib::DataSink& sink) {
        const std::string& model = opt.served_model_name;
        auto write = [&](const std::string& s) {
            if (st->client_gone) return false;
            if (!sink.write(s.data(), s.size())) {
                st->client_gone = true;
                return false;
            }
            return true;
        };
        auto give_up = [&] {
            st->client_gone = true;
            backend.abort(st->id);
            return false;
        };
        if (!st->submitted) {
            st->id = backend.submit(p.request, st->callbacks(st));
            st->submitted = true;
            for (int i = 0; i < p.request.n; ++i) {
                if (p.chat) {
                    if (!write(sse_event(chat_role_chunk(p.id, p.created, model, i, p.include_usage)))) return give_up();
                } else if (!p.echo_prefix.empty() && !p.request.prompt_logprobs) {
                    if (!write(sse_event(completion_chunk(p.id, p.created, model, i, p.echo_prefix, nullptr, "",
                                                          p.include_usage))))
                        return give_up();
                }
            }
        }
        std::vector<int> offsets(size_t(p.request.n), int(p.echo_prefix.size()));
        Usage usage;
        std::vector<std::string> reasons;
        for (;;) {
            std::deque<Event> events;
            bool done = false;
            std::string error;
            {
                std::unique_lock<std::mutex> lock(st->mu);
                st->cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return st->done || !st->events.empty(); });
                events.swap(st->events);
                done = st->done;
                error = st->error;
            }
            if (events.empty() && !done && sink.is_writable && !sink.is_writable()) return give_up();
            for (auto& e : events) {
                if (e.prompt) {  // echo with logprobs: the prompt text and its logprobs open each choice
                    std::vector<TokenLogprob> lps;
                    int off = 0;
                    for (const auto& lp : e.logprobs) {
                        lps.push_back(to_protocol(lp, off));
                        off += int(backend.tokenizer().token_bytes(lp.token).size());
                    }
                    const std::vector<TokenLogprob>* lp_ptr = p.with_logprobs ? &lps : nullptr;
                    for (int i = 0; i < p.request.n; ++i)
                        if (!write(sse_event(completion_chunk(p.id, p.created, model, i, p.echo_prefix, lp_ptr, "",
                                                              p.include_usage))))
                            return give_up();
                    continue;
                }
                std::vector<TokenLogprob> lps;
                for (const auto& lp : e.logprobs) {
                    lps.push_back(to_protocol(lp, offsets[size_t(e.index)]));
                    offsets[size_t(e.index)] += int(backend.tokenizer().token_bytes(lp.token).size());
                }
                const std::vector<TokenLogprob>* lp_ptr = p.with_logprobs ? &lps : nullptr;
                std::string chunk;
                if (e.finish) {
                    usage.prompt_tokens = e.result.prompt_tokens;
                    usage.completion_tokens += int64_t(e.result.tokens.size());
                    reasons.push_back(e.result.finish_reason);
                    if (p.chat) {
                        if (!lps.empty())
                            chunk += sse_event(chat_content_chunk(p.id, p.created, model, e.index, "", lp_ptr, p.include_usage));
                        chunk += sse_event(chat_finish_chunk(p.id, p.created, model, e.index, e.result.finish_reason,
                                                             p.include_usage));
                    } else {
                        chunk += sse_event(completion_chunk(p.id, p.created, model, e.index, "", lp_ptr,
                                                            e.result.finish_reason, p.include_usage));
                    }
                } else if (p.chat) {
                    chunk = sse_event(chat_content_chunk(p.id, p.created, model, e.index, e.text, lp_ptr, p.include_usage));
                } else {
                    chunk = sse_event(completion_chunk(p.id, p.created, model, e.index, e.text, lp_ptr, "", p.include_usage));
                }
                if (!write(chunk)) return give_up();
            }
            if (done) {
                if (!error.empty()) {
                    record(*st, {""}, usage.completion_tokens, p.request.n);
                    const int status = (error == "aborted" || error == "shutting down") ? 503 : 500;
                    write(sse_event(error_json(status, status == 503 ? "the request was aborted" : "generation failed: " + error)));
                    write(sse_done());
                    sink.done();
                    return true;
                }
                record(*st, reasons, usage.completion_tokens, p.request.n);
                if (p.include_usage)
                    if (!write(sse_event(usage_chunk(p.id, p.created, model, p.chat ? "chat.completion.chunk" : "text_completion", usage))))
                        return false;
                if (!write(sse_done())) return false;
                sink.done();
                return true;
            }
        }
    }

    // -- routes -------------------------------------------------------------------------------

    template <class F>
    httplib::Server::Handler guarded(F f) {
        return [this, f](const httplib::Request& req, httplib::Response& res) {
            try {
                f(req, res);
            } catch (const ProtocolError& e) {
                res.set_content(dump_json(e.to_json()), "application/json");
                res.status = e.status;
            } catch (const std::bad_alloc&) {
                set_error(res, 500, "out of memory");
            } catch (const std::exception& e) {
                set_error(res, 500, std::string("internal error: ") + e.what());
            } catch (...) {
                set_error(res, 500, "internal error");
            }
        };
    }

    void setup() {
        svr.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(size_t(std::max(n, 1))); };
        svr.set_payload_max_length(opt.max_body_bytes);
        svr.set_read_timeout(opt.read_timeout_s, 0);
        svr.set_write_timeout(opt.write_timeout_s, 0);
        svr.set_keep_alive_timeout(opt.keep_alive_timeout_s);

        svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (opt.api_key.empty() || !is_protected_path(req.path)) return httplib::Server::HandlerResponse::Unhandled;
            const std::string auth = req.get_header_value("Authorization");
            if (auth == "Bearer " + opt.api_key) return httplib::Server::HandlerResponse::Unhandled;
            set_error(res, 401, auth.empty() ? "missing API key: send Authorization: Bearer <key>"
                                             : "Incorrect API key provided.", "", "invalid_api_key");
            return httplib::Server::HandlerResponse::Handled;
        });
        svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            if (res.status == 404) {
                auto it = routes.find(req.path);
                if (it != routes.end()) {
                    res.set_header("Allow", it->second);
                    set_error(res, 405, "method " + req.method + " is not allowed for " + req.path + "; use " + it->second);
                } else {
                    set_error(res, 404, "no such endpoint: " + req.method + " " + req.path);
                }
            } else if (res.status == 413) {
                set_error(res, 413, "the request body is larger than the limit of " + std::to_string(opt.max_body_bytes) + " bytes");
            } else {
                set_error(res, res.status, "HTTP error " + std::to_string(res.status));
            }
            return httplib::Server::HandlerResponse::Handled;
        }));
        svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string msg = "internal error";
            try {
                if (ep) std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                msg += std::string(": ") + e.what();
            } catch (...) {
            }
            set_error(res, 500, msg);
        });

        svr.Post("/v1/completions", guarded([this](const auto& req, auto& res) { handle_generate(req, res, false); }));
        svr.Post("/v1/chat/completions", guarded([this](const auto& req, auto& res) { handle_generate(req, res, true); }));
        svr.Get("/v1/models", guarded([this](const auto&, auto& res) {
            set_json(res, 200, models_response(opt.served_model_name, created, backend.model_info().context_length));
        }));
        svr.Get("/health", guarded([this](const auto&, auto& res) {
            if (stopping) set_error(res, 503, "the server is shutting down");
            else set_json(res, 200, json::object());
        }));
        svr.Get("/metrics", guarded([this](const auto&, auto& res) {
            res.status = 200;
            res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
        }));
        svr.Post("/tokenize", guarded([this](const auto& req, auto& res) {
            TokenizeRequest r = parse_tokenize_request(parse_json_body(req.body));
            check_model(r.model);
            std::vector<int32_t> tokens;
            if (r.messages) {
                if (!backend.model_info().has_chat_template) throw ProtocolError(400, "this model has no chat template", "messages");
                std::string text;
                try {
                    text = backend.apply_chat_template(*r.messages, r.add_generation_prompt);
                } catch (const std::exception& e) {
                    throw ProtocolError(400, std::string("cannot apply the chat template: ") + e.what(), "messages");
                }
                tokens = encode(text, r.add_special_tokens);
            } else {
                tokens = encode(r.prompt.value_or(""), r.add_special_tokens);
            }
            set_json(res, 200, tokenize_response(tokens, backend.model_info().context_length));
        }));
        svr.Post("/detokenize", guarded([this](const auto& req, auto& res) {
            DetokenizeRequest r = parse_detokenize_request(parse_json_body(req.body));
            check_model(r.model);
            const int64_t vocab = backend.model_info().vocab;
            for (int32_t t : r.tokens)
                if (t < 0 || t >= vocab)
                    throw ProtocolError(400, "token id " + std::to_string(t) + " is outside the vocabulary", "tokens");
            set_json(res, 200, detokenize_response(backend.tokenizer().decode(r.tokens)));
        }));
    }
};

HttpServer::HttpServer(ServingBackend& backend, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(backend, std::move(options))) {}

HttpServer::~HttpServer() { stop(); }

bool HttpServer::bind() {
    if (impl_->opt.port == 0) {
        impl_->bound_port = impl_->svr.bind_to_any_port(impl_->opt.host);
        if (impl_->bound_port < 0) {
            impl_->error = "cannot bind to " + impl_->opt.host;
            return false;
        }
        return true;
    }
    if (!impl_->svr.bind_to_port(impl_->opt.host, impl_->opt.port)) {
        impl_->error = "cannot bind to " + impl_->opt.host + ":" + std::to_string(impl_->opt.port) +
                       " (address in use or not available)";
        return false;
    }
    impl_->bound_port = impl_->opt.port;
    return true;
}

int HttpServer::port() const { return impl_->bound_port; }

bool HttpServer::listen() { return impl_->svr.listen_after_bind(); }

void HttpServer::stop() {
    if (impl_->stopping.exchange(true)) return;
    impl_->backend.shutdown();
    impl_->svr.stop();
}

const std::string& HttpServer::error() const { return impl_->error; }

std::string HttpServer::metrics_text() const { return impl_->metrics_text(); }

}  // namespace swiftkv::server
