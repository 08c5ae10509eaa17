// ModelSource — an opened model on disk, GGUF file or Hugging Face directory, seen through one
// interface: its validated config, its metadata documents, and its tensors under canonical
// Hugging Face names (GGUF names are mapped; llama.cpp's Q/K row permutation is flagged so the
// loader can undo it). Nothing is copied: tensors point into memory-mapped files.
// A third form is a SwiftKV overlay descriptor (.json, model/swiftkv_overlay.h): a base model plus a
// small safetensors file of SwiftKV tensors, seen as one SwiftKV model.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "model/model_config.h"

namespace swiftkv {

class GgufFile;
class SafetensorsFile;
class SafetensorsModel;

struct SourceTensor {
    std::string name;       // canonical (Hugging Face) name
    std::string file_name;  // name inside the file (differs for GGUF)
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    bool gguf_rope_permuted = false;  // rows permuted by llama.cpp's converter for interleaved RoPE
    int64_t numel() const;
};

class ModelSource {
public:
    // path: a .gguf file, a directory with config.json and safetensors, or a SwiftKV overlay descriptor
    // (.json with "format": "swiftkv-overlay"; path() is then the descriptor). Throws swiftkv::Error.
    static std::unique_ptr<ModelSource> open(const std::string& path);
    ~ModelSource();

    const std::string& path() const { return path_; }
    // For an overlay: the base model's path (else empty).
    const std::string& overlay_base_path() const { return overlay_base_; }
    bool is_gguf() const { return gguf_ != nullptr; }
    const GgufFile* gguf() const { return gguf_.get(); }
    const ModelConfig& config() const { return config_; }
    ModelConfig& mutable_config() { return config_; }

    // Hugging Face side documents (empty objects when absent or when the source is GGUF).
    const nlohmann::json& tokenizer_json() const { return tokenizer_json_; }
    const nlohmann::json& tokenizer_config() const { return tokenizer_config_; }
    const nlohmann::json& generation_config() const { return generation_config_; }
    const nlohmann::json& hf_config() const { return hf_config_; }

    const SourceTensor* find(const std::string& canonical_name) const;
    // Throws swiftkv::Error naming the tensor and file when missing or when its shape differs.
    const SourceTensor& require(const std::string& canonical_name, const std::vector<int64_t>& shape) const;
    const std::map<std::string, SourceTensor>& tensors() const { return tensors_; }

private:
    ModelSource() = default;
    void open_gguf(const std::string& path);
    void open_hf_dir(const std::string& path);
    void open_overlay(const std::string& descriptor);

    std::string path_;
    std::unique_ptr<GgufFile> gguf_;
    std::unique_ptr<SafetensorsModel> safetensors_;
    std::unique_ptr<SafetensorsFile> overlay_file_;
    std::string overlay_base_;
    ModelConfig config_;
    nlohmann::json tokenizer_json_ = nlohmann::json::object();
    nlohmann::json tokenizer_config_ = nlohmann::json::object();
    nlohmann::json generation_config_ = nlohmann::json::object();
    nlohmann::json hf_config_ = nlohmann::json::object();
    std::map<std::string, SourceTensor> tensors_;
};

// Rows [row_begin, row_end) of a tensor converted to f32 into dst, in Hugging Face layout. GGUF Q/K
// tensors have each head's rows interleaved ((a, b) -> 2b + a) by llama.cpp's converter for its
// interleaved RoPE; Hugging Face row a*half + b is read from GGUF row 2b + a. 1-D tensors are one row.
void read_source_rows_f32(const SourceTensor& t, int64_t row_begin, int64_t row_end, int64_t head_dim, float* dst);

// Canonical name of a GGUF tensor name ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"),
// or std::nullopt for tensors swiftkv does not use.
std::optional<std::string> canonical_name_from_gguf(const std::string& gguf_name);
// The inverse, used when writing GGUF.
std::string gguf_name_from_canonical(const std::string& canonical);

// Reads a JSON file; throws swiftkv::Error naming the file on a parse error.
nlohmann::json read_json_file(const std::string& path);

}  // namespace swiftkv
