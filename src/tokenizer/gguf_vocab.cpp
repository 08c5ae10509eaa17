// Tokenizer metadata of a GGUF file -> TokenizerSpec (see gguf_vocab.h).
#include "tokenizer/gguf_vocab.h"

#include "core/error.h"

namespace swiftkv {

TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& gguf) {
    const std::string model = gguf.find_string("tokenizer.ggml.model").value_or("");
    SKV_CHECK(model == "gpt2",
              "model file '{}' has tokenizer type '{}' (tokenizer.ggml.model): only byte-level BPE ('gpt2', used by "
              "GPT-2, SmolLM/SmolLM2, Llama-3, ...) is supported",
              gguf.path(), model.empty() ? "<missing>" : model);

    TokenizerSpec spec;
    const std::string pre = gguf.find_string("tokenizer.ggml.pre").value_or("");
    SKV_CHECK(!pre.empty(),
              "model file '{}' has no tokenizer.ggml.pre: the pre-tokenizer is unknown; reconvert the model with a "
              "recent llama.cpp converter",
              gguf.path());
    try {
        spec.pre = BpeTokenizer::pre_tokenizer_from_name(pre);
    } catch (const Error& e) {
        SKV_THROW("model file '{}': {}", gguf.path(), e.what());
    }

    spec.tokens = gguf.get_string_array("tokenizer.ggml.tokens");
    const size_t n = spec.tokens.size();
    SKV_CHECK(n > 0, "model file '{}' has an empty tokenizer.ggml.tokens", gguf.path());
    if (gguf.has("tokenizer.ggml.token_type")) {
        const std::vector<int64_t> types = gguf.get_int_array("tokenizer.ggml.token_type");
        SKV_CHECK(types.size() == n, "model file '{}' has {} tokens but {} token types (tokenizer.ggml.token_type)",
                  gguf.path(), n, types.size());
        spec.kinds.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            SKV_CHECK(types[i] >= 1 && types[i] <= 6, "model file '{}': token {} has unknown token type {}",
                      gguf.path(), i, types[i]);
            spec.kinds.push_back(static_cast<TokenKind>(types[i]));
        }
    } else {
        spec.kinds.assign(n, TokenKind::Normal);
    }
    SKV_CHECK(gguf.has("tokenizer.ggml.merges"),
              "model file '{}' has no tokenizer.ggml.merges, which a BPE tokenizer needs", gguf.path());
    spec.merges = gguf.get_string_array("tokenizer.ggml.merges");

    auto id_of = [&](const char* key) -> int32_t {
        const std::optional<int64_t> v = gguf.find_int(key);
        if (!v) return -1;
        SKV_CHECK(*v >= 0 && static_cast<uint64_t>(*v) < n, "model file '{}': {} = {} is outside the vocabulary of {} tokens",
                  gguf.path(), key, *v, n);
        return static_cast<int32_t>(*v);
    };
    spec.bos_id = id_of("tokenizer.ggml.bos_token_id");
    spec.eos_id = id_of("tokenizer.ggml.eos_token_id");
    spec.pad_id = id_of("tokenizer.ggml.padding_token_id");
    spec.unk_id = id_of("tokenizer.ggml.unknown_token_id");

    // llama.cpp's defaults: the Llama-3 family adds BOS and takes whole-vocabulary pieces unmerged.
    spec.ignore_merges = spec.pre == PreTokenizer::Llama3;
    spec.add_bos = spec.pre == PreTokenizer::Llama3;
    if (gguf.has("tokenizer.ggml.add_bos_token")) spec.add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token");
    if (spec.bos_id < 0) spec.add_bos = false;

    spec.eos_ids = end_of_generation_ids(spec);
    return spec;
}

std::optional<std::string> chat_template_from_gguf(const GgufFile& gguf) {
    return gguf.find_string("tokenizer.chat_template");
}

}  // namespace swiftkv
