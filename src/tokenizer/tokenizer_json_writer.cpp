// TokenizerSpec -> Hugging Face tokenizer.json / tokenizer_config.json (see tokenizer_json_writer.h).
#include "tokenizer/tokenizer_json_writer.h"

#include "core/error.h"

namespace swiftkv {

namespace {

// The Hugging Face patterns of the pre-tokenizers; they must be byte-identical to the ones
// BpeTokenizer recognises in tokenizer.json (bpe_tokenizer.cpp) and to Llama-3's own tokenizer.json.
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

nlohmann::json byte_level(bool use_regex) {
    return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

nlohmann::json pre_tokenizer_json(PreTokenizer pre) {
    switch (pre) {
        case PreTokenizer::Gpt2:
            return byte_level(true);
        case PreTokenizer::SmolLM:
            return {{"type", "Sequence"},
                    {"pretokenizers",
                     {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
        case PreTokenizer::Llama3:
            return {{"type", "Sequence"},
                    {"pretokenizers",
                     {{{"type", "Split"},
                       {"pattern", {{"Regex", kLlama3Regex}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      byte_level(false)}}};
    }
    SKV_THROW("internal error: unknown pre-tokenizer kind {}", int(pre));
}

TokenKind kind_of(const TokenizerSpec& spec, size_t id) {
    return spec.kinds.empty() ? TokenKind::Normal : spec.kinds[id];
}

// Hugging Face added tokens: Unknown and Control are special, UserDefined are added but not special.
bool is_added(TokenKind k) {
    return k == TokenKind::Unknown || k == TokenKind::Control || k == TokenKind::UserDefined;
}

nlohmann::json added_token_json(const TokenizerSpec& spec, size_t id, bool with_id) {
    const uint8_t strip = spec.added_strip.empty() ? 0 : spec.added_strip[id];
    nlohmann::json a;
    if (with_id) a["id"] = id;
    a["content"] = spec.tokens[id];
    a["single_word"] = false;
    a["lstrip"] = (strip & 1) != 0;
    a["rstrip"] = (strip & 2) != 0;
    a["normalized"] = false;
    a["special"] = kind_of(spec, id) != TokenKind::UserDefined;
    return a;
}

void check_spec(const TokenizerSpec& spec) {
    const size_t n = spec.tokens.size();
    SKV_CHECK(n > 0, "cannot write a tokenizer.json for an empty vocabulary");
    SKV_CHECK(spec.kinds.empty() || spec.kinds.size() == n, "tokenizer spec has {} tokens but {} token kinds", n,
              spec.kinds.size());
    SKV_CHECK(spec.added_strip.empty() || spec.added_strip.size() == n,
              "tokenizer spec has {} tokens but {} added-token strip flags", n, spec.added_strip.size());
    for (int32_t id : {spec.bos_id, spec.eos_id, spec.pad_id, spec.unk_id}) {
        SKV_CHECK(id >= -1 && id < int64_t(n), "tokenizer spec names token id {} outside its {} tokens", id, n);
    }
    SKV_CHECK(!spec.add_bos || spec.bos_id >= 0, "tokenizer spec adds a BOS token but has no bos id");
}

nlohmann::json token_text_or_null(const TokenizerSpec& spec, int32_t id) {
    return id >= 0 ? nlohmann::json(spec.tokens[id]) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json tokenizer_json_from_spec(const TokenizerSpec& spec) {
    check_spec(spec);
    nlohmann::json added = nlohmann::json::array();
    nlohmann::json vocab = nlohmann::json::object();
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
        // A string listed twice keeps its first id (a JSON object holds one id per string); a later
        // added token with the same text still gets its own id through added_tokens.
        if (!vocab.contains(spec.tokens[id])) vocab[spec.tokens[id]] = id;
        if (is_added(kind_of(spec, id))) added.push_back(added_token_json(spec, id, true));
    }
    nlohmann::json merges = nlohmann::json::array();
    for (const std::string& m : spec.merges) merges.push_back(m);

    nlohmann::json post = nullptr;
    if (spec.add_bos) {
        const std::string& bos = spec.tokens[spec.bos_id];
        auto special = [&](int type_id) { return nlohmann::json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
        auto sequence = [&](const char* which, int type_id) {
            return nlohmann::json{{"Sequence", {{"id", which}, {"type_id", type_id}}}};
        };
        post = {{"type", "TemplateProcessing"},
                {"single", {special(0), sequence("A", 0)}},
                {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
                {"special_tokens", {{bos, {{"id", bos}, {"ids", {spec.bos_id}}, {"tokens", {bos}}}}}}};
    }

    nlohmann::json doc;
    doc["version"] = "1.0";
    doc["truncation"] = nullptr;
    doc["padding"] = nullptr;
    doc["added_tokens"] = std::move(added);
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = pre_tokenizer_json(spec.pre);
    doc["post_processor"] = std::move(post);
    doc["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    doc["model"] = {{"type", "BPE"},
                    {"dropout", nullptr},
                    {"unk_token", nullptr},
                    {"continuing_subword_prefix", nullptr},
                    {"end_of_word_suffix", nullptr},
                    {"fuse_unk", false},
                    {"byte_fallback", false},
                    {"ignore_merges", spec.ignore_merges},
                    {"vocab", std::move(vocab)},
                    {"merges", std::move(merges)}};
    return doc;
}

nlohmann::json tokenizer_config_from_spec(const TokenizerSpec& spec, const std::optional<std::string>& chat_template,
                                          int64_t model_max_length) {
    check_spec(spec);
    nlohmann::json decoder = nlohmann::json::object();
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
        if (is_added(kind_of(spec, id))) decoder[std::to_string(id)] = added_token_json(spec, id, false);
    }
    nlohmann::json c;
    c["add_bos_token"] = spec.add_bos;
    c["add_eos_token"] = false;
    c["added_tokens_decoder"] = std::move(decoder);
    c["bos_token"] = token_text_or_null(spec, spec.bos_id);
    c["eos_token"] = token_text_or_null(spec, spec.eos_id);
    c["pad_token"] = token_text_or_null(spec, spec.pad_id);
    c["unk_token"] = token_text_or_null(spec, spec.unk_id);
    if (chat_template) c["chat_template"] = *chat_template;
    c["clean_up_tokenization_spaces"] = false;
    c["model_max_length"] = model_max_length;
    c["tokenizer_class"] = "PreTrainedTokenizerFast";
    return c;
}

}  // namespace swiftkv
