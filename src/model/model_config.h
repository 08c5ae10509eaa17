// ModelConfig — the architecture hyper-parameters of a Llama-family model (and its SwiftKV cut),
// read from a Hugging Face config.json or from GGUF metadata, validated before any weight is touched.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"

namespace swiftkv {

class GgufFile;

struct RopeScaling {
    enum class Type { None, Linear, Llama3 } type = Type::None;
    double factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
    int64_t original_max_position = 8192;
};

struct ModelConfig {
    std::string architecture = "llama";  // "llama" or "llama_swiftkv"
    int64_t n_layers = 0;
    int64_t hidden = 0;
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t ffn = 0;
    int64_t vocab = 0;
    int64_t max_position = 2048;
    double rms_eps = 1e-5;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    bool tie_embeddings = false;

    // SwiftKV (DESIGN.md section 1). num_kv_layers is the cut L (config.json's `num_key_value_layers`):
    // layers 0..L-1 compute their own K/V as usual; every later layer takes its K/V from
    // norm_swiftkv(h_L), h_L being the residual entering layer L, and later layers form groups of
    // kv_group_size sharing one KV cache (AcrossKV). num_kv_layers == n_layers is the base model.
    int64_t num_kv_layers = 0;
    int64_t kv_group_size = 1;
    // The checkpoint's own choice of run mode: the `swiftkv` key of a llama_swiftkv config.json
    // (Snowflake's modelling code runs `"swiftkv": false` as the teacher: the original q/k/v of every
    // layer, no prefill skipping). It does not change the structure above, so convert, distill and the
    // loader still see the SwiftKV tensors; LlamaModel applies it unless LoadOptions::swiftkv (the CLI's
    // --swiftkv on|off) says otherwise.
    bool swiftkv_enabled = true;

    bool is_swiftkv() const { return num_kv_layers < n_layers; }
    // Physical KV cache layers: L + (N - L) / g.
    int64_t kv_cache_layers() const { return num_kv_layers + (n_layers - num_kv_layers) / kv_group_size; }
    // The physical cache layer a transformer layer reads.
    int64_t kv_cache_layer_of(int64_t layer) const {
        return layer < num_kv_layers ? layer : num_kv_layers + (layer - num_kv_layers) / kv_group_size;
    }
    int64_t q_dim() const { return n_heads * head_dim; }
    int64_t kv_dim() const { return n_kv_heads * head_dim; }
    // KV cache bytes per token: K and V of every physical cache layer in elements of `dtype`.
    int64_t kv_bytes_per_token(DType dtype = DType::F32) const {
        return 2 * kv_cache_layers() * kv_dim() * dtype_row_bytes(dtype, 1);
    }

    // Matrix and attention FLOPs per prompt token when prefilling a prompt of prompt_len tokens from
    // an empty cache (2 FLOPs per multiply-add; causal attention averaged over the prompt; the LM head
    // and the later layers of the last token excluded). For a SwiftKV model the tokens skip layers
    // >= L and pay only the fused K/V projection of the later groups instead.
    double prefill_flops_per_token(int64_t prompt_len) const;

    // Inverse RoPE frequencies [head_dim/2], with rope scaling applied (as Hugging Face computes them).
    std::vector<float> rope_inv_freq() const;

    // Throws swiftkv::Error naming the key when a value is missing, out of range or inconsistent.
    void validate(const std::string& source) const;

    static ModelConfig from_hf_json(const nlohmann::json& config, const std::string& source);
    // A named shape for random-weight benchmarks: "llama-3.1-8b" or "smollm2-135m", optionally
    // ":LAYERS" (fewer layers). swiftkv_cut: empty (the base model) or "L" / "P%" with optional ":G"
    // (AcrossKV group size), e.g. "50%", "50%:2", "16".
    static ModelConfig synthetic(const std::string& shape, const std::string& swiftkv_cut = {});
    static ModelConfig from_gguf(const GgufFile& gguf);
    nlohmann::json to_hf_json() const;
};

}  // namespace swiftkv
