// The CPU backend's SIMD kernels, compiled once per instruction set (cpu_isa.h) from one source each
// with Highway (https://github.com/google/highway): the code is written once against Highway's portable
// vector ops, and foreach_target.h compiles it for every target, so AVX-512, AVX2, SSE4 and scalar
// machines all get vector code from the same lines. A backend holds the table of its chosen ISA.
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_isa.h"

namespace swiftkv::cpu {

struct VectorKernels {
    CpuIsa isa;
    // out[r * ldo + n] = dot(x[r], W[n]) for r < rows (<= 8) and n in [n_begin, n_end); W [*, k_dim]
    // row-major, f32 or bf16 (raw uint16). Memory-bound decode products: each weight row is read once
    // for all rows of x. (cpu_gemv.cpp)
    void (*small_rows_f32)(const float* x, int64_t rows, int64_t k_dim, const float* w, int64_t n_begin,
                           int64_t n_end, float* out, int64_t ldo);
    void (*small_rows_bf16)(const float* x, int64_t rows, int64_t k_dim, const uint16_t* w, int64_t n_begin,
                            int64_t n_end, float* out, int64_t ldo);
    // dst[i] = f32(src[i]) for bf16 src. (cpu_gemv.cpp)
    void (*widen_bf16)(const uint16_t* src, int64_t count, float* dst);

    // The row loops of rmsnorm, add_rmsnorm, rope and silu_mul (cpu_rowwise.cpp): sum of x[i]^2 (f32
    // lane accumulators, added up in double); out = x * scale * weight; h += delta; the rotate-half
    // rotation (a, b) <- (a cos - b sin, b cos + a sin) of one head; out = silu(g) * u.
    double (*sum_squares)(const float* x, int64_t n);
    void (*scale_mul)(const float* x, const float* weight, float scale, float* out, int64_t n);
    void (*add_inplace)(float* h, const float* delta, int64_t n);
    void (*rotate_half)(float* a, float* b, const float* cos, const float* sin, int64_t half);
    void (*silu_mul_row)(const float* gate, const float* up, float* out, int64_t n);
};

// The kernels of a supported instruction set (see supported_cpu_isas()).
const VectorKernels& vector_kernels(CpuIsa isa);

}  // namespace swiftkv::cpu
