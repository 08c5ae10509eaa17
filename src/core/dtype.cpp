#include "core/dtype.h"

#include "core/error.h"

namespace swiftkv {

std::string_view dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::U8: return "U8";
        case DType::Q8_0: return "Q8_0";
        case DType::Q4_0: return "Q4_0";
        case DType::Q4_1: return "Q4_1";
    }
    return "?";
}

int64_t dtype_block_elems(DType t) {
    switch (t) {
        case DType::Q8_0:
        case DType::Q4_0:
        case DType::Q4_1: return 32;
        default: return 1;
    }
}

int64_t dtype_block_bytes(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::F16: return 2;
        case DType::BF16: return 2;
        case DType::I32: return 4;
        case DType::I64: return 8;
        case DType::U8: return 1;
        case DType::Q8_0: return 2 + 32;      // f16 scale + 32 int8
        case DType::Q4_0: return 2 + 16;      // f16 scale + 32 nibbles
        case DType::Q4_1: return 2 + 2 + 16;  // f16 scale, f16 min + 32 nibbles
    }
    return 0;
}

int64_t dtype_row_bytes(DType t, int64_t n) {
    const int64_t be = dtype_block_elems(t);
    SKV_CHECK(n % be == 0, "{} rows must hold a multiple of {} elements, got {}", dtype_name(t), be, n);
    return n / be * dtype_block_bytes(t);
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0) {
                mant <<= 1;
                --exp;
            }
            mant &= 0x3ffu;
            u = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return sign | 0x7e00u;               // NaN
    if (absu >= 0x477ff000u) return sign | 0x7c00u;              // overflow -> inf
    if (absu < 0x38800000u) {                                    // subnormal or zero in f16
        if (absu < 0x33000000u) return sign;                     // rounds to zero
        // f16 subnormal: value = r * 2^-24, and value = mant24 * 2^(exp - 150), so r = mant24 >> (126 - exp).
        const uint32_t exp = absu >> 23;
        const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - exp;  // 14..25
        uint32_t r = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
        return sign | uint16_t(r);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);           // round to nearest even
    r -= 0x38000000u;                                            // rebias 127 -> 15
    return sign | uint16_t(r >> 13);
}

}  // namespace swiftkv
