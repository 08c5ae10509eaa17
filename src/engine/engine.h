// Engine — the one engine (DESIGN.md sections 3 and 4): continuous batching over the one forward
// interface. It opens a model (model_loader.h) onto a backend, owns the paged KV cache and the
// Scheduler, and runs steps: each step() the Scheduler builds one mixed batch under a token budget
// (decodes first, then prefill chunks), the model runs it, every sequence that reached its last token
// samples, and per-request callbacks receive the new tokens and text. Prompt prefixes are reused from
// the prefix cache (for SwiftKV models the later layers' KV too: it depends only on layers < L),
// n > 1 completions share the prompt's blocks copy-on-write, and sequences are preempted (recomputed
// later) when blocks run out.
//
// Serving drives it from one thread (server/serving_engine.h); run, chat, score, bench and gen-data
// are synchronous uses of the same engine: generate(), prompt_logits() and batch_last_logits() queue
// requests and step until they are done. Not thread-safe: one thread calls everything.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stop_filter.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "model/model_loader.h"
#include "runner/model_runner.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

struct EngineOptions {
    // What to open and how (path or synthetic shape, weight dtype, SwiftKV on/off, tokenizer): the
    // loader's own options. weight_dtype unset: F32 on the CPU, BF16 on CUDA (the only dtype it holds).
    OpenModelOptions model;
    std::string device = "cpu";       // "cpu", "cuda" or "cuda:N"
    int threads = 0;                  // 0: all cores
    int64_t context_length = 0;       // 0: the model's max_position_embeddings, capped at 8192
    // KV cache size in tokens. 0: on the CPU room for max_num_seqs contexts, at least one and at most
    // max(context, 16384) tokens; on CUDA, gpu_memory_fraction of the GPU memory left free after the
    // weights and the workspace.
    int64_t kv_cache_tokens = 0;
    double gpu_memory_fraction = 0.9;
    bool graphs = true;               // record and replay decode steps as graphs (CUDA)
    int64_t block_size = 16;
    int64_t max_num_seqs = 256;        // sequences in one step
    int64_t max_batched_tokens = 2048; // tokens in one step (prefill chunks fill what decodes leave)
    bool prefix_caching = true;
    // Launch step k+1 before delivering step k's tokens, so detokenizing and callbacks overlap the
    // device's work (steps whose samples the backend draws). Off: every step is synchronous.
    bool overlap = true;
    // Full-student path: every token runs every layer (logits computed for all rows, the needed ones
    // kept). Same results as the default survivor path for SwiftKV models, at full prefill cost; for
    // evaluation and checking.
    bool full_student = false;
};

// One request: n completions of a prompt.
struct GenerationRequest {
    std::vector<int32_t> prompt;
    SamplingParams sampling;                 // choice i uses seed + i when a seed is given
    int64_t max_tokens = 128;                // capped by the context length; 0 only with prompt_logprobs
    std::vector<std::string> stop;           // stop strings (not included in the output)
    std::vector<int32_t> stop_token_ids;     // extra stop tokens
    bool ignore_eos = false;
    int n = 1;
    // Logprobs: -1 off; k >= 0: each generated token's logprob and the k most likely alternatives, from
    // the raw logits (log-softmax before penalties and temperature). Off keeps decode on the fast path
    // (device sampling, no extra work).
    int32_t logprobs = -1;
    // The logprob of every prompt token given the tokens before it (with max(logprobs, 0) top
    // alternatives). For a SwiftKV model the prompt then runs the full-student path: every prompt
    // token through every layer. The prompt is computed without prefix-cache reuse.
    bool prompt_logprobs = false;
};

// One token with its logprobs.
struct TokenLogprobs {
    int32_t token = -1;
    float logprob = 0.0f;
    std::vector<std::pair<int32_t, float>> top;  // most likely first
};

struct GenerationResult {
    std::vector<int32_t> tokens;    // generated tokens (a stop token is included, a stop string's are not cut)
    std::string text;               // generated text, cut before a stop string
    std::string finish_reason;      // "stop", "length", "abort" or "kv_cache"
    int64_t prompt_tokens = 0;
    double prefill_seconds = 0;     // time to first token
    double decode_seconds = 0;      // time for the remaining tokens
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

struct EngineStats {
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

class Engine {
public:
    explicit Engine(const EngineOptions& options);
    ~Engine();

    // --- asynchronous use: queue requests, step --------------------------------------------------
    // Validates and queues a request; returns its id. Throws swiftkv::Error for bad input (empty
    // prompt, prompt over the context, token ids outside the vocabulary, bad sampling values).
    uint64_t add_request(GenerationRequest request, ChoiceCallback callback);
    // Ends every choice of a request now (its blocks are released); false if it is not live.
    bool abort(uint64_t request_id);
    // One engine step; returns whether work remains.
    bool step();
    void run_until_idle();
    bool has_work() const { return scheduler_->has_work() || inflight_.has_value(); }

    // --- synchronous use ---------------------------------------------------------------------------
    // Generates one completion (request.n must be 1); on_text receives text as it becomes final (never
    // a broken UTF-8 sequence, never part of a stop string); return false from it to stop early.
    // on_token (with request.logprobs >= 0) is called for each generated token, a stop token included,
    // before the text it completes is passed to on_text. Other queued requests advance meanwhile.
    GenerationResult generate(const GenerationRequest& request,
                              const std::function<bool(std::string_view)>& on_text = {},
                              const std::function<void(const TokenLogprobs&)>& on_token = {});
    // Logits at the chosen positions of a prompt (sorted; every position when empty), [positions, vocab].
    // Only the rows from the first chosen position on are computed, so for a SwiftKV model a suffix
    // runs the survivor path. For evaluation and tests.
    std::vector<float> prompt_logits(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions);
    // Each prompt's last-position logits; the prompts run batched together.
    std::vector<std::vector<float>> batch_last_logits(const std::vector<std::vector<int32_t>>& prompts);

    // --- the model -----------------------------------------------------------------------------------
    EngineStats stats() const;
    const ModelConfig& config() const { return model_.config(); }
    // Throws swiftkv::Error when the model was opened without its tokenizer.
    const BpeTokenizer& tokenizer() const { return model_.require_tokenizer(); }
    bool has_chat_template() const { return model_.chat.tmpl != nullptr; }
    // Renders the chat template: messages is a JSON array of {"role", "content"}.
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt = true) const {
        return model_.chat.render(messages, add_generation_prompt);
    }
    const nlohmann::json& generation_defaults() const { return model_.generation_defaults; }
    const EngineOptions& options() const { return options_; }
    int64_t context_length() const { return context_length_; }
    Backend& backend() { return *backend_; }
    LlamaModel& model() { return *model_.model; }
    ModelRunner& runner() { return *runner_; }
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
    // Receives prompt logits rows: `rows` rows of [vocab], the first at prompt position `first`.
    using PromptLogitsSink = std::function<void(int64_t first, const float* rows, int64_t count)>;
    struct Request {
        GenerationRequest req;
        ChoiceCallback callback;
        PromptLogitsSink prompt_logits;        // scoring: raw rows from logits_from on
        std::vector<Choice> choices;
        int64_t max_new = 0;
        int live = 0;
        std::vector<TokenLogprobs> prompt_lp;  // prompt_logprobs: filled as prompt chunks run
        int64_t prompt_lp_filled = 1;          // entries [0, prompt_lp_filled) are final
        int64_t prompt_rows_seen = 0;          // scoring: positions [logits_from, this) delivered
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
    // Queues a request; logits_from >= 0 asks for prompt logits rows from that position on.
    uint64_t add(GenerationRequest request, ChoiceCallback callback, int64_t logits_from, PromptLogitsSink sink);
    std::vector<std::pair<uint64_t, int>> sample_targets(const ScheduleOutput& out) const;
    bool device_sampling(const ScheduleOutput& out) const;
    std::vector<SampleParams> sample_params(const std::vector<std::pair<uint64_t, int>>& targets) const;
    void finish_step(const ScheduleOutput& out, std::vector<std::pair<uint64_t, int>> targets,
                     std::vector<int32_t> sampled, std::vector<std::vector<TokenLogprobs>> logprobs,
                     bool early_finish, Ready& ready);
    void deliver_ready(Ready& ready);
    // Runs the step and draws its samples (targets: sample_targets(out)): on the device where the whole
    // step allows it, else on the host from the logits; logprobs has one entry per sample when asked.
    void sample_entries(const ScheduleOutput& out, const std::vector<std::pair<uint64_t, int>>& targets,
                        std::vector<int32_t>& sampled, std::vector<std::vector<TokenLogprobs>>& logprobs);
    // The request of a sample target (request id 0: its sequence was gone); null when it has ended.
    Request* live_request(uint64_t id);
    const Request* live_request(uint64_t id) const { return const_cast<Engine*>(this)->live_request(id); }
    // A token that ends its choice: EOS (unless ignore_eos) or one of the request's stop_token_ids.
    bool is_stop_token(const Request& r, int32_t token) const;
    void deliver(Request& r, int index, int32_t token, const TokenLogprobs* lp);
    void attach_prompt_logprobs(Request& r, int index, ChoiceEvent& ev);
    void record_prompt_rows(const ScheduledSequence& e, const float* logits);
    void end_choice(Request& r, int index, const std::string& reason, ChoiceEvent* event);
    void apply_cow(const std::vector<std::pair<int32_t, int32_t>>& copies);

    EngineOptions options_;
    std::unique_ptr<Backend> backend_;
    OpenedModel model_;
    std::unique_ptr<ModelRunner> runner_;
    std::unique_ptr<PagedKvCache> kv_cache_;
    std::unique_ptr<Scheduler> scheduler_;
    int64_t context_length_ = 0;
    std::unordered_map<uint64_t, Request> requests_;           // by request id (= group id)
    std::unordered_map<uint64_t, std::pair<uint64_t, int>> seq_choice_;  // seq id -> (request, choice)
    std::vector<float> logits_;
    EngineStats counters_;
    std::optional<InFlight> inflight_;
};

}  // namespace swiftkv
