// Internal to convert/: the tensors a conversion writes, each the f32 mean of one or more source
// tensors (one source: a copy), and the reader that turns them into f32 row chunks in either
// layout — Hugging Face's, or llama.cpp's with the Q/K rows of each head interleaved for its RoPE.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model_source.h"

namespace swiftkv::convert_detail {

struct PlannedTensor {
    std::string name;                          // canonical (Hugging Face) name
    std::vector<int64_t> shape;                // Hugging Face order
    std::vector<const SourceTensor*> sources;  // averaged in f32
};

// True for the tensors llama.cpp stores with interleaved RoPE rows: q/k_proj and q/k_proj_swiftkv.
bool is_rope_permuted_name(const std::string& canonical_name);

// Calls emit(values, rows) for consecutive chunks of whole rows of t, in f32: the mean of its
// sources in Hugging Face layout, or with llama_rope_order the rows of each head in llama.cpp's
// order (GGUF row 2b + a holds Hugging Face row a * head_dim/2 + b). A 1-D tensor is one row.
void for_each_f32_chunk(const PlannedTensor& t, int64_t head_dim, bool llama_rope_order,
                        const std::function<void(const float* values, int64_t rows)>& emit);

}  // namespace swiftkv::convert_detail
