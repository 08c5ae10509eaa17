// ServingBackend — what the HTTP server needs from an engine: submit a request (n choices) with
// streaming callbacks, abort it, read load statistics, and reach the tokenizer / chat template /
// model info. SerialEngineBackend implements it over today's single-request swiftkv::Engine: a worker
// thread runs requests one at a time in FIFO order. The continuous-batching scheduler will implement
// the same interface.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/batch_engine.h"
#include "engine/engine.h"

namespace swiftkv::server {

struct ServingRequest {
    GenerationRequest gen;   // gen.logprobs >= 0 asks for per-token logprobs
    int n = 1;               // choices; choice i uses seed gen.sampling.seed + i (when a seed is set)
    // Logprobs of the prompt's tokens (echo); gen.max_tokens may then be 0. Continuous batching only.
    bool prompt_logprobs = false;
};

// Called on the backend's worker thread; must not block for long. Per choice, on_text calls come in
// order, then one on_finish; after every choice (or on an error / abort), exactly one on_done.
struct StreamCallbacks {
    // Text of choice `index` and the logprobs of the tokens generated since the last call (empty
    // unless requested). Return false to stop this request (client gone).
    std::function<bool(int index, std::string_view text, std::vector<TokenLogprobs>&& logprobs)> on_text;
    // A choice finished; `trailing` holds logprobs of tokens whose text was never emitted.
    std::function<void(int index, const GenerationResult& result, std::vector<TokenLogprobs>&& trailing)> on_finish;
    // With prompt_logprobs: once, before any text, one entry per prompt token (the first NaN).
    std::function<void(std::vector<TokenLogprobs>&& prompt)> on_prompt_logprobs;
    // The request is over. error empty: success; "aborted" when aborted; else the failure's message.
    std::function<void(const std::string& error)> on_done;
};

struct ServingStats {
    int64_t running = 0;
    int64_t waiting = 0;
    int64_t kv_blocks_used = 0;
    int64_t kv_blocks_total = 0;
    double prefix_cache_hit_rate = 0.0;
    int64_t prompt_tokens_total = 0;      // prompt tokens processed (every choice counts)
    int64_t generation_tokens_total = 0;  // tokens generated
};

struct ModelInfo {
    std::string path;
    int64_t context_length = 0;
    int64_t vocab = 0;
    bool has_chat_template = false;
    nlohmann::json generation_defaults = nlohmann::json::object();
};

class ServingBackend {
public:
    virtual ~ServingBackend() = default;
    // Queues a request; returns its id (> 0). Callbacks run on a backend thread.
    virtual uint64_t submit(ServingRequest request, StreamCallbacks callbacks) = 0;
    // Stops a request: a waiting one is dropped, a running one stops at its next token. on_done("aborted")
    // follows. Unknown or finished ids are ignored.
    virtual void abort(uint64_t id) = 0;
    // Aborts everything and refuses new work (submit then calls on_done("shutting down")).
    virtual void shutdown() = 0;
    virtual ServingStats stats() const = 0;
    virtual const BpeTokenizer& tokenizer() const = 0;
    virtual std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const = 0;
    virtual const ModelInfo& model_info() const = 0;
    // Whether ServingRequest::prompt_logprobs (echo with logprobs) is served.
    virtual bool supports_prompt_logprobs() const { return false; }
};

class SerialEngineBackend : public ServingBackend {
public:
    explicit SerialEngineBackend(std::unique_ptr<Engine> engine);
    ~SerialEngineBackend() override;

    uint64_t submit(ServingRequest request, StreamCallbacks callbacks) override;
    void abort(uint64_t id) override;
    void shutdown() override;
    ServingStats stats() const override;
    const BpeTokenizer& tokenizer() const override { return engine_->tokenizer(); }
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const override;
    const ModelInfo& model_info() const override { return info_; }

private:
    struct Job {
        uint64_t id = 0;
        ServingRequest request;
        StreamCallbacks callbacks;
        std::atomic<bool> cancelled{false};
    };
    void worker_loop();
    void run_job(Job& job);

    std::unique_ptr<Engine> engine_;
    ModelInfo info_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::shared_ptr<Job> running_;
    bool stopping_ = false;
    uint64_t next_id_ = 1;
    std::atomic<int64_t> prompt_tokens_{0};
    std::atomic<int64_t> generation_tokens_{0};
    std::atomic<int64_t> kv_used_{0};
    std::thread worker_;
};

// Continuous batching: one engine thread runs BatchEngine steps; every request in flight advances in
// each step (decodes first, prefill chunks after), sharing the paged KV cache and its prefix cache.
class BatchEngineBackend : public ServingBackend {
public:
    explicit BatchEngineBackend(std::unique_ptr<BatchEngine> engine);
    ~BatchEngineBackend() override;

    uint64_t submit(ServingRequest request, StreamCallbacks callbacks) override;
    void abort(uint64_t id) override;
    void shutdown() override;
    ServingStats stats() const override;
    const BpeTokenizer& tokenizer() const override { return engine_->tokenizer(); }
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const override {
        return engine_->apply_chat_template(messages, add_generation_prompt);
    }
    const ModelInfo& model_info() const override { return info_; }
    bool supports_prompt_logprobs() const override { return true; }

private:
    struct Live {
        StreamCallbacks callbacks;
        std::vector<GenerationResult> results;
        int remaining = 0;
        bool aborted = false;
        bool prompt_sent = false;
        uint64_t engine_id = 0;
    };
    void loop();
    void on_event(uint64_t id, const ChoiceEvent& e);

    std::unique_ptr<BatchEngine> engine_;
    ModelInfo info_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<uint64_t, std::pair<ServingRequest, StreamCallbacks>>> incoming_;
    std::vector<uint64_t> aborts_;
    bool stopping_ = false;
    uint64_t next_id_ = 1;
    ServingStats snapshot_;
    std::unordered_map<uint64_t, Live> live_;  // engine thread only
    std::thread thread_;
};

}  // namespace swiftkv::server
