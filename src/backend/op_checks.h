// Argument checks shared by every backend, one per op (or op family), so each contract is checked once
// and every backend refuses the same bad call with the same message. They check what the host knows
// (shapes, strides, counts, dtypes); a backend adds checks of values it can read cheaply (the CPU
// backend, whose "device" memory is host memory, checks positions, slots and token ids too). All throw
// swiftkv::Error.
#pragma once

#include <cmath>
#include <cstdint>

#include "backend/backend.h"
#include "backend/train_ops.h"
#include "core/error.h"

namespace swiftkv::op_checks {

inline void count(const char* op, int64_t n) { SKV_CHECK(n >= 0, "{}: negative element count {}", op, n); }

inline void weight_shape(const char* op, const WeightMatrix& w) {
    SKV_CHECK(w.rows >= 0 && w.cols >= 0, "{}: invalid weight shape [{}, {}]", op, w.rows, w.cols);
}

inline void matmul(int64_t rows, const WeightMatrix& w) {
    weight_shape("matmul", w);
    SKV_CHECK(rows >= 0, "matmul: negative row count {}", rows);
}

// rope and rope_backward: n_heads heads of head_dim at the start of each row.
inline void rope(const char* op, int64_t row_stride, int64_t n_heads, int64_t head_dim) {
    SKV_CHECK(head_dim > 0 && head_dim % 2 == 0, "{}: head_dim {} must be even", op, head_dim);
    SKV_CHECK(row_stride >= n_heads * head_dim, "{}: row stride {} is shorter than {} heads of {}", op, row_stride,
              n_heads, head_dim);
}

// kv_write and kv_write_layers: rows hold n_kv_heads heads of K (and of V) at their start.
inline void kv_write(const char* op, int64_t row_stride, const KvLayout& layout) {
    SKV_CHECK(row_stride >= layout.n_kv_heads * layout.head_dim, "{}: row stride {} is shorter than {} KV heads of {}",
              op, row_stride, layout.n_kv_heads, layout.head_dim);
}

inline void kv_write_layers(int64_t row_stride, const KvLayout& layout, int64_t layers, int64_t layer_offset,
                            int64_t cache_layer_stride) {
    kv_write("kv_write_layers", row_stride, layout);
    SKV_CHECK(layers >= 0 && layer_offset >= 0 && cache_layer_stride >= 0,
              "kv_write_layers: invalid layers {}, layer offset {} or cache layer stride {}", layers, layer_offset,
              cache_layer_stride);
}

// Paged attention (inference).
inline void attention(int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout, int64_t n_heads) {
    SKV_CHECK(layout.n_kv_heads > 0 && layout.head_dim > 0 && layout.block_size > 0 && layout.num_blocks >= 0,
              "attention: invalid KV layout (n_kv_heads {}, head_dim {}, block_size {}, num_blocks {})",
              layout.n_kv_heads, layout.head_dim, layout.block_size, layout.num_blocks);
    SKV_CHECK(n_heads > 0 && n_heads % layout.n_kv_heads == 0,
              "attention: {} query heads is not a multiple of {} KV heads", n_heads, layout.n_kv_heads);
    SKV_CHECK(q_row_stride >= n_heads * layout.head_dim, "attention: q row stride {} is shorter than {} heads of {}",
              q_row_stride, n_heads, layout.head_dim);
    SKV_CHECK(batch.num_seqs >= 0 && batch.num_rows >= 0, "attention: invalid batch ({} sequences, {} rows)",
              batch.num_seqs, batch.num_rows);
}

inline void sample(int64_t rows, int64_t vocab) {
    SKV_CHECK(rows >= 0, "sample: negative row count {}", rows);
    SKV_CHECK(rows == 0 || (vocab > 0 && vocab <= INT32_MAX), "sample: vocabulary size {} must be in [1, 2^31)", vocab);
}

// --- training ops ----------------------------------------------------------------------------------------

// Rows of `dim` values (rmsnorm_backward, mse_loss, kl_div_loss, silu_mul_backward).
inline void rows_dim(const char* op, int64_t rows, int64_t dim, bool dim_may_be_zero = false) {
    SKV_CHECK(rows >= 0 && (dim > 0 || (dim_may_be_zero && dim == 0)), "{}: invalid shape [{}, {}]", op, rows, dim);
}

// Attention over packed sequences (attention_forward_train, attention_backward).
inline void packed_attention(const char* op, int64_t q_row_stride, int64_t kv_row_stride, const PackedSequences& seqs,
                             int64_t n_heads, int64_t n_kv_heads, int64_t head_dim) {
    SKV_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
              "{}: {} query heads cannot share {} KV heads (need a positive multiple)", op, n_heads, n_kv_heads);
    SKV_CHECK(head_dim > 0, "{}: head_dim {} must be positive", op, head_dim);
    SKV_CHECK(q_row_stride >= n_heads * head_dim, "{}: q row stride {} is shorter than {} heads of {}", op,
              q_row_stride, n_heads, head_dim);
    SKV_CHECK(kv_row_stride >= n_kv_heads * head_dim, "{}: K/V row stride {} is shorter than {} heads of {}", op,
              kv_row_stride, n_kv_heads, head_dim);
    SKV_CHECK(seqs.num_seqs >= 0 && seqs.num_rows >= 0, "{}: invalid packed batch ({} sequences, {} rows)", op,
              seqs.num_seqs, seqs.num_rows);
    SKV_CHECK(seqs.num_rows == 0 || seqs.cu_seqlens != nullptr, "{}: cu_seqlens is null", op);
}

inline void linear_backward_input(int64_t rows, const WeightMatrix& w) {
    weight_shape("linear_backward_input", w);
    SKV_CHECK(rows >= 0, "linear_backward_input: negative row count {}", rows);
}

inline void linear_backward_weight(int64_t rows, int64_t out_features, int64_t in_features) {
    SKV_CHECK(rows >= 0 && out_features >= 0 && in_features >= 0,
              "linear_backward_weight: invalid shapes: {} rows, weight [{}, {}]", rows, out_features, in_features);
}

inline void kl_div_loss(int64_t rows, int64_t vocab, float temperature) {
    rows_dim("kl_div_loss", rows, vocab);
    SKV_CHECK(temperature > 0.0f && std::isfinite(temperature), "kl_div_loss: temperature {} must be positive",
              temperature);
}

inline void adamw_step(int64_t n, int64_t step) {
    SKV_CHECK(n >= 0, "adamw_step: negative parameter count {}", n);
    SKV_CHECK(step >= 1, "adamw_step: step {} must count from 1", step);
}

inline void convert_from_f32(int64_t n, DType dtype) {
    count("convert_from_f32", n);
    SKV_CHECK(dtype == DType::F32 || dtype == DType::BF16, "convert_from_f32: cannot convert to {} (F32 or BF16 only)",
              dtype_name(dtype));
}

}  // namespace swiftkv::op_checks
