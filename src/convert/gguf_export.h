// Internal to convert/: writes a planned SwiftKV conversion as one GGUF file, in the layout
// docs/swiftkv-gguf.md describes (llama.cpp's names and Q/K row order, llama metadata under the
// "llama_swiftkv." prefix, tokenizer.* metadata), and the tokenizer metadata of a TokenizerSpec.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "convert/convert_plan.h"
#include "convert/swiftkv_convert.h"
#include "io/gguf_writer.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv::convert_detail {

// Writes options.out_dir as a GGUF file holding `plan` (plus rope_freqs for Llama-3 RoPE scaling).
// config is the student's (num_kv_layers == n_layers writes a plain "llama" model). Fills
// result's out_dir, config, weight_files, tensors and tensor_bytes. Throws swiftkv::Error; on
// error no file is left behind.
void write_gguf(const ModelSource& source, const ModelConfig& config, const std::vector<PlannedTensor>& plan,
                DType out_dtype, const ConvertOptions& options, ConvertResult& result);

// The tokenizer.* metadata llama.cpp's converter writes for a byte-level BPE tokenizer:
// tokenizer.ggml.{model "gpt2", pre, tokens, token_type, merges, bos/eos/padding/unknown_token_id,
// add_bos_token} and tokenizer.chat_template. Throws when the spec has features GGUF cannot say
// (lstrip/rstrip added tokens, ignore_merges other than the pre-tokenizer's default).
void add_tokenizer_metadata(GgufWriter& writer, const TokenizerSpec& spec,
                            const std::optional<std::string>& chat_template);

}  // namespace swiftkv::convert_detail
