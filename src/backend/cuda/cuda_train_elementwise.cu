// The CUDA backend's elementwise training ops and the optimizer's vector ops (launchers declared in
// cuda_train_ops.h, contracts in backend/train_ops.h):
//
//  * silu_mul_backward, scale, add_f32, adamw_step: elementwise, 16-byte vectors where shapes and
//    pointers allow (checked per call), scalar otherwise. rope_backward is the forward rope kernel with
//    the inverse rotation (cuda_elementwise.cu).
//  * grad_sq_norm: double-precision two-pass reduction (fixed number of blocks for a given n, so the
//    result is deterministic).
//
// Launchers never synchronise or allocate; workspaces come from the caller.
//
// fmt under nvcc: FMT_CONSTEVAL= and FMT_USE_CONSTEXPR=1 come from the top-level CMakeLists.txt.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_kernel_util.cuh"
#include "backend/cuda/cuda_train_ops.h"
#include "core/error.h"

namespace swiftkv::cuda {

namespace {

// ==========================================================================================================
// silu_mul backward
// ==========================================================================================================
//
// out = silu(g) u, sigma = 1 / (1 + e^-g): du = dy g sigma, dg = dy u sigma (1 + g (1 - sigma)).

__device__ __forceinline__ void silu_mul_grad(float g, float u, float d, float& dg, float& du) {
    const float sig = 1.0f / (1.0f + expf(-g));
    du = d * g * sig;
    dg = d * u * sig * (1.0f + g * (1.0f - sig));
}

template <bool kVec>
__global__ void __launch_bounds__(256) silu_mul_bwd_kernel(const bf16* __restrict__ gate_up,
                                                           const bf16* __restrict__ dy, bf16* __restrict__ d_gate_up,
                                                           int64_t rows, int64_t ffn) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const bf16* g = gate_up + r * 2 * ffn;
        const bf16* u = g + ffn;
        const bf16* d = dy + r * ffn;
        bf16* dg = d_gate_up + r * 2 * ffn;
        bf16* du = dg + ffn;
        if constexpr (kVec) {
            if (j < ffn / 8) {
                Bf16x8 vg, vu, vd, og, ou;
                vg.u = __ldg(reinterpret_cast<const uint4*>(g) + j);
                vu.u = __ldg(reinterpret_cast<const uint4*>(u) + j);
                vd.u = __ldg(reinterpret_cast<const uint4*>(d) + j);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const float2 a = __bfloat1622float2(vg.h[k]), b = __bfloat1622float2(vu.h[k]),
                                 c = __bfloat1622float2(vd.h[k]);
                    float dg0, du0, dg1, du1;
                    silu_mul_grad(a.x, b.x, c.x, dg0, du0);
                    silu_mul_grad(a.y, b.y, c.y, dg1, du1);
                    og.h[k] = __floats2bfloat162_rn(dg0, dg1);
                    ou.h[k] = __floats2bfloat162_rn(du0, du1);
                }
                reinterpret_cast<uint4*>(dg)[j] = og.u;
                reinterpret_cast<uint4*>(du)[j] = ou.u;
            }
        } else {
            if (j < ffn) {
                float a, b;
                silu_mul_grad(__bfloat162float(g[j]), __bfloat162float(u[j]), __bfloat162float(d[j]), a, b);
                dg[j] = __float2bfloat16_rn(a);
                du[j] = __float2bfloat16_rn(b);
            }
        }
    }
}

// ==========================================================================================================
// optimizer and vector ops
// ==========================================================================================================

struct AdamConsts {
    double b1, b2, eps, step_size, inv_sqrt_bc2, decay;
};

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, const AdamConsts& k) {
    const double gd = g;
    const double mi = k.b1 * double(m) + (1.0 - k.b1) * gd;
    const double vi = k.b2 * double(v) + (1.0 - k.b2) * gd * gd;
    m = float(mi);
    v = float(vi);
    p = float(double(p) * k.decay - k.step_size * mi / (sqrt(vi) * k.inv_sqrt_bc2 + k.eps));
}

template <bool kVec>
__global__ void __launch_bounds__(256) adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                                                    float* __restrict__ m, float* __restrict__ v, int64_t n,
                                                    AdamConsts k) {
    for_each_item<kVec, 4>(
        n,
        [&](int64_t i) {
            float4 p = reinterpret_cast<float4*>(param)[i];
            const float4 g = __ldg(reinterpret_cast<const float4*>(grad) + i);
            float4 mm = reinterpret_cast<float4*>(m)[i];
            float4 vv = reinterpret_cast<float4*>(v)[i];
            adam_one(p.x, g.x, mm.x, vv.x, k);
            adam_one(p.y, g.y, mm.y, vv.y, k);
            adam_one(p.z, g.z, mm.z, vv.z, k);
            adam_one(p.w, g.w, mm.w, vv.w, k);
            reinterpret_cast<float4*>(param)[i] = p;
            reinterpret_cast<float4*>(m)[i] = mm;
            reinterpret_cast<float4*>(v)[i] = vv;
        },
        [&](int64_t i) { adam_one(param[i], grad[i], m[i], v[i], k); });
}

constexpr int64_t kSqNormMaxBlocks = 1024;

inline int64_t sq_norm_blocks(int64_t n) { return std::clamp<int64_t>(ceil_div(n, 256 * 8), 1, kSqNormMaxBlocks); }

__global__ void __launch_bounds__(256) sq_norm_partial_kernel(const float* __restrict__ x, int64_t n,
                                                              double* __restrict__ partial) {
    __shared__ double scratch[33];
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    double sum = 0.0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = x[i];
        sum += v * v;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(256) sq_norm_final_kernel(const double* __restrict__ partial, int64_t blocks,
                                                            double* __restrict__ result) {
    __shared__ double scratch[33];
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) sum += partial[i];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) *result = sum;
}

template <bool kVec>
__global__ void __launch_bounds__(256) scale_kernel(float* __restrict__ x, int64_t n, float s) {
    for_each_item<kVec, 4>(
        n,
        [&](int64_t i) {
            float4 v = reinterpret_cast<float4*>(x)[i];
            v.x *= s;
            v.y *= s;
            v.z *= s;
            v.w *= s;
            reinterpret_cast<float4*>(x)[i] = v;
        },
        [&](int64_t i) { x[i] *= s; });
}

template <bool kVec>
__global__ void __launch_bounds__(256) add_f32_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n,
                                                      float alpha) {
    for_each_item<kVec, 4>(
        n,
        [&](int64_t i) {
            float4 v = reinterpret_cast<float4*>(y)[i];
            const float4 a = __ldg(reinterpret_cast<const float4*>(x) + i);
            v.x = fmaf(alpha, a.x, v.x);
            v.y = fmaf(alpha, a.y, v.y);
            v.z = fmaf(alpha, a.z, v.z);
            v.w = fmaf(alpha, a.w, v.w);
            reinterpret_cast<float4*>(y)[i] = v;
        },
        [&](int64_t i) { y[i] = fmaf(alpha, x[i], y[i]); });
}

}  // namespace

// ==========================================================================================================
// launchers
// ==========================================================================================================

void silu_mul_backward(const bf16* gate_up, const bf16* dy, bf16* d_gate_up, int64_t rows, int64_t ffn,
                       cudaStream_t stream) {
    if (rows <= 0 || ffn <= 0) return;
    const bool vec = ffn % 8 == 0 && aligned(gate_up, 16) && aligned(dy, 16) && aligned(d_gate_up, 16);
    const int64_t per_row = vec ? ffn / 8 : ffn;
    const int threads = std::min(256, round_up_warp(per_row));
    const dim3 grid(unsigned(ceil_div(per_row, threads)), grid_yz(rows));
    if (vec)
        silu_mul_bwd_kernel<true><<<grid, threads, 0, stream>>>(gate_up, dy, d_gate_up, rows, ffn);
    else
        silu_mul_bwd_kernel<false><<<grid, threads, 0, stream>>>(gate_up, dy, d_gate_up, rows, ffn);
    check_launch("silu_mul_backward");
}

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double beta1, double beta2,
                double eps, double step_size, double inv_sqrt_bc2, double decay, cudaStream_t stream) {
    if (n <= 0) return;
    const AdamConsts k{beta1, beta2, eps, step_size, inv_sqrt_bc2, decay};
    if (aligned(param, 16) && aligned(grad, 16) && aligned(m, 16) && aligned(v, 16))
        adamw_kernel<true><<<elementwise_grid(ceil_div(n, 4)), 256, 0, stream>>>(param, grad, m, v, n, k);
    else
        adamw_kernel<false><<<elementwise_grid(n), 256, 0, stream>>>(param, grad, m, v, n, k);
    check_launch("adamw_step");
}

size_t sq_norm_workspace_bytes(int64_t n) { return size_t(sq_norm_blocks(n)) * sizeof(double); }

void sq_norm(const float* x, int64_t n, double* result, void* workspace, cudaStream_t stream) {
    double* partial = static_cast<double*>(workspace);
    const int64_t blocks = sq_norm_blocks(n);
    if (n <= 0) {
        const cudaError_t err = cudaMemsetAsync(result, 0, sizeof(double), stream);
        SKV_CHECK(err == cudaSuccess, "grad_sq_norm: cudaMemsetAsync failed: {}", cudaGetErrorString(err));
        return;
    }
    sq_norm_partial_kernel<<<unsigned(blocks), 256, 0, stream>>>(x, n, partial);
    check_launch("grad_sq_norm");
    sq_norm_final_kernel<<<1, 256, 0, stream>>>(partial, blocks, result);
    check_launch("grad_sq_norm (final)");
}

void scale_f32(float* x, int64_t n, float s, cudaStream_t stream) {
    if (n <= 0) return;
    if (aligned(x, 16))
        scale_kernel<true><<<elementwise_grid(ceil_div(n, 4)), 256, 0, stream>>>(x, n, s);
    else
        scale_kernel<false><<<elementwise_grid(n), 256, 0, stream>>>(x, n, s);
    check_launch("scale");
}

void add_f32(float* y, const float* x, int64_t n, float alpha, cudaStream_t stream) {
    if (n <= 0) return;
    if (aligned(x, 16) && aligned(y, 16))
        add_f32_kernel<true><<<elementwise_grid(ceil_div(n, 4)), 256, 0, stream>>>(y, x, n, alpha);
    else
        add_f32_kernel<false><<<elementwise_grid(n), 256, 0, stream>>>(y, x, n, alpha);
    check_launch("add_f32");
}

}  // namespace swiftkv::cuda
