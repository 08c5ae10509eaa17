// EvalModel — a model opened for evaluation: weights on a backend (LlamaModel) and, when the model has
// one, its tokenizer. eval/ sits beside engine/ (DESIGN.md section 2) and uses the model part directly,
// so it loads what it needs itself; several models (a model and its reference) can share one backend.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "model/llama_model.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

class ModelSource;

struct EvalModelOptions {
    std::string path;                  // GGUF file or Hugging Face directory
    std::optional<DType> weight_dtype; // unset: F32 where the backend holds it, else BF16
    std::optional<bool> swiftkv;       // false: a SwiftKV checkpoint as its teacher; unset: as its config says
    bool load_tokenizer = true;
};

class EvalModel {
public:
    EvalModel(const EvalModelOptions& options, Backend& backend);
    ~EvalModel();

    LlamaModel& model() { return *model_; }
    const ModelConfig& config() const { return model_->config(); }
    const std::string& path() const { return options_.path; }
    const EvalModelOptions& options() const { return options_; }
    DType weight_dtype() const { return weight_dtype_; }
    bool has_tokenizer() const { return tokenizer_ != nullptr; }
    // Throws swiftkv::Error when the model was opened without its tokenizer.
    const BpeTokenizer& tokenizer() const;

private:
    EvalModelOptions options_;
    DType weight_dtype_ = DType::F32;
    std::unique_ptr<LlamaModel> model_;
    std::unique_ptr<BpeTokenizer> tokenizer_;
};

// The tokenizer of a model on disk: GGUF metadata, or tokenizer.json (+ tokenizer_config.json).
BpeTokenizer load_source_tokenizer(const ModelSource& source);

// Throws swiftkv::Error, naming both models and the first difference, unless the two models have the
// same vocabulary size and tokenizers with the same tokens (what comparing their distributions needs).
void check_same_vocabulary(const EvalModel& model, const EvalModel& reference);

}  // namespace swiftkv
