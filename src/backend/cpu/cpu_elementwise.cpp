// Row-wise fused kernels of the CPU backend: rmsnorm, add_rmsnorm, rope (with cos/sin supplied by the
// backend's table), silu_mul. All are memory-bound; they vectorise with AVX-512 where available and
// split rows over the pool once a call is large enough to pay for waking the workers.
#include <cmath>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_simd.h"

namespace swiftkv::cpu {

namespace {

// Below this many elements a call runs on the calling thread alone.
constexpr int64_t kParallelElements = 1 << 15;

template <class F>
void for_rows(ThreadPool& pool, int64_t rows, int64_t elems_per_row, F&& f) {
    if (rows <= 1 || rows * elems_per_row < kParallelElements || pool.size() == 1) {
        f(0, rows);
        return;
    }
    pool.parallel_for(rows, [&](int64_t begin, int64_t end, int) { f(begin, end); });
}

// Sum of squares with f32 lane accumulators (16 or more partial sums: error ~ sqrt(dim/16) ulp), then
// the scale 1/sqrt(mean + eps) in double.
float rms_scale(const float* x, int64_t dim, float eps) {
    double sum = 0.0;
#ifdef SKV_CPU_AVX512
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        acc0 = _mm512_fmadd_ps(a, a, acc0);
        acc1 = _mm512_fmadd_ps(b, b, acc1);
    }
    for (; i < dim; i += 16) {
        const __m512 a = _mm512_maskz_loadu_ps(tail_mask16(std::min<int64_t>(16, dim - i)), x + i);
        acc0 = _mm512_fmadd_ps(a, a, acc0);
    }
    sum = double(_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)));
#else
    for (int64_t i = 0; i < dim; ++i) sum += double(x[i]) * double(x[i]);
#endif
    return float(1.0 / std::sqrt(sum / double(dim) + double(eps)));
}

// out = x * scale * weight.
void scale_row(const float* x, const float* weight, float scale, float* out, int64_t dim) {
#ifdef SKV_CPU_AVX512
    const __m512 s = _mm512_set1_ps(scale);
    int64_t i = 0;
    for (; i + 16 <= dim; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), _mm512_loadu_ps(weight + i)));
    if (i < dim) {
        const __mmask16 m = tail_mask16(dim - i);
        _mm512_mask_storeu_ps(out + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), s),
                                            _mm512_maskz_loadu_ps(m, weight + i)));
    }
#else
    for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * scale * weight[i];
#endif
}

}  // namespace

void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t dim, float eps,
             ThreadPool& pool) {
    for_rows(pool, rows, dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
            scale_row(x + r * dim, weight, rms_scale(x + r * dim, dim, eps), out + r * dim, dim);
    });
}

void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out, int64_t rows,
                 int64_t dim, float eps, ThreadPool& pool) {
    for_rows(pool, rows, dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            float* h = residual + r * dim;
            const float* d = delta + r * dim;
#ifdef SKV_CPU_AVX512
            int64_t i = 0;
            for (; i + 16 <= dim; i += 16)
                _mm512_storeu_ps(h + i, _mm512_add_ps(_mm512_loadu_ps(h + i), _mm512_loadu_ps(d + i)));
            if (i < dim) {
                const __mmask16 m = tail_mask16(dim - i);
                _mm512_mask_storeu_ps(h + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, d + i)));
            }
#else
            for (int64_t i = 0; i < dim; ++i) h[i] += d[i];
#endif
            scale_row(h, weight, rms_scale(h, dim, eps), out + r * dim, dim);
        }
    });
}

void rope_apply(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                const int32_t* positions, const float* cos_sin_table, ThreadPool& pool) {
    const int64_t half = head_dim / 2;
    for_rows(pool, rows, n_heads * head_dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* cs = cos_sin_table + int64_t(positions[r]) * 2 * half;
            const float* sn = cs + half;
            for (int64_t h = 0; h < n_heads; ++h) {
                float* a = x + r * row_stride + h * head_dim;
                float* b = a + half;
                int64_t i = 0;
#ifdef SKV_CPU_AVX512
                for (; i + 16 <= half; i += 16) {
                    const __m512 va = _mm512_loadu_ps(a + i), vb = _mm512_loadu_ps(b + i);
                    const __m512 c = _mm512_loadu_ps(cs + i), s = _mm512_loadu_ps(sn + i);
                    _mm512_storeu_ps(a + i, _mm512_fmsub_ps(va, c, _mm512_mul_ps(vb, s)));
                    _mm512_storeu_ps(b + i, _mm512_fmadd_ps(vb, c, _mm512_mul_ps(va, s)));
                }
#endif
                for (; i < half; ++i) {
                    const float va = a[i], vb = b[i];
                    a[i] = va * cs[i] - vb * sn[i];
                    b[i] = vb * cs[i] + va * sn[i];
                }
            }
        }
    });
}

void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t ffn, ThreadPool& pool) {
    for_rows(pool, rows, ffn * 4, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* g = gate_up + r * 2 * ffn;
            const float* u = g + ffn;
            float* o = out + r * ffn;
            int64_t i = 0;
#ifdef SKV_CPU_AVX512
            const __m512 one = _mm512_set1_ps(1.0f);
            for (; i + 16 <= ffn; i += 16) {
                const __m512 vg = _mm512_loadu_ps(g + i);
                const __m512 silu = _mm512_div_ps(vg, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), vg))));
                _mm512_storeu_ps(o + i, _mm512_mul_ps(silu, _mm512_loadu_ps(u + i)));
            }
            if (i < ffn) {
                const __mmask16 m = tail_mask16(ffn - i);
                const __m512 vg = _mm512_maskz_loadu_ps(m, g + i);
                const __m512 silu = _mm512_div_ps(vg, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), vg))));
                _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, u + i)));
                i = ffn;
            }
#endif
            for (; i < ffn; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
        }
    });
}

}  // namespace swiftkv::cpu
