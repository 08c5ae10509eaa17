// Hugging Face tokenizer.json / tokenizer_config.json documents built from a TokenizerSpec: what
// `swiftkv convert` writes next to weights taken from a GGUF file, so that Hugging Face `tokenizers`
// and BpeTokenizer::from_tokenizer_json tokenize exactly as the GGUF vocabulary did. The layout
// mirrors scripts/make_tokenizer_refs.py (its tokenizer_json()), whose output Hugging Face checks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

// A byte-level BPE tokenizer.json: model BPE (vocab, merges by rank, byte_fallback false, no
// unk_token — bytes without a token are dropped, as BpeTokenizer does — and ignore_merges as the
// spec says), the pre-tokenizer of spec.pre, ByteLevel decoder, Unknown/Control tokens as special
// added tokens and UserDefined ones as non-special added tokens (lstrip/rstrip from added_strip).
// With spec.add_bos a TemplateProcessing post-processor prepends BOS, as Llama-3's tokenizer.json
// does. Throws swiftkv::Error when the spec cannot be expressed (empty vocabulary, bad ids).
nlohmann::json tokenizer_json_from_spec(const TokenizerSpec& spec);

// The matching tokenizer_config.json: bos/eos/pad/unk token texts, add_bos_token, add_eos_token
// false, added_tokens_decoder, chat_template when given, model_max_length, tokenizer_class
// PreTrainedTokenizerFast.
nlohmann::json tokenizer_config_from_spec(const TokenizerSpec& spec, const std::optional<std::string>& chat_template,
                                          int64_t model_max_length);

}  // namespace swiftkv
