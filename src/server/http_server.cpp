#include "server/http_server.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/http_transport.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"

namespace swiftkv::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

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
    GenerationRequest request;
    bool stream = false;
    bool include_usage = false;
    bool with_logprobs = false;
    std::string echo_prefix;  // completions echo: the prompt text, prepended to each choice
};


// Characters (Unicode code points) in UTF-8 text: OpenAI's and vLLM's text_offset count these, not
// bytes. A piece that cuts a character counts its lead byte only, so the sum over the pieces of a
// text is the text's length.
int utf8_chars(std::string_view s) {
    int n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80 ? 1 : 0;
    return n;
}

// Compares a presented secret with the expected one in time that depends only on the expected
// one's length, so response timing reveals nothing of how much of a guess was right.
bool constant_time_equal(std::string_view presented, std::string_view expected) {
    unsigned diff = presented.size() == expected.size() ? 0u : 1u;
    for (size_t i = 0; i < expected.size(); ++i) {
        const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
        diff |= unsigned(p ^ static_cast<unsigned char>(expected[i]));
    }
    return diff == 0;
}

// "Authorization: Bearer KEY": the scheme is case-insensitive (RFC 9110, 11.1).
bool bearer_matches(std::string_view auth, std::string_view key) {
    while (!auth.empty() && (auth.front() == ' ' || auth.front() == '\t')) auth.remove_prefix(1);
    const size_t sp = auth.find_first_of(" \t");
    if (sp == std::string_view::npos) return false;
    std::string scheme(auth.substr(0, sp));
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    std::string_view token = auth.substr(sp);
    while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
    return scheme == "bearer" && constant_time_equal(token, key);
}

bool is_protected_path(const std::string& path) {
    return path.rfind("/v1/", 0) == 0 || path == "/v1" || path == "/tokenize" || path == "/detokenize";
}

void respond_json(HttpExchange& ex, int status, const json& body) { ex.respond(status, "application/json", dump_json(body)); }

// Where each choice of a request stands: its text offset, whether it finished and why, the usage.
struct Progress {
    explicit Progress(int n, int echo_chars) : offsets(size_t(n), echo_chars), finished(size_t(n), false) {}
    std::vector<int> offsets;
    std::vector<bool> finished;
    std::vector<std::string> reasons;
    Usage usage;

    void finish(const Event& e) {
        finished[size_t(e.index)] = true;
        usage.prompt_tokens = e.result.prompt_tokens;
        usage.completion_tokens += int64_t(e.result.tokens.size());
        reasons.push_back(e.result.finish_reason);
    }
    // The finish reasons to count: every choice that did not finish was aborted.
    std::vector<std::string> final_reasons() const {
        std::vector<std::string> out = reasons;
        for (bool f : finished)
            if (!f) out.emplace_back("abort");
        return out;
    }
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct HttpServer::Impl {
    ServingEngine& backend;
    HttpServerOptions opt;
    HttpTransport transport;
    ServingMetrics metrics;
    int64_t created = unix_time_now();
    std::atomic<bool> stopping{false};

    Impl(ServingEngine& b, HttpServerOptions o)
        : backend(b), opt(std::move(o)), transport(opt.limits, [](int status, std::string_view message) {
              return std::pair<std::string, std::string>(
                  dump_json(error_json(status, message, "", status == 401 ? "invalid_api_key" : "")), "application/json");
          }) {
        setup();
    }

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

    // The protocol's view of token logprobs; `offset` (characters) advances past each piece.
    std::vector<TokenLogprob> to_protocol(const std::vector<TokenLogprobs>& lps, int& offset) const {
        const auto& tok = backend.tokenizer();
        std::vector<TokenLogprob> out;
        out.reserve(lps.size());
        for (const auto& lp : lps) {
            TokenLogprob t;
            t.token = tok.token_bytes(lp.token);
            t.logprob = lp.logprob;
            t.text_offset = offset;
            for (const auto& [id, v] : lp.top) t.top.emplace_back(tok.token_bytes(id), v);
            offset += utf8_chars(t.token);
            out.push_back(std::move(t));
        }
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
        if (r.echo) p.echo_prefix = r.prompt_is_tokens ? backend.tokenizer().decode(prompt) : r.prompt_text;
        check_context(int64_t(prompt.size()), r.max_tokens);
        p.request = r.to_generation_request(std::move(prompt), r.max_tokens, backend.model_info().generation_defaults);
        if (r.logprobs) p.request.logprobs = *r.logprobs;
        // Prompt logprobs: for a SwiftKV model every prompt token then runs every layer (the full
        // student), so they are the model's real logprobs. max_tokens 0 rides the same path.
        p.request.prompt_logprobs = r.echo && (r.logprobs || r.max_tokens == 0);
        p.with_logprobs = r.logprobs.has_value();
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
        p.request = r.to_generation_request(std::move(prompt), max_tokens, backend.model_info().generation_defaults);
        if (r.logprobs) p.request.logprobs = r.top_logprobs;
        p.with_logprobs = r.logprobs;
        p.stream = r.stream;
        p.include_usage = r.include_usage;
        return p;
    }

    // -- generation -------------------------------------------------------------------------

    // Every submitted request is recorded exactly once, whichever way it ends.
    void record(RequestState& st, const Progress& progress, int n) {
        const double e2e = std::chrono::duration<double>(Clock::now() - st.arrival).count();
        std::optional<double> ttft;
        {
            std::lock_guard<std::mutex> lock(st.mu);
            if (st.first_output) ttft = std::chrono::duration<double>(*st.first_output - st.arrival).count();
        }
        metrics.record(e2e, ttft ? &*ttft : nullptr, progress.usage.completion_tokens, n, progress.final_reasons());
    }

    void abort(RequestState& st) {
        st.client_gone = true;
        backend.abort(st.id);
    }

    void handle_generate(const HttpRequest& req, HttpExchange& ex, bool chat) {
        const json body = parse_json_body(req.body);
        const Prepared p = chat ? prepare_chat(body) : prepare_completion(body);
        if (stopping) throw ProtocolError(503, "the server is shutting down");
        auto st = std::make_shared<RequestState>();
        if (p.stream) generate_stream(p, st, ex);
        else generate(p, st, ex);
    }

    void generate(const Prepared& p, const std::shared_ptr<RequestState>& st, HttpExchange& ex) {
        st->id = backend.submit(p.request, st->callbacks(st));
        std::unique_lock<std::mutex> lock(st->mu);
        // Wait for the result, checking a few times a second that the client is still there: a
        // client that hung up gets its request aborted, so its KV blocks are freed at once.
        while (!st->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return st->done; })) {
            if (!st->client_gone && ex.client_closed()) {
                lock.unlock();
                abort(*st);
                lock.lock();
            }
        }
        const int n = p.request.n;
        Progress progress(n, utf8_chars(p.echo_prefix));
        std::vector<ChoiceResult> choices(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
            choices[size_t(i)].index = i;
            choices[size_t(i)].text = p.echo_prefix;
        }
        for (auto& e : st->events) {
            if (e.prompt) {  // echo: every choice starts with the prompt's tokens
                int off = 0;
                const std::vector<TokenLogprob> lps = to_protocol(e.logprobs, off);
                for (auto& c : choices) c.logprobs.insert(c.logprobs.begin(), lps.begin(), lps.end());
                continue;
            }
            ChoiceResult& c = choices[size_t(e.index)];
            for (auto& lp : to_protocol(e.logprobs, progress.offsets[size_t(e.index)])) c.logprobs.push_back(std::move(lp));
            if (e.finish) {
                progress.finish(e);
                c.finish_reason = e.result.finish_reason;
                c.token_ids = e.result.tokens;
            } else {
                c.text += e.text;
            }
        }
        const bool gone = st->client_gone;
        const std::string error = st->error;
        lock.unlock();
        record(*st, progress, n);
        if (gone) return ex.abandon();
        if (!error.empty()) {
            if (error == "aborted" || error == "shutting down")
                throw ProtocolError(503, "the request was aborted: the server is shutting down");
            throw ProtocolError(500, "generation failed: " + error);
        }
        const std::string& model = opt.served_model_name;
        respond_json(ex, 200,
                     p.chat ? chat_completion_response(p.id, p.created, model, choices, progress.usage, p.with_logprobs)
                            : completion_response(p.id, p.created, model, choices, progress.usage, p.with_logprobs));
    }

    void generate_stream(const Prepared& p, const std::shared_ptr<RequestState>& st, HttpExchange& ex) {
        const std::string& model = opt.served_model_name;
        if (!ex.start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}})) return ex.abandon();
        st->id = backend.submit(p.request, st->callbacks(st));
        Progress progress(p.request.n, utf8_chars(p.echo_prefix));
        // The client went away: abort, count the request, close the connection.
        auto give_up = [&] {
            abort(*st);
            record(*st, progress, p.request.n);
            ex.abandon();
        };
        auto write = [&](const std::string& s) { return !st->client_gone && ex.write(s); };
        for (int i = 0; i < p.request.n; ++i) {
            bool ok = true;
            if (p.chat) ok = write(sse_event(chat_role_chunk(p.id, p.created, model, i, p.include_usage)));
            else if (!p.echo_prefix.empty() && !p.request.prompt_logprobs)
                ok = write(sse_event(completion_chunk(p.id, p.created, model, i, p.echo_prefix, nullptr, "", p.include_usage)));
            if (!ok) return give_up();
        }
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
            if (events.empty() && !done && ex.client_closed()) return give_up();
            for (auto& e : events) {
                if (e.prompt) {  // echo with logprobs: the prompt text and its logprobs open each choice
                    int off = 0;
                    const std::vector<TokenLogprob> lps = to_protocol(e.logprobs, off);
                    const std::vector<TokenLogprob>* lp_ptr = p.with_logprobs ? &lps : nullptr;
                    for (int i = 0; i < p.request.n; ++i)
                        if (!write(sse_event(completion_chunk(p.id, p.created, model, i, p.echo_prefix, lp_ptr, "", p.include_usage))))
                            return give_up();
                    continue;
                }
                const std::vector<TokenLogprob> lps = to_protocol(e.logprobs, progress.offsets[size_t(e.index)]);
                const std::vector<TokenLogprob>* lp_ptr = p.with_logprobs ? &lps : nullptr;
                std::string chunk;
                if (e.finish) {
                    progress.finish(e);
                    if (p.chat) {
                        if (!lps.empty())
                            chunk += sse_event(chat_content_chunk(p.id, p.created, model, e.index, "", lp_ptr, p.include_usage));
                        chunk += sse_event(chat_finish_chunk(p.id, p.created, model, e.index, e.result.finish_reason, p.include_usage));
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
            if (!done) continue;
            record(*st, progress, p.request.n);
            if (!error.empty()) {
                const int status = (error == "aborted" || error == "shutting down") ? 503 : 500;
                write(sse_event(error_json(status, status == 503 ? "the request was aborted" : "generation failed: " + error)));
            } else if (p.include_usage) {
                write(sse_event(usage_chunk(p.id, p.created, model, p.chat ? "chat.completion.chunk" : "text_completion",
                                            progress.usage)));
            }
            write(sse_done());
            return ex.finish_stream();
        }
    }

    // -- routes -------------------------------------------------------------------------------

    // Every failure of a handler becomes an OpenAI error answer (a handler never lets one escape).
    template <class F>
    HttpTransport::Handler guarded(F f) {
        return [f](const HttpRequest& req, HttpExchange& ex) {
            try {
                f(req, ex);
            } catch (const ProtocolError& e) {
                ex.respond(e.status, "application/json", dump_json(e.to_json()));
            } catch (const std::bad_alloc&) {
                respond_json(ex, 503, error_json(503, "out of memory: try a smaller request"));
            } catch (const std::exception& e) {
                respond_json(ex, 500, error_json(500, std::string("internal error: ") + e.what()));
            } catch (...) {
                respond_json(ex, 500, error_json(500, "internal error"));
            }
        };
    }

    void setup() {
        transport.set_header_check([this](const HttpRequest& req) -> std::optional<HttpError> {
            if (opt.api_key.empty() || !is_protected_path(req.path)) return std::nullopt;
            const auto auth = req.header("Authorization");
            if (auth && bearer_matches(*auth, opt.api_key)) return std::nullopt;
            return HttpError{401, auth ? "Incorrect API key provided." : "missing API key: send Authorization: Bearer <key>"};
        });
        transport.route("POST", "/v1/completions", guarded([this](const HttpRequest& req, HttpExchange& ex) {
            handle_generate(req, ex, false);
        }));
        transport.route("POST", "/v1/chat/completions", guarded([this](const HttpRequest& req, HttpExchange& ex) {
            handle_generate(req, ex, true);
        }));
        transport.route("GET", "/v1/models", guarded([this](const HttpRequest&, HttpExchange& ex) {
            respond_json(ex, 200, models_response(opt.served_model_name, created, backend.model_info().context_length));
        }));
        transport.route("GET", "/health", guarded([this](const HttpRequest&, HttpExchange& ex) {
            if (stopping) respond_json(ex, 503, error_json(503, "the server is shutting down"));
            else respond_json(ex, 200, json::object());
        }));
        transport.route("GET", "/metrics", guarded([this](const HttpRequest&, HttpExchange& ex) {
            ex.respond(200, "text/plain; version=0.0.4; charset=utf-8", metrics_text());
        }));
        transport.route("POST", "/tokenize", guarded([this](const HttpRequest& req, HttpExchange& ex) {
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
            respond_json(ex, 200, tokenize_response(tokens, backend.model_info().context_length));
        }));
        transport.route("POST", "/detokenize", guarded([this](const HttpRequest& req, HttpExchange& ex) {
            DetokenizeRequest r = parse_detokenize_request(parse_json_body(req.body));
            check_model(r.model);
            const int64_t vocab = backend.model_info().vocab;
            for (int32_t t : r.tokens)
                if (t < 0 || t >= vocab)
                    throw ProtocolError(400, "token id " + std::to_string(t) + " is outside the vocabulary", "tokens");
            respond_json(ex, 200, detokenize_response(backend.tokenizer().decode(r.tokens)));
        }));
    }

    std::string metrics_text() const { return metrics.text(backend.stats(), opt.served_model_name); }
};

HttpServer::HttpServer(ServingEngine& backend, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(backend, std::move(options))) {}

HttpServer::~HttpServer() { stop(); }

bool HttpServer::bind() { return impl_->transport.bind(impl_->opt.host, impl_->opt.port); }

int HttpServer::port() const { return impl_->transport.port(); }

bool HttpServer::listen() { return impl_->transport.serve(); }

void HttpServer::stop() {
    if (impl_->stopping.exchange(true)) return;
    impl_->backend.shutdown();
    impl_->transport.stop();
}

const std::string& HttpServer::error() const { return impl_->transport.error(); }

std::string HttpServer::metrics_text() const { return impl_->metrics_text(); }

}  // namespace swiftkv::server
