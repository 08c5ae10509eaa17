// matmul (out = x W^T) on every backend, F32 (where held) and BF16 weights, against a double-precision
// reference computed from the same (bf16-rounded) weight values and the activations as the backend holds
// them (ActArray). Tolerance: |err| <= 1e-5 * sum_k |x_k w_k| per
// output, i.e. relative to the dot product's condition scale (f32 accumulation of K terms).
// Device backends also run model-sized products (Llama-3.1-8B and SmolLM2 projections, LM heads of
// 128256 rows, 4097-row prefills), with F32 and, where activations are bf16, BF16 output (rounded:
// 2^-8 of |out| <= 2^-8 of the condition scale, inside act_tol).
// The CPU backend is also run in each of its internal configurations (BLAS threading, small-row kernel
// thresholds), since they take different code paths for the same shapes.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "backend_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv::test {
namespace {

const bool kPoolSized = (ThreadPool::set_global_threads(3), true);

struct Shape { int64_t n, k; };
const Shape kShapes[] = {{1, 1}, {17, 1}, {8, 16}, {64, 64}, {100, 37}, {33, 1000}, {960, 576}, {200, 1536}};
const int64_t kRows[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100};

void check_matmul(Backend& b, DType dtype, uint32_t seed, const std::string& what) {
    Random rng(seed);
    for (const Shape s : kShapes) {
        auto w = rng.floats(size_t(s.n * s.k));
        const auto w16 = to_bf16(w);
        if (dtype == DType::BF16)
            for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_f32(w16[i]);
        DeviceArray<float> dw32(b, w);
        DeviceArray<uint16_t> dw16(b, w16);
        const WeightMatrix wm{dtype, s.n, s.k, dtype == DType::BF16 ? static_cast<const void*>(dw16.get()) : dw32.get()};
        for (const int64_t rows : kRows) {
            ActArray dx(b, rng.floats(size_t(rows * s.k), -2.0f, 2.0f));
            const std::vector<float>& x = dx.values();
            std::vector<double> ref(size_t(rows * s.n)), scale(ref.size());
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t n = 0; n < s.n; ++n) {
                    double acc = 0, mag = 0;
                    for (int64_t k = 0; k < s.k; ++k) {
                        const double p = double(x[size_t(r * s.k + k)]) * double(w[size_t(n * s.k + k)]);
                        acc += p;
                        mag += std::abs(p);
                    }
                    ref[size_t(r * s.n + n)] = acc;
                    scale[size_t(r * s.n + n)] = mag + 1e-30;
                }
            DeviceArray<float> dout(b, ref.size());
            b.matmul(dx.get(), rows, wm, dout.get(), DType::F32);
            ASSERT_TRUE(all_close(dout.to_host(), ref, scale, act_tol(b, 1e-5)))
                << what << " " << dtype_name(dtype) << " rows " << rows << " W [" << s.n << ", " << s.k << "]";
        }
    }
}

class BackendMatmul : public ::testing::TestWithParam<std::string> {};

TEST_P(BackendMatmul, ModelSizedShapes) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the sizes above";
    auto backend = make_backend(GetParam());
    Backend& b = *backend;
    struct Big { int64_t rows, n, k; };
    Random rng(15);
    for (const Big s : {Big{1, 4096, 4096}, Big{3, 576, 576}, Big{17, 14336, 4096}, Big{300, 1024, 576},
                        Big{4097, 64, 576}, Big{5, 33, 200}, Big{1, 128256, 576}, Big{17, 128256, 576},
                        Big{300, 4096, 4096}}) {
        const auto w16 = to_bf16(rng.floats(size_t(s.n * s.k)));
        DeviceArray<uint16_t> dw(b, w16);
        std::vector<float> w(w16.size());
        for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_f32(w16[i]);
        ActArray dx(b, rng.floats(size_t(s.rows * s.k), -2.0f, 2.0f));
        const std::vector<float>& x = dx.values();
        std::vector<double> ref(size_t(s.rows * s.n)), scale(ref.size());
        parallel_ranges(s.rows * s.n, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const float* xr = x.data() + (i / s.n) * s.k;
                const float* wr = w.data() + (i % s.n) * s.k;
                double acc = 0, mag = 0;
                for (int64_t k = 0; k < s.k; ++k) {
                    const double p = double(xr[k]) * double(wr[k]);
                    acc += p;
                    mag += std::abs(p);
                }
                ref[size_t(i)] = acc;
                scale[size_t(i)] = mag + 1e-30;
            }
        });
        const WeightMatrix wm{DType::BF16, s.n, s.k, dw.get()};
        const std::string what = std::to_string(s.rows) + " x " + std::to_string(s.k) + " by " + std::to_string(s.n);
        DeviceArray<float> out(b, ref.size());
        b.matmul(dx.get(), s.rows, wm, out.get(), DType::F32);
        EXPECT_TRUE(all_close(out.to_host(), ref, scale, act_tol(b, 1e-5))) << "F32 out, " << what;
        if (b.act_dtype() == DType::BF16) {
            ActArray out16(b, ref.size());
            b.matmul(dx.get(), s.rows, wm, out16.get(), DType::BF16);
            EXPECT_TRUE(all_close(out16.to_host(), ref, scale, act_tol(b, 1e-5))) << "BF16 out, " << what;
        }
    }
}

TEST_P(BackendMatmul, F32Weights) {
    auto b = make_backend(GetParam());
    if (!b->supports_weight_dtype(DType::F32)) GTEST_SKIP() << "the backend holds bf16 weights only";
    check_matmul(*b, DType::F32, 11, GetParam());
}

TEST_P(BackendMatmul, Bf16Weights) {
    auto b = make_backend(GetParam());
    check_matmul(*b, DType::BF16, 12, GetParam());
}

TEST_P(BackendMatmul, RejectsUnsupportedWeights) {
    auto b = make_backend(GetParam());
    if (b->supports_weight_dtype(DType::Q4_0)) GTEST_SKIP();
    std::vector<float> x(4), out(4);
    std::vector<uint8_t> w(64);
    EXPECT_THROW(b->matmul(x.data(), 1, WeightMatrix{DType::Q4_0, 1, 32, w.data()}, out.data(), DType::F32), Error);
}

// The CPU backend's activations are f32: it writes F32 products only, and says so for anything else.
TEST_P(BackendMatmul, CpuRejectsBf16Output) {
    auto b = make_backend(GetParam());
    if (!is_cpu(GetParam())) GTEST_SKIP();
    ASSERT_EQ(b->act_dtype(), DType::F32);
    DeviceArray<float> x(*b, 4), w(*b, 8), out(*b, 2);
    const WeightMatrix wm{DType::F32, 2, 4, w.get()};
    EXPECT_NO_THROW(b->matmul(x.get(), 1, wm, out.get(), DType::F32));
    try {
        b->matmul(x.get(), 1, wm, out.get(), DType::BF16);
        FAIL() << "BF16 output accepted";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("BF16"), std::string::npos) << msg;
        EXPECT_NE(msg.find("F32"), std::string::npos) << msg;
    }
    EXPECT_THROW(b->matmul(x.get(), 1, wm, out.get(), DType::F16), Error);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendMatmul, ::testing::ValuesIn(all_backend_names()),
                         [](const auto& info) { return info.param; });

TEST(CpuBackendMatmul, EveryConfiguration) {
    for (auto threading : {cpu::BlasThreading::kPool, cpu::BlasThreading::kOpenBlas}) {
        for (int64_t small : {int64_t(0), int64_t(1), int64_t(8), int64_t(100)}) {
            CpuBackendOptions options;
            options.matmul.threading = threading;
            options.matmul.max_rows_small_f32 = small;
            options.matmul.max_rows_small_bf16 = small;
            auto b = make_cpu_backend(options);
            const std::string what = std::string(threading == cpu::BlasThreading::kPool ? "pool" : "openblas") +
                                     " small<=" + std::to_string(small);
            check_matmul(*b, DType::F32, 13, what);
            check_matmul(*b, DType::BF16, 14, what);
        }
    }
    // Leave OpenBLAS as the default backend wants it for the tests that follow.
    make_cpu_backend();
}

}  // namespace
}  // namespace swiftkv::test
