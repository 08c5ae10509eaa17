// Launchers of the CUDA backend's training-op kernels, one .cu file per family: cuda_train_norm_loss.cu
// (rmsnorm backward, losses), cuda_train_attention.cu (attention over packed sequences),
// cuda_train_elementwise.cu (silu_mul backward, optimizer and vector ops) and, next to the forward rope,
// cuda_elementwise.cu (rope_backward). The contracts are TrainingOps in backend/train_ops.h.
// cuda_backend.cu validates arguments on the host and calls these; the GEMM-shaped ops
// (linear_backward_input / _weight) run on cuBLASLt there and have no launcher here. Like cuda_kernels.h:
// launchers only enqueue work on `stream`, never synchronise or allocate (workspaces come from the
// caller), and throw swiftkv::Error when a launch fails.
// Activations (and their gradients) are bf16; residual stream, norm weights, logits, losses, parameters,
// gradients and optimizer state are f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_kernels.h"

namespace swiftkv::cuda {

// --- rmsnorm / rope / silu_mul backward ----------------------------------------------------------------
// Workspace bytes rmsnorm_backward needs for the dweight partial sums (0 when dweight is null).
size_t rmsnorm_backward_workspace_bytes(int64_t rows, int64_t dim, bool has_dweight);
// dx (=, or += with accumulate_dx) and dweight (+=, may be null) per TrainingOps::rmsnorm_backward; x f32,
// dy bf16. workspace: rmsnorm_backward_workspace_bytes(...) bytes.
void rmsnorm_backward(const float* x, const float* weight, const bf16* dy, float* dx, float* dweight, int64_t rows,
                      int64_t dim, float eps, bool accumulate_dx, void* workspace, cudaStream_t stream);
// The transpose rotation of rope(), in place on bf16 rows (same arguments as cuda::rope).
void rope_backward(bf16* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                   const int32_t* positions, const float* inv_freq, cudaStream_t stream);
// d_gate_up [rows, 2*ffn] from gate_up [rows, 2*ffn] and dy [rows, ffn] (all bf16, math in f32).
void silu_mul_backward(const bf16* gate_up, const bf16* dy, bf16* d_gate_up, int64_t rows, int64_t ffn,
                       cudaStream_t stream);

// --- attention over packed sequences ---------------------------------------------------------------------
// One call's operands (TrainingOps::attention_forward_train / attention_backward). Row strides in elements.
// cu_seqlens is device memory; num_seqs, rows and max_seq_len (an upper bound of every sequence's length;
// <= 0 means unknown, then rows is used) are host values that size the grids.
struct TrainAttention {
    const bf16* q = nullptr;
    int64_t q_stride = 0;
    const bf16* k = nullptr;
    const bf16* v = nullptr;
    int64_t kv_stride = 0;
    const int32_t* cu_seqlens = nullptr;
    int64_t num_seqs = 0;
    int64_t rows = 0;
    int64_t max_seq_len = 0;
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    float scale = 1.0f;
    bf16* out = nullptr;     // forward output / backward input, [rows, n_heads*head_dim] contiguous
    float* lse = nullptr;    // [rows, n_heads], natural log
    const bf16* dout = nullptr;  // backward: like out
    bf16* dq = nullptr;      // backward outputs: q's layout, k's, v's
    bf16* dk = nullptr;
    bf16* dv = nullptr;
    bool accumulate = false;
};
// Forward: out and lse. No workspace.
void attention_forward_train(const TrainAttention& a, cudaStream_t stream);
// Backward: dq, dk, dv (written, or added to with a.accumulate). The workspace holds f32 accumulators;
// its size depends on the path taken (tensor cores for head_dim 64/128 with 16-byte aligned rows, a SIMT
// path otherwise).
size_t attention_backward_train_workspace_bytes(const TrainAttention& a);
void attention_backward_train(const TrainAttention& a, void* workspace, cudaStream_t stream);

// --- losses ------------------------------------------------------------------------------------------------
// TrainingOps::kl_div_loss / mse_loss (row_weights, row_loss, grad may be null). One block per row.
void kl_div_loss(const float* teacher, const float* student, const float* row_weights, int64_t rows, int64_t vocab,
                 float temperature, float* row_loss, float* d_student, cudaStream_t stream);
void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim, float* row_loss,
              float* grad_a, cudaStream_t stream);

// --- optimizer and vector ops ----------------------------------------------------------------------------
// One AdamW step; the step-dependent constants come from the host (as the CPU backend computes them):
// step_size = lr / (1 - beta1^t), inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t), decay = 1 - lr * weight_decay.
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double beta1, double beta2,
                double eps, double step_size, double inv_sqrt_bc2, double decay, cudaStream_t stream);
// Sum of squares of x[n] in double into *result (device memory), deterministic (fixed-order two-pass
// reduction). workspace: sq_norm_workspace_bytes(n) bytes.
size_t sq_norm_workspace_bytes(int64_t n);
void sq_norm(const float* x, int64_t n, double* result, void* workspace, cudaStream_t stream);
// x *= s; y += alpha * x (f32).
void scale_f32(float* x, int64_t n, float s, cudaStream_t stream);
void add_f32(float* y, const float* x, int64_t n, float alpha, cudaStream_t stream);

namespace detail {
// Test hook: true forces the SIMT attention path of the training ops (default false; the environment
// variable SWIFTKV_TRAIN_ATTENTION=simple does the same).
void set_train_attention_simple_for_testing(bool simple);
}  // namespace detail

}  // namespace swiftkv::cuda
