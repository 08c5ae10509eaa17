// TrainingOps — the training half of a backend's op set (DESIGN.md section 6): the backward passes,
// losses and optimizer step of SwiftKV self-distillation, apart from the inference ops of Backend
// (backend/backend.h) that the training forward shares. A backend that can train returns its
// TrainingOps from Backend::training() (the CPU backend: cpu/cpu_train_ops.cpp; CUDA: the
// cuda_train_*.cu kernels behind cuda_backend.cu); training_ops() throws for one that cannot.
//
// Training works on dense (non-paged) row-major tensors. A training batch packs several sequences one
// after another into T rows; attention is causal within each sequence and never crosses sequences.
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace swiftkv {

// The packed sequences of one training batch: sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]).
// cu_seqlens[0] = 0, non-decreasing, cu_seqlens[num_seqs] = num_rows. Sequences may be empty. Position
// p of a sequence attends to positions 0..p of the same sequence.
struct PackedSequences {
    int64_t num_seqs = 0;
    int64_t num_rows = 0;                 // host copy of cu_seqlens[num_seqs] (the total rows T)
    const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1], device memory
    int64_t max_seq_len = 0;              // host planning hint: >= every sequence length
};

// Hyper-parameters of one AdamW step (decoupled weight decay, bias-corrected moments; the update of
// torch.optim.AdamW):
//   p <- p * (1 - lr * weight_decay)
//   m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps),   t = step (1 for the first)
struct AdamWParams {
    float lr = 2e-4f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.0f;
};

class TrainingOps {
public:
    virtual ~TrainingOps() = default;

    // Dense row-major tensors (never the paged KV cache); packed sequences as described at
    // PackedSequences. Element types:
    //   - void* tensors are activations or gradients of activations, in act_dtype() like the forward ops
    //     (f32 on the CPU, bf16 on CUDA, accumulating in f32);
    //   - float* tensors are always f32: the residual stream and its gradient, norm weights, logits,
    //     log-sum-exps, losses, and every parameter, parameter gradient and optimizer state (the f32
    //     master copies of the trainable weights).
    // Unless said otherwise an op overwrites its outputs; "accumulate" outputs are added to (+=).

    // Backward of rmsnorm (y = x / rms(x) * weight, per row of dim): dx = (dy/dx)^T dy, written or,
    // with accumulate_dx, added (the residual stream's gradient collects several terms). dweight += the
    // weight gradient summed over rows; dweight may be null (a frozen norm).
    virtual void rmsnorm_backward(const float* x, const float* weight, const void* dy, float* dx, float* dweight,
                                  int64_t rows, int64_t dim, float eps, bool accumulate_dx) = 0;

    // Backward of rope with the same arguments: in place on the gradient dx, the transpose (inverse)
    // rotation (dx[i], dx[i+half]) <- (dx[i] cos + dx[i+half] sin, dx[i+half] cos - dx[i] sin).
    virtual void rope_backward(void* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                               const int32_t* positions, const float* inv_freq) = 0;

    // Causal GQA attention over packed sequences, keeping what the backward needs. q: n_heads*head_dim at
    // the start of each row (q_row_stride apart); k, v: n_kv_heads*head_dim at the start of each row
    // (kv_row_stride apart). Query head h reads KV head h / (n_heads / n_kv_heads). Row i of sequence s
    // attends to rows cu_seqlens[s]..i. out [rows, n_heads*head_dim] contiguous; lse [rows, n_heads] is
    // the natural log of sum_j exp(scale * q_i . k_j) per (row, head).
    virtual void attention_forward_train(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                         int64_t kv_row_stride, const PackedSequences& seqs, int64_t n_heads,
                                         int64_t n_kv_heads, int64_t head_dim, float scale, void* out, float* lse) = 0;

    // Backward of attention_forward_train (same layouts; out and lse as it produced them, dout like out).
    // dq has q's layout (q_row_stride), dk and dv have k's and v's (kv_row_stride); dk/dv sum over the
    // query heads sharing a KV head. With accumulate, dq/dk/dv are added to (AcrossKV: the layers of a
    // group share one K/V); only the head slots at the start of each row are touched.
    virtual void attention_backward(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                    int64_t kv_row_stride, const void* out, const float* lse, const void* dout,
                                    const PackedSequences& seqs, int64_t n_heads, int64_t n_kv_heads,
                                    int64_t head_dim, float scale, void* dq, void* dk, void* dv, bool accumulate) = 0;

    // Backward of silu_mul: gate_up [rows, 2*ffn] as silu_mul read it, dy [rows, ffn] -> d_gate_up
    // [rows, 2*ffn] (gate gradients in the first ffn columns, up gradients in the last ffn).
    virtual void silu_mul_backward(const void* gate_up, const void* dy, void* d_gate_up, int64_t rows,
                                   int64_t ffn) = 0;

    // Backward of matmul (y[rows, w.rows] = x[rows, w.cols] W^T) with respect to x: dx[rows, w.cols] =
    // dy[rows, w.rows] W, written or, with accumulate, added. W in any weight dtype matmul accepts.
    virtual void linear_backward_input(const void* dy, int64_t rows, const WeightMatrix& w, void* dx,
                                       bool accumulate) = 0;

    // Backward of matmul with respect to W: dw[out_features, in_features] += dy[rows, out_features]^T
    // x[rows, in_features] (always accumulated: zero dw before the first micro-batch).
    virtual void linear_backward_weight(const void* dy, const void* x, int64_t rows, int64_t out_features,
                                        int64_t in_features, float* dw) = 0;

    // Distillation loss per row r of logits [rows, vocab], temperature T:
    //   row_loss[r] = T^2 * KL(softmax(teacher[r] / T) || softmax(student[r] / T))   (not weighted)
    //   d_student[r] = weight[r] * d(row_loss[r]) / d student[r] = weight[r] * T * (softmax(s/T) - softmax(t/T))
    // i.e. d_student is the gradient of sum_r weight[r] * row_loss[r]: pass weight = mask / num_tokens for
    // the masked mean. row_weights null means all 1; row_loss or d_student_logits may be null (skipped).
    virtual void kl_div_loss(const float* teacher_logits, const float* student_logits, const float* row_weights,
                             int64_t rows, int64_t vocab, float temperature, float* row_loss,
                             float* d_student_logits) = 0;

    // Mean squared error per row of a, b [rows, dim] (f32, e.g. hidden states):
    //   row_loss[r] = sum_j (a[r,j] - b[r,j])^2 / dim   (not weighted)
    //   grad_a[r, j] = weight[r] * 2 (a[r,j] - b[r,j]) / dim   (the gradient of sum_r weight[r] row_loss[r])
    // row_weights null means all 1 (weight 1/rows gives torch's mse_loss mean); outputs may be null.
    virtual void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim,
                          float* row_loss, float* grad_a) = 0;

    // One AdamW step in place on n parameters (see AdamWParams); step counts from 1.
    virtual void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                            const AdamWParams& params, int64_t step) = 0;

    // Sum of squares of x[n] accumulated in double, returned to the host (synchronises); for gradient
    // norm clipping across tensors: norm = sqrt(sum over tensors), then scale() each gradient.
    virtual double grad_sq_norm(const float* x, int64_t n) = 0;

    // x[i] *= s for i < n.
    virtual void scale(float* x, int64_t n, float s) = 0;

    // --- vector ops the trainer needs beside the ones above ------------------------------------------

    // dst[i] = src[i] converted to `dtype` (F32 or BF16, round to nearest even), i < n: the trainer's
    // f32 gradients and master weights into the activation / compute dtype.
    virtual void convert_from_f32(const float* src, void* dst, int64_t n, DType dtype) = 0;

    // y[i] += alpha * x[i] for i < n (f32; a second loss term's gradient joining the residual stream's).
    virtual void add_f32(float* y, const float* x, int64_t n, float alpha) = 0;
};

// backend.training(), or swiftkv::Error naming the backend when it has no training ops.
TrainingOps& training_ops(Backend& backend);

}  // namespace swiftkv
