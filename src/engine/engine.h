// Engine — the user-facing API: loads a model (GGUF file or Hugging Face directory) with its tokenizer
// and chat template onto a backend, owns the paged KV cache, and generates. Every model step goes
// through the one batched forward interface (LlamaModel::forward with a ForwardBatch).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "engine/sampler.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "model/model_loader.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace swiftkv {

struct EngineOptions {
    std::string model_path;
    std::string device = "cpu";       // "cpu", "cuda" or "cuda:N"
    // Weight storage on the backend; unset: F32 on the CPU, BF16 on CUDA (the only dtype it holds).
    std::optional<DType> weight_dtype;
    int threads = 0;                  // 0: all cores
    int64_t context_length = 0;       // 0: the model's max_position_embeddings, capped at 8192
    // KV cache size in tokens. 0: context_length on the CPU; on CUDA, gpu_memory_fraction of the GPU
    // memory left free after the weights and the workspace.
    int64_t kv_cache_tokens = 0;
    double gpu_memory_fraction = 0.9;
    bool graphs = true;               // record and replay decode steps as graphs (CUDA)
    // false: skip the tokenizer and chat template (token-level use only, e.g. a checkpoint that ships
    // without tokenizer files); generate() and tokenizer() then throw.
    bool load_tokenizer = true;
    int64_t block_size = 16;
    int64_t prefill_chunk = 2048;     // prompt tokens per forward step
    // false: run a SwiftKV checkpoint as its teacher; true: as SwiftKV; unset: as its config.json says
    // (the `swiftkv` key; absent means SwiftKV).
    std::optional<bool> swiftkv;
    // Full-student path: every token runs every layer (logits computed for all rows, the needed ones
    // kept). Same results as the default survivor path for SwiftKV models, at full prefill cost; for
    // evaluation and checking.
    bool full_student = false;
    // Benchmarks: random weights of a named shape (ModelConfig::synthetic, e.g. "llama-3.1-8b")
    // generated on the device instead of model_path, with a stand-in tokenizer (ids print as " w<id>")
    // and no chat template. synthetic_swiftkv: the SwiftKV cut ("50%", "50%:2"); empty: the base model.
    // Continuous batching (BatchEngine) only.
    std::string synthetic;
    std::string synthetic_swiftkv;

    // What open_model needs of these.
    OpenModelOptions open_options() const;
};

struct GenerationRequest {
    std::vector<int32_t> prompt;
    SamplingParams sampling;
    int64_t max_tokens = 128;
    std::vector<std::string> stop;           // stop strings (not included in the output)
    std::vector<int32_t> stop_token_ids;     // extra stop tokens
    bool ignore_eos = false;
    // Logprobs: -1 off; k >= 0: on_token (below) receives each generated token's logprob and the k
    // most likely alternatives, from the raw logits (log-softmax before penalties and temperature).
    // Off keeps decode on the fast path (device sampling, no extra work).
    int32_t logprobs = -1;
};

// One generated token with its logprobs (GenerationRequest::logprobs >= 0).
struct TokenLogprobs {
    int32_t token = -1;
    float logprob = 0.0f;
    std::vector<std::pair<int32_t, float>> top;  // most likely first
};

struct GenerationResult {
    std::vector<int32_t> tokens;    // generated tokens (a stop token is included, a stop string's are not cut)
    std::string text;               // generated text, cut before a stop string
    std::string finish_reason;      // "stop" or "length"
    int64_t prompt_tokens = 0;
    double prefill_seconds = 0;     // time to first token
    double decode_seconds = 0;      // time for the remaining tokens
};

class Engine {
public:
    explicit Engine(const EngineOptions& options);
    ~Engine();

    const ModelConfig& config() const { return model_.config(); }
    const BpeTokenizer& tokenizer() const { return model_.require_tokenizer(); }
    bool has_chat_template() const { return model_.chat.tmpl != nullptr; }
    const EngineOptions& options() const { return options_; }
    int64_t context_length() const { return context_length_; }
    LlamaModel& model() { return *model_.model; }
    const PagedKvCache& kv_cache() const { return *kv_cache_; }
    const nlohmann::json& generation_defaults() const { return model_.generation_defaults; }

    // Renders the chat template: messages is a JSON array of {"role", "content"}.
    std::string apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt = true) const;

    // Generates; on_text receives text as it becomes final (never a broken UTF-8 sequence, never part
    // of a stop string). Return false from on_text to stop early.
    // on_token (with request.logprobs >= 0) is called for each generated token, a stop token included,
    // before the text it completes is passed to on_text.
    GenerationResult generate(const GenerationRequest& request,
                              const std::function<bool(std::string_view)>& on_text = {},
                              const std::function<void(const TokenLogprobs&)>& on_token = {});

    // Logits at the chosen positions of a prompt (prompt prefix only; positions sorted, or all when
    // empty), computed through the batched forward. For evaluation and tests.
    std::vector<float> prompt_logits(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions);

    // Runs several prompts as one flattened batch and returns each one's last-position logits.
    std::vector<std::vector<float>> batch_last_logits(const std::vector<std::vector<int32_t>>& prompts);

private:
    EngineOptions options_;
    std::unique_ptr<Backend> backend_;
    OpenedModel model_;
    std::unique_ptr<PagedKvCache> kv_cache_;
    int64_t context_length_ = 0;
};

}  // namespace swiftkv
