// Tokenizer metadata of a GGUF file (tokenizer.ggml.*, as llama.cpp's converter writes it) turned
// into a TokenizerSpec, and the chat template it carries.
#pragma once

#include <optional>
#include <string>

#include "io/gguf_reader.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

// Reads tokenizer.ggml.{model, pre, tokens, token_type, merges, bos/eos/padding/unknown_token_id,
// add_bos_token}. Only byte-level BPE (tokenizer.ggml.model "gpt2") is supported; anything else
// throws a swiftkv::Error naming the model type found. eos_ids = eos plus the end-of-turn tokens
// present (see end_of_generation_ids).
TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& gguf);

// tokenizer.chat_template, if the file has one.
std::optional<std::string> chat_template_from_gguf(const GgufFile& gguf);

}  // namespace swiftkv
