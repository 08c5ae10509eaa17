// Element types known to swiftkv, their sizes, and scalar conversions between f32, f16 and bf16.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace swiftkv {

enum class DType : uint8_t { F32, F16, BF16, I32, I64, U8, Q8_0, Q4_0, Q4_1 };

std::string_view dtype_name(DType t);

// Quantized types are stored in blocks; block_elems()/block_bytes() describe one block. For plain
// types a block is one element.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes needed for n elements (n must be a multiple of the block size for quantized types).
int64_t dtype_row_bytes(DType t, int64_t n);

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round-to-nearest-even, NaN preserved.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace swiftkv
