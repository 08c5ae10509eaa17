// Decode-sized matrix products (a few rows of x against all of W) and bf16 widening, written once with
// Highway and compiled for every instruction set of cpu_isa.h (this file includes itself once per
// target through foreach_target.h). Memory-bound: every weight row is read once for up to 8 rows of x,
// bf16 weights are widened in registers (a shift), the activations stay exact f32.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/cpu_gemv.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h must come first.
#include "hwy/highway.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_vector_kernels.h"
#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace swiftkv::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// Vector registers of the target: the accumulator tiles below are sized to fit them.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif

// Weight rows per tile for R rows of x: R x NW accumulators, plus R x vectors (or NW weight vectors)
// and a temporary, within the register file.
template <int R>
constexpr int tile_rows() {
    return std::max(1, std::min(8, (kRegisters - 2) / (R + 1)));
}

template <class W>
HWY_INLINE hn::Vec<DF> load_w(DF d, const W* w) {
    if constexpr (sizeof(W) == 2) {
        // bf16 is the top half of an f32: widen to 32 bits and shift.
        const hn::RebindToUnsigned<DF> du32;
        const hn::Rebind<uint16_t, DF> du16;
        return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, w))));
    } else {
        return hn::LoadU(d, w);
    }
}

HWY_INLINE float to_f32(float v) { return v; }
HWY_INLINE float to_f32(uint16_t v) { return bf16_to_f32(v); }

// out[r][n0 + j] = dot(x[r], W[n0 + j]) for r < R, j < NW.
template <int R, int NW, class W>
HWY_INLINE void tile(const float* HWY_RESTRICT x, int64_t k_dim, const W* HWY_RESTRICT w, int64_t n0,
                     float* HWY_RESTRICT out, int64_t ldo) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    hn::Vec<DF> acc[R][NW];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NW; ++j) acc[r][j] = hn::Zero(d);
    int64_t k = 0;
    for (; k + lanes <= k_dim; k += lanes) {
        if constexpr (R <= 4) {
            // Hold the x vectors, stream the weights.
            hn::Vec<DF> xv[R];
            for (int r = 0; r < R; ++r) xv[r] = hn::LoadU(d, x + r * k_dim + k);
            for (int j = 0; j < NW; ++j) {
                const auto wv = load_w(d, w + (n0 + j) * k_dim + k);
                for (int r = 0; r < R; ++r) acc[r][j] = hn::MulAdd(xv[r], wv, acc[r][j]);
            }
        } else {
            // Hold the weight vectors, stream x.
            hn::Vec<DF> wv[NW];
            for (int j = 0; j < NW; ++j) wv[j] = load_w(d, w + (n0 + j) * k_dim + k);
            for (int r = 0; r < R; ++r) {
                const auto xv = hn::LoadU(d, x + r * k_dim + k);
                for (int j = 0; j < NW; ++j) acc[r][j] = hn::MulAdd(xv, wv[j], acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NW; ++j) {
            float s = hn::GetLane(hn::SumOfLanes(d, acc[r][j]));
            const W* wr = w + (n0 + j) * k_dim;
            for (int64_t t = k; t < k_dim; ++t) s += x[r * k_dim + t] * to_f32(wr[t]);
            out[r * ldo + n0 + j] = s;
        }
}

template <int R, class W>
void tiles(const float* x, int64_t k_dim, const W* w, int64_t n_begin, int64_t n_end, float* out, int64_t ldo) {
    constexpr int NW = tile_rows<R>();
    int64_t n = n_begin;
    for (; n + NW <= n_end; n += NW) tile<R, NW>(x, k_dim, w, n, out, ldo);
    for (; n < n_end; ++n) tile<R, 1>(x, k_dim, w, n, out, ldo);
}

template <class W>
void small_rows(const float* x, int64_t rows, int64_t k_dim, const W* w, int64_t n_begin, int64_t n_end,
                float* out, int64_t ldo) {
    switch (rows) {
        case 1: return tiles<1>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 2: return tiles<2>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 3: return tiles<3>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 4: return tiles<4>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 5: return tiles<5>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 6: return tiles<6>(x, k_dim, w, n_begin, n_end, out, ldo);
        case 7: return tiles<7>(x, k_dim, w, n_begin, n_end, out, ldo);
        default: return tiles<8>(x, k_dim, w, n_begin, n_end, out, ldo);
    }
}

void small_rows_f32(const float* x, int64_t rows, int64_t k_dim, const float* w, int64_t n_begin, int64_t n_end,
                    float* out, int64_t ldo) {
    small_rows(x, rows, k_dim, w, n_begin, n_end, out, ldo);
}

void small_rows_bf16(const float* x, int64_t rows, int64_t k_dim, const uint16_t* w, int64_t n_begin,
                     int64_t n_end, float* out, int64_t ldo) {
    small_rows(x, rows, k_dim, w, n_begin, n_end, out, ldo);
}

void widen_bf16(const uint16_t* src, int64_t count, float* dst) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    int64_t i = 0;
    for (; i + lanes <= count; i += lanes) hn::StoreU(load_w(d, src + i), d, dst + i);
    for (; i < count; ++i) dst[i] = bf16_to_f32(src[i]);
}

void fill_gemv_kernels(VectorKernels& k) {
    k.small_rows_f32 = &small_rows_f32;
    k.small_rows_bf16 = &small_rows_bf16;
    k.widen_bf16 = &widen_bf16;
}

}  // namespace swiftkv::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backend/cpu/cpu_isa_dispatch.h"

namespace swiftkv::cpu {
void fill_gemv_kernels(CpuIsa isa, VectorKernels& k) { SKV_DISPATCH_TO_TARGET(isa, fill_gemv_kernels, k); }
}  // namespace swiftkv::cpu
#endif
