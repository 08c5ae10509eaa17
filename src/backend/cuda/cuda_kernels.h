// The CUDA backend's kernels, one launcher per op (DESIGN.md section 6). cuda_backend.cu validates
// arguments on the host and calls these; they enqueue work on `stream` and never synchronise the host,
// allocate, or read device memory from the host, so every launcher can be recorded in a CUDA graph.
// Activations and the KV cache are bf16; the residual stream, norm weights, inv_freq and logits f32.
// Launchers check cudaGetLastError() after each launch and throw swiftkv::Error on failure.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"

namespace swiftkv::cuda {

using bf16 = __nv_bfloat16;

// Throws swiftkv::Error naming `what` if the last launch (or any earlier async work) failed.
void check_launch(const char* what);

// --- cuda_elementwise.cu -------------------------------------------------------------------------
// out[i, :] = table[tokens[i], :] as f32; table bf16 [vocab, dim].
void embedding(const bf16* table, int64_t dim, const int32_t* tokens, int64_t n, float* out, cudaStream_t stream);
// out = bf16(x / rms(x) * weight) per row; x f32.
void rmsnorm(const float* x, const float* weight, bf16* out, int64_t rows, int64_t dim, float eps,
             cudaStream_t stream);
// residual += f32(delta); out = bf16(rmsnorm(residual) * weight). residual f32, delta bf16.
void add_rmsnorm(float* residual, const bf16* delta, const float* weight, bf16* out, int64_t rows, int64_t dim,
                 float eps, cudaStream_t stream);
// Rotate-half RoPE in place on the first n_heads*head_dim elements of each row (row_stride elements
// apart). angle = float(positions[r]) * inv_freq[i] in f32; cos/sin computed accurately (sincosf, not
// __sinf) in f32; the rotation in f32, rounded to bf16 once.
void rope(bf16* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream);
// out[r, j] = bf16(silu(g) * u), g = gate_up[r, j], u = gate_up[r, ffn + j], computed in f32.
void silu_mul(const bf16* gate_up, bf16* out, int64_t rows, int64_t ffn, cudaStream_t stream);
// Writes K and V rows (n_kv_heads*head_dim at the start of each row, row_stride elements apart) into
// the paged caches ([num_blocks, n_kv_heads, block_size, head_dim]) at slots[r]; slots < 0 skip.
// `layers` cache layers at once: layer g's K and V start at k + g*layer_offset and v + g*layer_offset
// in each row and go to k_cache + g*cache_layer_stride and v_cache + g*cache_layer_stride (elements)
// — the SwiftKV bulk write of all later groups in one launch. layers == 1 is the per-layer write.
void kv_write(const bf16* k, const bf16* v, int64_t rows, int64_t row_stride, int64_t layer_offset, int64_t layers,
              const int32_t* slots, const KvLayout& layout, bf16* k_cache, bf16* v_cache,
              int64_t cache_layer_stride, cudaStream_t stream);
// out[i] = x[indices[i]] for rows of row_bytes bytes (16-byte vectors when aligned).
void gather_rows(const void* x, const int32_t* indices, int64_t n, int64_t row_bytes, void* out,
                 cudaStream_t stream);
// f32 <-> bf16 conversions and random fill.
void f32_to_bf16(const float* in, bf16* out, int64_t n, cudaStream_t stream);
void bf16_to_f32(const bf16* in, float* out, int64_t n, cudaStream_t stream);
void fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream);
void fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream);

// --- cuda_sample.cu ------------------------------------------------------------------------------
// Backend::sample semantics; one block per row. workspace: at least sample_workspace_bytes(rows, vocab).
size_t sample_workspace_bytes(int64_t rows, int64_t vocab);
void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params, int32_t* tokens,
            void* workspace, cudaStream_t stream);

// --- cuda_attention.cu ---------------------------------------------------------------------------
// Backend::attention semantics on bf16 q/out/caches (f32 softmax and accumulation). head_dim 64 and
// 128 take the tensor-core kernels; other even head_dims up to 256 a slower generic path.
// `rows` = total query rows (query_start[num_seqs], known to the host). The workspace holds split-KV
// partial results and any planning data; attention_workspace_bytes gives its size for the bounds in
// `batch` (max_seq_len, max_query_len, num_seqs) and rows. The grid depends only on host-side values
// (rows, num_seqs, the bounds), never on device data, so a recorded graph replays correctly for any
// device-side lengths within the bounds.
size_t attention_workspace_bytes(int64_t rows, const AttentionBatch& batch, const KvLayout& layout, int64_t n_heads);
void attention(const bf16* q, int64_t q_row_stride, int64_t rows, const AttentionBatch& batch,
               const KvLayout& layout, const bf16* k_cache, const bf16* v_cache, int64_t n_heads, float scale,
               bf16* out, void* workspace, cudaStream_t stream);

}  // namespace swiftkv::cuda
