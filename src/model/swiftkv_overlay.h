// SwiftKV overlay — a distilled student shipped as only its SwiftKV tensors: norm_swiftkv, every later
// layer's q_proj_swiftkv and every group leader's k/v_proj_swiftkv, in one small safetensors file, plus a
// JSON descriptor that names the base model (GGUF file or Hugging Face directory) they apply to. The
// base supplies everything else (all other weights, tokenizer, chat template), so a repository can commit
// a few MB instead of the whole student.
//
// Loading: any command that takes a model path accepts the descriptor (`-m swiftkv_tensors.json`):
// ModelSource::open sees a .json file, opens the base, checks that it is the base the overlay was made
// for (shape keys and a fingerprint of its norm weights), adds the overlay's tensors (replacing tensors of
// the same name) and sets the SwiftKV config keys. Written by `swiftkv distill`.
//
// Descriptor, e.g. swiftkv_tensors.json:
//   {"format": "swiftkv-overlay", "version": 1,
//    "base": "../models/SmolLM2-135M-Instruct.Q4_1.gguf",  // absolute, or relative to this file's folder
//    "tensors": "swiftkv_tensors.safetensors",             // the same
//    "num_key_value_layers": 15, "key_value_group_size": 1,
//    "base_config": {"num_hidden_layers": 30, "hidden_size": 576, ...},
//    "base_fingerprint": "9f0c..."}
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "model/model_config.h"

namespace swiftkv {

class ModelSource;

inline constexpr const char* kSwiftKVOverlayFormat = "swiftkv-overlay";

// True when `path` is a regular file holding a JSON object with "format": "swiftkv-overlay".
bool is_swiftkv_overlay_descriptor(const std::string& path);

// The shape keys an overlay records about its base (and checks on load).
nlohmann::json overlay_base_config(const ModelConfig& config);

// A fingerprint of a model's frozen weights that survives f32/bf16 conversion and GGUF <-> Hugging Face
// conversion: FNV-1a over model.norm.weight and every layer's input/post-attention norm, each value
// rounded to bf16. Two different fine-tunes of one architecture differ here.
std::string model_fingerprint(const ModelSource& source);

// The SwiftKV tensors of a config: names in the order an overlay stores them, with their shapes.
struct OverlayTensorSpec {
    std::string name;
    std::vector<int64_t> shape;
};
std::vector<OverlayTensorSpec> swiftkv_tensor_specs(const ModelConfig& config);

// One tensor to write: data is row-major f32 on the host; it is stored as `dtype` (F32 or BF16).
struct OverlayTensor {
    std::string name;
    std::vector<int64_t> shape;
    const float* data = nullptr;
};

// Writes <dir>/<stem>.safetensors and <dir>/<stem>.json (each via a temporary file and a rename). `base_path`
// is recorded as given when absolute, else relative to `dir` when they share a folder below the root (else
// absolute); `config` is the student's (its L and g
// are recorded); `base` is the base model (its shape keys and fingerprint are recorded). Every tensor of
// swiftkv_tensor_specs(config) must be present. Returns the descriptor's path.
std::string write_swiftkv_overlay(const std::string& dir, const std::string& stem, const std::string& base_path,
                                  const ModelSource& base, const ModelConfig& config,
                                  const std::vector<OverlayTensor>& tensors, DType dtype);

}  // namespace swiftkv
