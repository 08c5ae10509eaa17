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
class TrainingOps;  // backend/train_ops.h

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

    // --- training ---------------------------------------------------------------------------------
    // The backward passes, losses and optimizer ops of SwiftKV distillation (backend/train_ops.h), or
    // null when this backend has none. Inference never calls them.
    virtual TrainingOps* training() { return nullptr; }
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
