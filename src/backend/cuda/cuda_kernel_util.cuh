// Small pieces shared by the CUDA kernel files (internal: included by .cu files only): launch-shape
// helpers, bf16 vectors for 16- and 8-byte loads and stores, warp and block sums, the grid-stride loop
// of elementwise kernels, the row -> sequence lookup of packed batches.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace swiftkv::cuda {

// --- launch shapes (host) -------------------------------------------------------------------------

// Grids loop over rows (grid-stride), so a grid never needs more than this many blocks in x.
constexpr int64_t kMaxGridX = int64_t(1) << 20;
// grid.y / grid.z limit.
constexpr int64_t kMaxGridYZ = 65535;

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int round_up_warp(int64_t n) { return int(std::max<int64_t>(32, ceil_div(n, 32) * 32)); }
inline unsigned grid_x(int64_t blocks) { return unsigned(std::clamp<int64_t>(blocks, 1, kMaxGridX)); }
inline unsigned grid_yz(int64_t blocks) { return unsigned(std::clamp<int64_t>(blocks, 1, kMaxGridYZ)); }
// Blocks of 256 threads for an elementwise kernel over `items` thread-steps (grid-stride beyond).
inline unsigned elementwise_grid(int64_t items) { return unsigned(std::clamp<int64_t>(ceil_div(items, 256), 1, 8192)); }

// --- device helpers -------------------------------------------------------------------------------

// 8 bf16 <-> one 16-byte vector; 4 bf16 <-> one 8-byte vector.
union Bf16x8 {
    uint4 u;
    __nv_bfloat162 h[4];
};
union Bf16x4 {
    uint2 u;
    __nv_bfloat162 h[2];
};

// T: float or double.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Deterministic: fixed reduction tree.
// `scratch` holds 33 values; the function ends with a barrier so scratch can be reused right away.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < warps ? scratch[lane] : T(0);
        t = warp_sum(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    const T total = scratch[32];
    __syncthreads();
    return total;
}

// Grid-stride loop of an elementwise kernel over n items: vec_op(i) for the i-th group of kWidth items
// (kVec: the launcher checked shapes and alignment), then scalar_op(i) for every item left over.
template <bool kVec, int kWidth, class VecOp, class ScalarOp>
__device__ __forceinline__ void for_each_item(int64_t n, VecOp vec_op, ScalarOp scalar_op) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t done = 0;
    if constexpr (kVec) {
        const int64_t nvec = n / kWidth;
        for (int64_t i = tid; i < nvec; i += stride) vec_op(i);
        done = nvec * kWidth;
    }
    for (int64_t i = done + tid; i < n; i += stride) scalar_op(i);
}

// Largest s in [0, num_seqs) with starts[s] <= row: the sequence owning `row` of a batch of sequences
// packed back to back (starts ascending). Row: int or int64_t.
template <class Row>
__device__ __forceinline__ int seq_of_row(const int32_t* __restrict__ starts, int num_seqs, Row row) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (__ldg(starts + mid) <= row) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace swiftkv::cuda
