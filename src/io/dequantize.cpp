// dequantize_to_f32 — converts rows of F32, F16, BF16 and the ggml block formats Q8_0, Q4_0 and
// Q4_1 to f32. Block layouts (all little-endian, as in ggml and gguf-py):
//   Q8_0: f16 d, int8 qs[32]                 x[j] = d * qs[j]
//   Q4_0: f16 d, uint8 qs[16]                x[j] = d * ((qs[j] & 15) - 8), x[j+16] = d * ((qs[j] >> 4) - 8)
//   Q4_1: f16 d, f16 m, uint8 qs[16]         x[j] = d * (qs[j] & 15) + m,   x[j+16] = d * (qs[j] >> 4) + m
// This runs over every weight at model load, so the block formats have AVX2 paths (8 floats per
// instruction; GCC at -O2 leaves the scalar loops unvectorized) beside the scalar reference loops,
// which other targets use. f16 goes through the F16C instruction when the target has it.
#include <cstring>

#include "core/error.h"
#include "io/gguf_reader.h"

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SWIFTKV_DEQUANT_AVX2 1
#endif

namespace swiftkv {

namespace {

inline float load_f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}

void f16_row(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) dst[i] = load_f16(src + 2 * i);
}

void bf16_row(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t u = uint32_t(h) << 16;
        std::memcpy(dst + i, &u, 4);
    }
}

#if defined(SWIFTKV_DEQUANT_AVX2)
// 16 unsigned 4-bit values (one per byte of q) to 16 floats q*d + m, stored at y[0..15].
inline void store_nibbles(__m128i q, __m256 d, __m256 m, float* y) {
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
    _mm256_storeu_ps(y, _mm256_fmadd_ps(lo, d, m));
    _mm256_storeu_ps(y + 8, _mm256_fmadd_ps(hi, d, m));
}

// Q4_0 and Q4_1 share the nibble layout: x = d*q + m, with m = -8d for Q4_0 (exact: d*(q-8) is
// computed as one rounding of the same exact value).
template <bool kHasMin>
void q4_row_avx2(const uint8_t* src, float* dst, int64_t blocks) {
    constexpr int kBlockBytes = kHasMin ? 20 : 18;
    const __m128i low_mask = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = src + b * kBlockBytes;
        const float d = load_f16(blk);
        const float m = kHasMin ? load_f16(blk + 2) : -8.f * d;
        const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (kHasMin ? 4 : 2)));
        const __m256 vd = _mm256_set1_ps(d);
        const __m256 vm = _mm256_set1_ps(m);
        float* y = dst + b * 32;
        store_nibbles(_mm_and_si128(qs, low_mask), vd, vm, y);
        store_nibbles(_mm_and_si128(_mm_srli_epi16(qs, 4), low_mask), vd, vm, y + 16);
    }
}
#endif

#if defined(SWIFTKV_DEQUANT_AVX2)
void q8_0_row_avx2(const uint8_t* src, float* dst, int64_t blocks) {
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = src + b * 34;
        const __m256 d = _mm256_set1_ps(load_f16(blk));
        float* y = dst + b * 32;
        for (int j = 0; j < 32; j += 8) {
            const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + j));
            _mm256_storeu_ps(y + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
    }
}
#endif

// Scalar reference loops: used on targets without AVX2, and by tests to check the SIMD paths.
void q8_0_row_scalar(const uint8_t* src, float* dst, int64_t blocks) {
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = src + b * 34;
        const float d = load_f16(blk);
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
        float* y = dst + b * 32;
        for (int j = 0; j < 32; ++j) y[j] = d * float(qs[j]);
    }
}

void q4_0_row_scalar(const uint8_t* src, float* dst, int64_t blocks) {
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = src + b * 18;
        const float d = load_f16(blk);
        const uint8_t* qs = blk + 2;
        float* y = dst + b * 32;
        for (int j = 0; j < 16; ++j) {
            y[j] = d * float(int(qs[j] & 15) - 8);
            y[j + 16] = d * float(int(qs[j] >> 4) - 8);
        }
    }
}

void q4_1_row_scalar(const uint8_t* src, float* dst, int64_t blocks) {
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = src + b * 20;
        const float d = load_f16(blk);
        const float m = load_f16(blk + 2);
        const uint8_t* qs = blk + 4;
        float* y = dst + b * 32;
        for (int j = 0; j < 16; ++j) {
            y[j] = d * float(qs[j] & 15) + m;
            y[j + 16] = d * float(qs[j] >> 4) + m;
        }
    }
}

void dequantize(DType dtype, const uint8_t* src, float* dst, int64_t n, bool simd) {
    SKV_CHECK(n >= 0, "dequantize_to_f32: negative element count {}", n);
    const int64_t block = dtype_block_elems(dtype);
    SKV_CHECK(n % block == 0, "dequantize_to_f32: {} data must hold a multiple of {} elements, got {}",
              dtype_name(dtype), block, n);
#if !defined(SWIFTKV_DEQUANT_AVX2)
    simd = false;
#endif
    switch (dtype) {
        case DType::F32:
            if (n > 0) std::memcpy(dst, src, size_t(n) * 4);
            return;
        case DType::F16: f16_row(src, dst, n); return;
        case DType::BF16: bf16_row(src, dst, n); return;
#if defined(SWIFTKV_DEQUANT_AVX2)
        case DType::Q8_0: simd ? q8_0_row_avx2(src, dst, n / 32) : q8_0_row_scalar(src, dst, n / 32); return;
        case DType::Q4_0: simd ? q4_row_avx2<false>(src, dst, n / 32) : q4_0_row_scalar(src, dst, n / 32); return;
        case DType::Q4_1: simd ? q4_row_avx2<true>(src, dst, n / 32) : q4_1_row_scalar(src, dst, n / 32); return;
#else
        case DType::Q8_0: q8_0_row_scalar(src, dst, n / 32); return;
        case DType::Q4_0: q4_0_row_scalar(src, dst, n / 32); return;
        case DType::Q4_1: q4_1_row_scalar(src, dst, n / 32); return;
#endif
        default: break;
    }
    SKV_THROW("dequantize_to_f32: cannot convert {} to f32 (supported: F32, F16, BF16, Q8_0, Q4_0, "
              "Q4_1)",
              dtype_name(dtype));
}

}  // namespace

void dequantize_to_f32(DType dtype, const uint8_t* src, float* dst, int64_t n) {
    dequantize(dtype, src, dst, n, /*simd=*/true);
}

void dequantize_to_f32_reference(DType dtype, const uint8_t* src, float* dst, int64_t n) {
    dequantize(dtype, src, dst, n, /*simd=*/false);
}

}  // namespace swiftkv
