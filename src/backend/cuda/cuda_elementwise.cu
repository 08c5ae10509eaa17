// The CUDA backend's memory-bound kernels: embedding, rmsnorm, add_rmsnorm, rope (and rope_backward, its
// transpose, declared in cuda_train_ops.h), silu_mul, kv_write, gather_rows, dtype conversions and random
// fill (declared in cuda_kernels.h).
//
// All of them stream their data once. Rows are handled by one block (norms, rope, kv_write, gather) or by
// a 2-D grid (silu_mul); loads and stores use 16-byte vectors when the dimensions and pointers allow it
// (checked on the host per call) and fall back to scalar code otherwise, so any shape is correct.
// Index math that can exceed 2^31 (row * stride) is 64-bit. Launchers return without launching when
// there is nothing to do, and never synchronise or allocate (graph-capturable).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_kernel_util.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_train_ops.h"
#include "backend/sampling_noise.h"
#include "core/error.h"

namespace swiftkv::cuda {

void check_launch(const char* what) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        SKV_THROW("CUDA kernel {} failed to launch or an earlier kernel failed: {} ({})", what,
                  cudaGetErrorString(err), cudaGetErrorName(err));
    }
}

namespace {

// 8 bf16 (one 16-byte vector) widened to two float4.
__device__ __forceinline__ void widen_bf16x8(uint4 u, float4& a, float4& b) {
    Bf16x8 v;
    v.u = u;
    float2 f;
    f = __bfloat1622float2(v.h[0]); a.x = f.x; a.y = f.y;
    f = __bfloat1622float2(v.h[1]); a.z = f.x; a.w = f.y;
    f = __bfloat1622float2(v.h[2]); b.x = f.x; b.y = f.y;
    f = __bfloat1622float2(v.h[3]); b.z = f.x; b.w = f.y;
}

// --- embedding ------------------------------------------------------------------------------------

template <bool kVec>
__global__ void embedding_kernel(const bf16* __restrict__ table, int64_t dim, const int32_t* __restrict__ tokens,
                                 int64_t n, float* __restrict__ out) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const bf16* src = table + int64_t(tokens[i]) * dim;
        float* dst = out + i * dim;
        if constexpr (kVec) {
            const int64_t nvec = dim / 8;
            for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
                float4 a, b;
                widen_bf16x8(__ldg(reinterpret_cast<const uint4*>(src) + j), a, b);
                reinterpret_cast<float4*>(dst)[2 * j] = a;
                reinterpret_cast<float4*>(dst)[2 * j + 1] = b;
            }
        } else {
            for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = __bfloat162float(src[j]);
        }
    }
}

// --- rmsnorm / add_rmsnorm --------------------------------------------------------------------------

__device__ __forceinline__ float sum_sq4(float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }

__device__ __forceinline__ uint2 scale_to_bf16x4(float4 v, float scale, float4 w) {
    Bf16x4 o;
    o.h[0] = __floats2bfloat162_rn(v.x * scale * w.x, v.y * scale * w.y);
    o.h[1] = __floats2bfloat162_rn(v.z * scale * w.z, v.w * scale * w.w);
    return o.u;
}

__device__ __forceinline__ float rms_scale(float sum_sq, int64_t dim, float eps) {
    return 1.0f / sqrtf(sum_sq / float(dim) + eps);
}

// One block per row, each thread keeping up to kVecs float4 of the row in registers between the
// sum-of-squares and the scale pass. kAdd: residual += delta first (and is written back).
// Requires dim % 4 == 0 and 16-byte aligned f32 rows / 8-byte aligned bf16 rows.
template <int kVecs, bool kAdd>
__global__ void __launch_bounds__(256) rmsnorm_vec_kernel(float* __restrict__ x, const bf16* __restrict__ delta,
                                                          const float* __restrict__ weight, bf16* __restrict__ out,
                                                          int64_t rows, int64_t dim, float eps) {
    __shared__ float scratch[33];
    const int64_t nvec = dim / 4;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float4* xr = reinterpret_cast<float4*>(x + r * dim);
        float4 v[kVecs];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
            const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
            v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (j < nvec) {
                v[k] = xr[j];
                if constexpr (kAdd) {
                    Bf16x4 d;
                    d.u = __ldg(reinterpret_cast<const uint2*>(delta + r * dim) + j);
                    const float2 d01 = __bfloat1622float2(d.h[0]), d23 = __bfloat1622float2(d.h[1]);
                    v[k].x += d01.x;
                    v[k].y += d01.y;
                    v[k].z += d23.x;
                    v[k].w += d23.y;
                    xr[j] = v[k];
                }
                ss += sum_sq4(v[k]);
            }
        }
        const float scale = rms_scale(block_sum(ss, scratch), dim, eps);
        uint2* orow = reinterpret_cast<uint2*>(out + r * dim);
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
            const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
            if (j < nvec) orow[j] = scale_to_bf16x4(v[k], scale, __ldg(reinterpret_cast<const float4*>(weight) + j));
        }
    }
}

// Any dim and alignment: two passes over the row (the second mostly from L1/L2). Each thread reads back
// only the residual elements it wrote itself.
template <bool kAdd>
__global__ void __launch_bounds__(256) rmsnorm_generic_kernel(float* __restrict__ x, const bf16* __restrict__ delta,
                                                              const float* __restrict__ weight,
                                                              bf16* __restrict__ out, int64_t rows, int64_t dim,
                                                              float eps) {
    __shared__ float scratch[33];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float* xr = x + r * dim;
        float ss = 0.0f;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float h = xr[j];
            if constexpr (kAdd) {
                h += __bfloat162float(delta[r * dim + j]);
                xr[j] = h;
            }
            ss += h * h;
        }
        const float scale = rms_scale(block_sum(ss, scratch), dim, eps);
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
            out[r * dim + j] = __float2bfloat16_rn(xr[j] * scale * weight[j]);
    }
}

template <bool kAdd>
void launch_rmsnorm(float* x, const bf16* delta, const float* weight, bf16* out, int64_t rows, int64_t dim, float eps,
                    cudaStream_t stream, const char* what) {
    if (rows <= 0 || dim <= 0) return;
    const int64_t nvec = dim / 4;
    const bool vec = dim % 4 == 0 && aligned(x, 16) && aligned(weight, 16) && aligned(out, 8) &&
                     (!kAdd || aligned(delta, 8)) && nvec <= 256 * 16;
    const unsigned grid = grid_x(rows);
    if (!vec) {
        rmsnorm_generic_kernel<kAdd><<<grid, 256, 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    } else if (nvec <= 256) {
        rmsnorm_vec_kernel<1, kAdd><<<grid, round_up_warp(nvec), 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    } else if (nvec <= 512) {
        rmsnorm_vec_kernel<2, kAdd><<<grid, 256, 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    } else if (nvec <= 1024) {
        rmsnorm_vec_kernel<4, kAdd><<<grid, 256, 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    } else if (nvec <= 2048) {
        rmsnorm_vec_kernel<8, kAdd><<<grid, 256, 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    } else {
        rmsnorm_vec_kernel<16, kAdd><<<grid, 256, 0, stream>>>(x, delta, weight, out, rows, dim, eps);
    }
    check_launch(what);
}

// --- rope -----------------------------------------------------------------------------------------

// (a, b) rotated by the angle (kInverse false) or by minus the angle (kInverse true: the transpose
// rotation, rope's backward).
template <bool kInverse>
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& ra, float& rb) {
    if constexpr (kInverse) {
        ra = fmaf(a, c, b * s);
        rb = fmaf(b, c, -a * s);
    } else {
        ra = fmaf(a, c, -b * s);
        rb = fmaf(b, c, a * s);
    }
}

// One block per row: cos/sin of the row's angles go to shared memory once (sincosf, accurate), then every
// head of the row is rotated. kVec: half % 8 == 0 and 16-byte aligned rows, 8 pairs per thread step.
// kTable false (huge head_dim): cos/sin computed per element instead of tabulated.
template <bool kVec, bool kTable, bool kInverse>
__global__ void __launch_bounds__(256) rope_kernel(bf16* __restrict__ x, int64_t rows, int64_t row_stride,
                                                   int64_t n_heads, int64_t head_dim,
                                                   const int32_t* __restrict__ positions,
                                                   const float* __restrict__ inv_freq) {
    extern __shared__ float cs[];  // [half] cos, then [half] sin
    const int64_t half = head_dim / 2;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float pos = float(positions[r]);
        bf16* row = x + r * row_stride;
        if constexpr (kTable) {
            for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
                float s, c;
                sincosf(pos * inv_freq[i], &s, &c);
                cs[i] = c;
                cs[half + i] = s;
            }
            __syncthreads();
        }
        if constexpr (kVec) {
            const int64_t per_head = half / 8;
            const int64_t units = n_heads * per_head;
            for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
                const int64_t h = u / per_head, i = (u - h * per_head) * 8;
                uint4* pa = reinterpret_cast<uint4*>(row + h * head_dim + i);
                uint4* pb = reinterpret_cast<uint4*>(row + h * head_dim + half + i);
                Bf16x8 va, vb, oa, ob;
                va.u = *pa;
                vb.u = *pb;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const float2 a = __bfloat1622float2(va.h[k]), b = __bfloat1622float2(vb.h[k]);
                    float ra0, rb0, ra1, rb1;
                    rotate<kInverse>(a.x, b.x, cs[i + 2 * k], cs[half + i + 2 * k], ra0, rb0);
                    rotate<kInverse>(a.y, b.y, cs[i + 2 * k + 1], cs[half + i + 2 * k + 1], ra1, rb1);
                    oa.h[k] = __floats2bfloat162_rn(ra0, ra1);
                    ob.h[k] = __floats2bfloat162_rn(rb0, rb1);
                }
                *pa = oa.u;
                *pb = ob.u;
            }
        } else {
            const int64_t units = n_heads * half;
            for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
                const int64_t h = u / half, i = u - h * half;
                bf16* pa = row + h * head_dim + i;
                bf16* pb = pa + half;
                float c, s;
                if constexpr (kTable) {
                    c = cs[i];
                    s = cs[half + i];
                } else {
                    sincosf(pos * inv_freq[i], &s, &c);
                }
                float ra, rb;
                rotate<kInverse>(__bfloat162float(*pa), __bfloat162float(*pb), c, s, ra, rb);
                *pa = __float2bfloat16_rn(ra);
                *pb = __float2bfloat16_rn(rb);
            }
        }
        if constexpr (kTable) __syncthreads();  // the table is rewritten for the next row
    }
}

// --- silu_mul -------------------------------------------------------------------------------------

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// grid.x covers a row's columns (8 per thread when kVec), grid.y rows (looping).
template <bool kVec>
__global__ void __launch_bounds__(256) silu_mul_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out,
                                                       int64_t rows, int64_t ffn) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const bf16* g = gate_up + r * 2 * ffn;
        const bf16* u = g + ffn;
        bf16* o = out + r * ffn;
        if constexpr (kVec) {
            if (j < ffn / 8) {
                Bf16x8 vg, vu, vo;
                vg.u = __ldg(reinterpret_cast<const uint4*>(g) + j);
                vu.u = __ldg(reinterpret_cast<const uint4*>(u) + j);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const float2 a = __bfloat1622float2(vg.h[k]), b = __bfloat1622float2(vu.h[k]);
                    vo.h[k] = __floats2bfloat162_rn(silu(a.x) * b.x, silu(a.y) * b.y);
                }
                reinterpret_cast<uint4*>(o)[j] = vo.u;
            }
        } else {
            if (j < ffn) o[j] = __float2bfloat16_rn(silu(__bfloat162float(g[j])) * __bfloat162float(u[j]));
        }
    }
}

// --- kv_write -------------------------------------------------------------------------------------

// grid.x: rows (looping), grid.y: layers (looping). Each block copies the K and V heads of one row of one
// layer into the slot's place in the paged caches. kVec: 16-byte copies (head_dim, strides multiple of 8,
// pointers 16-byte aligned).
template <bool kVec>
__global__ void __launch_bounds__(128) kv_write_kernel(const bf16* __restrict__ k, const bf16* __restrict__ v,
                                                       int64_t rows, int64_t row_stride, int64_t layer_offset,
                                                       int64_t layers, const int32_t* __restrict__ slots,
                                                       int64_t block_size, int64_t n_kv_heads, int64_t head_dim,
                                                       bf16* __restrict__ k_cache, bf16* __restrict__ v_cache,
                                                       int64_t cache_layer_stride) {
    for (int64_t g = blockIdx.y; g < layers; g += gridDim.y) {
        for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
            const int64_t slot = slots[r];
            if (slot < 0) continue;
            const int64_t block = slot / block_size, offset = slot - block * block_size;
            const int64_t src = r * row_stride + g * layer_offset;
            // Head h of this slot: ((block * n_kv_heads + h) * block_size + offset) * head_dim.
            const int64_t dst0 = g * cache_layer_stride + (block * n_kv_heads * block_size + offset) * head_dim;
            const int64_t head_step = block_size * head_dim;
            if constexpr (kVec) {
                const int64_t per_head = head_dim / 8, units = n_kv_heads * per_head;
                for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
                    const int64_t h = u / per_head, i = (u - h * per_head) * 8;
                    const int64_t s = src + h * head_dim + i, d = dst0 + h * head_step + i;
                    const uint4 kv = __ldg(reinterpret_cast<const uint4*>(k + s));
                    const uint4 vv = __ldg(reinterpret_cast<const uint4*>(v + s));
                    *reinterpret_cast<uint4*>(k_cache + d) = kv;
                    *reinterpret_cast<uint4*>(v_cache + d) = vv;
                }
            } else {
                const int64_t units = n_kv_heads * head_dim;
                for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
                    const int64_t h = u / head_dim, i = u - h * head_dim;
                    const int64_t s = src + h * head_dim + i, d = dst0 + h * head_step + i;
                    k_cache[d] = k[s];
                    v_cache[d] = v[s];
                }
            }
        }
    }
}

// --- gather_rows ----------------------------------------------------------------------------------

// out[i] = x[indices[i]] as rows of `words` elements of type T (uint4, uint32_t or unsigned char).
template <class T>
__global__ void __launch_bounds__(256) gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ indices,
                                                          int64_t n, int64_t words, T* __restrict__ out) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const T* src = x + int64_t(indices[i]) * words;
        T* dst = out + i * words;
        for (int64_t j = threadIdx.x; j < words; j += blockDim.x) dst[j] = src[j];
    }
}

// --- conversions and random fill -------------------------------------------------------------------

// Elementwise over n items, 8 per thread-step when kVec (both pointers 16-byte aligned), with a scalar tail.
template <bool kVec>
__global__ void __launch_bounds__(256) f32_to_bf16_kernel(const float* __restrict__ in, bf16* __restrict__ out,
                                                          int64_t n) {
    for_each_item<kVec, 8>(
        n,
        [&](int64_t i) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(in) + 2 * i);
            const float4 b = __ldg(reinterpret_cast<const float4*>(in) + 2 * i + 1);
            Bf16x8 o;
            o.h[0] = __floats2bfloat162_rn(a.x, a.y);
            o.h[1] = __floats2bfloat162_rn(a.z, a.w);
            o.h[2] = __floats2bfloat162_rn(b.x, b.y);
            o.h[3] = __floats2bfloat162_rn(b.z, b.w);
            reinterpret_cast<uint4*>(out)[i] = o.u;
        },
        [&](int64_t i) { out[i] = __float2bfloat16_rn(in[i]); });
}

template <bool kVec>
__global__ void __launch_bounds__(256) bf16_to_f32_kernel(const bf16* __restrict__ in, float* __restrict__ out,
                                                          int64_t n) {
    for_each_item<kVec, 8>(
        n,
        [&](int64_t i) {
            float4 a, b;
            widen_bf16x8(__ldg(reinterpret_cast<const uint4*>(in) + i), a, b);
            reinterpret_cast<float4*>(out)[2 * i] = a;
            reinterpret_cast<float4*>(out)[2 * i + 1] = b;
        },
        [&](int64_t i) { out[i] = __bfloat162float(in[i]); });
}

// uniform on the 2^24-point grid of [-scale, scale), a pure function of (seed, i), identical to the CPU
// backend's fill_random: h = noise_mix64(noise_mix64(seed) + i), x = scale * (float(h >> 40) * 2^-23 - 1).
__device__ __forceinline__ float random_value(uint64_t seed_hash, int64_t i, float scale) {
    const uint64_t h = noise_mix64(seed_hash + uint64_t(i));
    return scale * (float(uint32_t(h >> 40)) * 0x1p-23f - 1.0f);
}

__global__ void __launch_bounds__(256) fill_random_f32_kernel(float* __restrict__ dst, int64_t n, uint64_t seed_hash,
                                                              float scale) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = random_value(seed_hash, i, scale);
}

// Rounded to nearest even, as the CPU backend does.
__global__ void __launch_bounds__(256) fill_random_bf16_kernel(bf16* __restrict__ dst, int64_t n, uint64_t seed_hash,
                                                               float scale) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = __float2bfloat16_rn(random_value(seed_hash, i, scale));
}

}  // namespace

// --- launchers --------------------------------------------------------------------------------------

void embedding(const bf16* table, int64_t dim, const int32_t* tokens, int64_t n, float* out, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    const bool vec = dim % 8 == 0 && aligned(table, 16) && aligned(out, 16);
    const int threads = std::min(256, round_up_warp(vec ? dim / 8 : dim));
    if (vec)
        embedding_kernel<true><<<grid_x(n), threads, 0, stream>>>(table, dim, tokens, n, out);
    else
        embedding_kernel<false><<<grid_x(n), threads, 0, stream>>>(table, dim, tokens, n, out);
    check_launch("embedding");
}

void rmsnorm(const float* x, const float* weight, bf16* out, int64_t rows, int64_t dim, float eps,
             cudaStream_t stream) {
    launch_rmsnorm<false>(const_cast<float*>(x), nullptr, weight, out, rows, dim, eps, stream, "rmsnorm");
}

void add_rmsnorm(float* residual, const bf16* delta, const float* weight, bf16* out, int64_t rows, int64_t dim,
                 float eps, cudaStream_t stream) {
    launch_rmsnorm<true>(residual, delta, weight, out, rows, dim, eps, stream, "add_rmsnorm");
}

namespace {

template <bool kInverse>
void launch_rope(bf16* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
                 const float* inv_freq, cudaStream_t stream, const char* what) {
    if (rows <= 0 || n_heads <= 0 || head_dim < 2) return;
    const int64_t half = head_dim / 2;
    const bool vec = half % 8 == 0 && row_stride % 8 == 0 && aligned(x, 16);
    // The cos/sin table of one row: 2*half floats; beyond 32 KiB compute per element.
    const bool table = half <= 4096;
    const size_t smem = table ? size_t(2 * half) * sizeof(float) : 0;
    const int64_t units = n_heads * (vec ? half / 8 : half);
    const int threads = std::min(256, round_up_warp(std::max(units, table ? half : 0)));
    const unsigned grid = grid_x(rows);
    if (vec && table)
        rope_kernel<true, true, kInverse><<<grid, threads, smem, stream>>>(x, rows, row_stride, n_heads, head_dim, positions, inv_freq);
    else if (table)
        rope_kernel<false, true, kInverse><<<grid, threads, smem, stream>>>(x, rows, row_stride, n_heads, head_dim, positions, inv_freq);
    else
        rope_kernel<false, false, kInverse><<<grid, threads, 0, stream>>>(x, rows, row_stride, n_heads, head_dim, positions, inv_freq);
    check_launch(what);
}

}  // namespace

void rope(bf16* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream) {
    launch_rope<false>(x, rows, row_stride, n_heads, head_dim, positions, inv_freq, stream, "rope");
}

void rope_backward(bf16* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                   const int32_t* positions, const float* inv_freq, cudaStream_t stream) {
    launch_rope<true>(dx, rows, row_stride, n_heads, head_dim, positions, inv_freq, stream, "rope_backward");
}

void silu_mul(const bf16* gate_up, bf16* out, int64_t rows, int64_t ffn, cudaStream_t stream) {
    if (rows <= 0 || ffn <= 0) return;
    const bool vec = ffn % 8 == 0 && aligned(gate_up, 16) && aligned(out, 16);
    const int64_t per_row = vec ? ffn / 8 : ffn;
    const int threads = std::min(256, round_up_warp(per_row));
    const dim3 grid(unsigned(ceil_div(per_row, threads)), unsigned(std::min(rows, kMaxGridYZ)));
    if (vec)
        silu_mul_kernel<true><<<grid, threads, 0, stream>>>(gate_up, out, rows, ffn);
    else
        silu_mul_kernel<false><<<grid, threads, 0, stream>>>(gate_up, out, rows, ffn);
    check_launch("silu_mul");
}

void kv_write(const bf16* k, const bf16* v, int64_t rows, int64_t row_stride, int64_t layer_offset, int64_t layers,
              const int32_t* slots, const KvLayout& layout, bf16* k_cache, bf16* v_cache, int64_t cache_layer_stride,
              cudaStream_t stream) {
    if (rows <= 0 || layers <= 0 || layout.n_kv_heads <= 0 || layout.head_dim <= 0) return;
    const bool vec = layout.head_dim % 8 == 0 && row_stride % 8 == 0 && (layers == 1 || layer_offset % 8 == 0) &&
                     (layers == 1 || cache_layer_stride % 8 == 0) && aligned(k, 16) && aligned(v, 16) &&
                     aligned(k_cache, 16) && aligned(v_cache, 16);
    const int64_t units = layout.n_kv_heads * (vec ? layout.head_dim / 8 : layout.head_dim);
    const int threads = std::min(128, round_up_warp(units));
    const dim3 grid(grid_x(rows), unsigned(std::min(layers, kMaxGridYZ)));
    if (vec)
        kv_write_kernel<true><<<grid, threads, 0, stream>>>(k, v, rows, row_stride, layer_offset, layers, slots,
                                                            layout.block_size, layout.n_kv_heads, layout.head_dim,
                                                            k_cache, v_cache, cache_layer_stride);
    else
        kv_write_kernel<false><<<grid, threads, 0, stream>>>(k, v, rows, row_stride, layer_offset, layers, slots,
                                                             layout.block_size, layout.n_kv_heads, layout.head_dim,
                                                             k_cache, v_cache, cache_layer_stride);
    check_launch("kv_write");
}

void gather_rows(const void* x, const int32_t* indices, int64_t n, int64_t row_bytes, void* out,
                 cudaStream_t stream) {
    if (n <= 0 || row_bytes <= 0) return;
    const unsigned grid = grid_x(n);
    if (row_bytes % 16 == 0 && aligned(x, 16) && aligned(out, 16)) {
        const int64_t words = row_bytes / 16;
        gather_rows_kernel<uint4><<<grid, std::min(256, round_up_warp(words)), 0, stream>>>(
            static_cast<const uint4*>(x), indices, n, words, static_cast<uint4*>(out));
    } else if (row_bytes % 4 == 0 && aligned(x, 4) && aligned(out, 4)) {
        const int64_t words = row_bytes / 4;
        gather_rows_kernel<uint32_t><<<grid, std::min(256, round_up_warp(words)), 0, stream>>>(
            static_cast<const uint32_t*>(x), indices, n, words, static_cast<uint32_t*>(out));
    } else {
        gather_rows_kernel<unsigned char><<<grid, std::min(256, round_up_warp(row_bytes)), 0, stream>>>(
            static_cast<const unsigned char*>(x), indices, n, row_bytes, static_cast<unsigned char*>(out));
    }
    check_launch("gather_rows");
}

void f32_to_bf16(const float* in, bf16* out, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    if (aligned(in, 16) && aligned(out, 16))
        f32_to_bf16_kernel<true><<<elementwise_grid(ceil_div(n, 8)), 256, 0, stream>>>(in, out, n);
    else
        f32_to_bf16_kernel<false><<<elementwise_grid(n), 256, 0, stream>>>(in, out, n);
    check_launch("f32_to_bf16");
}

void bf16_to_f32(const bf16* in, float* out, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    if (aligned(in, 16) && aligned(out, 16))
        bf16_to_f32_kernel<true><<<elementwise_grid(ceil_div(n, 8)), 256, 0, stream>>>(in, out, n);
    else
        bf16_to_f32_kernel<false><<<elementwise_grid(n), 256, 0, stream>>>(in, out, n);
    check_launch("bf16_to_f32");
}

void fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
    if (n <= 0) return;
    fill_random_f32_kernel<<<elementwise_grid(n), 256, 0, stream>>>(dst, n, noise_mix64(seed), scale);
    check_launch("fill_random_f32");
}

void fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
    if (n <= 0) return;
    fill_random_bf16_kernel<<<elementwise_grid(n), 256, 0, stream>>>(dst, n, noise_mix64(seed), scale);
    check_launch("fill_random_bf16");
}

}  // namespace swiftkv::cuda
