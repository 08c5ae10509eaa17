// The CUDA backend's training attention over packed sequences (issue 6, SwiftKV self-distillation;
// launchers declared in cuda_train_ops.h, contracts in backend/train_ops.h):
//
//  * attention_forward_train / attention_backward: FlashAttention-2 style tensor-core kernels for head_dim
//    64 and 128 (mma.sync m16n8k16 bf16 -> f32, ldmatrix from XOR-swizzled shared memory, cp.async double
//    buffering); a SIMT path for every other case (any head_dim <= 256, unaligned rows).
//      forward: CTA = (64-query tile, query head, sequence), 4 warps x 16 query rows, Q fragments in
//        registers, 64-key K/V tiles double-buffered, online softmax in registers; writes out (bf16)
//        and lse (f32, natural log). Causal: key tiles past the tile's last query are never loaded.
//      backward: a small kernel computes D = rowsum(dO * O) (f32); the main kernel's CTA owns a 64-key
//        block of one KV head of one sequence (4 warps x 16 keys) and walks every query head of the
//        group and every 64-query tile at or after the key block (Q, dO, lse, D double-buffered). Per tile:
//        S^T = K Q^T, P^T = exp(S^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D),
//        dK += dS^T Q, all in registers; dS^T goes to shared memory (bf16) and dQ_tile = dS K is
//        added to an f32 dQ accumulator in global memory with atomics (vector atomics on sm_90). dK/dV
//        stay in registers for the whole CTA (no atomics) and are written (or added) once at the end;
//        a last kernel scales dQ and writes (or adds) it in bf16.
//
// Launchers never synchronise or allocate; workspaces come from the caller.
//
// fmt under nvcc: FMT_CONSTEVAL= and FMT_USE_CONSTEXPR=1 come from the top-level CMakeLists.txt.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_kernel_util.cuh"
#include "backend/cuda/cuda_mma.cuh"
#include "backend/cuda/cuda_train_ops.h"
#include "core/error.h"

namespace swiftkv::cuda {

namespace {

std::atomic<bool> g_force_simple_attention{false};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ==========================================================================================================
// attention (training): shared pieces
// ==========================================================================================================

struct AttnArgs {
    const bf16* __restrict__ q;
    const bf16* __restrict__ k;
    const bf16* __restrict__ v;
    const bf16* __restrict__ o;     // forward output (backward input)
    const bf16* __restrict__ dout;
    bf16* __restrict__ out;         // forward output
    float* __restrict__ lse;
    bf16* __restrict__ dq;
    bf16* __restrict__ dk;
    bf16* __restrict__ dv;
    float* __restrict__ dsum;       // [rows, n_heads]: D = rowsum(dO * O)
    float* __restrict__ dq_acc;     // [rows, n_heads, head_dim] f32
    float* __restrict__ dk_acc;     // SIMT path: [rows, n_kv_heads, head_dim] f32
    float* __restrict__ dv_acc;
    const int32_t* __restrict__ cu;
    int64_t q_stride;
    int64_t kv_stride;
    int64_t rows;
    int num_seqs;
    int n_heads;
    int n_kvh;
    int group;
    int head_dim;
    float scale;
    float scale_log2;
    bool accumulate;
};

// ---- tensor-core helpers (PTX wrappers, swizzle: cuda_mma.cuh) ---------------------------------------------

__device__ __forceinline__ void atomic_add2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
    atomicAdd(p, x);
    atomicAdd(p + 1, y);
#endif
}

// Shared-memory address of chunk c of row r of a swizzled [rows][W] tile (swz, cuda_mma.cuh; the swizzle
// also keeps the fragment stores of dS^T free of bank conflicts).
template <int W>
__device__ __forceinline__ uint32_t swz_addr(uint32_t base, int r, int c) {
    return base + uint32_t(swz<W>(r, c)) * 2u;
}

// The four ldmatrix patterns (tile base, first row/chunk of the 16x16 operand block):
//  A from [m][k] storage (m rows):      ldmatrix_x4       row m0 + (lane & 15),                         chunk k0/8 + (lane >> 4)
//  A from [k][m] storage (transposed):  ldmatrix_x4_trans row k0 + (lane & 7) + ((lane >> 4) << 3),        chunk m0/8 + ((lane >> 3) & 1)
//  B (two n-tiles) from [n][k] storage: ldmatrix_x4       row n0 + (lane & 7) + ((lane >> 4) << 3),        chunk k0/8 + ((lane >> 3) & 1)
//  B (two n-tiles) from [k][n] storage: ldmatrix_x4_trans row k0 + (lane & 7) + (((lane >> 3) & 1) << 3), chunk n0/8 + (lane >> 4)
// For B, registers {0, 1} are n-tile n0 and {2, 3} n-tile n0 + 8.
template <int W>
__device__ __forceinline__ void lds_a_mk(uint32_t (&r)[4], uint32_t base, int m0, int kc, int lane) {
    ldmatrix_x4(r, swz_addr<W>(base, m0 + (lane & 15), kc + (lane >> 4)));
}
template <int W>
__device__ __forceinline__ void lds_a_km(uint32_t (&r)[4], uint32_t base, int k0, int mc, int lane) {
    ldmatrix_x4_trans(r, swz_addr<W>(base, k0 + (lane & 7) + ((lane >> 4) << 3), mc + ((lane >> 3) & 1)));
}
template <int W>
__device__ __forceinline__ void lds_b_nk(uint32_t (&r)[4], uint32_t base, int n0, int kc, int lane) {
    ldmatrix_x4(r, swz_addr<W>(base, n0 + (lane & 7) + ((lane >> 4) << 3), kc + ((lane >> 3) & 1)));
}
template <int W>
__device__ __forceinline__ void lds_b_kn(uint32_t (&r)[4], uint32_t base, int k0, int nc, int lane) {
    ldmatrix_x4_trans(r, swz_addr<W>(base, k0 + (lane & 7) + (((lane >> 3) & 1) << 3), nc + (lane >> 4)));
}

// The warp-level products of the attention kernels; acc holds NT n-tiles of 8 columns (NT even).
// mma_a_b: acc += a B, a a register A fragment (16 x 16), B (16 x 8*NT) from a tile stored [n][k] (kNK:
// rows row0..row0+8*NT-1 at chunk chunk0) or [k][n] (kKN: rows row0..row0+15 from chunk chunk0 on).
enum class BTile { kNK, kKN };
template <int W, int NT, BTile kB>
__device__ __forceinline__ void mma_a_b(float (&acc)[NT][4], const uint32_t (&a)[4], uint32_t b_base, int row0,
                                        int chunk0, int lane) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[4];
        if constexpr (kB == BTile::kNK) lds_b_nk<W>(b, b_base, row0 + np * 16, chunk0, lane);
        else lds_b_kn<W>(b, b_base, row0, chunk0 + 2 * np, lane);
        mma_bf16(acc[2 * np], a, b[0], b[1]);
        mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
}
// mma_abt: acc = A B^T over all W columns, A rows m0..m0+15 of an [m][W] tile, B rows n0..n0+8*NT-1 of an
// [n][W] tile.
template <int W, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], uint32_t a_base, int m0, uint32_t b_base, int n0,
                                        int lane) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < W / 16; ++ks) {
        uint32_t a[4];
        lds_a_mk<W>(a, a_base, m0, 2 * ks, lane);
        mma_a_b<W, NT, BTile::kNK>(acc, a, b_base, n0, 2 * ks, lane);
    }
}

// Copies `nrows` rows of HD bf16 (row r at src + r*stride, valid while r < valid_rows; zero-filled
// otherwise) into a swizzled [nrows][HD] tile, 16 bytes per cp.async.
template <int HD, int NROWS, int NT>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t stride, int valid_rows, int tid) {
    constexpr int CPR = HD / 8;
    const uint32_t base = smem_u32(tile);
    static_assert(NROWS * CPR % NT == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
    for (int it = 0; it < NROWS * CPR / NT; ++it) {
        const int e = tid + it * NT;
        const int r = e / CPR, c = e % CPR;
        const bool valid = r < valid_rows;
        cp_async16(swz_addr<HD>(base, r, c), valid ? src + int64_t(r) * stride + c * 8 : src, valid);
    }
}

constexpr int kTileM = 64;   // queries per tile
constexpr int kTileN = 64;   // keys per tile
constexpr int kAttnThreads = 128;

// ==========================================================================================================
// attention forward (tensor cores)
// ==========================================================================================================

template <int HD>
constexpr size_t fwd_smem_bytes() {
    return size_t(kTileM * HD + 4 * kTileN * HD) * sizeof(bf16);
}

template <int HD>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_kernel(const AttnArgs a) {
    constexpr int KS = HD / 16;   // k-steps of Q K^T
    constexpr int DT = HD / 8;    // output n-tiles
    constexpr int NS = kTileN / 8;  // score n-tiles
    constexpr int CPR = HD / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [kTileM][HD]; later the output staging
    bf16* sK = sQ + kTileM * HD;                   // [2][kTileN][HD]
    bf16* sV = sK + 2 * kTileN * HD;               // [2][kTileN][HD]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, kvh = h / a.group;
    const int mb = int(gridDim.x) - 1 - int(blockIdx.x);  // the longest tiles first
    const float sl2 = a.scale_log2;

    for (int s = blockIdx.z; s < a.num_seqs; s += gridDim.z) {
        const int start = __ldg(a.cu + s), len = __ldg(a.cu + s + 1) - start;
        const int q0 = mb * kTileM;
        if (q0 >= len) continue;
        const int kend = min(len, q0 + kTileM);  // keys visible to some row of the tile
        const int n_tiles = (kend + kTileN - 1) / kTileN;
        const bf16* kbase = a.k + int64_t(start) * a.kv_stride + int64_t(kvh) * HD;
        const bf16* vbase = a.v + int64_t(start) * a.kv_stride + int64_t(kvh) * HD;

        load_tile<HD, kTileM, kAttnThreads>(sQ, a.q + int64_t(start + q0) * a.q_stride + int64_t(h) * HD, a.q_stride,
                                            len - q0, tid);
        load_tile<HD, kTileN, kAttnThreads>(sK, kbase, a.kv_stride, kend, tid);
        load_tile<HD, kTileN, kAttnThreads>(sV, vbase, a.kv_stride, kend, tid);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        uint32_t qf[KS][4];
        const uint32_t q_base = smem_u32(sQ);
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) lds_a_mk<HD>(qf[ks], q_base, warp * 16, 2 * ks, lane);

        float o[DT][4];
#pragma unroll
        for (int d = 0; d < DT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
        float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
        // This thread's rows (within the sequence): i0 and i0 + 8.
        const int i0 = q0 + warp * 16 + (lane >> 2);

        for (int t = 0; t < n_tiles; ++t) {
            const int stage = t & 1;
            if (t > 0) {
                cp_async_wait<0>();
                __syncthreads();  // tile t landed for everyone; everyone is done with tile t - 1
            }
            if (t + 1 < n_tiles) {
                const int j1 = (t + 1) * kTileN;
                load_tile<HD, kTileN, kAttnThreads>(sK + (stage ^ 1) * kTileN * HD, kbase + int64_t(j1) * a.kv_stride,
                                                    a.kv_stride, kend - j1, tid);
                load_tile<HD, kTileN, kAttnThreads>(sV + (stage ^ 1) * kTileN * HD, vbase + int64_t(j1) * a.kv_stride,
                                                    a.kv_stride, kend - j1, tid);
                cp_async_commit();
            }
            const uint32_t k_base = smem_u32(sK + stage * kTileN * HD);
            const uint32_t v_base = smem_u32(sV + stage * kTileN * HD);

            // S = Q K^T: 16 x 64 per warp.
            float sc[NS][4];
#pragma unroll
            for (int nt = 0; nt < NS; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) mma_a_b<HD, NS, BTile::kNK>(sc, qf[ks], k_base, 0, 2 * ks, lane);
            // Causal mask (only tiles reaching past the tile's first query row).
            const int j0 = t * kTileN;
            if (j0 + kTileN - 1 > q0) {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = j0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                        if (key > i0 + 8 * (e >> 1)) sc[nt][e] = -INFINITY;
                    }
            }
            // Online softmax in log2 units (scale > 0, so the max commutes with the scaling).
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < NS; ++nt) {
                mx[0] = fmaxf(mx[0], fmaxf(sc[nt][0], sc[nt][1]));
                mx[1] = fmaxf(mx[1], fmaxf(sc[nt][2], sc[nt][3]));
            }
            float m_use[2], alpha[2];
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
                mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
                const float m_new = fmaxf(row_max[hh], mx[hh] * sl2);
                m_use[hh] = m_new == -INFINITY ? 0.0f : m_new;
                alpha[hh] = fast_exp2(row_max[hh] - m_use[hh]);
                row_max[hh] = m_new;
            }
            float ps[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float pe = fast_exp2(fmaf(sc[nt][e], sl2, -m_use[e >> 1]));
                    sc[nt][e] = pe;
                    ps[e >> 1] += pe;
                }
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) row_sum[hh] = row_sum[hh] * alpha[hh] + ps[hh];
            // Once the row maxima settle alpha is exactly 1 across the warp: skip the rescale.
            if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
                for (int d = 0; d < DT; ++d) {
                    o[d][0] *= alpha[0];
                    o[d][1] *= alpha[0];
                    o[d][2] *= alpha[1];
                    o[d][3] *= alpha[1];
                }
            }
            // O += P V.
#pragma unroll
            for (int kk = 0; kk < kTileN / 16; ++kk) {
                uint32_t pa[4];
                pack_a_frag(pa, sc[2 * kk], sc[2 * kk + 1]);
                mma_a_b<HD, DT, BTile::kKN>(o, pa, v_base, kk * 16, 0, lane);
            }
        }

#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            row_sum[hh] += __shfl_xor_sync(0xffffffffu, row_sum[hh], 1);
            row_sum[hh] += __shfl_xor_sync(0xffffffffu, row_sum[hh], 2);
        }
        // lse (natural log) of the thread's two rows.
        if ((lane & 3) == 0) {
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int i = i0 + 8 * hh;
                if (i < len) a.lse[int64_t(start + i) * a.n_heads + h] = (row_max[hh] + log2f(row_sum[hh])) * kLn2;
            }
        }
        // Normalise and stage the warp's 16 rows as bf16 in its own rows of sQ (only this warp read them),
        // then write 16-byte vectors.
        float inv[2];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) inv[hh] = row_sum[hh] > 0.0f ? 1.0f / row_sum[hh] : 0.0f;
        __syncwarp();
#pragma unroll
        for (int d = 0; d < DT; ++d)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int r = warp * 16 + (lane >> 2) + 8 * hh;
                *reinterpret_cast<uint32_t*>(sQ + swz<HD>(r, d) + (lane & 3) * 2) =
                    pack_bf16(o[d][2 * hh] * inv[hh], o[d][2 * hh + 1] * inv[hh]);
            }
        __syncwarp();
        const int64_t out_stride = int64_t(a.n_heads) * HD;
        for (int e = lane; e < 16 * CPR; e += 32) {
            const int r = warp * 16 + e / CPR, c = e % CPR;
            const int i = q0 + r;
            if (i < len)
                *reinterpret_cast<uint4*>(a.out + int64_t(start + i) * out_stride + int64_t(h) * HD + c * 8) =
                    *reinterpret_cast<const uint4*>(sQ + swz<HD>(r, c));
        }
        __syncthreads();  // shared memory is reloaded for the next sequence
    }
}

// ==========================================================================================================
// attention backward (tensor cores)
// ==========================================================================================================

// D[row, h] = sum_d dout[row, h, d] * out[row, h, d]; one warp per (row, head). kVec: head_dim % 8 == 0
// and 16-byte aligned out / dout.
template <bool kVec>
__global__ void __launch_bounds__(256) attn_bwd_dot_kernel(const AttnArgs a) {
    const int64_t pairs = a.rows * a.n_heads;
    const int lane = threadIdx.x & 31;
    const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
    const int hd = a.head_dim;
    for (int64_t p = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); p < pairs; p += warps) {
        const bf16* o = a.o + p * hd;  // out is [rows, n_heads*hd] contiguous: (row, head) pair p at p*hd
        const bf16* d = a.dout + p * hd;
        float sum = 0.0f;
        if constexpr (kVec) {
            for (int c = lane; c < hd / 8; c += 32) {
                Bf16x8 x, y;
                x.u = __ldg(reinterpret_cast<const uint4*>(o) + c);
                y.u = __ldg(reinterpret_cast<const uint4*>(d) + c);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const float2 fx = __bfloat1622float2(x.h[k]), fy = __bfloat1622float2(y.h[k]);
                    sum = fmaf(fx.x, fy.x, sum);
                    sum = fmaf(fx.y, fy.y, sum);
                }
            }
        } else {
            for (int c = lane; c < hd; c += 32) sum = fmaf(__bfloat162float(o[c]), __bfloat162float(d[c]), sum);
        }
        sum = warp_sum(sum);
        if (lane == 0) a.dsum[p] = sum;
    }
}

template <int HD>
constexpr size_t bwd_smem_bytes() {
    // sK, sV [kTileN][HD]; sQ, sdO [2][kTileM][HD]; sdS [kTileN][kTileM] (bf16); lse, D [2][kTileM] (f32)
    return size_t(2 * kTileN * HD + 4 * kTileM * HD + kTileN * kTileM) * sizeof(bf16) + 4 * kTileM * sizeof(float);
}

template <int HD>
__global__ void __launch_bounds__(kAttnThreads, 2) attn_bwd_kernel(const AttnArgs a) {
    static_assert(kTileM == kTileN, "the causal tile walk assumes square tiles");
    constexpr int DT = HD / 8;         // head_dim n-tiles
    constexpr int QS = HD >= 128 ? 2 : 1;   // query sub-blocks per tile
    constexpr int QW = kTileM / QS;          // queries per sub-block
    constexpr int NQS = QW / 8;              // query n-tiles per sub-block
    static_assert(QW % 32 == 0, "sub-blocks of whole 16-query k-steps and 16-query B loads");
    constexpr int DQC = HD < 64 ? HD : 64;  // dQ columns per pass (register budget)
    constexpr int DQT = DQC / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // [kTileN][HD]
    bf16* sV = sK + kTileN * HD;                   // [kTileN][HD]
    bf16* sQ = sV + kTileN * HD;                   // [2][kTileM][HD]
    bf16* sdO = sQ + 2 * kTileM * HD;              // [2][kTileM][HD]
    bf16* sdS = sdO + 2 * kTileM * HD;             // [kTileN][kTileM]: dS^T (key-major)
    float* sL = reinterpret_cast<float*>(sdS + kTileN * kTileM);  // [2][kTileM]: lse * log2(e)
    float* sD = sL + 2 * kTileM;                                   // [2][kTileM]: D

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int kb = blockIdx.x, kvh = blockIdx.y;
    const int G = a.group;
    const float sl2 = a.scale_log2;
    const int64_t out_stride = int64_t(a.n_heads) * HD;

    for (int s = blockIdx.z; s < a.num_seqs; s += gridDim.z) {
        const int start = __ldg(a.cu + s), len = __ldg(a.cu + s + 1) - start;
        const int k0 = kb * kTileN;
        if (k0 >= len) continue;
        const int qb0 = k0 / kTileM;
        const int nqb = (len + kTileM - 1) / kTileM - qb0;
        const int iters = G * nqb;

        // Stage `it` (query head kvh*G + it / nqb, query tile qb0 + it % nqb) into buffer `buf`.
        auto load_q_stage = [&](int it, int buf) {
            const int hq = kvh * G + it / nqb;
            const int q0 = (qb0 + it % nqb) * kTileM;
            load_tile<HD, kTileM, kAttnThreads>(sQ + buf * kTileM * HD,
                                                a.q + int64_t(start + q0) * a.q_stride + int64_t(hq) * HD, a.q_stride,
                                                len - q0, tid);
            load_tile<HD, kTileM, kAttnThreads>(sdO + buf * kTileM * HD,
                                                a.dout + int64_t(start + q0) * out_stride + int64_t(hq) * HD,
                                                out_stride, len - q0, tid);
            if (tid < kTileM) {
                const int i = q0 + tid;
                const bool valid = i < len;
                const int64_t idx = int64_t(start + i) * a.n_heads + hq;
                sL[buf * kTileM + tid] = valid ? a.lse[idx] * kLog2e : INFINITY;  // padding rows: P = 0
                sD[buf * kTileM + tid] = valid ? a.dsum[idx] : 0.0f;
            }
        };

        load_tile<HD, kTileN, kAttnThreads>(sK, a.k + int64_t(start + k0) * a.kv_stride + int64_t(kvh) * HD,
                                            a.kv_stride, len - k0, tid);
        load_tile<HD, kTileN, kAttnThreads>(sV, a.v + int64_t(start + k0) * a.kv_stride + int64_t(kvh) * HD,
                                            a.kv_stride, len - k0, tid);
        load_q_stage(0, 0);
        cp_async_commit();

        float dk[DT][4], dv[DT][4];
#pragma unroll
        for (int d = 0; d < DT; ++d)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.0f;

        const uint32_t k_base = smem_u32(sK), v_base = smem_u32(sV), ds_base = smem_u32(sdS);
        // This thread's keys (within the sequence): key_lo and key_lo + 8.
        const int key_lo = k0 + warp * 16 + (lane >> 2);

        for (int it = 0; it < iters; ++it) {
            const int buf = it & 1;
            cp_async_wait<0>();
            __syncthreads();  // stage `it` landed for everyone; everyone is done with iteration it - 1
            if (it + 1 < iters) {
                load_q_stage(it + 1, buf ^ 1);
                cp_async_commit();
            }
            const int hq = kvh * G + it / nqb;
            const int q0 = (qb0 + it % nqb) * kTileM;
            const uint32_t q_base = smem_u32(sQ + buf * kTileM * HD);
            const uint32_t do_base = smem_u32(sdO + buf * kTileM * HD);
            const float* lrow = sL + buf * kTileM;
            const float* drow = sD + buf * kTileM;
            const bool diag = q0 == k0;

            // The tile's queries in QS sub-blocks of QW (register budget: S^T and dP^T of one sub-block
            // live at a time next to the dK/dV accumulators).
#pragma unroll 1
            for (int sub = 0; sub < QS; ++sub) {
                const int qo = sub * QW;
                // S^T = K Q^T: 16 keys x QW queries per warp.
                float st[NQS][4];
                mma_abt<HD, NQS>(st, k_base, warp * 16, q_base, qo, lane);
                // P^T = exp(scale S^T - lse); zero above the diagonal (key > query) on the diagonal tile.
#pragma unroll
                for (int nt = 0; nt < NQS; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int qi = qo + nt * 8 + (lane & 3) * 2 + (e & 1);
                        float p = fast_exp2(fmaf(st[nt][e], sl2, -lrow[qi]));
                        if (diag && key_lo + 8 * (e >> 1) > q0 + qi) p = 0.0f;
                        st[nt][e] = p;
                    }
                // dV += P^T dO.
#pragma unroll
                for (int kk = 0; kk < QW / 16; ++kk) {
                    uint32_t pa[4];
                    pack_a_frag(pa, st[2 * kk], st[2 * kk + 1]);
                    mma_a_b<HD, DT, BTile::kKN>(dv, pa, do_base, qo + kk * 16, 0, lane);
                }
                // dP^T = V dO^T.
                float dpt[NQS][4];
                mma_abt<HD, NQS>(dpt, v_base, warp * 16, do_base, qo, lane);
                // dS^T = P^T (dP^T - D).
#pragma unroll
                for (int nt = 0; nt < NQS; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int qi = qo + nt * 8 + (lane & 3) * 2 + (e & 1);
                        dpt[nt][e] = st[nt][e] * (dpt[nt][e] - drow[qi]);
                    }
                // dK += dS^T Q (scaled at the end), and dS^T to shared memory for dQ.
#pragma unroll
                for (int kk = 0; kk < QW / 16; ++kk) {
                    uint32_t da[4];
                    pack_a_frag(da, dpt[2 * kk], dpt[2 * kk + 1]);
                    const int r = warp * 16 + (lane >> 2), c = (qo >> 3) + 2 * kk;
                    *reinterpret_cast<uint32_t*>(sdS + swz<kTileM>(r, c) + (lane & 3) * 2) = da[0];
                    *reinterpret_cast<uint32_t*>(sdS + swz<kTileM>(r + 8, c) + (lane & 3) * 2) = da[1];
                    *reinterpret_cast<uint32_t*>(sdS + swz<kTileM>(r, c + 1) + (lane & 3) * 2) = da[2];
                    *reinterpret_cast<uint32_t*>(sdS + swz<kTileM>(r + 8, c + 1) + (lane & 3) * 2) = da[3];
                    mma_a_b<HD, DT, BTile::kKN>(dk, da, q_base, qo + kk * 16, 0, lane);
                }
            }
            __syncthreads();  // dS^T complete

            // dQ (64 queries x HD; warp w: queries 16w..16w+15) += dS K, into the f32 accumulator.
#pragma unroll
            for (int c0 = 0; c0 < HD; c0 += DQC) {
                float acc[DQT][4];
#pragma unroll
                for (int nt = 0; nt < DQT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < kTileN / 16; ++kk) {
                    uint32_t da[4];
                    lds_a_km<kTileM>(da, ds_base, kk * 16, 2 * warp, lane);
                    mma_a_b<HD, DQT, BTile::kKN>(acc, da, k_base, kk * 16, c0 / 8, lane);
                }
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int i = q0 + warp * 16 + (lane >> 2) + 8 * hh;
                    if (i < len) {
                        float* dst = a.dq_acc + (int64_t(start + i) * a.n_heads + hq) * HD + c0 + (lane & 3) * 2;
#pragma unroll
                        for (int nt = 0; nt < DQT; ++nt) atomic_add2(dst + nt * 8, acc[nt][2 * hh], acc[nt][2 * hh + 1]);
                    }
                }
            }
        }

        // dK (scaled), dV: written or added, 4 bytes per store (once per CTA).
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int key = key_lo + 8 * hh;
            if (key >= len) continue;
            const int64_t off = int64_t(start + key) * a.kv_stride + int64_t(kvh) * HD + (lane & 3) * 2;
#pragma unroll
            for (int d = 0; d < DT; ++d) {
                float2 kv2 = make_float2(dk[d][2 * hh] * a.scale, dk[d][2 * hh + 1] * a.scale);
                float2 vv2 = make_float2(dv[d][2 * hh], dv[d][2 * hh + 1]);
                __nv_bfloat162* pk = reinterpret_cast<__nv_bfloat162*>(a.dk + off + d * 8);
                __nv_bfloat162* pv = reinterpret_cast<__nv_bfloat162*>(a.dv + off + d * 8);
                if (a.accumulate) {
                    const float2 ok = __bfloat1622float2(*pk), ov = __bfloat1622float2(*pv);
                    kv2.x += ok.x;
                    kv2.y += ok.y;
                    vv2.x += ov.x;
                    vv2.y += ov.y;
                }
                *pk = __floats2bfloat162_rn(kv2.x, kv2.y);
                *pv = __floats2bfloat162_rn(vv2.x, vv2.y);
            }
        }
        __syncthreads();  // shared memory is reloaded for the next sequence
    }
}

// dq[row, h, :] (q layout) = (accumulate ? dq : 0) + scale * dq_acc[row, h, :].
__global__ void __launch_bounds__(256) attn_dq_store_kernel(const AttnArgs a) {
    const int hd = a.head_dim;
    const int64_t total = a.rows * a.n_heads * hd;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int64_t pair = e / hd, d = e - pair * hd;
        const int64_t row = pair / a.n_heads, h = pair - row * a.n_heads;
        bf16* p = a.dq + row * a.q_stride + h * hd + d;
        float v = a.scale * a.dq_acc[e];
        if (a.accumulate) v += __bfloat162float(*p);
        *p = __float2bfloat16_rn(v);
    }
}

// ==========================================================================================================
// attention (SIMT fallback): any head_dim <= 256
// ==========================================================================================================

constexpr int kSimpleMaxHd = 256;
constexpr int kSimpleWarps = 4;
constexpr int kSimplePerLane = kSimpleMaxHd / 32;

// One block (4 warps) per (row, query head); the warps take every 4th key with their own online softmax
// state and merge at the end.
__global__ void __launch_bounds__(kSimpleWarps * 32) attn_fwd_simple_kernel(const AttnArgs a) {
    __shared__ float s_m[kSimpleWarps], s_l[kSimpleWarps];
    __shared__ float s_acc[kSimpleWarps][kSimpleMaxHd];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int hd = a.head_dim;
    const int h = blockIdx.y, kvh = h / a.group;
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const int s = seq_of_row(a.cu, a.num_seqs, row);
        const int64_t start = __ldg(a.cu + s);
        const bf16* q = a.q + row * a.q_stride + int64_t(h) * hd;
        float qv[kSimplePerLane], acc[kSimplePerLane];
#pragma unroll
        for (int c = 0; c < kSimplePerLane; ++c) {
            const int d = lane + 32 * c;
            qv[c] = d < hd ? __bfloat162float(q[d]) : 0.0f;
            acc[c] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        for (int64_t j = start + warp; j <= row; j += kSimpleWarps) {
            const bf16* kr = a.k + j * a.kv_stride + int64_t(kvh) * hd;
            const bf16* vr = a.v + j * a.kv_stride + int64_t(kvh) * hd;
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < kSimplePerLane; ++c) {
                const int d = lane + 32 * c;
                if (d < hd) dot = fmaf(qv[c], __bfloat162float(kr[d]), dot);
            }
            const float sc = warp_sum(dot) * a.scale;
            const float m_new = fmaxf(m, sc);
            const float f = expf(m - m_new), p = expf(sc - m_new);
            l = l * f + p;
#pragma unroll
            for (int c = 0; c < kSimplePerLane; ++c) {
                const int d = lane + 32 * c;
                acc[c] = acc[c] * f + (d < hd ? p * __bfloat162float(vr[d]) : 0.0f);
            }
            m = m_new;
        }
        if (lane == 0) {
            s_m[warp] = m;
            s_l[warp] = l;
        }
#pragma unroll
        for (int c = 0; c < kSimplePerLane; ++c) s_acc[warp][lane + 32 * c] = acc[c];
        __syncthreads();
        float M = -INFINITY;
        for (int w = 0; w < kSimpleWarps; ++w) M = fmaxf(M, s_m[w]);
        float L = 0.0f, wf[kSimpleWarps];
        for (int w = 0; w < kSimpleWarps; ++w) {
            wf[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M);
            L += s_l[w] * wf[w];
        }
        bf16* o = a.out + row * int64_t(a.n_heads) * hd + int64_t(h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.0f;
            for (int w = 0; w < kSimpleWarps; ++w) v += s_acc[w][d] * wf[w];
            o[d] = __float2bfloat16_rn(v / L);
        }
        if (threadIdx.x == 0) a.lse[row * a.n_heads + h] = M + logf(L);
        __syncthreads();
    }
}

// One block per (row, query head): dq of the row directly; dk, dv into f32 accumulators with atomics.
__global__ void __launch_bounds__(kSimpleWarps * 32) attn_bwd_simple_kernel(const AttnArgs a) {
    __shared__ float s_dq[kSimpleWarps][kSimpleMaxHd];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int hd = a.head_dim;
    const int h = blockIdx.y, kvh = h / a.group;
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const int s = seq_of_row(a.cu, a.num_seqs, row);
        const int64_t start = __ldg(a.cu + s);
        const bf16* q = a.q + row * a.q_stride + int64_t(h) * hd;
        const int64_t oi = row * int64_t(a.n_heads) * hd + int64_t(h) * hd;
        float qv[kSimplePerLane], dov[kSimplePerLane], dq[kSimplePerLane];
        float dsum = 0.0f;
#pragma unroll
        for (int c = 0; c < kSimplePerLane; ++c) {
            const int d = lane + 32 * c;
            qv[c] = d < hd ? __bfloat162float(q[d]) : 0.0f;
            dov[c] = d < hd ? __bfloat162float(a.dout[oi + d]) : 0.0f;
            dsum += d < hd ? dov[c] * __bfloat162float(a.o[oi + d]) : 0.0f;
            dq[c] = 0.0f;
        }
        dsum = warp_sum(dsum);
        const float lse = a.lse[row * a.n_heads + h];
        for (int64_t j = start + warp; j <= row; j += kSimpleWarps) {
            const bf16* kr = a.k + j * a.kv_stride + int64_t(kvh) * hd;
            const bf16* vr = a.v + j * a.kv_stride + int64_t(kvh) * hd;
            float qk = 0.0f, dv = 0.0f;
#pragma unroll
            for (int c = 0; c < kSimplePerLane; ++c) {
                const int d = lane + 32 * c;
                if (d < hd) {
                    qk = fmaf(qv[c], __bfloat162float(kr[d]), qk);
                    dv = fmaf(dov[c], __bfloat162float(vr[d]), dv);
                }
            }
            qk = warp_sum(qk);
            dv = warp_sum(dv);
            const float p = expf(qk * a.scale - lse);
            const float ds = p * (dv - dsum);
            float* dka = a.dk_acc + (j * a.n_kvh + kvh) * hd;
            float* dva = a.dv_acc + (j * a.n_kvh + kvh) * hd;
#pragma unroll
            for (int c = 0; c < kSimplePerLane; ++c) {
                const int d = lane + 32 * c;
                if (d < hd) {
                    dq[c] = fmaf(ds, __bfloat162float(kr[d]), dq[c]);
                    atomicAdd(dka + d, a.scale * ds * qv[c]);
                    atomicAdd(dva + d, p * dov[c]);
                }
            }
        }
#pragma unroll
        for (int c = 0; c < kSimplePerLane; ++c) s_dq[warp][lane + 32 * c] = dq[c];
        __syncthreads();
        bf16* dqr = a.dq + row * a.q_stride + int64_t(h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.0f;
            for (int w = 0; w < kSimpleWarps; ++w) v += s_dq[w][d];
            v *= a.scale;
            if (a.accumulate) v += __bfloat162float(dqr[d]);
            dqr[d] = __float2bfloat16_rn(v);
        }
        __syncthreads();
    }
}

// dk/dv (k/v layout) = (accumulate ? dk/dv : 0) + the f32 accumulators.
__global__ void __launch_bounds__(256) attn_dkv_store_kernel(const AttnArgs a) {
    const int hd = a.head_dim;
    const int64_t total = a.rows * a.n_kvh * hd;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int64_t pair = e / hd, d = e - pair * hd;
        const int64_t row = pair / a.n_kvh, h = pair - row * a.n_kvh;
        const int64_t off = row * a.kv_stride + h * hd + d;
        float k = a.dk_acc[e], v = a.dv_acc[e];
        if (a.accumulate) {
            k += __bfloat162float(a.dk[off]);
            v += __bfloat162float(a.dv[off]);
        }
        a.dk[off] = __float2bfloat16_rn(k);
        a.dv[off] = __float2bfloat16_rn(v);
    }
}

// ---- host-side planning --------------------------------------------------------------------------------------

bool force_simple_attention() {
    if (g_force_simple_attention.load(std::memory_order_relaxed)) return true;
    const char* env = std::getenv("SWIFTKV_TRAIN_ATTENTION");
    return env && std::strcmp(env, "simple") == 0;
}

bool tensor_core_path(const TrainAttention& t, bool backward) {
    if (force_simple_attention()) return false;
    if (t.head_dim != 64 && t.head_dim != 128) return false;
    if (!(t.scale > 0.0f)) return false;
    if (t.q_stride % 8 != 0 || t.kv_stride % 8 != 0) return false;
    if (!aligned(t.q, 16) || !aligned(t.k, 16) || !aligned(t.v, 16) || !aligned(t.out, 16)) return false;
    if (backward && (!aligned(t.dout, 16) || !aligned(t.dk, 4) || !aligned(t.dv, 4))) return false;
    return true;
}

int64_t max_len_of(const TrainAttention& t) {
    return t.max_seq_len > 0 ? std::min(t.max_seq_len, t.rows) : t.rows;
}

AttnArgs make_args(const TrainAttention& t) {
    AttnArgs a{};
    a.q = t.q;
    a.k = t.k;
    a.v = t.v;
    a.o = t.out;
    a.dout = t.dout;
    a.out = t.out;
    a.lse = t.lse;
    a.dq = t.dq;
    a.dk = t.dk;
    a.dv = t.dv;
    a.cu = t.cu_seqlens;
    a.q_stride = t.q_stride;
    a.kv_stride = t.kv_stride;
    a.rows = t.rows;
    a.num_seqs = int(t.num_seqs);
    a.n_heads = int(t.n_heads);
    a.n_kvh = int(t.n_kv_heads);
    a.group = int(t.n_heads / t.n_kv_heads);
    a.head_dim = int(t.head_dim);
    a.scale = t.scale;
    a.scale_log2 = t.scale * kLog2e;
    a.accumulate = t.accumulate;
    return a;
}

constexpr int kMaxDevices = 64;

// Raises a kernel's dynamic shared-memory limit once per device; `done` holds the kernel's per-device flags.
template <class Kernel>
void set_smem_limit(Kernel kernel, size_t bytes, std::atomic<bool> (&done)[kMaxDevices]) {
    int dev = 0;
    cudaGetDevice(&dev);
    dev = std::clamp(dev, 0, kMaxDevices - 1);
    if (done[dev].load(std::memory_order_acquire)) return;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (err != cudaSuccess) {
        cudaGetLastError();
        SKV_THROW("training attention: cudaFuncSetAttribute ({} bytes of shared memory) failed: {}", bytes,
                  cudaGetErrorString(err));
    }
    done[dev].store(true, std::memory_order_release);
}

template <int HD>
void launch_fwd_tc(const AttnArgs& a, int64_t max_len, int64_t num_seqs, cudaStream_t stream) {
    static std::atomic<bool> done[kMaxDevices];
    constexpr size_t smem = fwd_smem_bytes<HD>();
    set_smem_limit(attn_fwd_kernel<HD>, smem, done);
    const dim3 grid(unsigned(ceil_div(max_len, kTileM)), unsigned(a.n_heads), grid_yz(num_seqs));
    attn_fwd_kernel<HD><<<grid, kAttnThreads, smem, stream>>>(a);
}

template <int HD>
void launch_bwd_tc(const AttnArgs& a, int64_t max_len, int64_t num_seqs, cudaStream_t stream) {
    static std::atomic<bool> done[kMaxDevices];
    constexpr size_t smem = bwd_smem_bytes<HD>();
    set_smem_limit(attn_bwd_kernel<HD>, smem, done);
    const dim3 grid(unsigned(ceil_div(max_len, kTileN)), unsigned(a.n_kvh), grid_yz(num_seqs));
    attn_bwd_kernel<HD><<<grid, kAttnThreads, smem, stream>>>(a);
}

}  // namespace

namespace detail {
void set_train_attention_simple_for_testing(bool simple) { g_force_simple_attention.store(simple); }
}  // namespace detail

// ==========================================================================================================
// launchers
// ==========================================================================================================

void attention_forward_train(const TrainAttention& t, cudaStream_t stream) {
    if (t.rows <= 0 || t.num_seqs <= 0) return;
    const AttnArgs a = make_args(t);
    const int64_t max_len = max_len_of(t);
    if (tensor_core_path(t, false)) {
        if (t.head_dim == 64)
            launch_fwd_tc<64>(a, max_len, t.num_seqs, stream);
        else
            launch_fwd_tc<128>(a, max_len, t.num_seqs, stream);
    } else {
        SKV_CHECK(t.head_dim <= kSimpleMaxHd, "attention_forward_train: head_dim {} is not supported on CUDA (at most {})",
                  t.head_dim, kSimpleMaxHd);
        const dim3 grid(grid_x(t.rows), unsigned(t.n_heads));
        attn_fwd_simple_kernel<<<grid, kSimpleWarps * 32, 0, stream>>>(a);
    }
    check_launch("attention_forward_train");
}

size_t attention_backward_train_workspace_bytes(const TrainAttention& t) {
    if (t.rows <= 0 || t.num_seqs <= 0) return 0;
    if (tensor_core_path(t, true)) {
        // D [rows, n_heads] then the dQ accumulator [rows, n_heads, head_dim] (256-byte aligned).
        const size_t d_bytes = (size_t(t.rows * t.n_heads) * sizeof(float) + 255) / 256 * 256;
        return d_bytes + size_t(t.rows * t.n_heads * t.head_dim) * sizeof(float);
    }
    return 2 * size_t(t.rows * t.n_kv_heads * t.head_dim) * sizeof(float);
}

void attention_backward_train(const TrainAttention& t, void* workspace, cudaStream_t stream) {
    if (t.rows <= 0 || t.num_seqs <= 0) return;
    AttnArgs a = make_args(t);
    const int64_t max_len = max_len_of(t);
    if (tensor_core_path(t, true)) {
        const size_t d_bytes = (size_t(t.rows * t.n_heads) * sizeof(float) + 255) / 256 * 256;
        a.dsum = static_cast<float*>(workspace);
        a.dq_acc = reinterpret_cast<float*>(static_cast<char*>(workspace) + d_bytes);
        const size_t acc_bytes = size_t(t.rows * t.n_heads * t.head_dim) * sizeof(float);
        const cudaError_t err = cudaMemsetAsync(a.dq_acc, 0, acc_bytes, stream);
        SKV_CHECK(err == cudaSuccess, "attention_backward: cudaMemsetAsync failed: {}", cudaGetErrorString(err));
        const bool vec = aligned(t.out, 16) && aligned(t.dout, 16);  // head_dim is 64 or 128
        const unsigned dot_grid = grid_x(ceil_div(t.rows * t.n_heads, 8));
        if (vec)
            attn_bwd_dot_kernel<true><<<dot_grid, 256, 0, stream>>>(a);
        else
            attn_bwd_dot_kernel<false><<<dot_grid, 256, 0, stream>>>(a);
        check_launch("attention_backward (D)");
        if (t.head_dim == 64)
            launch_bwd_tc<64>(a, max_len, t.num_seqs, stream);
        else
            launch_bwd_tc<128>(a, max_len, t.num_seqs, stream);
        check_launch("attention_backward");
        attn_dq_store_kernel<<<elementwise_grid(t.rows * t.n_heads * t.head_dim), 256, 0, stream>>>(a);
        check_launch("attention_backward (dq)");
        return;
    }
    SKV_CHECK(t.head_dim <= kSimpleMaxHd, "attention_backward: head_dim {} is not supported on CUDA (at most {})",
              t.head_dim, kSimpleMaxHd);
    const size_t acc_elems = size_t(t.rows * t.n_kv_heads * t.head_dim);
    a.dk_acc = static_cast<float*>(workspace);
    a.dv_acc = a.dk_acc + acc_elems;
    const cudaError_t err = cudaMemsetAsync(workspace, 0, 2 * acc_elems * sizeof(float), stream);
    SKV_CHECK(err == cudaSuccess, "attention_backward: cudaMemsetAsync failed: {}", cudaGetErrorString(err));
    const dim3 grid(grid_x(t.rows), unsigned(t.n_heads));
    attn_bwd_simple_kernel<<<grid, kSimpleWarps * 32, 0, stream>>>(a);
    check_launch("attention_backward (simple)");
    attn_dkv_store_kernel<<<elementwise_grid(int64_t(acc_elems)), 256, 0, stream>>>(a);
    check_launch("attention_backward (dk/dv)");
}

}  // namespace swiftkv::cuda
