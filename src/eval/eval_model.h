// EvalModel — a model opened for evaluation (through open_model, model_loader.h): weights on a backend
// (LlamaModel) and, when the model has one, its tokenizer. eval/ sits beside engine/ (DESIGN.md
// section 2) and uses the model part directly; several models (a model and its reference) can share
// one backend.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "model/llama_model.h"
#include "model/model_loader.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

// path, weight dtype, SwiftKV on/off, whether to load the tokenizer.
using EvalModelOptions = OpenModelOptions;

class EvalModel {
public:
    EvalModel(const EvalModelOptions& options, Backend& backend);
    ~EvalModel();

    LlamaModel& model() { return *opened_.model; }
    const ModelConfig& config() const { return opened_.config(); }
    const std::string& path() const { return opened_.path; }
    DType weight_dtype() const { return opened_.weight_dtype; }
    bool has_tokenizer() const { return opened_.tokenizer != nullptr; }
    // Throws swiftkv::Error when the model was opened without its tokenizer.
    const BpeTokenizer& tokenizer() const { return opened_.require_tokenizer(); }

private:
    OpenedModel opened_;
};

// Throws swiftkv::Error, naming both models and the first difference, unless the two models have the
// same vocabulary size and tokenizers with the same tokens (what comparing their distributions needs).
void check_same_vocabulary(const EvalModel& model, const EvalModel& reference);

}  // namespace swiftkv
