// Backend — the op interface every forward pass is written against (DESIGN.md section 6).
// A backend owns device memory and runs ops on it; it knows kernels, never model names. All
// activations are f32 and row-major; weights may be any dtype the backend supports (CPU: F32, BF16).
// Pointers passed to ops are device pointers of this backend (host pointers for the CPU backend).
// Ops are asynchronous with respect to the host where the backend allows; synchronize() waits.
#pragma once

#include <cstddef>
#include <cstdint>
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

// Shape of one physical paged KV cache layer: K and V each [num_blocks, n_kv_heads, block_size, head_dim].
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
    const int32_t* query_start = nullptr;  // [num_seqs + 1]
    const int32_t* seq_lens = nullptr;     // [num_seqs]
    const int32_t* block_tables = nullptr; // [num_seqs, max_blocks_per_seq]
    int64_t max_blocks_per_seq = 0;
    int64_t max_seq_len = 0;               // max over seq_lens (host-side planning hint)
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

    // --- ops ----------------------------------------------------------------------------------
    // out[i, :] = table[tokens[i], :] as f32. table is [vocab, dim].
    virtual void embedding(const WeightMatrix& table, const int32_t* tokens, int64_t n, float* out) = 0;

    // out[rows, w.rows] = x[rows, w.cols] * W^T. x rows are contiguous (stride w.cols).
    virtual void matmul(const float* x, int64_t rows, const WeightMatrix& w, float* out) = 0;

    // out = x / rms(x) * weight, per row of dim elements.
    virtual void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t dim,
                         float eps) = 0;

    // residual += delta; out = rmsnorm(residual) * weight.  (The pre-norm transformer's join.)
    virtual void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out,
                             int64_t rows, int64_t dim, float eps) = 0;

    // Rotate-half RoPE (Hugging Face layout) in place on n_heads heads of head_dim at the start of each
    // row (rows are row_stride floats apart): for i < head_dim/2, angle = positions[r] * inv_freq[i],
    // (x[i], x[i+half]) <- (x[i] cos - x[i+half] sin, x[i+half] cos + x[i] sin).
    virtual void rope(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                      const int32_t* positions, const float* inv_freq) = 0;

    // out[r, j] = silu(gate_up[r, j]) * gate_up[r, ffn + j]; gate_up is [rows, 2*ffn].
    virtual void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t ffn) = 0;

    // Writes rows of K and V ([n_kv_heads*head_dim] at the start of each row, row_stride apart) into
    // the cache at slots[r] = block * block_size + offset. A negative slot skips the row.
    virtual void kv_write(const float* k, const float* v, int64_t rows, int64_t row_stride,
                          const int32_t* slots, const KvLayout& layout, float* k_cache,
                          float* v_cache) = 0;

    // Causal GQA attention over the paged cache. q rows: n_heads*head_dim at the start of each row,
    // q_row_stride apart; out is [rows, n_heads*head_dim] contiguous. Query head h reads KV head
    // h / (n_heads / n_kv_heads). softmax(q k^T * scale) v, with the bottom-right causal mask.
    virtual void attention(const float* q, int64_t q_row_stride, const AttentionBatch& batch,
                           const KvLayout& layout, const float* k_cache, const float* v_cache,
                           int64_t n_heads, float scale, float* out) = 0;

    // out[i, :] = x[indices[i], :], rows of dim floats.
    virtual void gather_rows(const float* x, const int32_t* indices, int64_t n, int64_t dim,
                             float* out) = 0;
};

// The CPU backend: OpenBLAS for matrix products, our own vectorised fused kernels and attention,
// parallelised on the global thread pool. num_threads <= 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);

}  // namespace swiftkv
