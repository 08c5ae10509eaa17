// The CUDA backend's training ops that reduce over rows, one block per row (launchers declared in
// cuda_train_ops.h, contracts in backend/train_ops.h):
//
//  * rmsnorm_backward: one block per row (two passes over the row, the second from L1/L2); the weight
//    gradient is summed per block in shared memory over the block's rows (grid-stride), the per-block
//    partials go to a workspace and a second kernel adds them to dweight in a fixed order
//    (deterministic, no atomics).
//  * kl_div_loss / mse_loss: one block per row; KL keeps online (max, sum, cross-term) statistics of both
//    softmaxes in one pass over the row and writes the gradient in a second pass.
//
// Launchers never synchronise or allocate; workspaces come from the caller.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_kernel_util.cuh"
#include "backend/cuda/cuda_train_ops.h"

namespace swiftkv::cuda {

namespace {

// --- device helpers -------------------------------------------------------------------------------------

// Sums of two values over the block (blockDim.x a multiple of 32). `scratch`: 66 floats. Ends with a
// barrier so scratch can be reused at once.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
        scratch[warp] = a;
        scratch[32 + warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        float x = lane < warps ? scratch[lane] : 0.0f;
        float y = lane < warps ? scratch[32 + lane] : 0.0f;
        x = warp_sum(x);
        y = warp_sum(y);
        if (lane == 0) {
            scratch[64] = x;
            scratch[65] = y;
        }
    }
    __syncthreads();
    const float2 r = make_float2(scratch[64], scratch[65]);
    __syncthreads();
    return r;
}

__device__ __forceinline__ float4 load_bf16x4(const bf16* p) {
    Bf16x4 v;
    v.u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(v.h[0]), b = __bfloat1622float2(v.h[1]);
    return make_float4(a.x, a.y, b.x, b.y);
}

// ==========================================================================================================
// rmsnorm backward
// ==========================================================================================================
//
// y_j = x_j r w_j, r = (mean(x^2) + eps)^-1/2; with g_j = w_j dy_j:
//   dx_j = r g_j - x_j r^3 (sum_k g_k x_k) / dim,   dweight_j += dy_j x_j r.

constexpr int kNormThreads = 256;
constexpr int64_t kNormMaxPartialBlocks = 256;     // blocks (dweight partial rows) when dweight is set
constexpr int64_t kNormSmemMaxDim = 12000;         // dweight partials in shared memory up to this dim (< 48 KiB)

// kDW: 0 = no dweight, 1 = partials in shared memory, 2 = partials in the workspace (global) directly.
// kVec: dim % 4 == 0 and x/dx/weight 16-byte, dy 8-byte aligned.
template <int kDW, bool kVec>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_bwd_kernel(const float* __restrict__ x,
                                                                   const float* __restrict__ weight,
                                                                   const bf16* __restrict__ dy, float* __restrict__ dx,
                                                                   float* __restrict__ partial, int64_t rows,
                                                                   int64_t dim, float eps, bool accumulate) {
    extern __shared__ float sdw[];  // [dim] (kDW == 1)
    __shared__ float scratch[66];
    float* dw = kDW == 1 ? sdw : (kDW == 2 ? partial + int64_t(blockIdx.x) * dim : nullptr);
    if constexpr (kDW != 0) {
        // (The first row's block reduction below is a barrier between these stores and the accumulation,
        // which the vector path does with a different column-to-thread mapping; every block has a row.)
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) dw[j] = 0.0f;
    }
    const float inv_dim = 1.0f / float(dim);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * dim;
        const bf16* gr = dy + r * dim;
        float* o = dx + r * dim;
        float ss = 0.0f, gx = 0.0f;
        if constexpr (kVec) {
            for (int64_t j = threadIdx.x; j < dim / 4; j += blockDim.x) {
                const float4 xv = reinterpret_cast<const float4*>(xr)[j];
                const float4 wv = __ldg(reinterpret_cast<const float4*>(weight) + j);
                const float4 gv = load_bf16x4(gr + 4 * j);
                ss += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
                gx += wv.x * gv.x * xv.x + wv.y * gv.y * xv.y + wv.z * gv.z * xv.z + wv.w * gv.w * xv.w;
            }
        } else {
            for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
                const float xv = xr[j], gv = __bfloat162float(gr[j]);
                ss += xv * xv;
                gx += weight[j] * gv * xv;
            }
        }
        const float2 sums = block_sum2(ss, gx, scratch);
        const float inv = 1.0f / sqrtf(sums.x * inv_dim + eps);
        const float c = inv * inv * inv * sums.y * inv_dim;
        if constexpr (kVec) {
            for (int64_t j = threadIdx.x; j < dim / 4; j += blockDim.x) {
                const float4 xv = reinterpret_cast<const float4*>(xr)[j];
                const float4 wv = __ldg(reinterpret_cast<const float4*>(weight) + j);
                const float4 gv = load_bf16x4(gr + 4 * j);
                float4 v = make_float4(inv * wv.x * gv.x - c * xv.x, inv * wv.y * gv.y - c * xv.y,
                                       inv * wv.z * gv.z - c * xv.z, inv * wv.w * gv.w - c * xv.w);
                float4* op = reinterpret_cast<float4*>(o) + j;
                if (accumulate) {
                    const float4 prev = *op;
                    v.x += prev.x;
                    v.y += prev.y;
                    v.z += prev.z;
                    v.w += prev.w;
                }
                *op = v;
                if constexpr (kDW != 0) {
                    dw[4 * j] += gv.x * xv.x * inv;
                    dw[4 * j + 1] += gv.y * xv.y * inv;
                    dw[4 * j + 2] += gv.z * xv.z * inv;
                    dw[4 * j + 3] += gv.w * xv.w * inv;
                }
            }
        } else {
            for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
                const float xv = xr[j], gv = __bfloat162float(gr[j]);
                const float v = inv * weight[j] * gv - c * xv;
                o[j] = accumulate ? o[j] + v : v;
                if constexpr (kDW != 0) dw[j] += gv * xv * inv;
            }
        }
    }
    if constexpr (kDW == 1) {
        // The vector path owns columns in groups of 4 per thread, the copy below one per thread.
        __syncthreads();
        float* out = partial + int64_t(blockIdx.x) * dim;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) out[j] = sdw[j];
    }
}

// dweight[j] += sum over blocks b (in order) of partial[b][j].
__global__ void __launch_bounds__(256) rmsnorm_dw_reduce_kernel(const float* __restrict__ partial, int64_t blocks,
                                                                int64_t dim, float* __restrict__ dweight) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    float sum = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) sum += partial[b * dim + j];
    dweight[j] += sum;
}

int64_t rmsnorm_bwd_blocks(int64_t rows, bool has_dweight) {
    return has_dweight ? std::min<int64_t>(rows, kNormMaxPartialBlocks) : std::min<int64_t>(rows, kMaxGridX);
}

template <int kDW>
void launch_rmsnorm_bwd(bool vec, unsigned grid, size_t smem, const float* x, const float* weight, const bf16* dy,
                        float* dx, float* partial, int64_t rows, int64_t dim, float eps, bool accumulate,
                        cudaStream_t stream) {
    if (vec)
        rmsnorm_bwd_kernel<kDW, true><<<grid, kNormThreads, smem, stream>>>(x, weight, dy, dx, partial, rows, dim, eps,
                                                                           accumulate);
    else
        rmsnorm_bwd_kernel<kDW, false><<<grid, kNormThreads, smem, stream>>>(x, weight, dy, dx, partial, rows, dim, eps,
                                                                            accumulate);
}

// ==========================================================================================================
// losses
// ==========================================================================================================

constexpr int kLossThreads = 256;

// Online softmax statistics of z = logits / T: max m, sum s = sum_j e^{z_j - m}, and (teacher only) the
// cross term c = sum_j e^{zt_j - m} (zt_j - zs_j).
struct SoftStats {
    float m = -INFINITY, s = 0.0f, c = 0.0f;
};

__device__ __forceinline__ void stats_add(SoftStats& st, float z, float diff) {
    if (z == -INFINITY) return;  // probability 0: contributes nothing (and no inf * 0)
    if (z > st.m) {
        const float f = expf(st.m - z);  // st.m == -inf: 0
        st.s = st.s * f + 1.0f;
        st.c = st.c * f + diff;
        st.m = z;
    } else {
        const float e = expf(z - st.m);
        st.s += e;
        st.c += e * diff;
    }
}

__device__ __forceinline__ SoftStats stats_merge(SoftStats a, SoftStats b) {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return a;
    const float fa = expf(a.m - m), fb = expf(b.m - m);
    SoftStats r;
    r.m = m;
    r.s = a.s * fa + b.s * fb;
    r.c = a.c * fa + b.c * fb;
    return r;
}

__device__ __forceinline__ SoftStats warp_merge(SoftStats st) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        SoftStats other;
        other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
        other.s = __shfl_xor_sync(0xffffffffu, st.s, o);
        other.c = __shfl_xor_sync(0xffffffffu, st.c, o);
        st = stats_merge(st, other);
    }
    return st;
}

// Merges over the block; every thread gets the result. scratch: 3 * 32 floats + 3.
__device__ SoftStats block_merge(SoftStats st, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    st = warp_merge(st);
    if (lane == 0) {
        scratch[warp] = st.m;
        scratch[32 + warp] = st.s;
        scratch[64 + warp] = st.c;
    }
    __syncthreads();
    if (warp == 0) {
        SoftStats t;
        if (lane < warps) {
            t.m = scratch[lane];
            t.s = scratch[32 + lane];
            t.c = scratch[64 + lane];
        }
        t = warp_merge(t);
        if (lane == 0) {
            scratch[96] = t.m;
            scratch[97] = t.s;
            scratch[98] = t.c;
        }
    }
    __syncthreads();
    SoftStats r;
    r.m = scratch[96];
    r.s = scratch[97];
    r.c = scratch[98];
    __syncthreads();
    return r;
}

// One block per row (grid-stride). kVec: vocab % 4 == 0 and 16-byte aligned logits / gradient.
template <bool kVec>
__global__ void __launch_bounds__(kLossThreads) kl_div_kernel(const float* __restrict__ teacher,
                                                              const float* __restrict__ student,
                                                              const float* __restrict__ row_weights, int64_t rows,
                                                              int64_t vocab, float temperature,
                                                              float* __restrict__ row_loss, float* __restrict__ grad) {
    __shared__ float scratch[100];
    const float inv_t = 1.0f / temperature;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* t = teacher + r * vocab;
        const float* s = student + r * vocab;
        const float w = row_weights ? row_weights[r] : 1.0f;
        float* g = grad ? grad + r * vocab : nullptr;
        if (!row_loss && w == 0.0f) {  // a masked row: nothing to compute
            if (g)
                for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) g[j] = 0.0f;
            continue;
        }
        SoftStats st, ss;
        if constexpr (kVec) {
            for (int64_t j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
                const float4 tv = __ldg(reinterpret_cast<const float4*>(t) + j);
                const float4 sv = __ldg(reinterpret_cast<const float4*>(s) + j);
                const float zt[4] = {tv.x * inv_t, tv.y * inv_t, tv.z * inv_t, tv.w * inv_t};
                const float zs[4] = {sv.x * inv_t, sv.y * inv_t, sv.z * inv_t, sv.w * inv_t};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    stats_add(st, zt[e], zt[e] - zs[e]);
                    stats_add(ss, zs[e], 0.0f);
                }
            }
        } else {
            for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
                const float zt = t[j] * inv_t, zs = s[j] * inv_t;
                stats_add(st, zt, zt - zs);
                stats_add(ss, zs, 0.0f);
            }
        }
        st = block_merge(st, scratch);
        ss = block_merge(ss, scratch);
        const float lse_t = st.m + logf(st.s), lse_s = ss.m + logf(ss.s);
        if (row_loss && threadIdx.x == 0) {
            const double T = double(temperature);
            row_loss[r] = float(T * T *
                                (double(st.c) / double(st.s) - (double(st.m) + log(double(st.s))) +
                                 (double(ss.m) + log(double(ss.s)))));
        }
        if (g) {
            const float k = w * temperature;
            if constexpr (kVec) {
                for (int64_t j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
                    const float4 tv = __ldg(reinterpret_cast<const float4*>(t) + j);
                    const float4 sv = __ldg(reinterpret_cast<const float4*>(s) + j);
                    float4 o;
                    o.x = k * (expf(sv.x * inv_t - lse_s) - expf(tv.x * inv_t - lse_t));
                    o.y = k * (expf(sv.y * inv_t - lse_s) - expf(tv.y * inv_t - lse_t));
                    o.z = k * (expf(sv.z * inv_t - lse_s) - expf(tv.z * inv_t - lse_t));
                    o.w = k * (expf(sv.w * inv_t - lse_s) - expf(tv.w * inv_t - lse_t));
                    reinterpret_cast<float4*>(g)[j] = o;
                }
            } else {
                for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
                    g[j] = k * (expf(s[j] * inv_t - lse_s) - expf(t[j] * inv_t - lse_t));
            }
        }
    }
}

__global__ void __launch_bounds__(kLossThreads) mse_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                                           const float* __restrict__ row_weights, int64_t rows,
                                                           int64_t dim, float* __restrict__ row_loss,
                                                           float* __restrict__ grad) {
    __shared__ float scratch[66];
    const float inv_dim = 1.0f / float(dim);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* ar = a + r * dim;
        const float* br = b + r * dim;
        const float k = (row_weights ? row_weights[r] : 1.0f) * 2.0f * inv_dim;
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            const float d = ar[j] - br[j];
            sum += d * d;
            if (grad) grad[r * dim + j] = k * d;
        }
        if (row_loss) {
            const float2 tot = block_sum2(sum, 0.0f, scratch);
            if (threadIdx.x == 0) row_loss[r] = tot.x * inv_dim;
        }
    }
}

}  // namespace

// ==========================================================================================================
// launchers
// ==========================================================================================================

size_t rmsnorm_backward_workspace_bytes(int64_t rows, int64_t dim, bool has_dweight) {
    if (!has_dweight || rows <= 0 || dim <= 0) return 0;
    return size_t(rmsnorm_bwd_blocks(rows, true)) * size_t(dim) * sizeof(float);
}

void rmsnorm_backward(const float* x, const float* weight, const bf16* dy, float* dx, float* dweight, int64_t rows,
                      int64_t dim, float eps, bool accumulate_dx, void* workspace, cudaStream_t stream) {
    if (rows <= 0 || dim <= 0) return;
    const bool vec = dim % 4 == 0 && aligned(x, 16) && aligned(dx, 16) && aligned(weight, 16) && aligned(dy, 8);
    const int64_t blocks = rmsnorm_bwd_blocks(rows, dweight != nullptr);
    const unsigned grid = grid_x(blocks);
    float* partial = static_cast<float*>(workspace);
    if (!dweight) {
        launch_rmsnorm_bwd<0>(vec, grid, 0, x, weight, dy, dx, nullptr, rows, dim, eps, accumulate_dx, stream);
    } else if (dim <= kNormSmemMaxDim) {
        launch_rmsnorm_bwd<1>(vec, grid, size_t(dim) * sizeof(float), x, weight, dy, dx, partial, rows, dim, eps,
                              accumulate_dx, stream);
    } else {
        launch_rmsnorm_bwd<2>(vec, grid, 0, x, weight, dy, dx, partial, rows, dim, eps, accumulate_dx, stream);
    }
    check_launch("rmsnorm_backward");
    if (dweight) {
        rmsnorm_dw_reduce_kernel<<<unsigned(ceil_div(dim, 256)), 256, 0, stream>>>(partial, int64_t(grid), dim, dweight);
        check_launch("rmsnorm_backward (dweight)");
    }
}

void kl_div_loss(const float* teacher, const float* student, const float* row_weights, int64_t rows, int64_t vocab,
                 float temperature, float* row_loss, float* d_student, cudaStream_t stream) {
    if (rows <= 0 || vocab <= 0) return;
    const bool vec = vocab % 4 == 0 && aligned(teacher, 16) && aligned(student, 16) && (!d_student || aligned(d_student, 16));
    if (vec)
        kl_div_kernel<true><<<grid_x(rows), kLossThreads, 0, stream>>>(teacher, student, row_weights, rows, vocab,
                                                                       temperature, row_loss, d_student);
    else
        kl_div_kernel<false><<<grid_x(rows), kLossThreads, 0, stream>>>(teacher, student, row_weights, rows, vocab,
                                                                        temperature, row_loss, d_student);
    check_launch("kl_div_loss");
}

void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim, float* row_loss,
              float* grad_a, cudaStream_t stream) {
    if (rows <= 0 || dim <= 0 || (!row_loss && !grad_a)) return;
    mse_kernel<<<grid_x(rows), kLossThreads, 0, stream>>>(a, b, row_weights, rows, dim, row_loss, grad_a);
    check_launch("mse_loss");
}

}  // namespace swiftkv::cuda
