// Weight-streaming GEMV for decode (1..8 activation rows) on bf16 weights: out = x * W^T.
// Memory-bound: every weight byte is read exactly once with 16-byte streaming loads. Used by the CUDA
// backend's matmul instead of cuBLASLt when gemv_supported() holds. Graph-capturable (no host sync,
// no allocation, no device reads from the host).
#pragma once

#include <cstdint>

#include "backend/cuda/cuda_kernels.h"

namespace swiftkv::cuda {

constexpr int64_t kGemvMaxRows = 8;

// rows in 1..kGemvMaxRows, N >= 1, K >= 8, K % 8 == 0, N and K below 2^31. The caller must also check
// that x and w are 16-byte aligned (out needs only its element alignment).
bool gemv_supported(int64_t rows, int64_t N, int64_t K);

// out[m, n] = sum_k x[m, k] * w[n, k] for m < rows, n < N. x bf16 [rows, K] (row stride K), w bf16
// [N, K] row-major, f32 accumulation; out bf16 (out_f32 == false) or f32, [rows, N] (row stride N).
void gemv(const bf16* x, int64_t rows, const bf16* w, int64_t N, int64_t K, void* out, bool out_f32,
          cudaStream_t stream);

}  // namespace swiftkv::cuda
