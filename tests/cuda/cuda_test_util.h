// Shared by the CUDA-against-CPU op tests (test_cuda_ops.cpp, test_cuda_train_ops.cpp): deterministic
// random inputs, bf16 rounding, the relative error used for every tolerance, the two backends (created
// once per binary), and activations held on both backends with identical values.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
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

inline std::vector<float> round_bf16(std::vector<float> v) {
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
    return v;
}

inline std::vector<float> widen(const std::vector<uint16_t>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_f32(v[i]);
    return out;
}

// ||got - ref|| / ||ref|| (NaN anywhere: infinity; an all-zero reference: the absolute norm).
inline double rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
    if (got.size() != ref.size()) return INFINITY;
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double d = double(got[i]) - double(ref[i]);
        num += d * d;
        den += double(ref[i]) * double(ref[i]);
    }
    if (std::isnan(num) || std::isnan(den)) return INFINITY;
    return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

constexpr double kBf16Tol = 1e-2;

inline std::string shape_name(int64_t rows, int64_t dim) { return std::to_string(rows) + " x " + std::to_string(dim); }

// A test fixture with the CUDA backend (device 0) and the CPU backend, created once for the whole binary
// and deliberately never destroyed (the CUDA runtime may already be gone at static destruction). Every
// test skips when no CUDA device is usable.
class CudaVsCpuTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string why;
        if (!cuda_backend_available(&why)) GTEST_SKIP() << "CUDA backend unavailable: " << why;
        static Backend* const* backends = [] {
            static Backend* b[2] = {make_cuda_backend(0).release(), make_cpu_backend().release()};
            return b;
        }();
        gpu_ = backends[0];
        cpu_ = backends[1];
        ASSERT_EQ(gpu_->act_dtype(), DType::BF16);
        ASSERT_EQ(cpu_->act_dtype(), DType::F32);
    }
    Backend& gpu() { return *gpu_; }
    Backend& cpu() { return *cpu_; }

    Backend* gpu_ = nullptr;
    Backend* cpu_ = nullptr;
};

// An activation tensor on both backends holding the same (bf16-representable) values.
struct Act {
    Act(Backend& gpu, Backend& cpu, const std::vector<float>& values)
        : host(round_bf16(values)), g(gpu, to_bf16(host)), c(cpu, host) {}
    Act(Backend& gpu, Backend& cpu, size_t n) : host(n, 0.0f), g(gpu, n), c(cpu, n) {}
    std::vector<float> host;
    DeviceArray<uint16_t> g;
    DeviceArray<float> c;
    std::vector<float> gpu_values() { return widen(g.to_host()); }
    std::vector<float> cpu_values() { return c.to_host(); }
};

}  // namespace swiftkv::test
