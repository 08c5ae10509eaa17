#include "eval/eval_model.h"

#include "core/error.h"
#include "model/model_source.h"
#include "tokenizer/gguf_vocab.h"

namespace swiftkv {

BpeTokenizer load_source_tokenizer(const ModelSource& source) {
    if (source.is_gguf()) return BpeTokenizer(tokenizer_spec_from_gguf(*source.gguf()));
    SKV_CHECK(!source.tokenizer_json().empty(), "{}: tokenizer.json is missing", source.path());
    const auto& tc = source.tokenizer_config();
    return BpeTokenizer::from_tokenizer_json(source.tokenizer_json(), tc.empty() ? nullptr : &tc);
}

EvalModel::EvalModel(const EvalModelOptions& options, Backend& backend) : options_(options) {
    auto source = ModelSource::open(options_.path);
    LoadOptions lo;
    weight_dtype_ = options_.weight_dtype.value_or(backend.supports_weight_dtype(DType::F32) ? DType::F32 : DType::BF16);
    lo.weight_dtype = weight_dtype_;
    lo.swiftkv = options_.swiftkv;
    lo.graphs = false;  // evaluation runs prefill-shaped steps only: nothing to replay
    model_ = std::make_unique<LlamaModel>(*source, backend, lo);
    if (options_.load_tokenizer) {
        tokenizer_ = std::make_unique<BpeTokenizer>(load_source_tokenizer(*source));
        SKV_CHECK(tokenizer_->vocab_size() <= model_->config().vocab,
                  "{}: the tokenizer has {} tokens but the model's vocabulary is {}", options_.path,
                  tokenizer_->vocab_size(), model_->config().vocab);
    }
}

EvalModel::~EvalModel() = default;

const BpeTokenizer& EvalModel::tokenizer() const {
    SKV_CHECK(tokenizer_ != nullptr, "{}: this model was opened without its tokenizer", options_.path);
    return *tokenizer_;
}

void check_same_vocabulary(const EvalModel& model, const EvalModel& reference) {
    SKV_CHECK(model.config().vocab == reference.config().vocab,
              "the model ({}) has a vocabulary of {} tokens but the reference ({}) has {}: comparing their "
              "distributions needs the same tokenizer",
              model.path(), model.config().vocab, reference.path(), reference.config().vocab);
    if (!model.has_tokenizer() || !reference.has_tokenizer()) return;
    const auto& a = model.tokenizer().spec().tokens;
    const auto& b = reference.tokenizer().spec().tokens;
    SKV_CHECK(a.size() == b.size(),
              "the model's tokenizer ({}) has {} tokens but the reference's ({}) has {}: comparing their "
              "distributions needs the same tokenizer",
              model.path(), a.size(), reference.path(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        SKV_CHECK(a[i] == b[i],
                  "the model ({}) and the reference ({}) have different tokenizers (token {} is '{}' in one and "
                  "'{}' in the other): comparing their distributions needs the same tokenizer",
                  model.path(), reference.path(), i, a[i], b[i]);
    }
    SKV_CHECK(model.tokenizer().spec().add_bos == reference.tokenizer().spec().add_bos &&
                  model.tokenizer().spec().bos_id == reference.tokenizer().spec().bos_id,
              "the model ({}) and the reference ({}) disagree on the BOS token: comparing them needs the same "
              "tokenization",
              model.path(), reference.path());
}

}  // namespace swiftkv
