// The vector loops of the row-wise ops (cpu_elementwise.cpp: rmsnorm, add_rmsnorm, rope, silu_mul),
// written once with Highway and compiled for every instruction set of cpu_isa.h (this file includes
// itself once per target through foreach_target.h). Memory-bound; the drivers split rows over the pool.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/cpu_rowwise.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// foreach_target.h must come first.
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#include <cmath>

#include "backend/cpu/cpu_vector_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace swiftkv::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// Sum of squares with f32 lane accumulators (2 x lanes partial sums), added up in double.
double sum_squares(const float* x, int64_t n) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    auto acc0 = hn::Zero(d), acc1 = hn::Zero(d);
    int64_t i = 0;
    for (; i + 2 * lanes <= n; i += 2 * lanes) {
        const auto a = hn::LoadU(d, x + i), b = hn::LoadU(d, x + i + lanes);
        acc0 = hn::MulAdd(a, a, acc0);
        acc1 = hn::MulAdd(b, b, acc1);
    }
    for (; i + lanes <= n; i += lanes) {
        const auto a = hn::LoadU(d, x + i);
        acc0 = hn::MulAdd(a, a, acc0);
    }
    double sum = double(hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1))));
    for (; i < n; ++i) sum += double(x[i]) * double(x[i]);
    return sum;
}

// out = x * scale * weight.
void scale_mul(const float* x, const float* weight, float scale, float* out, int64_t n) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    const auto s = hn::Set(d, scale);
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes)
        hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), s), hn::LoadU(d, weight + i)), d, out + i);
    for (; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

// h += delta.
void add_inplace(float* h, const float* delta, int64_t n) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes) hn::StoreU(hn::Add(hn::LoadU(d, h + i), hn::LoadU(d, delta + i)), d, h + i);
    for (; i < n; ++i) h[i] += delta[i];
}

// (a, b) <- (a cos - b sin, b cos + a sin) over one head's halves.
void rotate_half(float* a, float* b, const float* cs, const float* sn, int64_t half) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    int64_t i = 0;
    for (; i + lanes <= half; i += lanes) {
        const auto va = hn::LoadU(d, a + i), vb = hn::LoadU(d, b + i);
        const auto c = hn::LoadU(d, cs + i), s = hn::LoadU(d, sn + i);
        hn::StoreU(hn::MulSub(va, c, hn::Mul(vb, s)), d, a + i);
        hn::StoreU(hn::MulAdd(vb, c, hn::Mul(va, s)), d, b + i);
    }
    for (; i < half; ++i) {
        const float va = a[i], vb = b[i];
        a[i] = va * cs[i] - vb * sn[i];
        b[i] = vb * cs[i] + va * sn[i];
    }
}

// out = silu(g) * u = g / (1 + exp(-g)) * u. exp's argument is clamped to 88 (Highway's Exp is valid
// up to 104; beyond 88 the true value overflows f32 and silu is -0 either way, within 1e-36).
void silu_mul_row(const float* g, const float* u, float* out, int64_t n) {
    const DF d;
    const int64_t lanes = int64_t(hn::Lanes(d));
    const auto one = hn::Set(d, 1.0f), cap = hn::Set(d, 88.0f);
    int64_t i = 0;
    for (; i + lanes <= n; i += lanes) {
        const auto vg = hn::LoadU(d, g + i);
        const auto e = hn::Exp(d, hn::Min(hn::Neg(vg), cap));
        hn::StoreU(hn::Mul(hn::Div(vg, hn::Add(one, e)), hn::LoadU(d, u + i)), d, out + i);
    }
    for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void fill_rowwise_kernels(VectorKernels& k) {
    k.sum_squares = &sum_squares;
    k.scale_mul = &scale_mul;
    k.add_inplace = &add_inplace;
    k.rotate_half = &rotate_half;
    k.silu_mul_row = &silu_mul_row;
}

}  // namespace swiftkv::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backend/cpu/cpu_isa_dispatch.h"

namespace swiftkv::cpu {
void fill_rowwise_kernels(CpuIsa isa, VectorKernels& k) { SKV_DISPATCH_TO_TARGET(isa, fill_rowwise_kernels, k); }
}  // namespace swiftkv::cpu
#endif
