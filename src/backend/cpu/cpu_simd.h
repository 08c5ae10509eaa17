// SIMD helpers shared by the CPU kernels: the AVX-512 feature switch, a vectorised exp, bf16 widening,
// and aligned scratch buffers. Kernels use SKV_CPU_AVX512 to pick their AVX-512 path and keep a
// portable scalar path for other machines (the build may lack -march=native).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SKV_CPU_AVX512 1
// GCC 12's AVX-512 headers seed masked builtins with _mm512_undefined_*(), which -Wuninitialized flags
// at every inlined use; the warnings point into the header, so silencing them around it is enough.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace swiftkv::cpu {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// A growable 64-byte aligned float buffer for per-thread scratch. Contents are not preserved on growth.
class ScratchBuffer {
public:
    ScratchBuffer() = default;
    ScratchBuffer(const ScratchBuffer&) = delete;
    ScratchBuffer& operator=(const ScratchBuffer&) = delete;
    ~ScratchBuffer() { std::free(data_); }

    float* get(size_t floats) {
        if (floats > capacity_) {
            std::free(data_);
            const size_t bytes = round_up(int64_t(floats * sizeof(float)), 64);
            data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
            if (!data_) {
                capacity_ = 0;
                throw std::bad_alloc();
            }
            capacity_ = floats;
        }
        return data_;
    }

private:
    float* data_ = nullptr;
    size_t capacity_ = 0;
};

// Scalar exp with the same clamping as exp16: exactly 0 below kExpZeroBelow (no denormals downstream).
constexpr float kExpZeroBelow = -87.0f;

#ifdef SKV_CPU_AVX512

// exp(x) on 16 lanes: Cody-Waite reduction to r in [-ln2/2, ln2/2], Cephes' degree-6 polynomial, then
// scalef by 2^n. Max relative error ~2e-7 over [-87, 88.7]. Lanes below -87 give exactly 0 (so products
// never go denormal, which would cost microcode assists); lanes above 88.73 give +inf, like std::exp.
inline __m512 exp16(__m512 x) {
    const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpZeroBelow), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(_knot_mask16(zero), _mm512_scalef_ps(p, n));
}

// 16 bf16 values (raw uint16) to f32: bf16 is the top half of an f32, so widening is a shift.
inline __m512 bf16x16_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m512 load_bf16x16(const uint16_t* p) {
    return bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

inline __m512 maskz_load_bf16x16(__mmask16 m, const uint16_t* p) {
    return bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, p));
}

inline __mmask16 tail_mask16(int64_t n) { return __mmask16((1u << n) - 1u); }

// Lane j of the result = sum of the lanes of a[j].
inline __m512 transpose_reduce16(const __m512 a[16]) {
    __m512 b[8], c[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    // c[i] holds, in 128-bit lane L, the lane-L partial sums of a[4i .. 4i+3]; add the four lanes up.
    const __m512 f0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 f1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(3, 1, 3, 1)));
}

#endif  // SKV_CPU_AVX512

}  // namespace swiftkv::cpu
