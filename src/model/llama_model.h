// LlamaModel — the Llama forward pass with SwiftKV (DESIGN.md sections 1 and 3): the weights on a
// backend and the math of one step, written against the Backend op interface. Turning a scheduled
// batch into the step's device inputs (cache slots, padding, graphs, uploads) is the runner's job
// (runner/model_runner.h); the layer itself is decoder_layer_forward (model/decoder_layer.h).
//
// The step, as in the SwiftKV paper (Qiao et al., 2024). N layers; the first L keep their own KV
// cache (ModelConfig::num_kv_layers; L = N is the plain model):
//   front: the embedding and layers 0..L-1 on every row of the step, writing each row's K/V to the
//          cache; then SingleInputKV: the K/V of every later layer (one per AcrossKV group of g
//          layers) from the hidden state entering layer L, for every row, in one GEMM and one cache
//          write.
//   back:  layers L..N-1, the final norm and the LM head on the survivors only.
// The survivors are the rows whose logits the step returns (ForwardBatch::logits_indices): the last
// row of each prompt that finished prefill, every decode row, every row when prompt logprobs are
// asked. Skipping layers >= L for the other rows is exact, not an approximation: a later layer's
// output at a row is read only by the next layer at the same row, because other rows attend to the
// later layers' K/V, and SingleInputKV computes those from layer L's input alone. So a row whose
// logits are not wanted needs nothing past layer L. (In the base model it does: there a later
// layer's K/V at a row depend on the previous layer's output at that row.)
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "backend/backend.h"
#include "backend/device_buffer.h"
#include "model/decoder_layer.h"
#include "model/model_config.h"
#include "model/step_inputs.h"

namespace swiftkv {

class ModelSource;

struct LoadOptions {
    DType weight_dtype = DType::F32;  // storage dtype of matrices on the backend (F32 or BF16)
    // For a SwiftKV checkpoint: false runs it as its teacher (the original model, SwiftKV off), true
    // as the SwiftKV student; unset follows the checkpoint's config (ModelConfig::swiftkv_enabled).
    std::optional<bool> swiftkv;
};

class LlamaModel {
public:
    LlamaModel(const ModelSource& source, Backend& backend, const LoadOptions& options);
    // A model of the given shape with random weights generated on the backend (uniform, std 0.02;
    // norms 1): for benchmarks, where only the speed matters.
    LlamaModel(const ModelConfig& config, Backend& backend, const LoadOptions& options, uint64_t seed);

    const ModelConfig& config() const { return config_; }
    Backend& backend() const { return backend_; }
    size_t weight_bytes() const { return weight_bytes_; }

    // Sizes the activation workspace for steps of up to `tokens` rows and `survivors` survivors.
    // Returns true when it reallocated (device pointers recorded in graphs are then stale).
    bool reserve_workspace(int64_t tokens, int64_t survivors);

    // The two halves of a step (see the top of this file); the workspace must hold the step's rows.
    // The runner records the back half (or both, for decode) as a graph and replays it.
    void forward_front(const StepInputs& in, const KvCacheView& kv);
    void forward_back(const StepInputs& in, const KvCacheView& kv);
    // The last step's logits, [in.num_survivors, vocab] f32 on the device.
    float* logits() const { return logits_dev_.as<float>(); }

    // --- the loaded device weights, read-only: train/ (SwiftKV distillation) runs the same layers
    // over packed sequences on them, so the weights are loaded once, by load(), and never duplicated.
    // Layer l's weights. For the teacher (SwiftKV off) every layer's qkv is its original fused
    // [q | k | v]; for a SwiftKV student, layers >= L hold q_proj_swiftkv only.
    const LayerWeights& layer_weights(int64_t layer) const { return layers_.at(size_t(layer)); }
    const WeightMatrix& embedding_weights() const { return embedding_; }
    const WeightMatrix& lm_head_weights() const { return lm_head_; }  // the embedding when tied
    const float* final_norm_weights() const { return final_norm_; }
    // RoPE inverse frequencies [head_dim/2] on the device, rope scaling and GGUF rope_freqs applied.
    const float* rope_inv_freq() const { return inv_freq_.as<float>(); }

private:
    void check_load_options(const LoadOptions& options);
    void load(const ModelSource& source, const LoadOptions& options);
    void init_random(const LoadOptions& options, uint64_t seed);
    WeightMatrix random_matrix(int64_t rows, int64_t cols, DType dtype, uint64_t seed);
    const float* constant_vector(int64_t n, float value);
    WeightMatrix upload_matrix(const ModelSource& source, const std::vector<std::string>& names,
                               const std::vector<std::vector<int64_t>>& row_ranges, int64_t cols, DType dtype);
    const float* upload_vector(const ModelSource& source, const std::string& name, int64_t n);
    // Layer l over `rows` rows of the stream (residual, delta). A layer l < L keeps its own KV: the
    // rows' K/V go to the cache at in.slots before attention.
    void run_layer(int64_t layer, int64_t rows, const AttentionBatch& attn_batch, const int32_t* positions,
                   const StepInputs& in, const KvCacheView& kv, float* residual, void* delta, bool first);

    ModelConfig config_;
    Backend& backend_;
    DType act_dtype_ = DType::F32;  // the backend's activation dtype
    size_t act_bytes_ = 4;
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

    // Activation workspace, sized by reserve_workspace().
    int64_t ws_tokens_ = 0;
    int64_t ws_survivors_ = 0;
    DeviceBuffer residual_, delta_, normed_, qkv_, attn_out_, gate_up_, act_, kv_swiftkv_out_;
    DeviceBuffer res_surv_, delta_surv_, logits_dev_;
};

}  // namespace swiftkv
