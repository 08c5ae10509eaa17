#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/dtype.h"
#include "core/error.h"

using namespace swiftkv;

// The f16 decoder against the hardware conversion (F16C), which we did not write.
TEST(DType, F16DecodeMatchesHardwareForAllBitPatterns) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float mine = f16_to_f32(uint16_t(h));
        const float hw = static_cast<float>(static_cast<_Float16>(std::bit_cast<_Float16>(uint16_t(h))));
        if (std::isnan(hw)) {
            EXPECT_TRUE(std::isnan(mine)) << h;
        } else {
            EXPECT_EQ(std::bit_cast<uint32_t>(mine), std::bit_cast<uint32_t>(hw)) << h;
        }
    }
}

TEST(DType, F16EncodeMatchesCompilerRounding) {
    std::mt19937 rng(1);
    std::uniform_int_distribution<uint32_t> bits;
    for (int i = 0; i < 2000000; ++i) {
        const float f = std::bit_cast<float>(bits(rng));
        if (std::isnan(f)) continue;
        const uint16_t hw = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
        ASSERT_EQ(f32_to_f16(f), hw) << f;
    }
}

TEST(DType, Bf16RoundTripAndRounding) {
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
    EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // halfway, rounds to even
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, RowBytes) {
    EXPECT_EQ(dtype_row_bytes(DType::Q4_1, 64), 40);
    EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 32), 34);
    EXPECT_THROW(dtype_row_bytes(DType::Q4_0, 33), Error);
}
