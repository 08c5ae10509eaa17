// Weight-streaming GEMV for decode: out[m, n] = sum_k x[m, k] * w[n, k], m < rows <= 8.
//
// Design (memory-bound: W is read exactly once; x is tiny and re-read from L1):
//  * A CTA of up to 256 threads is split into G groups of T threads (T in {32, 64, 128, 256}, chosen
//    on the host from K so every thread gets about >= 4 16-byte vectors per weight row). A group owns
//    kCols consecutive output columns n; its T threads split K: thread t reads 16-byte vectors
//    t, t + T, t + 2T, ... of each of the kCols weight rows (a warp reads 512 contiguous bytes per row
//    per step). The loop is unrolled U steps with all kCols * U weight loads issued before any math,
//    so each thread has 8..16 independent 16-byte loads in flight.
//  * Weights use ld.global.nc.L1::no_allocate (streamed past L1 so they never evict x); x uses
//    ld.global.nc (L1-cached: every CTA re-reads the same x slices).
//  * f32 accumulators acc[kCols][ROWS] (ROWS a template parameter); the end of the CTA reduces them
//    with a butterfly "transpose reduction" inside each warp (log2(32) shuffles per warp instead of
//    kCols*ROWS*5), then across the group's warps through shared memory; one thread per (column, row)
//    writes bf16 or f32.
//  * Columns past N (the last CTA) read row N-1 and are not written.
//  * Grid = ceil(N / (G * kCols)) CTAs; the block is shrunk (fewer groups) when that would not give
//    about 2 CTAs per SM.

#include "backend/cuda/cuda_gemv.h"

#include <cuda_runtime.h>

#include <algorithm>

namespace swiftkv::cuda {

namespace {

constexpr int kGemvThreads = 256;  // max threads per CTA
constexpr int kCols = 4;           // output columns per thread group

constexpr int pow2_ceil(int v) {
    int p = 1;
    while (p < v) p *= 2;
    return p;
}
constexpr int log2_exact(int v) {
    int l = 0;
    while ((1 << l) < v) ++l;
    return l;
}

// 16-byte streaming load: read-only path, not allocated in L1, 256-byte L2 prefetch.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int p) {
    return p == 0 ? v.x : p == 1 ? v.y : p == 2 ? v.z : v.w;
}
__device__ __forceinline__ float lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

// Consume U steps of weights already in registers: acc[c][r] += dot(w[u][c], x[r]) for each step u.
// Works one bf16 pair (32-bit word) at a time so only the raw 16-byte x vectors of all rows, not their
// unpacked f32 values, must be live at once (register pressure at ROWS = 8).
template <int ROWS, int U>
__device__ __forceinline__ void gemv_step(const uint4 (&wv)[U][kCols], const uint4* __restrict__ xv, int KV,
                                          int kv, int T, float (&acc)[kCols][ROWS]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        uint4 xr[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) xr[r] = __ldg(xv + int64_t(r) * KV + kv + u * T);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            float wl[kCols], wh[kCols];
#pragma unroll
            for (int c = 0; c < kCols; ++c) {
                wl[c] = lo(word(wv[u][c], p));
                wh[c] = hi(word(wv[u][c], p));
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float xl = lo(word(xr[r], p)), xh = hi(word(xr[r], p));
#pragma unroll
                for (int c = 0; c < kCols; ++c) {
                    acc[c][r] = fmaf(wl[c], xl, acc[c][r]);
                    acc[c][r] = fmaf(wh[c], xh, acc[c][r]);
                }
            }
        }
    }
}

// One butterfly halving step per level: lanes with bit OFF set keep the upper half of v, the others the
// lower half; each adds the half its partner sent. NV values become NV / 2.
template <int NV, int OFF>
__device__ __forceinline__ void butterfly(float* v, int lane) {
    if constexpr (NV > 1) {
        constexpr int half = NV / 2;
        const bool upper = (lane & OFF) != 0;
#pragma unroll
        for (int i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half];
            const float send = upper ? a : b;
            const float keep = upper ? b : a;
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
        }
        butterfly<half, OFF / 2>(v, lane);
    }
}

// Block: blockDim.x = G << tlog threads (G groups of T = 1 << tlog threads). Group g of CTA b owns
// columns [(b * G + g) * kCols, + kCols).
template <int ROWS>
__global__ void __launch_bounds__(kGemvThreads, 2)
    gemv_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, int N, int K, int tlog,
                void* __restrict__ out, bool out_f32) {
    constexpr int U = ROWS <= 4 ? 4 : 2;  // unrolled k steps: kCols * U loads in flight per thread
    constexpr int NV = pow2_ceil(kCols * ROWS);
    constexpr int LOGNV = log2_exact(NV);
    static_assert(NV <= 32, "kCols * ROWS must be <= 32");

    __shared__ float red[kGemvThreads / 32][32];

    const int KV = K >> 3;  // 16-byte vectors per row
    const int T = 1 << tlog;
    const int tid = threadIdx.x;
    const int g = tid >> tlog;
    const int t = tid & (T - 1);
    const int G = blockDim.x >> tlog;
    const int64_t n0 = (int64_t(blockIdx.x) * G + g) * kCols;

    // Column c reads weight row min(n0 + c, N - 1): vector offset coff[c] from the first one.
    const int64_t nfirst = min(n0, int64_t(N) - 1);
    const uint4* wbase = reinterpret_cast<const uint4*>(w + nfirst * K);
    int coff[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) coff[c] = int(min(n0 + c, int64_t(N) - 1) - nfirst) * KV;
    const uint4* xv = reinterpret_cast<const uint4*>(x);

    float acc[kCols][ROWS];
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[c][r] = 0.0f;

    int kv = t;
    for (; kv + (U - 1) * T < KV; kv += U * T) {
        uint4 wv[U][kCols];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int c = 0; c < kCols; ++c) wv[u][c] = ld_stream(wbase + (coff[c] + kv + u * T));
        gemv_step<ROWS, U>(wv, xv, KV, kv, T, acc);
    }
    for (; kv < KV; kv += T) {
        uint4 wv[1][kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) wv[0][c] = ld_stream(wbase + (coff[c] + kv));
        gemv_step<ROWS, 1>(wv, xv, KV, kv, T, acc);
    }

    // Warp butterfly transpose-reduction: after LOGNV halving steps (offsets 16, 8, ...) lane l holds
    // the partial sum of value index l >> (5 - LOGNV) over its lane set; plain steps finish the sum.
    float v[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] = i < kCols * ROWS ? acc[i / ROWS][i % ROWS] : 0.0f;
    const int lane = tid & 31;
    butterfly<NV, 16>(v, lane);
#pragma unroll
    for (int s = LOGNV; s < 5; ++s) v[0] += __shfl_xor_sync(0xffffffffu, v[0], 16 >> s);

    const int warp = tid >> 5;
    if ((lane & ((32 >> LOGNV) - 1)) == 0) red[warp][lane >> (5 - LOGNV)] = v[0];
    __syncthreads();

    if (t < kCols * ROWS) {
        const int wpg = T >> 5;  // warps per group
        float s = 0.0f;
        for (int i = 0; i < wpg; ++i) s += red[g * wpg + i][t];
        const int c = t / ROWS, r = t % ROWS;
        const int64_t n = n0 + c;
        if (n < N) {
            const int64_t o = int64_t(r) * N + n;
            if (out_f32)
                static_cast<float*>(out)[o] = s;
            else
                static_cast<bf16*>(out)[o] = __float2bfloat16_rn(s);
        }
    }
}

template <int ROWS>
void launch(const bf16* x, const bf16* w, int N, int K, int tlog, int threads, int64_t blocks, void* out,
            bool out_f32, cudaStream_t stream) {
    // Prefer L1 over shared memory (the kernel needs 1 KiB): x is re-read from L1 by every CTA.
    static const bool carveout_set = [] {
        cudaFuncSetAttribute(gemv_kernel<ROWS>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             int(cudaSharedmemCarveoutMaxL1));
        (void)cudaGetLastError();  // a hint only; never fail on it
        return true;
    }();
    (void)carveout_set;
    gemv_kernel<ROWS><<<dim3(unsigned(blocks)), dim3(unsigned(threads)), 0, stream>>>(x, w, N, K, tlog, out,
                                                                                      out_f32);
}

int sm_count() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 132;
    static int cache[64] = {};
    if (dev < 0 || dev >= 64) return 132;
    if (cache[dev] == 0) {
        int sms = 0;
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 132;
        cache[dev] = sms;
    }
    return cache[dev];
}

}  // namespace

bool gemv_supported(int64_t rows, int64_t N, int64_t K) {
    return rows >= 1 && rows <= kGemvMaxRows && N >= 1 && N < (int64_t(1) << 31) && K >= 8 && K % 8 == 0 &&
           K < (int64_t(1) << 31);
}

void gemv(const bf16* x, int64_t rows, const bf16* w, int64_t N, int64_t K, void* out, bool out_f32,
          cudaStream_t stream) {
    const int64_t KV = K / 8;
    // Threads per group: the largest of 32..256 that still gives every thread >= 4 vectors per row.
    int tlog = 5;
    while (tlog < 8 && KV >= (int64_t(4) << (tlog + 1))) ++tlog;
    const int T = 1 << tlog;
    // Groups per CTA: up to 256 threads, fewer when the grid would not give ~2 CTAs per SM.
    const int64_t min_blocks = 2 * int64_t(sm_count());
    int threads = kGemvThreads;
    auto blocks_for = [&](int th) { return (N + int64_t(th / T) * kCols - 1) / (int64_t(th / T) * kCols); };
    while (threads > T && blocks_for(threads) < min_blocks) threads /= 2;
    const int64_t blocks = blocks_for(threads);
    const int n = int(N), k = int(K);
    switch (rows) {
        case 1: launch<1>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 2: launch<2>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 3: launch<3>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 4: launch<4>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 5: launch<5>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 6: launch<6>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 7: launch<7>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        case 8: launch<8>(x, w, n, k, tlog, threads, blocks, out, out_f32, stream); break;
        default: break;
    }
    check_launch("gemv");
}

}  // namespace swiftkv::cuda
