// The CPU backend's kernels, one function per op. cpu_backend.cpp validates user-facing arguments
// (token ids, slots, block tables) and then calls these, which assume valid input. Each kernel
// parallelises itself on the given pool.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "backend/cpu/cpu_vector_kernels.h"
#include "core/thread_pool.h"

namespace swiftkv::cpu {

// --- cpu_matmul.cpp ------------------------------------------------------------------------------
// How matrix products use threads. With kPool, OpenBLAS runs single-threaded inside our pool's workers
// (one thread system, nobody spins against anybody); with kOpenBlas, OpenBLAS uses its own threads.
enum class BlasThreading { kPool, kOpenBlas };

// Makes OpenBLAS usable: fixes its CPU detection where it fell back to generic kernels, and sets its
// thread count for the chosen threading mode. Idempotent.
void setup_openblas(BlasThreading mode, int num_threads);
// The OpenBLAS kernel family in use, e.g. "Cooperlake" (for logs and benchmarks).
const char* openblas_core_name();

struct MatmulOptions {
    BlasThreading threading = BlasThreading::kPool;
    // Use our own kernel (not BLAS) up to this many rows, per weight dtype. Measured on a Xeon (2 cores,
    // W 3072x576): ours is 3-4x faster than sgemm up to 8 rows (sgemm re-packs all of W per call), still
    // ahead at 16 (f32) and 32 (bf16, where the BLAS path must also widen W).
    int64_t max_rows_small_f32 = 16;
    int64_t max_rows_small_bf16 = 32;
};

// out[rows, w.rows] = x[rows, w.cols] * W^T for F32 and BF16 weights, with the SIMD kernels vk.
void matmul(const float* x, int64_t rows, const WeightMatrix& w, float* out, ThreadPool& pool,
            const MatmulOptions& options, const VectorKernels& vk);

// --- cpu_elementwise.cpp -------------------------------------------------------------------------
void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t dim, float eps,
             ThreadPool& pool, const VectorKernels& vk);
void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out, int64_t rows,
                 int64_t dim, float eps, ThreadPool& pool, const VectorKernels& vk);
// cos_sin_table: per position, head_dim/2 cos values then head_dim/2 sin values; row r uses the entry of
// positions[r] (validated by the caller).
void rope_apply(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                const int32_t* positions, const float* cos_sin_table, ThreadPool& pool, const VectorKernels& vk);
void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t ffn, ThreadPool& pool, const VectorKernels& vk);

// Backend::fill_random for F32 and BF16 (the caller checks the dtype): element i is
//   h = noise_mix64(noise_mix64(seed) + i),  x = scale * (float(h >> 40) * 2^-23 - 1)
// i.e. uniform on the 2^24-point grid of [-scale, scale) in f32 (then rounded to bf16 for BF16).
void fill_random(void* dst, int64_t n, DType dtype, uint64_t seed, float scale, ThreadPool& pool);

// Backend::sample, the reference implementation of the sampling rules (documented at the definition in
// cpu_elementwise.cpp). Rows run in parallel; each row's draw is computed serially, so the result does
// not depend on the thread count.
void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params, int32_t* tokens,
            ThreadPool& pool);

// --- cpu_attention.cpp ---------------------------------------------------------------------------
void kv_write(const float* k, const float* v, int64_t rows, int64_t row_stride, const int32_t* slots,
              const KvLayout& layout, float* k_cache, float* v_cache);
void attention(const float* q, int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout,
               const float* k_cache, const float* v_cache, int64_t n_heads, float scale, float* out,
               ThreadPool& pool);

}  // namespace swiftkv::cpu
