// open_model — the one way to open a model: a GGUF file, a Hugging Face directory, a SwiftKV overlay
// descriptor (base GGUF + SwiftKV tensors) or a synthetic shape with random weights. It returns what
// a user of a model needs: the weights on a backend (LlamaModel), the config, the tokenizer and chat
// format, the generation defaults, the context length, and the KV cache size that fits. The engine,
// eval, distill, convert and the CLI all open models here; tokenizer files themselves are read by
// tokenizer/ (BpeTokenizer::from_tokenizer_json, tokenizer_spec_from_gguf), which this file only picks
// between by the source's format.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "model/llama_model.h"
#include "model/model_source.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace swiftkv {

struct OpenModelOptions {
    std::string path;                   // GGUF file, Hugging Face directory or overlay descriptor (.json)
    // Random weights of a named shape (ModelConfig::synthetic, e.g. "llama-3.1-8b") generated on the
    // backend instead of `path`, with a stand-in tokenizer (ids print as " w<id>") and no chat
    // template; synthetic_swiftkv: its SwiftKV cut ("50%", "50%:2"), empty: the base model.
    std::string synthetic;
    std::string synthetic_swiftkv;
    std::optional<DType> weight_dtype;  // unset: F32 where the backend holds it, else BF16
    // false: a SwiftKV checkpoint runs as its teacher; true: as SwiftKV; unset: as its config says.
    std::optional<bool> swiftkv;
    // false: no tokenizer and chat template (token-level use, or a checkpoint without tokenizer files).
    bool load_tokenizer = true;
};

struct OpenedModel {
    std::string path;                       // as opened ("synthetic:SHAPE[@CUT]" for random weights)
    std::unique_ptr<ModelSource> source;    // the files (null for synthetic weights)
    std::unique_ptr<LlamaModel> model;      // weights on the backend
    DType weight_dtype = DType::F32;
    std::unique_ptr<BpeTokenizer> tokenizer;  // null when not loaded
    ChatFormat chat;                          // chat.tmpl null: the model has no chat template
    nlohmann::json generation_defaults = nlohmann::json::object();  // generation_config.json

    const ModelConfig& config() const { return model->config(); }
    // Throws swiftkv::Error when the model was opened without its tokenizer.
    const BpeTokenizer& require_tokenizer() const;
    // The context length to run with: `requested`, or (0) max_position_embeddings capped at 8192;
    // checked against the model.
    int64_t context_length(int64_t requested) const;
};

OpenedModel open_model(const OpenModelOptions& options, Backend& backend);

// The tokenizer of a model on disk: GGUF metadata, or tokenizer.json (+ tokenizer_config.json).
BpeTokenizer load_tokenizer(const ModelSource& source);
// The chat template source text (tokenizer_config.json's, the "default" of named ones, or GGUF's).
std::optional<std::string> load_chat_template(const ModelSource& source);
ChatFormat load_chat_format(const ModelSource& source, const BpeTokenizer& tokenizer);

// Tokens per KV block: 1 to kMaxKvBlockSize. check_kv_block_size throws swiftkv::Error naming the value
// otherwise (the engine, kv_cache_blocks and PagedKvCache all take a block size from options).
constexpr int64_t kMaxKvBlockSize = 1024;
void check_kv_block_size(int64_t block_size);

// How large the paged KV cache is.
struct KvCacheSizing {
    int64_t block_size = 16;
    int64_t kv_cache_tokens = 0;       // > 0: exactly this many tokens (rounded up to blocks)
    double gpu_memory_fraction = 0.9;  // device backends: this share of the memory left free
    int64_t host_tokens = 0;           // host backends, when kv_cache_tokens is 0 (0: the context length)
};
// KV blocks for a model with the given context: what kv_cache_tokens asks for, or on a device backend
// gpu_memory_fraction of the free memory (call after the weights and workspace are allocated), or
// host_tokens on the host. Throws swiftkv::Error when that cannot hold one sequence of
// context_length tokens, with the numbers.
int64_t kv_cache_blocks(const ModelConfig& config, Backend& backend, int64_t context_length, const KvCacheSizing& sizing);

}  // namespace swiftkv
