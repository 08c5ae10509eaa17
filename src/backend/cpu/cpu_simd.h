// Helpers shared by the CPU kernels: aligned scratch buffers, and for the paged attention (the one
// kernel not yet written per instruction set, cpu_vector_kernels.h) the AVX-512 feature switch and a
// transposed horizontal sum. Its SKV_CPU_AVX512 path needs a -march with AVX-512; otherwise it runs
// its portable scalar path.
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

#ifdef SKV_CPU_AVX512

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
