// ServingEngine — the engine as the HTTP server uses it: a thread runs the one Engine (engine.h) step
// after step; HTTP threads submit requests (n choices) with streaming callbacks, abort them and read
// load statistics, and reach the tokenizer, chat template and model info.
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

#include "engine/engine.h"

namespace swiftkv::server {

// Called on the engine thread; must not block for long. Per choice, on_text calls come in
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

struct ModelInfo {
    std::string path;
    int64_t context_length = 0;
    int64_t vocab = 0;
    bool has_chat_template = false;
    nlohmann::json generation_defaults = nlohmann::json::object();
};

// The engine behind the HTTP server: one engine thread runs Engine steps; every request in flight
// advances in each step (decodes first, prefill chunks after), sharing the paged KV cache and its
// prefix cache. HTTP threads submit requests and abort them; callbacks run on the engine thread.
class ServingEngine {
public:
    explicit ServingEngine(std::unique_ptr<Engine> engine);
    ~ServingEngine();
    ServingEngine(const ServingEngine&) = delete;
    ServingEngine& operator=(const ServingEngine&) = delete;

    // Queues a request; returns its id (> 0). Callbacks run on the engine thread.
    uint64_t submit(GenerationRequest request, StreamCallbacks callbacks);
    // Stops a request: a waiting one is dropped, a running one stops at its next token. on_done("aborted")
    // follows. Unknown or finished ids are ignored.
    void abort(uint64_t id);
    // Aborts everything and refuses new work (submit then calls on_done("shutting down")).
    void shutdown();
    // The engine's statistics after its last step; `waiting` also counts requests not yet handed to it.
    EngineStats stats() const;
    const BpeTokenizer& tokenizer() const { return engine_->tokenizer(); }
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const {
        return engine_->apply_chat_template(messages, add_generation_prompt);
    }
    const ModelInfo& model_info() const { return info_; }

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

    std::unique_ptr<Engine> engine_;
    ModelInfo info_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<uint64_t, std::pair<GenerationRequest, StreamCallbacks>>> incoming_;
    std::vector<uint64_t> aborts_;
    bool stopping_ = false;
    uint64_t next_id_ = 1;
    EngineStats snapshot_;
    std::unordered_map<uint64_t, Live> live_;  // engine thread only
    std::thread thread_;
};

}  // namespace swiftkv::server
