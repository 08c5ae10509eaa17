// convert_to_swiftkv — makes a SwiftKV student from a base Llama model (GGUF file or Hugging Face
// directory): a Hugging Face directory in the published llama_swiftkv format (DESIGN.md sections 1
// and 5) holding every teacher tensor plus the SwiftKV ones at their distillation init:
//   q_proj_swiftkv[j] <- q_proj[j] for j >= L;
//   k/v_proj_swiftkv[leader] <- the f32 mean of the group's k/v_proj (groups of g from L);
//   norm_swiftkv <- layers[L].input_layernorm.
// So the same directory runs as the teacher (SwiftKV off) and as the student. Weights are written
// in Hugging Face layout (GGUF Q/K rows un-permuted, quantized types dequantized), the tokenizer
// files are copied (Hugging Face source) or generated from the GGUF vocabulary.
//
// The output appears atomically: everything is written into a staging directory next to the target
// and renamed into place at the end; on any error nothing is left behind.
//
// With ConvertFormat::Gguf the same student is written as one GGUF file instead (architecture
// "llama_swiftkv", llama.cpp tensor names and Q/K row order, tokenizer metadata included): the
// format is described in docs/swiftkv-gguf.md. The file is written under a temporary name next
// to the target and renamed into place.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "model/model_config.h"

namespace swiftkv {

enum class ConvertDType {
    Auto,  // bf16 when every matrix of the base is bf16, else f32 (quantized GGUF -> f32, exact)
    F32,
    BF16,
    Q8_0,  // GGUF output only: matrices Q8_0 (rows not a multiple of 32 stay F32), vectors F32
};

enum class ConvertFormat {
    HuggingFace,  // a llama_swiftkv Hugging Face directory (the default)
    Gguf,         // one GGUF file (docs/swiftkv-gguf.md)
};

struct ConvertProgress {
    int64_t tensors_done = 0;
    int64_t tensors_total = 0;
    uint64_t bytes_done = 0;
    uint64_t bytes_total = 0;
    std::string_view tensor;  // the tensor just written
};

struct ConvertOptions {
    std::string model_path;      // base model: .gguf file or Hugging Face directory
    std::string num_kv_layers;  // the cut L: a layer index ("15") or a share of the layers ("50%")
    int64_t group_size = 1;      // AcrossKV group g; must divide N - L
    std::string out_dir;         // the output directory, or the .gguf file for ConvertFormat::Gguf
    ConvertFormat format = ConvertFormat::HuggingFace;
    ConvertDType dtype = ConvertDType::Auto;
    bool force = false;          // replace an existing output directory (or GGUF file)
    // An HF source without tokenizer.json (a weights-only checkpoint) is refused unless this is set;
    // the student is then weights-only too (token-level use: score, bench).
    bool allow_no_tokenizer = false;
    // Weights above this many bytes are split into model-0000i-of-0000n.safetensors shards with a
    // model.safetensors.index.json, as Hugging Face does.
    uint64_t max_shard_bytes = 4'000'000'000ull;
    std::function<void(const ConvertProgress&)> on_progress;  // after each tensor; may throw to abort
};

struct ConvertResult {
    std::string out_dir;                     // absolute path of the written directory (or GGUF file)
    ModelConfig config;                      // the written config (llama_swiftkv)
    DType dtype = DType::F32;                // dtype of the written matrices (GGUF: vectors are F32)
    int64_t tensors = 0;
    uint64_t tensor_bytes = 0;
    std::vector<std::string> weight_files;   // safetensors file names inside out_dir (GGUF: the file name)
    std::vector<std::string> other_files;    // config, tokenizer and generation files written
    std::vector<std::string> skipped_tensors;  // source tensors that are not part of a Llama model
};

// Converts. Throws swiftkv::Error with a message that says what to do.
ConvertResult convert_to_swiftkv(const ConvertOptions& options);

// "15" -> 15; "50%" -> round(0.50 * n_layers) (to nearest, halves away from zero); "37.5%" works.
// Throws on anything else. Range checks are validate_swiftkv_cut's.
int64_t parse_swiftkv_layers(std::string_view spec, int64_t n_layers);

// Checks 0 < L <= N (L == N is the base model), g >= 1 and (N - L) % g == 0; the error for a
// group size that does not divide names the valid cuts nearest to L.
void validate_swiftkv_cut(int64_t num_kv_layers, int64_t group_size, int64_t n_layers);

// llama.cpp stores Llama-3 rope scaling as a rope_freqs tensor of per-frequency divisors; Hugging
// Face needs rope_scaling parameters. Returns the llama3 scaling that reproduces the divisors on
// `config` (its own rope_scaling ignored) within 1e-4 relative, RopeScaling{} (none) when every
// divisor is 1, or std::nullopt when no llama3 scaling fits.
std::optional<RopeScaling> llama3_rope_scaling_from_divisors(const ModelConfig& config,
                                                             const std::vector<float>& divisors);

}  // namespace swiftkv
