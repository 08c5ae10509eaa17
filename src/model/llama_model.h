// LlamaModel — the Llama forward pass, SwiftKV included, written once against the Backend op
// interface (DESIGN.md sections 1 and 3). Weights are loaded from a ModelSource into backend memory,
// with Q/K/V and gate/up fused into single matrices so each layer runs four GEMMs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/device_buffer.h"
#include "model/forward_batch.h"
#include "model/model_config.h"

namespace swiftkv {

class ModelSource;

struct LoadOptions {
    DType weight_dtype = DType::F32;  // storage dtype of matrices on the backend (F32 or BF16)
    // For a SwiftKV checkpoint: false runs it as its teacher (the original model, SwiftKV off), true
    // as the SwiftKV student; unset follows the checkpoint's config (ModelConfig::swiftkv_enabled).
    std::optional<bool> swiftkv;
    // Record decode steps (and the SwiftKV survivors' later layers) as graphs and replay them, on
    // backends that support graphs (CUDA). Off: every op runs eagerly.
    bool graphs = true;
};

class LlamaModel {
public:
    LlamaModel(const ModelSource& source, Backend& backend, const LoadOptions& options);
    // A model of the given shape with random weights generated on the backend (uniform, std 0.02;
    // norms 1): for benchmarks, where only the speed matters.
    LlamaModel(const ModelConfig& config, Backend& backend, const LoadOptions& options, uint64_t seed);
    ~LlamaModel();

    // Sizes the workspace once for steps of up to max_tokens tokens from up to max_seqs sequences
    // whose contexts fit max_blocks_per_seq KV blocks. Steps beyond these bounds still run (the
    // workspace grows, and recorded graphs are dropped), but serving sizes it up front.
    void reserve(int64_t max_tokens, int64_t max_seqs, int64_t max_blocks_per_seq);

    const ModelConfig& config() const { return config_; }
    Backend& backend() const { return backend_; }
    size_t weight_bytes() const { return weight_bytes_; }

    // Runs one step. Writes K/V of every token to the cache and returns, in logits (host memory,
    // resized to [logits_indices.size(), vocab]), the logits at the requested rows.
    void forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits);
    // Like forward, but samples on the backend and returns one token per logits row (params: one per
    // logits row, host memory); only the token ids cross to the host.
    void forward_sample(const ForwardBatch& batch, const KvCacheView& kv, const std::vector<SampleParams>& params,
                        std::vector<int32_t>& tokens);
    // forward_sample in two halves, so the host can work while the device runs the step: launch queues
    // the step and its sampling (on CUDA nothing waits for the device); wait blocks until the step is
    // done and returns its tokens. One step at a time: launch, then wait, before the next launch.
    void forward_sample_launch(const ForwardBatch& batch, const KvCacheView& kv, const std::vector<SampleParams>& params);
    void forward_sample_wait(std::vector<int32_t>& tokens);

    // Graph statistics (for tests and benchmarks): recorded graphs and replays so far.
    int64_t graphs_recorded() const { return graphs_recorded_; }
    int64_t graph_replays() const { return graph_replays_; }

    // --- read-only views of the loaded device weights, for training ------------------------------
    // train/ (SwiftKV distillation) runs its own forward and backward over packed sequences on these,
    // so the weights are loaded once, by load(), and never duplicated. Nothing here changes inference.
    struct LayerWeights {
        WeightMatrix qkv;      // [q_dim + 2*kv_dim, hidden] for layers < L; [q_dim, hidden] (q only) after
        WeightMatrix o;        // [hidden, q_dim]
        WeightMatrix gate_up;  // [2*ffn, hidden]
        WeightMatrix down;     // [hidden, ffn]
        const float* attn_norm = nullptr;
        const float* ffn_norm = nullptr;
    };
    // Layer l's weights. For the teacher (SwiftKV off) every layer's qkv is its original fused
    // [q | k | v]; for a SwiftKV student, layers >= L hold q_proj_swiftkv only.
    const LayerWeights& layer_weights(int64_t layer) const { return layers_.at(size_t(layer)); }
    const WeightMatrix& embedding_weights() const { return embedding_; }
    const WeightMatrix& lm_head_weights() const { return lm_head_; }  // the embedding when tied
    const float* final_norm_weights() const { return final_norm_; }
    // RoPE inverse frequencies [head_dim/2] on the device, rope scaling and GGUF rope_freqs applied.
    const float* rope_inv_freq() const { return inv_freq_.as<float>(); }
private:

    enum class GraphMode { kNone, kWholeStep, kSurvivors };
    struct StepShape {
        int64_t T = 0, S = 0, K = 0;   // tokens, sequences, logits rows (after padding when graphed)
        int64_t real_K = 0;
        int64_t blocks_per_seq = 0;
        GraphMode mode = GraphMode::kNone;
        AttentionBatch all;        // attention over every token of the step
        AttentionBatch survivors;  // attention for the survivors (SwiftKV later layers)
    };

    void check_load_options(const LoadOptions& options);
    void load(const ModelSource& source, const LoadOptions& options);
    void init_random(const LoadOptions& options, uint64_t seed);
    WeightMatrix random_matrix(int64_t rows, int64_t cols, DType dtype, uint64_t seed);
    const float* constant_vector(int64_t n, float value);
    void prepare(const ForwardBatch& batch, const KvCacheView& kv, StepShape& shape);
    void run_step(const StepShape& shape, const KvCacheView& kv);
    void run_front(const StepShape& shape, const KvCacheView& kv);
    void run_back(const StepShape& shape, const KvCacheView& kv);
    void drop_graphs();
    WeightMatrix upload_matrix(const ModelSource& source, const std::vector<std::string>& names,
                               const std::vector<std::vector<int64_t>>& row_ranges, int64_t cols, DType dtype);
    const float* upload_vector(const ModelSource& source, const std::string& name, int64_t n);
    void ensure_scratch(int64_t tokens, int64_t survivors);
    void run_layer(int64_t layer, int64_t rows, bool swiftkv_layer, const AttentionBatch& attn_batch,
                   const int32_t* positions, const KvCacheView& kv, float* residual, void* delta, bool first);

    ModelConfig config_;
    Backend& backend_;
    DType act_dtype_ = DType::F32;  // the backend's activation dtype
    size_t act_bytes_ = 4;
    bool use_graphs_ = false;
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

    // Scratch, sized by reserve() or grown on demand (growing drops recorded graphs).
    int64_t scratch_tokens_ = 0;
    int64_t scratch_survivors_ = 0;
    int64_t reserved_seqs_ = 0;
    int64_t reserved_blocks_ = 0;
    DeviceBuffer residual_, delta_, normed_, qkv_, attn_out_, gate_up_, act_, kv_swiftkv_out_;
    DeviceBuffer res_surv_, delta_surv_, logits_dev_;
    DeviceBuffer tokens_dev_, positions_dev_, slots_dev_, query_start_dev_, seq_lens_dev_, block_tables_dev_,
        logits_idx_dev_, surv_query_start_dev_, surv_positions_dev_, sample_params_dev_, sampled_dev_;
    // Host staging for one step's index arrays.
    std::vector<int32_t> h_tokens_, h_positions_, h_slots_, h_query_start_, h_seq_lens_, h_block_tables_,
        h_logits_idx_, h_surv_query_start_, h_surv_positions_;

    // Recorded graphs by (mode, padded batch, context bound, KV cache base).
    std::map<std::tuple<int, int64_t, int64_t, const void*>, std::unique_ptr<BackendGraph>> graphs_;
    int64_t graphs_recorded_ = 0;
    int64_t graph_replays_ = 0;
    int64_t pending_samples_ = -1;  // forward_sample_launch: tokens to fetch; -1: nothing launched
};

}  // namespace swiftkv
