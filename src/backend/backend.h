// Backend — the op interface every forward pass is written against (DESIGN.md section 6).
// A backend owns device memory and runs ops on it; it knows kernels, never model names. Tensors are
// row-major. Two element types meet in the ops:
//   - "activations" (void* below) are in the backend's act_dtype(): f32 on the CPU, bf16 on CUDA. GEMM
//     inputs and outputs, Q/K/V, attention output, the MLP's intermediate and the KV cache use it.
//   - the residual stream, norm weights, RoPE frequencies and logits are always f32 (float* below).
// Weights may be any dtype the backend supports (CPU: F32, BF16; CUDA: BF16).
// Pointers passed to ops are device pointers of this backend (host pointers for the CPU backend).
// Ops are asynchronous with respect to the host where the backend allows (CUDA: stream-ordered, no
// host synchronisation inside an op); synchronize() waits. Ops that take indices (tokens, slots,
// block tables) assume them valid: callers validate on the host before uploading.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "backend/train_ops.h"
#include "core/dtype.h"

namespace swiftkv {

// A weight matrix [rows = out features, cols = in features], row-major, as stored on the device.
struct WeightMatrix {
    DType dtype = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    const void* data = nullptr;
};

// Shape of one physical paged KV cache layer: K and V each [num_blocks, n_kv_heads, block_size, head_dim],
// elements in the backend's act_dtype().
struct KvLayout {
    int64_t num_blocks = 0;
    int64_t block_size = 16;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t block_elems() const { return n_kv_heads * block_size * head_dim; }
};

// The sequences of one attention call. Query rows are flattened sequence by sequence; sequence s owns
// rows [query_start[s], query_start[s+1]), which are the LAST (query_start[s+1]-query_start[s])
// positions of its context of seq_lens[s] tokens (causal mask aligned bottom-right). A sequence may
// have zero query rows. block_tables is [num_seqs, max_blocks_per_seq]: the cache block holding
// context positions [b*block_size, (b+1)*block_size) of sequence s is block_tables[s*max + b].
struct AttentionBatch {
    int64_t num_seqs = 0;
    int64_t num_rows = 0;                  // query_start[num_seqs] (host copy; the total query rows)
    const int32_t* query_start = nullptr;  // [num_seqs + 1]
    const int32_t* seq_lens = nullptr;     // [num_seqs]
    const int32_t* block_tables = nullptr; // [num_seqs, max_blocks_per_seq]
    int64_t max_blocks_per_seq = 0;
    // Host-side planning hints, upper bounds (kernels size their grids from them; the exact values
    // are read on the device, so a captured graph stays valid while the bounds hold):
    int64_t max_seq_len = 0;    // >= every seq_lens[s]
    int64_t max_query_len = 0;  // >= every query_start[s+1]-query_start[s]; 0 means unknown
};

// Per-row sampling parameters for Backend::sample (device memory).
struct SampleParams {
    float temperature = 0.0f;  // <= 0: greedy (argmax, lowest index on ties)
    int32_t top_k = 0;         // <= 0: off
    float top_p = 1.0f;        // >= 1: off
    float min_p = 0.0f;        // <= 0: off
    uint64_t seed = 0;         // the draw is a pure function of (seed, offset) and the logits
    uint64_t offset = 0;
};

// A recorded sequence of ops that can be replayed with the same pointers and sizes (CUDA graphs).
class BackendGraph {
public:
    virtual ~BackendGraph() = default;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;

    // --- memory -------------------------------------------------------------------------------
    virtual void* alloc(size_t bytes) = 0;  // 64-byte aligned; throws swiftkv::Error when out of memory
    virtual void free(void* ptr) = 0;
    virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
    virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
    virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
    virtual void fill_zero(void* dst, size_t bytes) = 0;
    virtual void synchronize() = 0;
    // Weight dtypes this backend's matmul/embedding accept.
    virtual bool supports_weight_dtype(DType dtype) const = 0;
    // Element type of activations and of the KV cache (see the top of this file).
    virtual DType act_dtype() const = 0;
    // Bytes of device memory free and in total (CPU: available and total RAM).
    virtual void memory_info(size_t* free_bytes, size_t* total_bytes) const = 0;
    // dst[i] = uniform(-scale, scale) as `dtype` (F32 or BF16), a pure function of (seed, i). For random
    // weights in benchmarks, generated where they are used.
    virtual void fill_random(void* dst, int64_t n, DType dtype, uint64_t seed, float scale) = 0;

    // --- graphs -------------------------------------------------------------------------------
    // Backends that can record ops and replay them (CUDA graphs) say so; others run ops eagerly only.
    virtual bool supports_graphs() const { return false; }
    // Runs `ops` in recording mode and returns the recording; nothing executes until replay().
    // While recording, ops must not allocate, upload, download or synchronise.
    virtual std::unique_ptr<BackendGraph> capture(const std::function<void()>& ops);
    virtual void replay(BackendGraph& graph);

    // --- ops ----------------------------------------------------------------------------------
    // out[i, :] = table[tokens[i], :] as f32 (the residual stream). table is [vocab, dim].
    virtual void embedding(const WeightMatrix& table, const int32_t* tokens, int64_t n, float* out) = 0;

    // out[rows, w.rows] = x[rows, w.cols] * W^T, accumulated in f32. x (activations) rows are
    // contiguous (stride w.cols); out_dtype is act_dtype() or F32 (for logits).
    virtual void matmul(const void* x, int64_t rows, const WeightMatrix& w, void* out, DType out_dtype) = 0;

    // out (activations) = x / rms(x) * weight, per row of dim elements; x is the f32 residual stream.
    virtual void rmsnorm(const float* x, const float* weight, void* out, int64_t rows, int64_t dim,
                         float eps) = 0;

    // residual += delta (activations); out (activations) = rmsnorm(residual) * weight.
    // (The pre-norm transformer's join.)
    virtual void add_rmsnorm(float* residual, const void* delta, const float* weight, void* out,
                             int64_t rows, int64_t dim, float eps) = 0;

    // Rotate-half RoPE (Hugging Face layout) in place on n_heads heads of head_dim at the start of each
    // row (rows are row_stride floats apart): for i < head_dim/2, angle = positions[r] * inv_freq[i],
    // (x[i], x[i+half]) <- (x[i] cos - x[i+half] sin, x[i+half] cos + x[i] sin).
    virtual void rope(void* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                      const int32_t* positions, const float* inv_freq) = 0;

    // out[r, j] = silu(gate_up[r, j]) * gate_up[r, ffn + j]; gate_up is [rows, 2*ffn].
    virtual void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t ffn) = 0;

    // Writes rows of K and V ([n_kv_heads*head_dim] at the start of each row, row_stride apart) into
    // the cache at slots[r] = block * block_size + offset. A negative slot skips the row.
    virtual void kv_write(const void* k, const void* v, int64_t rows, int64_t row_stride,
                          const int32_t* slots, const KvLayout& layout, void* k_cache, void* v_cache) = 0;

    // kv_write for `layers` cache layers in one call (SwiftKV's bulk write of every later group):
    // layer g's K and V start at k + g*layer_offset and v + g*layer_offset (elements) in each row and
    // go to the caches at k_cache + g*cache_layer_stride and v_cache + g*cache_layer_stride (elements).
    virtual void kv_write_layers(const void* k, const void* v, int64_t rows, int64_t row_stride,
                                 int64_t layer_offset, int64_t layers, const int32_t* slots,
                                 const KvLayout& layout, void* k_cache, void* v_cache,
                                 int64_t cache_layer_stride) = 0;

    // Causal GQA attention over the paged cache. q rows: n_heads*head_dim at the start of each row,
    // q_row_stride apart; out is [rows, n_heads*head_dim] contiguous. Query head h reads KV head
    // h / (n_heads / n_kv_heads). softmax(q k^T * scale) v, with the bottom-right causal mask.
    virtual void attention(const void* q, int64_t q_row_stride, const AttentionBatch& batch,
                           const KvLayout& layout, const void* k_cache, const void* v_cache,
                           int64_t n_heads, float scale, void* out) = 0;

    // out[i, :] = x[indices[i], :], rows of row_bytes bytes (any element type).
    virtual void gather_rows(const void* x, const int32_t* indices, int64_t n, int64_t row_bytes,
                             void* out) = 0;

    // tokens[r] = a draw from row r of logits [rows, vocab] under params[r] (see SampleParams): the
    // distribution softmax(logits / temperature), restricted to the top_k tokens, then to the smallest
    // set of most likely tokens with probability >= top_p, then to tokens with probability >=
    // min_p * max probability. params and tokens are device memory.
    virtual void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params,
                        int32_t* tokens) = 0;

    // --- training ops (issue 6: SwiftKV self-distillation) ------------------------------------------
    // Backward passes, losses and the optimizer step of the distillation loop; their argument types are
    // in backend/train_ops.h. Dense row-major tensors (never the paged KV cache); packed sequences as
    // described at PackedSequences. Element types:
    //   - void* tensors are activations or gradients of activations, in act_dtype() like the forward ops
    //     (f32 on the CPU, bf16 on CUDA, accumulating in f32);
    //   - float* tensors are always f32: the residual stream and its gradient, norm weights, logits,
    //     log-sum-exps, losses, and every parameter, parameter gradient and optimizer state (the f32
    //     master copies of the trainable weights).
    // The CPU (backend/cpu/cpu_train_ops.cpp) and CUDA (backend/cuda/cuda_train_*.cu) backends implement
    // all of them; the base class throws swiftkv::Error for a backend that does not. Unless said
    // otherwise an op overwrites its outputs; "accumulate" outputs are added to (+=).

    // Backward of rmsnorm (y = x / rms(x) * weight, per row of dim): dx = (dy/dx)^T dy, written or,
    // with accumulate_dx, added (the residual stream's gradient collects several terms). dweight += the
    // weight gradient summed over rows; dweight may be null (a frozen norm).
    virtual void rmsnorm_backward(const float* x, const float* weight, const void* dy, float* dx, float* dweight,
                                  int64_t rows, int64_t dim, float eps, bool accumulate_dx);

    // Backward of rope with the same arguments: in place on the gradient dx, the transpose (inverse)
    // rotation (dx[i], dx[i+half]) <- (dx[i] cos + dx[i+half] sin, dx[i+half] cos - dx[i] sin).
    virtual void rope_backward(void* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                               const int32_t* positions, const float* inv_freq);

    // Causal GQA attention over packed sequences, keeping what the backward needs. q: n_heads*head_dim at
    // the start of each row (q_row_stride apart); k, v: n_kv_heads*head_dim at the start of each row
    // (kv_row_stride apart). Query head h reads KV head h / (n_heads / n_kv_heads). Row i of sequence s
    // attends to rows cu_seqlens[s]..i. out [rows, n_heads*head_dim] contiguous; lse [rows, n_heads] is
    // the natural log of sum_j exp(scale * q_i . k_j) per (row, head).
    virtual void attention_forward_train(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                         int64_t kv_row_stride, const PackedSequences& seqs, int64_t n_heads,
                                         int64_t n_kv_heads, int64_t head_dim, float scale, void* out, float* lse);

    // Backward of attention_forward_train (same layouts; out and lse as it produced them, dout like out).
    // dq has q's layout (q_row_stride), dk and dv have k's and v's (kv_row_stride); dk/dv sum over the
    // query heads sharing a KV head. With accumulate, dq/dk/dv are added to (AcrossKV: the layers of a
    // group share one K/V); only the head slots at the start of each row are touched.
    virtual void attention_backward(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                    int64_t kv_row_stride, const void* out, const float* lse, const void* dout,
                                    const PackedSequences& seqs, int64_t n_heads, int64_t n_kv_heads,
                                    int64_t head_dim, float scale, void* dq, void* dk, void* dv, bool accumulate);

    // Backward of silu_mul: gate_up [rows, 2*ffn] as silu_mul read it, dy [rows, ffn] -> d_gate_up
    // [rows, 2*ffn] (gate gradients in the first ffn columns, up gradients in the last ffn).
    virtual void silu_mul_backward(const void* gate_up, const void* dy, void* d_gate_up, int64_t rows,
                                   int64_t ffn);

    // Backward of matmul (y[rows, w.rows] = x[rows, w.cols] W^T) with respect to x: dx[rows, w.cols] =
    // dy[rows, w.rows] W, written or, with accumulate, added. W in any weight dtype matmul accepts.
    virtual void linear_backward_input(const void* dy, int64_t rows, const WeightMatrix& w, void* dx,
                                       bool accumulate);

    // Backward of matmul with respect to W: dw[out_features, in_features] += dy[rows, out_features]^T
    // x[rows, in_features] (always accumulated: zero dw before the first micro-batch).
    virtual void linear_backward_weight(const void* dy, const void* x, int64_t rows, int64_t out_features,
                                        int64_t in_features, float* dw);

    // Distillation loss per row r of logits [rows, vocab], temperature T:
    //   row_loss[r] = T^2 * KL(softmax(teacher[r] / T) || softmax(student[r] / T))   (not weighted)
    //   d_student[r] = weight[r] * d(row_loss[r]) / d student[r] = weight[r] * T * (softmax(s/T) - softmax(t/T))
    // i.e. d_student is the gradient of sum_r weight[r] * row_loss[r]: pass weight = mask / num_tokens for
    // the masked mean. row_weights null means all 1; row_loss or d_student_logits may be null (skipped).
    virtual void kl_div_loss(const float* teacher_logits, const float* student_logits, const float* row_weights,
                             int64_t rows, int64_t vocab, float temperature, float* row_loss,
                             float* d_student_logits);

    // Mean squared error per row of a, b [rows, dim] (f32, e.g. hidden states):
    //   row_loss[r] = sum_j (a[r,j] - b[r,j])^2 / dim   (not weighted)
    //   grad_a[r, j] = weight[r] * 2 (a[r,j] - b[r,j]) / dim   (the gradient of sum_r weight[r] row_loss[r])
    // row_weights null means all 1 (weight 1/rows gives torch's mse_loss mean); outputs may be null.
    virtual void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim,
                          float* row_loss, float* grad_a);

    // One AdamW step in place on n parameters (see AdamWParams); step counts from 1.
    virtual void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                            const AdamWParams& params, int64_t step);

    // Sum of squares of x[n] accumulated in double, returned to the host (synchronises); for gradient
    // norm clipping across tensors: norm = sqrt(sum over tensors), then scale() each gradient.
    virtual double grad_sq_norm(const float* x, int64_t n);

    // x[i] *= s for i < n.
    virtual void scale(float* x, int64_t n, float s);

    // --- distillation support ops (issue 6: train/ needs these two beyond the training ops above) ----
    // Generic defaults in backend/distill_support_ops.cpp stage through host memory (download, compute,
    // upload), so they are correct on every backend; a device backend should override them with a kernel
    // (on CUDA the trainer calls them several times per layer and step).

    // dst[i] = src[i] converted to `dtype` (F32 or BF16, round to nearest even), i < n: the trainer's
    // f32 gradients and master weights into the activation / compute dtype.
    virtual void convert_from_f32(const float* src, void* dst, int64_t n, DType dtype);

    // y[i] += alpha * x[i] for i < n (f32; a second loss term's gradient joining the residual stream's).
    virtual void add_f32(float* y, const float* x, int64_t n, float alpha);
};

// The CPU backend: OpenBLAS for matrix products, our own vectorised fused kernels and attention,
// parallelised on the global thread pool. num_threads <= 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);

// True when this build includes the CUDA backend and a CUDA device is usable.
bool cuda_backend_available(std::string* why_not = nullptr);
// The CUDA backend on device `device`: cuBLASLt GEMMs, our fused kernels and attention, one stream.
// Throws swiftkv::Error with the reason when the build has no CUDA or no device is usable.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);
// "cpu" or "cuda[:N]" (threads apply to the CPU backend).
std::unique_ptr<Backend> make_backend(const std::string& name, int num_threads = 0);

}  // namespace swiftkv
