#include "eval/eval_model.h"

#include "core/error.h"

namespace swiftkv {

EvalModel::EvalModel(const EvalModelOptions& options, Backend& backend) : opened_(open_model(options, backend)) {}

EvalModel::~EvalModel() = default;

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
