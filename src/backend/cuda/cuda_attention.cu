// Paged causal GQA attention for the CUDA backend (bf16 q / caches / out, f32 softmax and accumulation).
//
// Three paths, chosen on the host from host-known values only (rows, num_seqs, the bounds in
// AttentionBatch, the SM count), so a recorded CUDA graph replays correctly for any device-side
// lengths within the bounds:
//
//  * prefill (head_dim 64/128): FlashAttention-2 style on tensor cores (mma.sync m16n8k16 bf16, ldmatrix
//    from XOR-swizzled shared memory, K/V tiles of 64 keys loaded through the block table with 16-byte
//    cp.async, double-buffered, one barrier per tile). A CTA (4 warps) owns BM "M rows" of one
//    (sequence, kv head): BM = 128 (each warp 2 m-tiles of 16 rows, Q re-read from shared memory, every
//    K/V fragment feeds two MMAs) for large batches, BM = 64 (each warp 16 rows, Q in registers) when
//    that would not fill the GPU. The query heads of the kv group are packed into M (M row m = query row
//    m / group, head m % group), so every K/V tile serves the whole group and decode-like sequences
//    still fill the tile. Scores, softmax state and O stay in registers. Causal: key tiles above the
//    diagonal are never loaded, only tiles crossing the diagonal (or the context end) are masked. The
//    block-table lookups (one thread per key) run a tile ahead into shared memory.
//    Varlen mapping without a planning kernel: sequence s owns the CTA "slots"
//    [B_s, B_{s+1}), B_s = floor((query_start[s]-query_start[0]) * group / BM) + s, which always holds at
//    least ceil(q_len_s * group / BM) slots; a CTA binary-searches its slot, surplus slots exit. The grid
//    is (floor(rows*group/BM) + num_seqs) * n_kv_heads CTAs along x (kv head fastest, the last -- longest
//    -- tiles of a sequence first) and nsplit along y (split-KV when the tiles alone would not fill the GPU).
//  * decode (head_dim 64/128, q_len * group <= 16 per sequence, or hint unknown and rows == num_seqs):
//    split-KV flash-decoding. CTA = (sequence, kv head, split), 4 warps; the 16 M rows are the packed
//    (query row, group head) pairs (loops over chunks of 16 if a sequence has more); each 64-key tile is
//    shared by the 4 warps, 16 keys each, on tensor cores; the warps' (max, sum, acc) merge in shared memory.
//  * simple SIMT kernel (any head_dim <= 256, scale <= 0, misaligned pointers, or SWIFTKV_ATTENTION=simple):
//    one CTA per (row, head). SWIFTKV_ATTENTION=prefill never takes the decode kernel (debugging).
//
// Split-KV: split j of a (sequence, tile) covers key tiles [j*tps, (j+1)*tps) (the last split takes all the
// rest); it writes unnormalised partials (acc[head_dim], max, sum) for (row, head, split) into the
// workspace, and a combine kernel merges splits 0 .. ceil(keys_visible_to_row / (64*tps)) - 1, all of
// which are guaranteed to have been written (each contains at least one key visible to the row).
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
#include <mutex>

#include "backend/cuda/cuda_kernel_util.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_mma.cuh"
#include "core/error.h"

namespace swiftkv::cuda {

namespace detail {
// Test hook (not in the header): -1 = automatic (environment), 0 = auto, 1 = simple kernel only,
// 2 = never the decode kernel. Must be set before attention_workspace_bytes for the call.
void set_attention_mode_for_testing(int mode);
void set_attention_prefill_variant_for_testing(int variant);  // -1 = automatic
}  // namespace detail

namespace {

constexpr int kBN = 64;  // keys per K/V tile

struct Params {
    const bf16* __restrict__ q;
    int64_t q_stride;
    bf16* __restrict__ out;
    const bf16* __restrict__ k_cache;
    const bf16* __restrict__ v_cache;
    const int32_t* __restrict__ query_start;
    const int32_t* __restrict__ seq_lens;
    const int32_t* __restrict__ block_tables;
    int64_t max_blocks_per_seq;
    int num_seqs;
    int n_heads;
    int n_kvh;
    int group;
    int block_size;
    int head_dim;
    float scale_log2;
    int nsplit;           // 1: write out directly; > 1: write partials
    int tiles_per_split;  // key tiles per split (the last split takes the rest)
    float* __restrict__ part_o;   // [rows][n_heads][nsplit][head_dim]
    float* __restrict__ part_ml;  // [rows][n_heads][nsplit][2] (max in log2 units, sum)
};

// ldmatrix addressing. A lane reads row R (R & 7 == lane & 7 in every use below) at 16-byte chunk
// 2*k + h (k compile-time, h in {0, 1} per lane). Swizzled, that chunk is (2k + h) ^ (lane & 7)
// = (2(k & 3) ^ y) + 8 * (k >> 2) with y = h ^ (lane & 7), since 2k + h = 2k ^ h. So 4 per-lane byte
// offsets xo[k & 3] plus compile-time immediates cover every chunk.
struct XorOffsets {
    uint32_t v[4];
    __device__ __forceinline__ explicit XorOffsets(int y) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = uint32_t((2 * j) ^ y) << 4;
    }
    // Byte offset of chunk 2k + h of the row, relative to the row start.
    __device__ __forceinline__ uint32_t at(int k) const { return v[k & 3] + uint32_t(k >> 2) * 128u; }
};

// Loads key tile `tile` (keys [tile*64, tile*64+64)) of (sequence, kv head) into one K and one V stage;
// keys >= kend are zero-filled and not read. row[r] is the element offset of key tile*64 + r in the
// caches (for this kv head), from row_of_key.
template <int HD, int NT, bool LOAD_K = true, bool LOAD_V = true>
__device__ __forceinline__ void load_kv_tile(const Params& p, const int64_t* row, int tile, int kend, bf16* sK,
                                             bf16* sV, int tid) {
    constexpr int CPR = HD / 8;
    constexpr int ITERS = kBN * CPR / NT;
    constexpr int ROWS_PER_ITER = NT / CPR;
    static_assert(kBN * CPR % NT == 0 && NT % CPR == 0, "tile chunks must divide evenly among threads");
    // Each thread copies chunk c of rows r0, r0 + ROWS_PER_ITER, ...; with ROWS_PER_ITER a multiple of 8
    // the swizzle (which depends on r & 7) is the same for all of them: one base offset plus immediates.
    static_assert(ROWS_PER_ITER % 8 == 0, "swizzle must repeat every ROWS_PER_ITER rows");
    const int r0 = tid / CPR, c = tid % CPR;
    const int j0 = tile * kBN;
    const uint32_t so = uint32_t(swz<HD>(r0, c)) * 2u;
    const uint32_t k_base = LOAD_K ? smem_u32(sK) + so : 0u, v_base = LOAD_V ? smem_u32(sV) + so : 0u;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
        const int r = r0 + it * ROWS_PER_ITER;
        const bool valid = j0 + r < kend;
        const int64_t off = valid ? row[r] + c * 8 : 0;
        const uint32_t imm = uint32_t(it * ROWS_PER_ITER * HD * 2);
        if (LOAD_K) cp_async16(k_base + imm, p.k_cache + off, valid);
        if (LOAD_V) cp_async16(v_base + imm, p.v_cache + off, valid);
    }
}

// Element offset of key `key`'s row (kv head folded into head_off) in the caches; 0 when key >= kend
// (never used then). One thread per key computes these a tile ahead, so the division by block_size
// and the block-table load stay off the critical path.
__device__ __forceinline__ int64_t row_of_key(const Params& p, const int32_t* __restrict__ bt, int key, int kend,
                                              int64_t head_off, int64_t blk_stride, int hd) {
    if (key >= kend) return 0;
    const int b = __ldg(bt + key / p.block_size);
    return int64_t(b) * blk_stride + head_off + int64_t(key % p.block_size) * hd;
}

// row_of_key for sequence s and kv head kvh, straight from the parameters (fewer live registers).
__device__ __forceinline__ int64_t row_of_key_p(const Params& p, int s, int kvh, int key, int kend, int hd) {
    if (key >= kend) return 0;
    const int b = __ldg(p.block_tables + int64_t(s) * p.max_blocks_per_seq + key / p.block_size);
    return ((int64_t(b) * p.n_kvh + kvh) * p.block_size + key % p.block_size) * hd;
}

// ---- prefill / general tensor-core kernel ---------------------------------------------------------

// WARPS warps, each owning MT m-tiles of 16 M rows (BM = 16 * WARPS * MT). With MT == 1 the warp keeps
// its Q fragments in registers; with MT == 2 it re-reads them from shared memory for every key sub-tile
// but reuses every K/V fragment for two m-tiles (less shared-memory traffic per MMA). Each 64-key tile is
// processed in sub-tiles of KSUB keys (one online-softmax step each; 32 keeps the scores of MT == 2,
// head_dim 128 within the register budget).
template <int HD, int WARPS, int MT, int KSUB>
__global__ void __launch_bounds__(WARPS * 32, 1) attn_prefill_kernel(const Params p) {
    constexpr int BM = WARPS * 16 * MT;
    constexpr int WM = 16 * MT;    // M rows per warp
    constexpr int NT = WARPS * 32;
    constexpr int CPR = HD / 8;
    constexpr int KS = HD / 16;    // k-steps of the QK product
    constexpr int NS = KSUB / 8;   // score n-tiles per m-tile and sub-tile
    constexpr int DT = HD / 8;     // output n-tiles per m-tile
    constexpr bool kQInRegs = MT == 1;
    static_assert(kBN % KSUB == 0 && KSUB % 16 == 0, "bad key sub-tile");
    static_assert(NT >= kBN, "block-id prefetch needs a thread per key");

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [BM][HD]; reused for the output staging
    bf16* sK = sQ + BM * HD;                       // [2][kBN][HD]
    bf16* sV = sK + 2 * kBN * HD;                  // [2][kBN][HD]
    __shared__ int64_t sBlk[2][kBN];               // cache row offset of each key of tile t, in slot t & 1

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = p.group;
    const int slot = int(blockIdx.x / unsigned(p.n_kvh));
    const int kvh = int(blockIdx.x % unsigned(p.n_kvh));
    const int split = int(blockIdx.y);

    // Locate the sequence owning this slot.
    const int qbase = __ldg(p.query_start);
    auto slot_of = [&](int s) -> int64_t {
        return int64_t(__ldg(p.query_start + s) - qbase) * G / BM + s;
    };
    int lo = 0, hi = p.num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (slot_of(mid) <= slot) lo = mid;
        else hi = mid - 1;
    }
    const int s = lo;
    const int q0 = __ldg(p.query_start + s);
    const int n = __ldg(p.query_start + s + 1) - q0;
    const int64_t m_rows = int64_t(n) * G;
    const int m_tiles = int((m_rows + BM - 1) / BM);
    const int k_idx = slot - int(slot_of(s));
    if (k_idx >= m_tiles) return;  // surplus slot (or a sequence without query rows)
    const int m_base = (m_tiles - 1 - k_idx) * BM;  // the last (longest) tiles first
    const int L = __ldg(p.seq_lens + s);
    const int i_first = m_base / G;
    const int i_last = min((m_base + BM - 1) / G, n - 1);
    const int kend = L - n + i_last + 1;       // keys any row of the CTA can see
    const int min_limit = L - n + i_first;     // last key visible to the CTA's first row
    const int n_kv_tiles = (kend + kBN - 1) / kBN;
    const int t_begin = split * p.tiles_per_split;
    const int t_end = split == p.nsplit - 1 ? n_kv_tiles : min(n_kv_tiles, t_begin + p.tiles_per_split);
    if (t_begin >= t_end) return;

    if (tid < kBN) {
        sBlk[t_begin & 1][tid] = row_of_key_p(p, s, kvh, t_begin * kBN + tid, kend, HD);
        if (t_begin + 1 < t_end) sBlk[(t_begin + 1) & 1][tid] = row_of_key_p(p, s, kvh, (t_begin + 1) * kBN + tid, kend, HD);
    }
    // Q tile (zero rows past the sequence's rows).
    {
        const uint32_t q_base = smem_u32(sQ);
        for (int e = tid; e < BM * CPR; e += NT) {
            const int r = e / CPR, c = e % CPR;
            const int m = m_base + r;
            const int i = m / G, j = m - i * G;
            const bool valid = i < n;
            const bf16* src = valid ? p.q + int64_t(q0 + i) * p.q_stride + int64_t(kvh * G + j) * HD + c * 8 : p.q;
            cp_async16(q_base + uint32_t(swz<HD>(r, c)) * 2u, src, valid);
        }
        cp_async_commit();
    }
    __syncthreads();  // sBlk
    load_kv_tile<HD, NT>(p, sBlk[t_begin & 1], t_begin, kend, sK, sV, tid);
    cp_async_commit();
    cp_async_wait<1>();  // Q landed (the K/V group may still be in flight)
    __syncthreads();

    // Per-lane ldmatrix bases. Q: row warp*WM + mt*16 + (lane & 15), chunk 2*ks + (lane >> 4).
    // K: key row (lane & 7) + ((lane >> 4) << 3) of a 16-key pair, chunk 2*ks + ((lane >> 3) & 1).
    // V (trans): key row (lane & 7) + (((lane >> 3) & 1) << 3) of a 16-key step, chunk 2*dp + (lane >> 4).
    const XorOffsets qx((lane >> 4) ^ (lane & 7));
    const XorOffsets kx(((lane >> 3) & 1) ^ (lane & 7));
    const XorOffsets& vx = qx;  // the same lane pattern
    const uint32_t q_lane = smem_u32(sQ) + uint32_t(warp * WM + (lane & 15)) * (HD * 2);
    const uint32_t k_lane_row = uint32_t((lane & 7) + ((lane >> 4) << 3)) * (HD * 2);
    const uint32_t v_lane_row = uint32_t((lane & 7) + (((lane >> 3) & 1) << 3)) * (HD * 2);
    uint32_t qf[kQInRegs ? KS : 1][4];
    if constexpr (kQInRegs) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(qf[ks], q_lane + qx.at(ks));
    }

    const int first_pos = L - n;  // position of the sequence's first query row

    float o[MT][DT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int d = 0; d < DT; ++d) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.0f;
    }
    const float sl2 = p.scale_log2;

    for (int t = t_begin; t < t_end; ++t) {
        const int stage = (t - t_begin) & 1;
        // Block ids of tile t + 2, stored after this tile's math (the load latency hides behind it).
        const bool prefetch = tid < kBN && t + 2 < t_end;
        const int64_t blk_next = prefetch ? row_of_key_p(p, s, kvh, (t + 2) * kBN + tid, kend, HD) : 0;
        cp_async_wait<0>();  // tile t landed (this thread's copies) ...
        __syncthreads();     // ... and everyone's; everyone is also done with tile t - 1's stage
        if (t + 1 < t_end) {
            load_kv_tile<HD, NT>(p, sBlk[(t + 1) & 1], t + 1, kend,
                                 sK + (stage ^ 1) * kBN * HD, sV + (stage ^ 1) * kBN * HD, tid);
            cp_async_commit();
        }
        const uint32_t k_lane = smem_u32(sK + stage * kBN * HD) + k_lane_row;
        const uint32_t v_lane = smem_u32(sV + stage * kBN * HD) + v_lane_row;

#pragma unroll 1  // KSUB < kBN only to save registers: keep the sub-tiles sequential
        for (int sub = 0; sub < kBN / KSUB; ++sub) {
            // S = Q K^T (WM x KSUB per warp)
            float sc[MT][NS][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                uint32_t qa[MT][4];
                if constexpr (kQInRegs) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) qa[0][e] = qf[ks][e];
                } else {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(qa[mt], q_lane + mt * 16 * HD * 2 + qx.at(ks));
                }
#pragma unroll
                for (int np = 0; np < NS / 2; ++np) {
                    uint32_t b[4];
                    ldmatrix_x4(b, k_lane + (sub * KSUB + np * 16) * HD * 2 + kx.at(ks));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(sc[mt][2 * np], qa[mt], b[0], b[1]);
                        mma_bf16(sc[mt][2 * np + 1], qa[mt], b[2], b[3]);
                    }
                }
            }

            // Scale to log2 units, mask, online softmax.
            const int j0 = t * kBN + sub * KSUB;
            const bool need_mask = j0 + KSUB - 1 > min_limit;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if (need_mask) {
                    // Causal limits of this thread's rows g and g + 8 of the m-tile (computed only on the
                    // few masked tiles, to keep registers free).
                    int lim[2];
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int m = m_base + warp * WM + mt * 16 + (lane >> 2) + 8 * h;
                        lim[h] = first_pos + min(m / G, n - 1);
                    }
#pragma unroll
                    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int key = j0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                            if (key > lim[e >> 1]) sc[mt][nt][e] = -INFINITY;
                        }
                    }
                }
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
                    mx[0] = fmaxf(mx[0], fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
                    mx[1] = fmaxf(mx[1], fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
                }
                float m_use[2], alpha[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                    // Raw scores times sl2 > 0 (checked on the host): the max commutes with the scaling.
                    const float m_new = fmaxf(row_max[mt][h], mx[h] * sl2);
                    m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays at 0
                    alpha[h] = fast_exp2(row_max[mt][h] - m_use[h]);  // -inf - x -> 0
                    row_max[mt][h] = m_new;
                }
                float ps[2] = {0.0f, 0.0f};
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float pe = fast_exp2(fmaf(sc[mt][nt][e], sl2, -m_use[e >> 1]));
                        sc[mt][nt][e] = pe;
                        ps[e >> 1] += pe;
                    }
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) row_sum[mt][h] = row_sum[mt][h] * alpha[h] + ps[h];
                // Once the row maxima settle, alpha is exactly 1 for the whole warp: skip the rescale.
                if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
                    for (int d = 0; d < DT; ++d) {
                        o[mt][d][0] *= alpha[0];
                        o[mt][d][1] *= alpha[0];
                        o[mt][d][2] *= alpha[1];
                        o[mt][d][3] *= alpha[1];
                    }
                }
            }

            // O += P V
#pragma unroll
            for (int kk = 0; kk < KSUB / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) pack_a_frag(a[mt], sc[mt][2 * kk], sc[mt][2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < DT / 2; ++dp) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, v_lane + (sub * KSUB + kk * 16) * HD * 2 + vx.at(dp));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(o[mt][2 * dp], a[mt], b[0], b[1]);
                        mma_bf16(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
                    }
                }
            }
        }
        // sBlk[t & 1] (tile t's ids) was last read when tile t was issued, one iteration ago; the
        // next iteration's barrier publishes it.
        if (prefetch) sBlk[t & 1][tid] = blk_next;
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            row_sum[mt][h] += __shfl_xor_sync(0xffffffffu, row_sum[mt][h], 1);
            row_sum[mt][h] += __shfl_xor_sync(0xffffffffu, row_sum[mt][h], 2);
        }

    if (p.nsplit == 1) {
        // Normalise, stage the warp's rows as bf16 in its own rows of sQ (only this warp ever reads
        // them; the __syncwarp orders its last ldmatrix of them before the overwrite), then write
        // 16-byte vectors.
        __syncwarp();
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float inv[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) inv[h] = row_sum[mt][h] > 0.0f ? 1.0f / row_sum[mt][h] : 0.0f;
#pragma unroll
            for (int d = 0; d < DT; ++d) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = warp * WM + mt * 16 + (lane >> 2) + 8 * h;
                    *reinterpret_cast<uint32_t*>(sQ + swz<HD>(r, d) + (lane & 3) * 2) =
                        pack_bf16(o[mt][d][2 * h] * inv[h], o[mt][d][2 * h + 1] * inv[h]);
                }
            }
        }
        __syncwarp();
        const int64_t out_stride = int64_t(p.n_heads) * HD;
        for (int e = lane; e < WM * CPR; e += 32) {
            const int r = warp * WM + e / CPR, c = e % CPR;
            const int m = m_base + r;
            const int i = m / G, j = m - i * G;
            if (i < n) {
                const uint4 v = *reinterpret_cast<const uint4*>(sQ + swz<HD>(r, c));
                *reinterpret_cast<uint4*>(p.out + int64_t(q0 + i) * out_stride + int64_t(kvh * G + j) * HD + c * 8) = v;
            }
        }
    } else {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m_base + warp * WM + mt * 16 + (lane >> 2) + 8 * h;
                const int i = m / G, j = m - i * G;
                if (i < n) {
                    const int64_t pidx = (int64_t(q0 + i) * p.n_heads + kvh * G + j) * p.nsplit + split;
                    float* dst = p.part_o + pidx * HD + (lane & 3) * 2;
#pragma unroll
                    for (int d = 0; d < DT; ++d)
                        *reinterpret_cast<float2*>(dst + d * 8) = make_float2(o[mt][d][2 * h], o[mt][d][2 * h + 1]);
                    if ((lane & 3) == 0)
                        *reinterpret_cast<float2*>(p.part_ml + pidx * 2) = make_float2(row_max[mt][h], row_sum[mt][h]);
                }
            }
    }
}

// ---- split-KV decode kernel -----------------------------------------------------------------------

template <int HD>
__global__ void __launch_bounds__(128, 2) attn_decode_kernel(const Params p) {
    constexpr int NW = 4;
    constexpr int NT = NW * 32;
    constexpr int CPR = HD / 8;
    constexpr int KS = HD / 16;
    constexpr int DT = HD / 8;
    constexpr int RED_STRIDE = HD + 4;  // floats per row of the cross-warp reduction buffer

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [16][HD]
    bf16* sK = sQ + 16 * HD;                       // [2][kBN][HD]
    bf16* sV = sK + 2 * kBN * HD;                  // [2][kBN][HD]
    // Reduction buffers alias the K/V stages (used only after the key loop).
    float* red_o = reinterpret_cast<float*>(sK);   // [NW][16][RED_STRIDE]
    float* red_m = red_o + NW * 16 * RED_STRIDE;   // [NW][16]
    float* red_l = red_m + NW * 16;                // [NW][16]
    static_assert((NW * 16 * RED_STRIDE + 2 * NW * 16) * 4 <= 4 * kBN * HD * 2, "reduction buffer too big");
    __shared__ int64_t sBlk[2][kBN];  // cache row offset of each key of tile t, in slot t & 1

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = p.group;
    const int s = int(blockIdx.x / unsigned(p.n_kvh));
    const int kvh = int(blockIdx.x % unsigned(p.n_kvh));
    const int split = int(blockIdx.y);

    const int q0 = __ldg(p.query_start + s);
    const int n = __ldg(p.query_start + s + 1) - q0;
    if (n <= 0) return;
    const int L = __ldg(p.seq_lens + s);
    const int m_rows = n * G;

    const int32_t* bt = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
    const int64_t head_off = int64_t(kvh) * p.block_size * HD;
    const int64_t blk_stride = int64_t(p.n_kvh) * p.block_size * HD;
    const float sl2 = p.scale_log2;

    // ldmatrix bases (see the prefill kernel); each warp reads keys [warp*16, warp*16+16) of a tile.
    const XorOffsets qx((lane >> 4) ^ (lane & 7));
    const XorOffsets kx(((lane >> 3) & 1) ^ (lane & 7));
    const XorOffsets vx((lane >> 4) ^ (lane & 7));
    const uint32_t q_lane = smem_u32(sQ) + uint32_t(lane & 15) * (HD * 2);
    const uint32_t k_lane_row = uint32_t(warp * 16 + (lane & 7) + ((lane >> 4) << 3)) * (HD * 2);
    const uint32_t v_lane_row = uint32_t(warp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)) * (HD * 2);

    for (int mc = 0; mc < m_rows; mc += 16) {
        const int i_first = mc / G;
        const int i_last = min((mc + 15) / G, n - 1);
        const int kend = L - n + i_last + 1;
        const int min_limit = L - n + i_first;
        const int n_kv_tiles = (kend + kBN - 1) / kBN;
        const int t_begin = split * p.tiles_per_split;
        const int t_end = split == p.nsplit - 1 ? n_kv_tiles : min(n_kv_tiles, t_begin + p.tiles_per_split);
        if (t_begin >= t_end) continue;  // uniform across the CTA

        __syncthreads();  // the previous chunk's readers of sQ / the reduction buffers / sBlk are done
        if (tid < kBN) {
            sBlk[t_begin & 1][tid] = row_of_key(p, bt, t_begin * kBN + tid, kend, head_off, blk_stride, HD);
            if (t_begin + 1 < t_end)
                sBlk[(t_begin + 1) & 1][tid] = row_of_key(p, bt, (t_begin + 1) * kBN + tid, kend, head_off, blk_stride, HD);
        }
        {
            const uint32_t q_base = smem_u32(sQ);
            for (int e = tid; e < 16 * CPR; e += NT) {
                const int r = e / CPR, c = e % CPR;
                const int m = mc + r;
                const int i = m / G, j = m - i * G;
                const bool valid = m < m_rows;
                const bf16* src =
                    valid ? p.q + int64_t(q0 + i) * p.q_stride + int64_t(kvh * G + j) * HD + c * 8 : p.q;
                cp_async16(q_base + uint32_t(swz<HD>(r, c)) * 2u, src, valid);
            }
            cp_async_commit();
        }
        __syncthreads();  // sBlk
        load_kv_tile<HD, NT>(p, sBlk[t_begin & 1], t_begin, kend, sK, sV, tid);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        uint32_t qf[KS][4];
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(qf[ks], q_lane + qx.at(ks));
        int lim[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = mc + (lane >> 2) + 8 * h;
            lim[h] = L - n + min(m / G, n - 1);
        }

        float o[DT][4];
#pragma unroll
        for (int d = 0; d < DT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
        float row_max[2] = {-INFINITY, -INFINITY};
        float row_sum[2] = {0.0f, 0.0f};

        for (int t = t_begin; t < t_end; ++t) {
            const int stage = (t - t_begin) & 1;
            if (t + 1 < t_end) {
                load_kv_tile<HD, NT>(p, sBlk[(t + 1) & 1], t + 1, kend,
                                     sK + (stage ^ 1) * kBN * HD, sV + (stage ^ 1) * kBN * HD, tid);
                cp_async_commit();
            }
            const bool prefetch = tid < kBN && t + 2 < t_end;
            const int64_t blk_next = prefetch ? row_of_key(p, bt, (t + 2) * kBN + tid, kend, head_off, blk_stride, HD) : 0;
            if (t + 1 < t_end) cp_async_wait<1>();
            else cp_async_wait<0>();
            __syncthreads();
            const uint32_t k_lane = smem_u32(sK + stage * kBN * HD) + k_lane_row;
            const uint32_t v_lane = smem_u32(sV + stage * kBN * HD) + v_lane_row;

            float sc[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                uint32_t b[4];
                ldmatrix_x4(b, k_lane + kx.at(ks));
                mma_bf16(sc[0], qf[ks], b[0], b[1]);
                mma_bf16(sc[1], qf[ks], b[2], b[3]);
            }
            const int j0 = t * kBN + warp * 16;
            const bool need_mask = t * kBN + kBN - 1 > min_limit;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float v = sc[nt][e] * sl2;
                    if (need_mask) {
                        const int key = j0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                        if (key > lim[e >> 1]) v = -INFINITY;
                    }
                    sc[nt][e] = v;
                }
            }
            float mx[2];
            mx[0] = fmaxf(fmaxf(sc[0][0], sc[0][1]), fmaxf(sc[1][0], sc[1][1]));
            mx[1] = fmaxf(fmaxf(sc[0][2], sc[0][3]), fmaxf(sc[1][2], sc[1][3]));
            float m_use[2], alpha[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                const float m_new = fmaxf(row_max[h], mx[h]);
                m_use[h] = m_new == -INFINITY ? 0.0f : m_new;
                alpha[h] = fast_exp2(row_max[h] - m_use[h]);
                row_max[h] = m_new;
            }
            float ps[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float pe = fast_exp2(sc[nt][e] - m_use[e >> 1]);
                    sc[nt][e] = pe;
                    ps[e >> 1] += pe;
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * alpha[h] + ps[h];
#pragma unroll
            for (int d = 0; d < DT; ++d) {
                o[d][0] *= alpha[0];
                o[d][1] *= alpha[0];
                o[d][2] *= alpha[1];
                o[d][3] *= alpha[1];
            }
            uint32_t a[4];
            pack_a_frag(a, sc[0], sc[1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_lane + vx.at(dp));
                mma_bf16(o[2 * dp], a, b[0], b[1]);
                mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
            }
            if (prefetch) sBlk[t & 1][tid] = blk_next;
            __syncthreads();
        }

        // Merge the 4 warps (each saw a different quarter of every key tile).
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
            row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
            const int r = (lane >> 2) + 8 * h;
            float* dst = red_o + (warp * 16 + r) * RED_STRIDE + (lane & 3) * 2;
#pragma unroll
            for (int d = 0; d < DT; ++d) *reinterpret_cast<float2*>(dst + d * 8) = make_float2(o[d][2 * h], o[d][2 * h + 1]);
            if ((lane & 3) == 0) {
                red_m[warp * 16 + r] = row_max[h];
                red_l[warp * 16 + r] = row_sum[h];
            }
        }
        __syncthreads();
        constexpr int V4 = HD / 4;  // float4 groups per row
        for (int e = tid; e < 16 * V4; e += NT) {
            const int r = e / V4, d = (e % V4) * 4;
            const int m = mc + r;
            if (m >= m_rows) continue;
            const int i = m / G, j = m - i * G;
            float mw[NW];
            float mmax = -INFINITY;
#pragma unroll
            for (int w = 0; w < NW; ++w) {
                mw[w] = red_m[w * 16 + r];
                mmax = fmaxf(mmax, mw[w]);
            }
            float den = 0.0f;
            float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int w = 0; w < NW; ++w) {
                const float wt = mw[w] == -INFINITY ? 0.0f : fast_exp2(mw[w] - mmax);
                den += wt * red_l[w * 16 + r];
                const float4 v = *reinterpret_cast<const float4*>(red_o + (w * 16 + r) * RED_STRIDE + d);
                acc.x += wt * v.x;
                acc.y += wt * v.y;
                acc.z += wt * v.z;
                acc.w += wt * v.w;
            }
            if (p.nsplit == 1) {
                const float inv = den > 0.0f ? 1.0f / den : 0.0f;
                uint2 packed;
                packed.x = pack_bf16(acc.x * inv, acc.y * inv);
                packed.y = pack_bf16(acc.z * inv, acc.w * inv);
                *reinterpret_cast<uint2*>(p.out + int64_t(q0 + i) * p.n_heads * HD + int64_t(kvh * G + j) * HD + d) =
                    packed;
            } else {
                const int64_t pidx = (int64_t(q0 + i) * p.n_heads + kvh * G + j) * p.nsplit + split;
                *reinterpret_cast<float4*>(p.part_o + pidx * HD + d) = acc;
                if (d == 0) *reinterpret_cast<float2*>(p.part_ml + pidx * 2) = make_float2(mmax, den);
            }
        }
    }
}

// ---- split combine --------------------------------------------------------------------------------

// One warp per (row, head): merges the splits that hold keys visible to the row.
template <int HD>
__global__ void __launch_bounds__(128) attn_combine_kernel(const Params p, int64_t rows, int keys_per_split) {
    constexpr int VEC = HD / 32;  // floats per lane (2 or 4)
    const int64_t w = int64_t(blockIdx.x) * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (w >= rows * p.n_heads) return;
    const int r = int(w / p.n_heads), h = int(w % p.n_heads);
    const int s = seq_of_row(p.query_start, p.num_seqs, r);
    const int q0 = __ldg(p.query_start + s);
    const int n = __ldg(p.query_start + s + 1) - q0;
    const int L = __ldg(p.seq_lens + s);
    const int kend = L - n + (r - q0) + 1;
    const int nv = max(1, min(p.nsplit, (kend + keys_per_split - 1) / keys_per_split));
    const int64_t base = (int64_t(r) * p.n_heads + h) * p.nsplit;
    float mmax = -INFINITY;
    for (int sp = 0; sp < nv; ++sp) mmax = fmaxf(mmax, p.part_ml[(base + sp) * 2]);
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
    float den = 0.0f;
    for (int sp = 0; sp < nv; ++sp) {
        const float2 ml = *reinterpret_cast<const float2*>(p.part_ml + (base + sp) * 2);
        const float wt = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - mmax);
        den += wt * ml.y;
        const float* src = p.part_o + (base + sp) * HD + lane * VEC;
        if constexpr (VEC == 4) {
            const float4 v = *reinterpret_cast<const float4*>(src);
            acc[0] += wt * v.x;
            acc[1] += wt * v.y;
            acc[2] += wt * v.z;
            acc[3] += wt * v.w;
        } else {
            const float2 v = *reinterpret_cast<const float2*>(src);
            acc[0] += wt * v.x;
            acc[1] += wt * v.y;
        }
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    bf16* dst = p.out + int64_t(r) * p.n_heads * HD + int64_t(h) * HD + lane * VEC;
    if constexpr (VEC == 4) {
        uint2 packed;
        packed.x = pack_bf16(acc[0] * inv, acc[1] * inv);
        packed.y = pack_bf16(acc[2] * inv, acc[3] * inv);
        *reinterpret_cast<uint2*>(dst) = packed;
    } else {
        *reinterpret_cast<uint32_t*>(dst) = pack_bf16(acc[0] * inv, acc[1] * inv);
    }
}

// ---- simple SIMT kernel (any head_dim <= 256) -------------------------------------------------------

__device__ __forceinline__ float block_reduce_128(float v, float* red, bool is_max) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = red[0];
#pragma unroll
    for (int w = 1; w < 4; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();  // red may be rewritten by the next reduction
    return r;
}

__global__ void __launch_bounds__(128) attn_simple_kernel(const Params p) {
    __shared__ float sq[256];
    __shared__ float sp[128];
    __shared__ float red[4];
    const int HD = p.head_dim;
    const int r = int(blockIdx.x), h = int(blockIdx.y), tid = int(threadIdx.x);
    const int kvh = h / p.group;
    const int s = seq_of_row(p.query_start, p.num_seqs, r);
    const int q0 = __ldg(p.query_start + s);
    const int n = __ldg(p.query_start + s + 1) - q0;
    const int L = __ldg(p.seq_lens + s);
    const int kend = L - n + (r - q0) + 1;
    const int32_t* bt = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
    auto kv_off = [&](int key) -> int64_t {
        return ((int64_t(__ldg(bt + key / p.block_size)) * p.n_kvh + kvh) * p.block_size + key % p.block_size) * HD;
    };
    for (int d = tid; d < HD; d += 128) sq[d] = __bfloat162float(p.q[int64_t(r) * p.q_stride + int64_t(h) * HD + d]);
    __syncthreads();
    float acc0 = 0.0f, acc1 = 0.0f, m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < kend; k0 += 128) {
        const int key = k0 + tid;
        float sc = -INFINITY;
        if (key < kend) {
            const bf16* kp = p.k_cache + kv_off(key);
            float dot = 0.0f;
            for (int d = 0; d < HD; ++d) dot += sq[d] * __bfloat162float(kp[d]);
            sc = dot * p.scale_log2;
        }
        const float cmax = block_reduce_128(sc, red, true);  // finite: key k0 is visible
        const float m_new = fmaxf(m, cmax);
        const float alpha = exp2f(m - m_new);
        const float pr = key < kend ? exp2f(sc - m_new) : 0.0f;
        sp[tid] = pr;
        const float psum = block_reduce_128(pr, red, false);  // its barriers also publish sp
        l = l * alpha + psum;
        m = m_new;
        acc0 *= alpha;
        acc1 *= alpha;
        const int cnt = min(128, kend - k0);
        for (int kk = 0; kk < cnt; ++kk) {
            const bf16* vp = p.v_cache + kv_off(k0 + kk);
            const float pk = sp[kk];
            if (tid < HD) acc0 += pk * __bfloat162float(vp[tid]);
            if (tid + 128 < HD) acc1 += pk * __bfloat162float(vp[tid + 128]);
        }
        __syncthreads();  // sp is rewritten next chunk
    }
    const float inv = 1.0f / l;
    bf16* dst = p.out + int64_t(r) * p.n_heads * HD + int64_t(h) * HD;
    if (tid < HD) dst[tid] = __float2bfloat16_rn(acc0 * inv);
    if (tid + 128 < HD) dst[tid + 128] = __float2bfloat16_rn(acc1 * inv);
}

// ---- host side --------------------------------------------------------------------------------------

std::atomic<int> g_mode_override{-1};
std::atomic<int> g_variant_override{-1};

int attention_mode() {
    const int o = g_mode_override.load(std::memory_order_relaxed);
    if (o >= 0) return o;
    static const int env = [] {
        const char* e = std::getenv("SWIFTKV_ATTENTION");
        if (e && std::strcmp(e, "simple") == 0) return 1;
        if (e && std::strcmp(e, "prefill") == 0) return 2;
        return 0;
    }();
    return env;
}

constexpr int kMaxDevices = 64;

int current_device() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) dev = 0;
    return dev;
}

int sm_count() {
    static std::atomic<int> cache[kMaxDevices] = {};
    const int dev = current_device();
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) {
        (void)cudaGetLastError();
        v = 132;
    }
    cache[dev].store(v, std::memory_order_relaxed);
    return v;
}

enum class Path { None, Simple, Decode, Prefill };

struct Plan {
    Path path = Path::None;
    int bm = 128;           // prefill M rows per CTA
    int variant = 1;        // prefill kernel: 0 = 4 warps x 16 rows (BM 64), 1 = 4 warps x 32 rows (BM 128)
    int64_t slots = 0;      // prefill CTA slots per kv head
    int nsplit = 1;
    int tiles_per_split = 0;
    size_t part_o_floats = 0;
    size_t ws_bytes = 0;
};

int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

Plan make_plan(int64_t rows, const AttentionBatch& b, const KvLayout& layout, int64_t n_heads) {
    Plan plan;
    if (rows <= 0 || b.num_seqs <= 0 || layout.n_kv_heads <= 0 || n_heads <= 0) return plan;
    const int64_t hd = layout.head_dim;
    const int64_t group = n_heads / layout.n_kv_heads;
    const int64_t n_kvh = layout.n_kv_heads;
    const int mode = attention_mode();
    if (mode == 1 || (hd != 64 && hd != 128)) {
        plan.path = Path::Simple;
        return plan;
    }
    const int64_t sms = sm_count();
    const int64_t max_q = b.max_query_len > 0 ? std::min<int64_t>(b.max_query_len, rows) : rows;
    const int64_t kv_tiles_max = ceil_div64(std::max<int64_t>(b.max_seq_len, 1), kBN);
    const bool decode =
        mode != 2 && (max_q * group <= 16 || (b.max_query_len <= 0 && rows == b.num_seqs));

    int64_t base_ctas, target, min_tiles;
    if (decode) {
        plan.path = Path::Decode;
        base_ctas = b.num_seqs * n_kvh;
        target = 3 * sms;  // ~3 resident CTAs per SM
        min_tiles = 2;
    } else {
        plan.path = Path::Prefill;
        plan.variant = ceil_div64(rows * group, 128) * n_kvh >= 2 * sms ? 1 : 0;  // 2 CTAs per SM either way
        const int vo = g_variant_override.load(std::memory_order_relaxed);
        if (vo == 0 || vo == 1) plan.variant = vo;
        plan.bm = plan.variant == 0 ? 64 : 128;
        const int64_t bm = plan.bm;
        plan.slots = rows * group / bm + b.num_seqs;
        base_ctas = ceil_div64(rows * group, bm) * n_kvh;
        target = 2 * sms;
        min_tiles = 4;
    }
    int64_t nsplit = 1;
    if (base_ctas < target) {
        nsplit = std::min(ceil_div64(target, base_ctas), std::max<int64_t>(1, kv_tiles_max / min_tiles));
        nsplit = std::min<int64_t>(nsplit, 128);
        // Bound the partial buffer (rows x heads x splits x (hd + 2) floats) to ~68 MB.
        nsplit = std::min<int64_t>(nsplit, std::max<int64_t>(1, (int64_t(1) << 17) / (rows * n_heads)));
    }
    if (nsplit > 1) {
        const int64_t tps = ceil_div64(kv_tiles_max, nsplit);
        nsplit = ceil_div64(kv_tiles_max, tps);
        plan.tiles_per_split = int(tps);
    }
    if (nsplit <= 1) {
        nsplit = 1;
        plan.tiles_per_split = 1 << 30;
    }
    plan.nsplit = int(nsplit);
    if (nsplit > 1) {
        plan.part_o_floats = size_t(rows * n_heads * nsplit * hd);
        plan.ws_bytes = (plan.part_o_floats + size_t(rows * n_heads * nsplit * 2)) * sizeof(float);
    }
    return plan;
}

// Raises a kernel's dynamic shared-memory limit once per device; `done` is the caller's per-kernel flags.
template <class Kernel>
void set_smem_limit(Kernel kernel, size_t bytes, std::atomic<bool> (&done)[kMaxDevices]) {
    const int dev = current_device();
    if (done[dev].load(std::memory_order_acquire)) return;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    SKV_CHECK(err == cudaSuccess, "attention: cudaFuncSetAttribute({} bytes of shared memory) failed: {}", bytes,
              cudaGetErrorString(err));
    done[dev].store(true, std::memory_order_release);
}

template <int HD, int WARPS, int MT, int KSUB>
void launch_prefill(const Params& p, const Plan& plan, cudaStream_t stream) {
    const size_t smem = size_t(WARPS * 16 * MT * HD + 4 * kBN * HD) * sizeof(bf16);
    static std::atomic<bool> done[kMaxDevices] = {};  // one set per instantiation
    set_smem_limit(attn_prefill_kernel<HD, WARPS, MT, KSUB>, smem, done);
    const int64_t gx = plan.slots * p.n_kvh;
    SKV_CHECK(gx < (int64_t(1) << 31), "attention: {} prefill CTAs is too many", gx);
    attn_prefill_kernel<HD, WARPS, MT, KSUB><<<dim3(unsigned(gx), unsigned(plan.nsplit)), WARPS * 32, smem, stream>>>(p);
    check_launch("attention (prefill)");
}

template <int HD>
void launch_decode(const Params& p, const Plan& plan, cudaStream_t stream) {
    const size_t smem = size_t(16 * HD + 4 * kBN * HD) * sizeof(bf16);
    static std::atomic<bool> done[kMaxDevices] = {};  // one set per instantiation
    set_smem_limit(attn_decode_kernel<HD>, smem, done);
    const int64_t gx = int64_t(p.num_seqs) * p.n_kvh;
    SKV_CHECK(gx < (int64_t(1) << 31), "attention: {} decode CTAs is too many", gx);
    attn_decode_kernel<HD><<<dim3(unsigned(gx), unsigned(plan.nsplit)), 128, smem, stream>>>(p);
    check_launch("attention (decode)");
}

template <int HD>
void launch_combine(const Params& p, int64_t rows, const Plan& plan, cudaStream_t stream) {
    const int64_t warps = rows * p.n_heads;
    const int64_t blocks = ceil_div64(warps, 4);
    SKV_CHECK(blocks < (int64_t(1) << 31), "attention: {} combine blocks is too many", blocks);
    attn_combine_kernel<HD><<<unsigned(blocks), 128, 0, stream>>>(p, rows, plan.tiles_per_split * kBN);
    check_launch("attention (split combine)");
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

namespace detail {
void set_attention_mode_for_testing(int mode) { g_mode_override.store(mode, std::memory_order_relaxed); }
void set_attention_prefill_variant_for_testing(int v) { g_variant_override.store(v, std::memory_order_relaxed); }
}  // namespace detail

size_t attention_workspace_bytes(int64_t rows, const AttentionBatch& batch, const KvLayout& layout, int64_t n_heads) {
    return make_plan(rows, batch, layout, n_heads).ws_bytes;
}

void attention(const bf16* q, int64_t q_row_stride, int64_t rows, const AttentionBatch& batch,
               const KvLayout& layout, const bf16* k_cache, const bf16* v_cache, int64_t n_heads, float scale,
               bf16* out, void* workspace, cudaStream_t stream) {
    const int64_t hd = layout.head_dim;
    SKV_CHECK(layout.n_kv_heads > 0 && n_heads > 0 && n_heads % layout.n_kv_heads == 0,
              "attention: {} query heads is not a multiple of {} KV heads", n_heads, layout.n_kv_heads);
    SKV_CHECK(hd > 0 && hd <= 256, "attention: head_dim {} is not supported (1..256)", hd);
    SKV_CHECK(layout.block_size > 0, "attention: block_size {} must be positive", layout.block_size);
    SKV_CHECK(q_row_stride >= n_heads * hd, "attention: q row stride {} is shorter than {} heads of {}", q_row_stride,
              n_heads, hd);
    SKV_CHECK(rows >= 0 && batch.num_seqs >= 0, "attention: negative rows ({}) or sequences ({})", rows,
              batch.num_seqs);
    if (rows == 0 || batch.num_seqs == 0) return;
    SKV_CHECK(rows < (int64_t(1) << 31) && batch.num_seqs < (int64_t(1) << 31) && n_heads <= 65535,
              "attention: sizes out of range (rows {}, sequences {}, heads {})", rows, batch.num_seqs, n_heads);

    Plan plan = make_plan(rows, batch, layout, n_heads);
    if (plan.path != Path::Simple) {
        const bool ok = aligned16(q) && aligned16(k_cache) && aligned16(v_cache) && aligned16(out) &&
                        q_row_stride % 8 == 0;
        if (!ok) plan.path = Path::Simple;
    }
    // The tensor-core kernels take the row max of the raw scores (they assume scale > 0).
    if (!(scale > 0.0f) || !std::isfinite(scale)) plan.path = Path::Simple;
    if (plan.path == Path::Simple) plan.nsplit = 1;
    if (plan.nsplit > 1)
        SKV_CHECK(workspace != nullptr && aligned16(workspace),
                  "attention: needs a 16-byte aligned workspace of {} bytes", plan.ws_bytes);

    Params p{};
    p.q = q;
    p.q_stride = q_row_stride;
    p.out = out;
    p.k_cache = k_cache;
    p.v_cache = v_cache;
    p.query_start = batch.query_start;
    p.seq_lens = batch.seq_lens;
    p.block_tables = batch.block_tables;
    p.max_blocks_per_seq = batch.max_blocks_per_seq;
    p.num_seqs = int(batch.num_seqs);
    p.n_heads = int(n_heads);
    p.n_kvh = int(layout.n_kv_heads);
    p.group = int(n_heads / layout.n_kv_heads);
    p.block_size = int(layout.block_size);
    p.head_dim = int(hd);
    p.scale_log2 = float(double(scale) * 1.4426950408889634);
    p.nsplit = plan.nsplit;
    p.tiles_per_split = plan.tiles_per_split;
    if (plan.nsplit > 1) {
        p.part_o = static_cast<float*>(workspace);
        p.part_ml = p.part_o + plan.part_o_floats;
    }

    switch (plan.path) {
        case Path::None:
            return;
        case Path::Simple:
            attn_simple_kernel<<<dim3(unsigned(rows), unsigned(n_heads)), 128, 0, stream>>>(p);
            check_launch("attention (simple)");
            return;
        case Path::Decode:
            if (hd == 64) launch_decode<64>(p, plan, stream);
            else launch_decode<128>(p, plan, stream);
            break;
        case Path::Prefill:
            if (hd == 64) {
                if (plan.variant == 0) launch_prefill<64, 4, 1, 64>(p, plan, stream);
                else launch_prefill<64, 4, 2, 64>(p, plan, stream);
            } else {
                if (plan.variant == 0) launch_prefill<128, 4, 1, 64>(p, plan, stream);
                else launch_prefill<128, 4, 2, 64>(p, plan, stream);
            }
            break;
    }
    if (plan.nsplit > 1) {
        if (hd == 64) launch_combine<64>(p, rows, plan, stream);
        else launch_combine<128>(p, rows, plan, stream);
    }
}

}  // namespace swiftkv::cuda
