// LlamaModel — the Llama forward pass, SwiftKV included, written once against the Backend op
// interface (DESIGN.md sections 1 and 3). Weights are loaded from a ModelSource into backend memory,
// with Q/K/V and gate/up fused into single matrices so each layer runs four GEMMs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/device_buffer.h"
#include "model/forward_batch.h"
#include "model/model_config.h"

namespace swiftkv {

class ModelSource;

struct LoadOptions {
    DType weight_dtype = DType::F32;  // storage dtype of matrices on the backend (F32 or BF16)
    // For a SwiftKV checkpoint: false runs it as its teacher (the original model, SwiftKV off).
    bool swiftkv = true;
};

class LlamaModel {
public:
    LlamaModel(const ModelSource& source, Backend& backend, const LoadOptions& options);
    ~LlamaModel();

    const ModelConfig& config() const { return config_; }
    Backend& backend() const { return backend_; }
    size_t weight_bytes() const { return weight_bytes_; }

    // Runs one step. Writes K/V of every token to the cache and returns, in logits (host memory,
    // resized to [logits_indices.size(), vocab]), the logits at the requested rows.
    void forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits);

private:
    struct LayerWeights {
        WeightMatrix qkv;      // [q_dim + 2*kv_dim, hidden] for layers < L; [q_dim, hidden] (q only) after
        WeightMatrix o;        // [hidden, q_dim]
        WeightMatrix gate_up;  // [2*ffn, hidden]
        WeightMatrix down;     // [hidden, ffn]
        const float* attn_norm = nullptr;
        const float* ffn_norm = nullptr;
    };

    void load(const ModelSource& source, const LoadOptions& options);
    WeightMatrix upload_matrix(const ModelSource& source, const std::vector<std::string>& names,
                               const std::vector<std::vector<int64_t>>& row_ranges, int64_t cols, DType dtype);
    const float* upload_vector(const ModelSource& source, const std::string& name, int64_t n);
    void ensure_scratch(int64_t tokens, int64_t survivors);
    void run_layer(int64_t layer, int64_t rows, bool swiftkv_layer, const AttentionBatch& attn_batch,
                   const int32_t* positions, const KvCacheView& kv, float* residual, float* delta, bool first);

    ModelConfig config_;
    Backend& backend_;
    std::vector<DeviceBuffer> storage_;
    size_t weight_bytes_ = 0;

    WeightMatrix embedding_;
    WeightMatrix lm_head_;
    const float* final_norm_ = nullptr;
    std::vector<LayerWeights> layers_;
    // SwiftKV: norm_swiftkv and one fused matrix producing K then V for every later group:
    // rows [groups*kv_dim of K | groups*kv_dim of V].
    const float* norm_swiftkv_ = nullptr;
    WeightMatrix kv_swiftkv_;
    DeviceBuffer inv_freq_;

    // Scratch, grown on demand.
    int64_t scratch_tokens_ = 0;
    int64_t scratch_survivors_ = 0;
    DeviceBuffer residual_, delta_, normed_, qkv_, attn_out_, gate_up_, act_, kv_swiftkv_out_;
    DeviceBuffer res_surv_, delta_surv_, logits_dev_;
    DeviceBuffer tokens_dev_, positions_dev_, slots_dev_, query_start_dev_, seq_lens_dev_, block_tables_dev_,
        logits_idx_dev_, surv_query_start_dev_, surv_positions_dev_;
};

}  // namespace swiftkv
