// BatchEngine — continuous batching over the one forward interface (DESIGN.md sections 3 and 4):
// requests enter a queue; each step() the Scheduler builds one mixed batch under a token budget
// (decodes first, then prefill chunks), the model runs it, every sequence that reached its last
// token samples, and per-request callbacks receive the new tokens and text. The paged KV cache is
// shared through the BlockManager: prompt prefixes are reused from the prefix cache (for SwiftKV
// models the later layers' KV too: it depends only on layers < L), n > 1 completions share the
// prompt's blocks copy-on-write, and sequences are preempted (recomputed later) when blocks run out.
// Not thread-safe: one thread calls add_request / abort / step (the server's engine loop).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stop_filter.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

struct BatchEngineOptions {
    EngineOptions engine;              // model, device, dtype, context length, KV cache size, block size
    int64_t max_num_seqs = 256;        // sequences in one step
    int64_t max_batched_tokens = 2048; // tokens in one step (prefill chunks fill what decodes leave)
    bool prefix_caching = true;
    // Launch step k+1 before delivering step k's tokens, so detokenizing and callbacks overlap the
    // device's work (steps whose samples the backend draws). Off: every step is synchronous.
    bool overlap = true;
};

struct BatchRequest {
    std::vector<int32_t> prompt;
    SamplingParams sampling;           // choice i uses seed + i when a seed is given
    int64_t max_tokens = 16;           // capped by the context length; 0 only with prompt_logprobs
    std::vector<std::string> stop;
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    int n = 1;
    int32_t logprobs = -1;             // >= 0: each token's logprob and this many top alternatives
    // The logprob of every prompt token given the tokens before it (with max(logprobs, 0) top
    // alternatives). For a SwiftKV model the prompt then runs the full-student path: every prompt
    // token through every layer. The prompt is computed without prefix-cache reuse.
    bool prompt_logprobs = false;
};

// What a request's callback receives: new tokens of one choice, and when that choice ends.
struct ChoiceEvent {
    uint64_t request_id = 0;
    int index = 0;                       // choice 0..n-1
    std::vector<int32_t> tokens;         // tokens generated in this step (a stop token included)
    std::string text;                    // text that became final (never part of a stop string)
    std::vector<TokenLogprobs> logprobs; // one per token when requested
    // With prompt_logprobs: in the first event of each choice, one entry per prompt token (the first
    // token's logprob is NaN: nothing precedes it).
    std::vector<TokenLogprobs> prompt_logprobs;
    bool finished = false;
    std::string finish_reason;           // "stop", "length", "abort", "kv_cache"
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;       // so far
};
using ChoiceCallback = std::function<void(const ChoiceEvent&)>;

struct BatchEngineStats {
    int64_t running = 0, waiting = 0;
    int64_t kv_blocks_used = 0, kv_blocks_total = 0;
    double prefix_cache_hit_rate = 0.0;
    int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
    int64_t steps = 0, preemptions = 0;
    int64_t overlapped_steps = 0;      // steps launched before the previous step's tokens were delivered
    double host_schedule_s = 0.0;      // overlapped steps: scheduling and launching
    double host_output_s = 0.0;        // delivering tokens (detokenize, stop strings, callbacks)
    double device_wait_s = 0.0;        // waiting for overlapped steps' tokens
};

class BatchEngine {
public:
    explicit BatchEngine(const BatchEngineOptions& options);
    ~BatchEngine();

    // Validates and queues a request; returns its id. Throws swiftkv::Error for bad input (empty
    // prompt, prompt over the context, token ids outside the vocabulary, bad sampling values).
    uint64_t add_request(BatchRequest request, ChoiceCallback callback);
    // Ends every choice of a request now (its blocks are released); false if it is not live.
    bool abort(uint64_t request_id);
    // One engine step; returns whether work remains.
    bool step();
    void run_until_idle();
    bool has_work() const { return scheduler_->has_work() || inflight_.has_value(); }

    BatchEngineStats stats() const;
    const ModelConfig& config() const { return model_.config(); }
    const BpeTokenizer& tokenizer() const { return *model_.tokenizer; }
    bool has_chat_template() const { return model_.chat.tmpl != nullptr; }
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt = true) const {
        return model_.chat.render(messages, add_generation_prompt);
    }
    const nlohmann::json& generation_defaults() const { return model_.generation_defaults; }
    const BatchEngineOptions& options() const { return options_; }
    int64_t context_length() const { return context_length_; }
    Backend& backend() { return *backend_; }
    const PagedKvCache& kv_cache() const { return *kv_cache_; }

private:
    struct Choice {
        std::unique_ptr<Sampler> sampler;
        std::unique_ptr<StreamDecoder> decoder;
        std::unique_ptr<StopStringFilter> filter;
        uint64_t seq_id = 0;
        uint64_t seed = 0;
        int64_t generated = 0;   // tokens delivered
        int64_t sampled = 0;     // tokens drawn (ahead of `generated` while a step's output awaits delivery)
        bool done = false;
        bool prompt_sent = false;
    };
    struct Request {
        BatchRequest req;
        ChoiceCallback callback;
        std::vector<Choice> choices;
        int64_t max_new = 0;
        int live = 0;
        std::vector<TokenLogprobs> prompt_lp;  // prompt_logprobs: filled as prompt chunks run
        int64_t prompt_lp_filled = 1;          // entries [0, prompt_lp_filled) are final
    };

    struct Ready {  // sampled tokens awaiting delivery
        std::vector<std::pair<uint64_t, int>> targets;
        std::vector<int32_t> tokens;
        std::vector<std::vector<TokenLogprobs>> logprobs;
    };
    struct InFlight {  // a launched step
        ScheduleOutput out;
        std::vector<std::pair<uint64_t, int>> targets;
    };
    static constexpr const char* kPendingOutput = "pending_output";
    std::vector<std::pair<uint64_t, int>> sample_targets(const ScheduleOutput& out) const;
    bool device_sampling(const ScheduleOutput& out) const;
    std::vector<SampleParams> sample_params(const std::vector<std::pair<uint64_t, int>>& targets) const;
    void finish_step(const ScheduleOutput& out, std::vector<std::pair<uint64_t, int>> targets,
                     std::vector<int32_t> sampled, std::vector<std::vector<TokenLogprobs>> logprobs,
                     bool early_finish, Ready& ready);
    void deliver_ready(Ready& ready);
    void sample_entries(const ScheduleOutput& out, std::vector<int32_t>& sampled,
                        std::vector<std::vector<TokenLogprobs>>& logprobs);
    void deliver(Request& r, int index, int32_t token, const TokenLogprobs* lp);
    void attach_prompt_logprobs(Request& r, int index, ChoiceEvent& ev);
    void record_prompt_logprobs(const ScheduledSequence& e, const float* logits);
    void end_choice(Request& r, int index, const std::string& reason, ChoiceEvent* event);
    void apply_cow(const std::vector<std::pair<int32_t, int32_t>>& copies);

    BatchEngineOptions options_;
    std::unique_ptr<Backend> backend_;
    OpenedModel model_;
    std::unique_ptr<PagedKvCache> kv_cache_;
    std::unique_ptr<Scheduler> scheduler_;
    int64_t context_length_ = 0;
    std::unordered_map<uint64_t, Request> requests_;           // by request id (= group id)
    std::unordered_map<uint64_t, std::pair<uint64_t, int>> seq_choice_;  // seq id -> (request, choice)
    std::vector<float> logits_;
    BatchEngineStats counters_;
    std::optional<InFlight> inflight_;
};

}  // namespace swiftkv
