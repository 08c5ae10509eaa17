// Shared by the CUDA-only tests (test_cuda_ops.cpp, test_cuda_train_ops.cpp): deterministic random
// inputs and the CUDA backend (device 0), created once per binary. Every op's results are checked on
// every backend in tests/backend; these tests cover what needs a CUDA device itself.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../backend/backend_test_util.h"
#include "backend/sampling_noise.h"

namespace swiftkv::test {

// Fast deterministic uniform floats in [lo, hi) (large arrays; std::uniform_real_distribution is slow).
inline std::vector<float> fast_floats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    const uint64_t key = noise_mix64(seed);
    for (size_t i = 0; i < n; ++i) {
        const float u = float(uint32_t(noise_mix64(key + i) >> 40)) * 0x1p-24f;
        v[i] = lo + (hi - lo) * u;
    }
    return v;
}

// A test fixture with the CUDA backend (device 0), created once for the whole binary and deliberately
// never destroyed (the CUDA runtime may already be gone at static destruction). Every test skips when no
// CUDA device is usable.
class CudaTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string why;
        if (!cuda_backend_available(&why)) GTEST_SKIP() << "CUDA backend unavailable: " << why;
        static Backend* const backend = make_cuda_backend(0).release();
        gpu_ = backend;
        ASSERT_EQ(gpu_->act_dtype(), DType::BF16);
    }
    Backend& gpu() { return *gpu_; }

    Backend* gpu_ = nullptr;
};

}  // namespace swiftkv::test
