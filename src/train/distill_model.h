// DistillModel — the SwiftKV self-distillation forward and backward (DESIGN.md section 1, "Distillation"),
// written once against the Backend op interface so that it runs on every backend that implements the
// training ops.
//
// One micro-batch of packed sequences (PackedBatch) goes through:
//   1. the shared front: embedding and layers 0..L-1 (frozen, identical in teacher and student), giving
//      h_L, the residual entering layer L;
//   2. the teacher: layers L..N-1 with their original q/k/v_proj (SwiftKV off), the final norm, and its
//      logits under no gradient (computed in row chunks, never all [T, vocab] at once);
//   3. the student: x = RMSNorm(h_L; norm_swiftkv), K/V of every later group from one fused GEMM
//      (k/v_proj_swiftkv) with RoPE, then layers L..N-1 with q_proj_swiftkv and the frozen o_proj, norms
//      and MLP, attending causally within each packed sequence, the final norm and its logits;
//   4. the loss sum_r w_r [T^2 KL(softmax(t_r/T) || softmax(s_r/T)) + mse_weight * MSE(h_{N-1})_r], with
//      the row weights w_r supplied by the caller (mask / token count for a masked mean); MSE compares the
//      hidden state entering the last layer, student against teacher;
//   5. the backward pass, by hand, through the student only: LM head, final norm, and for each later layer
//      MLP (down, SiLU-mul, gate/up, norm), attention (o_proj, attention, RoPE, q_proj_swiftkv, norm) down
//      to the K/V, which collect the gradients of every layer of their group, then RoPE, the fused K/V
//      projection and norm_swiftkv. Gradients reach activations and the trainable tensors only.
//
// Trainable tensors live in one flat f32 buffer on the backend (the master weights; trainables() gives each
// tensor's offset) with a gradient buffer of the same layout: norm_swiftkv [H], the fused K/V matrix
// [2*G*kv_dim, H] (K rows of groups 0..G-1, then V rows), then q_proj_swiftkv of layers L..N-1 [q_dim, H].
// The GEMMs read compute copies in the frozen weights' dtype (bf16 on CUDA): when that is f32 they are the
// master weights themselves, otherwise params_updated() converts them after every change.
// Frozen weights come from one LlamaModel loaded with SwiftKV off (the teacher), so nothing is loaded twice.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/device_buffer.h"
#include "backend/train_ops.h"
#include "model/llama_model.h"
#include "model/model_config.h"

namespace swiftkv {

class ModelSource;

// One micro-batch on the host: segments packed back to back. Segment s owns rows
// [cu_seqlens[s], cu_seqlens[s+1]); positions count from 0 in each segment; attention never crosses
// segments. row_weights[r] weighs row r's loss term (its logits predict the next token); empty = all 0.
struct PackedBatch {
    std::vector<int32_t> tokens;
    std::vector<int32_t> positions;
    std::vector<int32_t> cu_seqlens{0};
    std::vector<float> row_weights;
    int64_t num_tokens() const { return int64_t(tokens.size()); }
    // Adds one segment (positions 0..n-1) with the given row weights (empty: zeros).
    void add_segment(const int32_t* ids, int64_t n, const float* weights = nullptr);
    // Throws swiftkv::Error when the arrays disagree (sizes, boundaries, positions, weights).
    void validate(int64_t vocab, int64_t max_position) const;
};

struct DistillModelOptions {
    DType weight_dtype = DType::F32;  // frozen weights and trainable compute copies (F32 or BF16)
    int64_t max_tokens = 2048;        // micro-batch capacity (the workspace is sized for it)
    int64_t logits_chunk = 0;         // rows of logits computed at once; 0: about 32M floats per buffer
    bool hidden_mse = false;          // keep the buffers of the hidden-state MSE term
};

struct LossOptions {
    float temperature = 2.0f;
    float hidden_mse_weight = 0.0f;  // weight of the MSE term (needs DistillModelOptions::hidden_mse)
};

// Weighted sums over the micro-batch's rows: kl = sum_r w_r T^2 KL_r, mse = sum_r w_r MSE_r,
// loss = kl + hidden_mse_weight * mse.
struct LossParts {
    double loss = 0, kl = 0, mse = 0;
};

struct TrainableTensor {
    std::string name;             // Hugging Face name, e.g. model.layers.20.self_attn.q_proj_swiftkv.weight
    std::vector<int64_t> shape;
    int64_t offset = 0;           // element offset in the flat parameter / gradient buffers
    int64_t numel() const;
    // For k/v_proj_swiftkv: rows [row_begin, row_begin + shape[0]) of the fused K/V block; -1 otherwise.
    int64_t fused_row = -1;
};

class DistillModel {
public:
    // source: a SwiftKV student that also holds its teacher's original later-layer q/k/v_proj (what
    // `swiftkv convert` writes, or a published llama_swiftkv checkpoint). Throws swiftkv::Error.
    DistillModel(const ModelSource& source, Backend& backend, const DistillModelOptions& options);
    // A student of the given SwiftKV config with random weights generated on the backend (teacher and
    // trainable tensors alike): for speed benchmarks (`swiftkv distill --synthetic`), where values do not matter.
    DistillModel(const ModelConfig& config, Backend& backend, const DistillModelOptions& options, uint64_t seed);
    ~DistillModel();

    const ModelConfig& config() const { return config_; }  // the student's (L, g)
    Backend& backend() const { return backend_; }
    TrainingOps& training() const { return train_; }
    const LlamaModel& teacher() const { return *teacher_; }

    // The trainable tensors in the flat buffers, in storage order (see the top of this file).
    const std::vector<TrainableTensor>& trainables() const { return trainables_; }
    int64_t num_params() const { return num_params_; }
    float* params() { return params_.as<float>(); }  // device, [num_params()] f32 master weights
    float* grads() { return grads_.as<float>(); }    // device, same layout
    void zero_grads();
    // Call after the master weights changed (optimizer step, checkpoint load): refreshes compute copies.
    void params_updated();
    // Host copies of the master weights, and uploading them (which calls params_updated()).
    std::vector<float> download_params() const;
    void upload_params(const std::vector<float>& host);
    // Host copy of the gradients.
    std::vector<float> download_grads() const;

    // Runs one micro-batch. With backward, adds the gradient of the returned loss to grads().
    LossParts forward_backward(const PackedBatch& batch, const LossOptions& loss, bool backward);

    // Every row's logits [T, vocab] on the host (for tests and checks).
    std::vector<float> student_logits(const PackedBatch& batch);
    std::vector<float> teacher_logits(const PackedBatch& batch);

    // FLOPs that forward_backward executes on this batch (2 per multiply-add; GEMMs and attention, the
    // elementwise ops left out): shared front, teacher, student forward and, with backward, its backward.
    double step_flops(const PackedBatch& batch, bool backward) const;

    // Device bytes of the workspace for micro-batches of `tokens` tokens (out-of-memory checks).
    static size_t workspace_bytes(const ModelConfig& config, DType act_dtype, int64_t tokens, int64_t logits_chunk,
                                  bool hidden_mse);
    static int64_t default_logits_chunk(const ModelConfig& config);

private:
    struct Workspace;
    void init(const ModelSource* source, uint64_t seed);
    void reserve(int64_t tokens);
    void upload_batch(const PackedBatch& batch);
    const void* as_act(const float* x, int64_t n, void* scratch);
    void run_front_and_teacher(int64_t T);
    void run_student_forward(int64_t T);
    // Loss over the rows (and d(final normed student) when backward); returns weighted sums.
    LossParts loss_and_head_backward(int64_t T, const LossOptions& loss, bool backward);
    void run_student_backward(int64_t T, bool with_mse);
    void run_frozen_layer(int64_t layer, int64_t T, bool first);
    std::vector<float> logits_of(const PackedBatch& batch, bool student);

    ModelConfig config_;  // student config
    Backend& backend_;
    TrainingOps& train_;  // the backend's training ops (throws at construction where it has none)
    DistillModelOptions options_;
    std::unique_ptr<LlamaModel> teacher_;
    DType act_dtype_ = DType::F32;
    size_t act_bytes_ = 4;
    DType compute_dtype_ = DType::F32;
    int64_t groups_ = 0;       // later K/V groups (N - L) / g
    int64_t later_ = 0;        // later layers N - L
    int64_t logits_chunk_ = 0;

    std::vector<TrainableTensor> trainables_;
    int64_t num_params_ = 0;
    int64_t off_norm_ = 0, off_kv_ = 0;
    std::vector<int64_t> off_q_;  // per later layer
    DeviceBuffer params_, grads_, compute_;  // compute_: only when compute dtype != f32

    std::unique_ptr<Workspace> ws_;
    int64_t capacity_ = 0;
    // The current micro-batch (host copies used for planning).
    PackedSequences seqs_;
    std::vector<float> host_weights_;
    bool have_weights_ = false;
};

}  // namespace swiftkv
