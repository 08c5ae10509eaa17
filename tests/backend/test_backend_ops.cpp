// Backend ops other than matmul, attention and sample, on every backend, against double-precision
// references: memory (incl. memory_info, fill_random against its formula), embedding, gather_rows,
// rmsnorm, add_rmsnorm, rope, silu_mul, kv_write, kv_write_layers, and zero-sized calls. Device backends
// also run the model-sized grids (ModelSized*: rows up to 4097, widths up to 20000, Llama-3.1-8B's
// heads), which select their vectorised and multi-block kernels.
// Tolerances: elementwise results within act_tol (f32: 1e-5 relative, plus a tiny absolute floor near
// zero; bf16 output: its rounding); copies (embedding, gather, kv_write, the residual add) must be exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>

#include "backend_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv::test {
namespace {

// Tests run on an odd number of pool threads so that work splits are uneven; set before any backend exists.
const bool kPoolSized = (ThreadPool::set_global_threads(3), true);

class BackendOps : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        backend_ = make_backend(GetParam());
        ASSERT_TRUE(backend_) << "backend " << GetParam() << " unavailable";
    }
    Backend& b() { return *backend_; }
    std::unique_ptr<Backend> backend_;
};

TEST_P(BackendOps, MemoryRoundTrip) {
    Random rng(1);
    for (size_t n : {size_t(0), size_t(1), size_t(17), size_t(100000)}) {
        const auto host = rng.floats(n);
        void* a = b().alloc(n * 4);
        void* c = b().alloc(n * 4);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % 64, 0u);
        b().upload(a, host.data(), n * 4);
        b().copy(c, a, n * 4);
        std::vector<float> back(n, -7.0f);
        b().download(back.data(), c, n * 4);
        b().synchronize();
        EXPECT_EQ(back, host);
        b().fill_zero(c, n * 4);
        b().download(back.data(), c, n * 4);
        EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](float x) { return x == 0.0f; }));
        b().free(a);
        b().free(c);
    }
}

TEST_P(BackendOps, AllocFailureThrowsWithSize) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer aborts on failed allocations instead of returning null";
#endif
    const size_t huge = size_t(1) << 60;
    try {
        void* p = b().alloc(huge);
        b().free(p);
        FAIL() << "allocating 2^60 bytes succeeded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(std::to_string(huge)), std::string::npos) << e.what();
    }
}

// A failed allocation leaves the backend usable.
TEST_P(BackendOps, WorksAfterAllocFailure) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer aborts on failed allocations instead of returning null";
#endif
    EXPECT_THROW(b().alloc(size_t(1) << 50), Error);
    DeviceArray<float> a(b(), std::vector<float>{1.0f, 2.0f, 3.0f});
    EXPECT_EQ(a.to_host(), (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

TEST_P(BackendOps, ActDtype) {
    const DType act = b().act_dtype();
    EXPECT_TRUE(act == DType::F32 || act == DType::BF16) << dtype_name(act);
    if (is_cpu(GetParam())) {
        EXPECT_EQ(act, DType::F32);
    }
}

TEST_P(BackendOps, MemoryInfo) {
    size_t free_bytes = 0, total_bytes = 0;
    b().memory_info(&free_bytes, &total_bytes);
    EXPECT_GT(total_bytes, 0u);
    EXPECT_GT(free_bytes, 0u);
    EXPECT_LE(free_bytes, total_bytes);
    // Either output may be left out.
    size_t total_only = 0;
    b().memory_info(nullptr, &total_only);
    EXPECT_GT(total_only, 0u);
}

// fill_random: uniform(-scale, scale), a pure function of (seed, index).
TEST_P(BackendOps, FillRandomF32) {
    const int64_t n = int64_t(1) << 20;  // large enough to run in parallel
    const float scale = 0.5f;
    DeviceArray<float> a(b(), size_t(n)), c(b(), size_t(n)), d(b(), size_t(n)), small(b(), 1000);
    b().fill_random(a.get(), n, DType::F32, 42, scale);
    b().fill_random(c.get(), n, DType::F32, 42, scale);
    b().fill_random(d.get(), n, DType::F32, 43, scale);
    b().fill_random(small.get(), 1000, DType::F32, 42, scale);
    const auto ha = a.to_host(), hc = c.to_host(), hd = d.to_host(), hs = small.to_host();
    EXPECT_EQ(ha, hc) << "same seed, different values";
    EXPECT_TRUE(std::equal(hs.begin(), hs.end(), ha.begin())) << "values depend on the fill's length";
    double sum = 0, sum_sq = 0;
    float lo = INFINITY, hi = -INFINITY;
    int64_t same_as_other_seed = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float x = ha[size_t(i)];
        ASSERT_TRUE(x >= -scale && x <= scale) << "element " << i << " = " << x;
        sum += x;
        sum_sq += double(x) * x;
        lo = std::min(lo, x);
        hi = std::max(hi, x);
        same_as_other_seed += x == hd[size_t(i)];
    }
    const double mean = sum / double(n), var = sum_sq / double(n) - mean * mean;
    // Standard error of the mean: scale / sqrt(3 n) = 2.8e-4.
    EXPECT_LT(std::abs(mean), 2e-3) << mean;
    EXPECT_NEAR(var, double(scale) * scale / 3.0, 0.01 * double(scale) * scale / 3.0);
    EXPECT_LT(lo, -0.99f * scale);
    EXPECT_GT(hi, 0.99f * scale);
    EXPECT_LT(same_as_other_seed, n / 1000) << "seeds 42 and 43 give the same values";
    // Distinct values: not a short cycle.
    EXPECT_GT(std::set<float>(ha.begin(), ha.begin() + 10000).size(), 9900u);
    // Scale 0 gives zeros; n = 0 writes nothing.
    b().fill_random(small.get(), 1000, DType::F32, 1, 0.0f);
    for (float x : small.to_host()) ASSERT_EQ(x, 0.0f);
    b().fill_random(small.get(), 0, DType::F32, 1, 1.0f);
}

// The fill is this formula on every backend (so random weights are the same everywhere): element i of
// seed s is scale * (k / 2^23 - 1) with k the top 24 bits of splitmix64(splitmix64(s) + i), in f32;
// BF16 fills are that value rounded to bf16.
uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

TEST_P(BackendOps, FillRandomIsTheFormula) {
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 20, (int64_t(1) << 20) + 7}) {
        for (const float scale : {0.02f, 1.0f}) {
            for (const uint64_t seed : {uint64_t(42), uint64_t(1) << 63}) {
                DeviceArray<float> f(b(), size_t(n));
                DeviceArray<uint16_t> h(b(), size_t(n));
                b().fill_random(f.get(), n, DType::F32, seed, scale);
                b().fill_random(h.get(), n, DType::BF16, seed, scale);
                const auto hf = f.to_host();
                const auto hh = h.to_host();
                const uint64_t key = splitmix64(seed);
                for (int64_t i = 0; i < n; ++i) {
                    const float k = float(uint32_t(splitmix64(key + uint64_t(i)) >> 40));
                    const float x = scale * (k * 0x1p-23f - 1.0f);
                    ASSERT_EQ(hf[size_t(i)], x) << "element " << i << " of " << n << ", seed " << seed;
                    ASSERT_EQ(hh[size_t(i)], f32_to_bf16(x)) << "bf16 element " << i << " of " << n;
                }
            }
        }
    }
}

TEST_P(BackendOps, FillRandomBf16) {
    const int64_t n = 300001;
    const float scale = 0.02f;
    DeviceArray<uint16_t> a(b(), size_t(n)), c(b(), size_t(n)), d(b(), size_t(n));
    b().fill_random(a.get(), n, DType::BF16, 7, scale);
    b().fill_random(c.get(), n, DType::BF16, 7, scale);
    b().fill_random(d.get(), n, DType::BF16, 8, scale);
    const auto ha = a.to_host(), hc = c.to_host(), hd = d.to_host();
    EXPECT_EQ(ha, hc);
    EXPECT_NE(ha, hd);
    const float bound = bf16_to_f32(f32_to_bf16(scale));  // scale rounded to bf16 (0.02 -> 0.020019...)
    double sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float x = bf16_to_f32(ha[size_t(i)]);
        ASSERT_TRUE(x >= -bound && x <= bound) << "element " << i << " = " << x;
        sum += x;
        sum_sq += double(x) * x;
    }
    const double mean = sum / double(n), var = sum_sq / double(n) - mean * mean;
    EXPECT_LT(std::abs(mean), 0.01 * scale) << mean;
    EXPECT_NEAR(var, double(scale) * scale / 3.0, 0.02 * double(scale) * scale / 3.0);
    if (is_cpu(GetParam())) {
        // The CPU backend rounds its f32 values: BF16 fills are the F32 fill of the same seed, rounded.
        DeviceArray<float> f(b(), size_t(n));
        b().fill_random(f.get(), n, DType::F32, 7, scale);
        const auto hf = f.to_host();
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ha[size_t(i)], f32_to_bf16(hf[size_t(i)])) << i;
        EXPECT_THROW(b().fill_random(f.get(), 4, DType::I32, 7, scale), Error);
    }
}

TEST_P(BackendOps, WeightDtypes) {
    EXPECT_TRUE(b().supports_weight_dtype(DType::BF16));  // every backend holds bf16 weights
    EXPECT_FALSE(b().supports_weight_dtype(DType::Q4_0));
    if (is_cpu(GetParam())) {
        EXPECT_TRUE(b().supports_weight_dtype(DType::F32));
    }
}

TEST_P(BackendOps, EmbeddingF32AndBf16) {
    Random rng(2);
    for (int64_t dim : {1, 15, 64, 577}) {
        const int64_t vocab = 50;
        const auto table = rng.floats(size_t(vocab * dim));
        const auto table_bf16 = to_bf16(table);
        std::vector<int32_t> tokens;
        for (int i = 0; i < 37; ++i) tokens.push_back(rng.integer(0, int32_t(vocab - 1)));
        tokens.push_back(0);
        tokens.push_back(int32_t(vocab - 1));
        const int64_t n = int64_t(tokens.size());
        DeviceArray<float> t32(b(), table);
        DeviceArray<uint16_t> t16(b(), table_bf16);
        DeviceArray<int32_t> tok(b(), tokens);
        DeviceArray<float> out32(b(), size_t(n * dim)), out16(b(), size_t(n * dim));
        const bool f32 = b().supports_weight_dtype(DType::F32);
        if (f32) b().embedding(WeightMatrix{DType::F32, vocab, dim, t32.get()}, tok.get(), n, out32.get());
        b().embedding(WeightMatrix{DType::BF16, vocab, dim, t16.get()}, tok.get(), n, out16.get());
        const auto r32 = out32.to_host(), r16 = out16.to_host();
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < dim; ++j) {
                if (f32) {
                    ASSERT_EQ(r32[size_t(i * dim + j)], table[size_t(tokens[size_t(i)] * dim + j)]);
                }
                ASSERT_EQ(r16[size_t(i * dim + j)], bf16_to_f32(table_bf16[size_t(tokens[size_t(i)] * dim + j)]));
            }
    }
}

TEST_P(BackendOps, EmbeddingRejectsOutOfRangeTokens) {
    if (!is_cpu(GetParam())) GTEST_SKIP() << "token ids live on the device there; the runner checks them on the host";
    const int64_t vocab = 10, dim = 4;
    DeviceArray<float> table(b(), size_t(vocab * dim));
    DeviceArray<float> out(b(), size_t(2 * dim));
    for (int32_t bad : {10, -1, 1 << 30}) {
        const std::vector<int32_t> tokens = {3, bad};
        try {
            b().embedding(WeightMatrix{DType::F32, vocab, dim, table.get()}, tokens.data(), 2, out.get());
            FAIL() << "token " << bad << " accepted";
        } catch (const Error& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
            EXPECT_NE(msg.find("10"), std::string::npos) << msg;
        }
    }
}

TEST_P(BackendOps, GatherRows) {
    Random rng(3);
    const int64_t rows = 40, dim = 33;
    const auto x = rng.floats(size_t(rows * dim));
    const std::vector<int32_t> idx = {0, 39, 5, 5, 17, 0};
    DeviceArray<float> dx(b(), x), dout(b(), idx.size() * dim);
    DeviceArray<int32_t> di(b(), idx);
    b().gather_rows(dx.get(), di.get(), int64_t(idx.size()), dim * int64_t(sizeof(float)), dout.get());
    const auto out = dout.to_host();
    for (size_t i = 0; i < idx.size(); ++i)
        for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], x[size_t(idx[i] * dim + j)]);
}

// Checks rows [0, n) of out against rows idx[i] of x (row_bytes each), byte for byte.
::testing::AssertionResult rows_gathered(const std::vector<uint8_t>& out, const std::vector<uint8_t>& x,
                                         const std::vector<int32_t>& idx, int64_t n, int64_t row_bytes) {
    for (int64_t i = 0; i < n; ++i)
        if (std::memcmp(out.data() + i * row_bytes, x.data() + idx[size_t(i)] * row_bytes, size_t(row_bytes)) != 0)
            return ::testing::AssertionFailure() << "row " << i << " of " << n << ", " << row_bytes << " bytes";
    return ::testing::AssertionSuccess();
}

// Rows of any byte size (bf16 rows, odd sizes), including copies large enough to run in parallel.
TEST_P(BackendOps, GatherRowsBytes) {
    std::mt19937 rng(31);
    for (int64_t row_bytes : {1, 2, 7, 13, 130, 4097}) {
        for (int64_t n : {0, 1, 9, 600}) {
            const int64_t rows = 50;
            std::vector<uint8_t> x(size_t(rows * row_bytes));
            for (auto& v : x) v = uint8_t(rng());
            std::vector<int32_t> idx(static_cast<size_t>(n));
            for (auto& i : idx) i = int32_t(rng() % rows);
            if (n > 1) idx[1] = int32_t(rows - 1);
            DeviceArray<uint8_t> dx(b(), x), dout(b(), size_t(std::max<int64_t>(1, n * row_bytes)));
            DeviceArray<int32_t> di(b(), idx.empty() ? std::vector<int32_t>{0} : idx);
            b().gather_rows(dx.get(), di.get(), n, row_bytes, dout.get());
            ASSERT_TRUE(rows_gathered(dout.to_host(), x, idx, n, row_bytes));
        }
    }
    // Unaligned source and destination (16-byte rows starting 2 bytes in).
    std::vector<uint8_t> x(4096);
    for (size_t i = 0; i < x.size(); ++i) x[i] = uint8_t(i * 7 + 3);
    const std::vector<int32_t> idx = {3, 0, 100};
    DeviceArray<uint8_t> dx(b(), x), dout(b(), size_t(64));
    DeviceArray<int32_t> di(b(), idx);
    b().gather_rows(dx.get() + 2, di.get(), 3, 16, dout.get() + 2);
    const auto got = dout.to_host();
    for (size_t i = 0; i < 3; ++i)
        for (size_t j = 0; j < 16; ++j) EXPECT_EQ(got[2 + i * 16 + j], x[2 + size_t(idx[i]) * 16 + j]);
}

// out = x / sqrt(mean(x^2) + eps) * w in double.
std::vector<double> rmsnorm_reference(const std::vector<float>& x, const std::vector<float>& w, int64_t rows,
                                      int64_t dim, float eps) {
    std::vector<double> ref(x.size());
    for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
        const double s = 1.0 / std::sqrt(ss / double(dim) + double(eps));
        for (int64_t i = 0; i < dim; ++i) ref[r * dim + i] = double(x[r * dim + i]) * s * double(w[i]);
    }
    return ref;
}

std::vector<double> relative_scale(const std::vector<double>& ref, double floor) {
    std::vector<double> s(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) s[i] = std::abs(ref[i]) + floor;
    return s;
}

TEST_P(BackendOps, RmsNormAndAddRmsNorm) {
    Random rng(4);
    for (int64_t rows : {1, 3, 70}) {
        for (int64_t dim : {1, 15, 16, 17, 576, 1000}) {
            const float eps = 1e-5f;
            const auto x = rng.floats(size_t(rows * dim), -3.0f, 3.0f);
            const auto delta = rng.floats(size_t(rows * dim), -2.0f, 2.0f);
            const auto w = rng.floats(size_t(dim), 0.5f, 1.5f);
            const double tol = act_tol(b(), 1e-5);
            DeviceArray<float> dx(b(), x), dw(b(), w);
            ActArray dd(b(), delta), dout(b(), x.size());
            b().rmsnorm(dx.get(), dw.get(), dout.get(), rows, dim, eps);
            const auto ref = rmsnorm_reference(x, w, rows, dim, eps);
            EXPECT_TRUE(all_close(dout.to_host(), ref, relative_scale(ref, 1e-6), tol)) << rows << "x" << dim;

            b().add_rmsnorm(dx.get(), dd.get(), dw.get(), dout.get(), rows, dim, eps);
            std::vector<float> summed(x.size());
            for (size_t i = 0; i < x.size(); ++i) summed[i] = x[i] + dd.values()[i];
            EXPECT_EQ(dx.to_host(), summed) << "residual must be exactly residual + delta";
            const auto ref2 = rmsnorm_reference(summed, w, rows, dim, eps);
            EXPECT_TRUE(all_close(dout.to_host(), ref2, relative_scale(ref2, 1e-6), tol)) << rows << "x" << dim;
        }
    }
}

// Rotate-half RoPE of the n_heads heads starting at column `first` of each row, in double (the angle
// pos * inv_freq in f32, as PyTorch computes it); scale[i] = |x_a| + |x_b| of the pair.
void rope_reference(const std::vector<float>& x, int64_t rows, int64_t stride, int64_t first, int64_t n_heads,
                    int64_t head_dim, const std::vector<int32_t>& pos, const std::vector<float>& inv_freq,
                    std::vector<double>& ref, std::vector<double>& scale) {
    const int64_t half = head_dim / 2;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < n_heads; ++h)
            for (int64_t i = 0; i < half; ++i) {
                const size_t ia = size_t(r * stride + first + h * head_dim + i), ib = ia + size_t(half);
                const float angle = float(pos[size_t(r)]) * inv_freq[size_t(i)];
                const double cs = std::cos(double(angle)), sn = std::sin(double(angle));
                ref[ia] = double(x[ia]) * cs - double(x[ib]) * sn;
                ref[ib] = double(x[ib]) * cs + double(x[ia]) * sn;
                scale[ia] = scale[ib] = std::abs(double(x[ia])) + std::abs(double(x[ib]));
            }
}

std::vector<float> rope_inv_freq(int64_t head_dim, double theta) {
    std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
    for (size_t i = 0; i < inv_freq.size(); ++i)
        inv_freq[i] = float(1.0 / std::pow(theta, double(2 * i) / double(head_dim)));
    return inv_freq;
}

TEST_P(BackendOps, RopeRotateHalf) {
    Random rng(5);
    struct Case { int64_t rows, n_heads, head_dim, extra; double theta; int32_t max_pos; };
    for (const Case c : {Case{1, 1, 2, 0, 10000.0, 5}, Case{7, 9, 64, 3 * 64 * 2, 10000.0, 4096},
                         Case{40, 3, 128, 5, 500000.0, 130000}, Case{5, 2, 6, 0, 100.0, 50},
                         Case{300, 4, 64, 0, 10000.0, 299}, Case{3, 2, 64, 0, 10000.0, 2147483647}}) {
        const int64_t stride = c.n_heads * c.head_dim + c.extra;
        const auto inv_freq = rope_inv_freq(c.head_dim, c.theta);
        std::vector<int32_t> pos(static_cast<size_t>(c.rows));
        for (auto& p : pos) p = rng.integer(0, c.max_pos);
        pos[0] = c.max_pos;
        ActArray dx(b(), rng.floats(size_t(c.rows * stride), -2.0f, 2.0f));
        const std::vector<float>& x = dx.values();
        std::vector<double> ref(x.begin(), x.end()), scale(x.size(), 1e-30);
        rope_reference(x, c.rows, stride, 0, c.n_heads, c.head_dim, pos, inv_freq, ref, scale);
        DeviceArray<float> df(b(), inv_freq);
        DeviceArray<int32_t> dp(b(), pos);
        b().rope(dx.get(), c.rows, stride, c.n_heads, c.head_dim, dp.get(), df.get());
        const auto out = dx.to_host();
        EXPECT_TRUE(all_close(out, ref, scale, act_tol(b(), 1e-5))) << c.rows << " rows, head_dim " << c.head_dim;
        // Elements past the heads (e.g. the K/V part of a fused row) are untouched.
        for (int64_t r = 0; r < c.rows; ++r)
            for (int64_t j = c.n_heads * c.head_dim; j < stride; ++j)
                ASSERT_EQ(out[size_t(r * stride + j)], x[size_t(r * stride + j)]);
    }
}

// silu(gate) * up per row of [gate | up], in double.
std::vector<double> silu_mul_reference(const std::vector<float>& gu, int64_t rows, int64_t ffn) {
    std::vector<double> ref(size_t(rows * ffn));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < ffn; ++j) {
            const double g = gu[size_t(r * 2 * ffn + j)], u = gu[size_t(r * 2 * ffn + ffn + j)];
            ref[size_t(r * ffn + j)] = g / (1.0 + std::exp(-g)) * u;
        }
    return ref;
}

TEST_P(BackendOps, SiluMul) {
    Random rng(6);
    for (int64_t rows : {1, 5, 64}) {
        for (int64_t ffn : {1, 7, 16, 33, 1536}) {
            auto values = rng.floats(size_t(rows * 2 * ffn), -20.0f, 20.0f);
            const float specials[] = {0.0f, -100.0f, 100.0f, -87.5f, 88.9f, 1e-8f, -1e-8f, 3.0f};
            for (size_t i = 0; i < 8 && i < size_t(ffn); ++i) values[i] = specials[i];
            ActArray dgu(b(), values), dout(b(), size_t(rows * ffn));
            const auto ref = silu_mul_reference(dgu.values(), rows, ffn);
            b().silu_mul(dgu.get(), dout.get(), rows, ffn);
            EXPECT_TRUE(all_close(dout.to_host(), ref, relative_scale(ref, 1e-7), act_tol(b(), 1e-5)))
                << rows << "x" << ffn;
        }
    }
}

TEST_P(BackendOps, KvWrite) {
    Random rng(7);
    for (int64_t block_size : {16, 1}) {
        KvLayout layout{/*num_blocks=*/64 / block_size + 3, block_size, /*n_kv_heads=*/3, /*head_dim=*/64};
        const int64_t slots_total = layout.num_blocks * block_size;
        const int64_t rows = 40, stride = 3 * 64 + 11;
        ActArray dk(b(), rng.floats(size_t(rows * stride))), dv(b(), rng.floats(size_t(rows * stride)));
        const std::vector<float>&k = dk.values(), &v = dv.values();
        std::vector<int32_t> all(static_cast<size_t>(slots_total));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng.engine());
        std::vector<int32_t> slots(all.begin(), all.begin() + rows);
        slots[3] = -1;
        slots[9] = -5;
        const size_t cache_floats = size_t(layout.num_blocks * layout.block_elems());
        ActArray kc(b(), rng.floats(cache_floats)), vc(b(), rng.floats(cache_floats));
        const std::vector<float> k_init = kc.values(), v_init = vc.values();
        DeviceArray<int32_t> ds(b(), slots);
        b().kv_write(dk.get(), dv.get(), rows, stride, ds.get(), layout, kc.get(), vc.get());
        auto k_expect = k_init, v_expect = v_init;
        for (int64_t r = 0; r < rows; ++r) {
            if (slots[size_t(r)] < 0) continue;
            const int64_t blk = slots[size_t(r)] / block_size, off = slots[size_t(r)] % block_size;
            for (int64_t h = 0; h < 3; ++h)
                for (int64_t d = 0; d < 64; ++d) {
                    const size_t at = size_t(((blk * 3 + h) * block_size + off) * 64 + d);
                    k_expect[at] = k[size_t(r * stride + h * 64 + d)];
                    v_expect[at] = v[size_t(r * stride + h * 64 + d)];
                }
        }
        EXPECT_EQ(kc.to_host(), k_expect);
        EXPECT_EQ(vc.to_host(), v_expect);

        // A slot past the cache throws, naming the slot, and writes nothing (slots live on the host there).
        if (!is_cpu(GetParam())) continue;
        slots[5] = int32_t(slots_total);
        DeviceArray<int32_t> bad(b(), slots);
        try {
            b().kv_write(dk.get(), dv.get(), rows, stride, bad.get(), layout, kc.get(), vc.get());
            FAIL() << "out-of-range slot accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(std::to_string(slots_total)), std::string::npos) << e.what();
        }
        EXPECT_EQ(kc.to_host(), k_expect);
    }
}

// kv_write_layers == one kv_write per layer, for a fused row layout: per layer K then V, layers
// layer_offset apart, caches cache_layer_stride apart (with padding between layers that stays untouched).
TEST_P(BackendOps, KvWriteLayers) {
    Random rng(8);
    for (int64_t block_size : {16, 1}) {
        for (int64_t rows : {int64_t(1), int64_t(37), int64_t(600)}) {  // 600 rows: large enough to run in parallel
            for (int64_t layers : {int64_t(1), int64_t(3)}) {
                const int64_t n_kv = 3, hd = 64, kv_dim = n_kv * hd;
                KvLayout layout{/*num_blocks=*/(rows + 40) / block_size + 2, block_size, n_kv, hd};
                const int64_t slots_total = layout.num_blocks * block_size;
                const int64_t layer_offset = 2 * kv_dim, stride = layers * layer_offset + 5;
                const int64_t cache_floats = layout.num_blocks * layout.block_elems();
                const int64_t cache_layer_stride = cache_floats + 7;
                ActArray dx(b(), rng.floats(size_t(rows * stride)));
                std::vector<int32_t> all(static_cast<size_t>(slots_total));
                std::iota(all.begin(), all.end(), 0);
                std::shuffle(all.begin(), all.end(), rng.engine());
                std::vector<int32_t> slots(all.begin(), all.begin() + rows);
                if (rows > 10) slots[3] = slots[9] = -1;
                ActArray kc(b(), rng.floats(size_t(layers * cache_layer_stride)));
                ActArray vc(b(), rng.floats(kc.values().size()));
                const std::vector<float> k_init = kc.values();
                ActArray kc_ref(b(), kc.values()), vc_ref(b(), vc.values());
                DeviceArray<int32_t> ds(b(), slots);
                b().kv_write_layers(dx.get(), dx.at(kv_dim), rows, stride, layer_offset, layers, ds.get(), layout,
                                    kc.get(), vc.get(), cache_layer_stride);
                for (int64_t g = 0; g < layers; ++g)
                    b().kv_write(dx.at(g * layer_offset), dx.at(g * layer_offset + kv_dim), rows, stride, ds.get(),
                                 layout, kc_ref.at(g * cache_layer_stride), vc_ref.at(g * cache_layer_stride));
                const auto k_out = kc.to_host(), v_out = vc.to_host();
                EXPECT_EQ(k_out, kc_ref.to_host()) << rows << " rows, " << layers << " layers, block " << block_size;
                EXPECT_EQ(v_out, vc_ref.to_host()) << rows << " rows, " << layers << " layers, block " << block_size;
                EXPECT_NE(k_out, k_init);

                // A slot past the cache throws and writes nothing (slots live on the host there).
                if (!is_cpu(GetParam())) continue;
                slots[0] = int32_t(slots_total);
                DeviceArray<int32_t> bad(b(), slots);
                EXPECT_THROW(b().kv_write_layers(dx.get(), dx.at(kv_dim), rows, stride, layer_offset, layers,
                                                 bad.get(), layout, kc.get(), vc.get(), cache_layer_stride),
                             Error);
                EXPECT_EQ(kc.to_host(), k_out);
            }
        }
    }
}

// --- model-sized grids (device backends) -------------------------------------------------------------

// Row counts x widths, skipping combinations above `max_elems` elements.
std::vector<std::pair<int64_t, int64_t>> shape_grid(std::initializer_list<int64_t> rows,
                                                    std::initializer_list<int64_t> dims, int64_t max_elems) {
    std::vector<std::pair<int64_t, int64_t>> out;
    for (int64_t d : dims)
        for (int64_t r : rows)
            if (r * d <= max_elems) out.emplace_back(r, d);
    return out;
}

constexpr int64_t kMaxModelElems = int64_t(1) << 24;
#define SKIP_UNLESS_DEVICE_SIZED() \
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the sizes above"

TEST_P(BackendOps, ModelSizedEmbedding) {
    SKIP_UNLESS_DEVICE_SIZED();
    Random rng(20);
    const int64_t vocab = 1000;
    for (const auto& [n, dim] : shape_grid({1, 3, 17, 300, 4097}, {64, 577, 4096, 14336}, kMaxModelElems)) {
        const auto table = to_bf16(rng.floats(size_t(vocab * dim)));
        std::vector<int32_t> tokens(static_cast<size_t>(n));
        for (auto& t : tokens) t = rng.integer(0, int32_t(vocab - 1));
        DeviceArray<uint16_t> dt(b(), table);
        DeviceArray<int32_t> dk(b(), tokens);
        DeviceArray<float> out(b(), size_t(n * dim));
        b().embedding(WeightMatrix{DType::BF16, vocab, dim, dt.get()}, dk.get(), n, out.get());
        const auto got = out.to_host();
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < dim; ++j)
                ASSERT_EQ(got[size_t(i * dim + j)], bf16_to_f32(table[size_t(tokens[size_t(i)] * dim + j)]))
                    << n << " x " << dim;
    }
}

TEST_P(BackendOps, ModelSizedGatherRows) {
    SKIP_UNLESS_DEVICE_SIZED();
    std::mt19937 rng(21);
    const int64_t src_rows = 500;
    for (int64_t row_bytes : {2, 6, 100, 16, 8192, 28672}) {
        for (int64_t n : {1, 17, 300}) {
            std::vector<uint8_t> x(size_t(src_rows * row_bytes));
            for (auto& v : x) v = uint8_t(rng());
            std::vector<int32_t> idx(static_cast<size_t>(n));
            for (auto& i : idx) i = int32_t(rng() % src_rows);
            DeviceArray<uint8_t> dx(b(), x), dout(b(), size_t(n * row_bytes));
            DeviceArray<int32_t> di(b(), idx);
            b().gather_rows(dx.get(), di.get(), n, row_bytes, dout.get());
            ASSERT_TRUE(rows_gathered(dout.to_host(), x, idx, n, row_bytes));
        }
    }
}

TEST_P(BackendOps, ModelSizedNorms) {
    SKIP_UNLESS_DEVICE_SIZED();
    Random rng(22);
    for (const auto& [rows, dim] :
         shape_grid({1, 3, 17, 300, 4097}, {64, 576, 4096, 14336, 5, 577, 20000}, kMaxModelElems)) {
        const auto x = rng.floats(size_t(rows * dim), -3.0f, 3.0f);
        const auto w = rng.floats(size_t(dim), 0.5f, 1.5f);
        DeviceArray<float> dx(b(), x), dw(b(), w);
        ActArray dd(b(), rng.floats(size_t(rows * dim), -2.0f, 2.0f)), dout(b(), x.size());
        b().rmsnorm(dx.get(), dw.get(), dout.get(), rows, dim, 1e-5f);
        const auto ref = rmsnorm_reference(x, w, rows, dim, 1e-5f);
        EXPECT_TRUE(all_close(dout.to_host(), ref, relative_scale(ref, 1e-6), act_tol(b(), 1e-5))) << rows << "x" << dim;
        EXPECT_EQ(dx.to_host(), x) << "input modified, " << rows << "x" << dim;
        b().add_rmsnorm(dx.get(), dd.get(), dw.get(), dout.get(), rows, dim, 1e-6f);
        std::vector<float> summed(x.size());
        for (size_t i = 0; i < x.size(); ++i) summed[i] = x[i] + dd.values()[i];
        EXPECT_EQ(dx.to_host(), summed) << "residual, " << rows << "x" << dim;
        const auto ref2 = rmsnorm_reference(summed, w, rows, dim, 1e-6f);
        EXPECT_TRUE(all_close(dout.to_host(), ref2, relative_scale(ref2, 1e-6), act_tol(b(), 1e-5))) << rows << "x" << dim;
    }
}

TEST_P(BackendOps, ModelSizedSiluMul) {
    SKIP_UNLESS_DEVICE_SIZED();
    Random rng(23);
    for (const auto& [rows, ffn] : shape_grid({1, 3, 17, 300, 4097}, {64, 576, 14336, 13}, kMaxModelElems)) {
        ActArray dgu(b(), rng.floats(size_t(rows * 2 * ffn), -6.0f, 6.0f)), dout(b(), size_t(rows * ffn));
        const auto ref = silu_mul_reference(dgu.values(), rows, ffn);
        b().silu_mul(dgu.get(), dout.get(), rows, ffn);
        EXPECT_TRUE(all_close(dout.to_host(), ref, relative_scale(ref, 1e-7), act_tol(b(), 1e-5))) << rows << "x" << ffn;
    }
}

// Q heads at the start of a fused QKV row, then the K heads through an offset pointer; V untouched.
TEST_P(BackendOps, ModelSizedRope) {
    SKIP_UNLESS_DEVICE_SIZED();
    Random rng(24);
    struct Heads { int64_t n_heads, n_kv_heads, head_dim; };
    for (const Heads hc : {Heads{32, 8, 128}, Heads{9, 3, 64}, Heads{4, 2, 6}, Heads{2, 1, 20}}) {
        for (int64_t rows : {1, 3, 17, 300, 4097}) {
            const int64_t hd = hc.head_dim, stride = (hc.n_heads + 2 * hc.n_kv_heads) * hd;
            const int64_t k_first = hc.n_heads * hd;
            const auto inv_freq = rope_inv_freq(hd, 500000.0);
            std::vector<int32_t> pos(static_cast<size_t>(rows));
            for (auto& p : pos) p = rng.integer(0, 131071);
            pos[0] = 0;
            ActArray dx(b(), rng.floats(size_t(rows * stride), -2.0f, 2.0f));
            const std::vector<float>& x = dx.values();
            std::vector<double> ref(x.begin(), x.end()), scale(x.size(), 1e-30);
            rope_reference(x, rows, stride, 0, hc.n_heads, hd, pos, inv_freq, ref, scale);
            rope_reference(x, rows, stride, k_first, hc.n_kv_heads, hd, pos, inv_freq, ref, scale);
            DeviceArray<float> df(b(), inv_freq);
            DeviceArray<int32_t> dp(b(), pos);
            b().rope(dx.get(), rows, stride, hc.n_heads, hd, dp.get(), df.get());
            b().rope(dx.at(k_first), rows, stride, hc.n_kv_heads, hd, dp.get(), df.get());
            const auto out = dx.to_host();
            const std::string what = "heads " + std::to_string(hc.n_heads) + "/" + std::to_string(hc.n_kv_heads) +
                                     ", head_dim " + std::to_string(hd) + ", rows " + std::to_string(rows);
            EXPECT_TRUE(all_close(out, ref, scale, act_tol(b(), 1e-5))) << what;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = k_first + hc.n_kv_heads * hd; j < stride; ++j)
                    ASSERT_EQ(out[size_t(r * stride + j)], x[size_t(r * stride + j)]) << "V modified, " << what;
        }
    }
}

// K/V of fused QKV rows (one or several layers per row) into paged caches that start out random;
// skipped slots and every other slot keep their contents.
TEST_P(BackendOps, ModelSizedKvWrite) {
    SKIP_UNLESS_DEVICE_SIZED();
    Random rng(25);
    struct KvCase { int64_t block_size, n_kv_heads, head_dim, n_heads, layers; };
    for (const KvCase kc : {KvCase{16, 8, 128, 32, 1}, KvCase{32, 3, 64, 9, 1}, KvCase{16, 2, 36, 4, 1},
                            KvCase{16, 8, 128, 32, 3}, KvCase{32, 3, 64, 9, 5}, KvCase{16, 2, 36, 4, 2}}) {
        for (int64_t rows : {1, 3, 17, 300}) {
            const int64_t hd = kc.head_dim, nkv = kc.n_kv_heads, bs = kc.block_size;
            const int64_t layer_width = (kc.n_heads + 2 * nkv) * hd, stride = layer_width * kc.layers;
            const KvLayout layout{(rows * 3 / 2 + bs - 1) / bs + 2, bs, nkv, hd};
            const int64_t layer_elems = layout.num_blocks * layout.block_elems();
            const int64_t cache_stride = layer_elems + (kc.layers > 1 ? 8 : 0);
            std::vector<int32_t> slots(static_cast<size_t>(layout.num_blocks * bs));
            std::iota(slots.begin(), slots.end(), 0);
            std::shuffle(slots.begin(), slots.end(), rng.engine());
            slots.resize(size_t(rows));
            for (auto& sl : slots)
                if (rng.integer(0, 9) == 0) sl = -1;
            ActArray qkv(b(), rng.floats(size_t(rows * stride)));
            ActArray kcache(b(), rng.floats(size_t(cache_stride * kc.layers)));
            ActArray vcache(b(), rng.floats(kcache.values().size()));
            std::vector<float> k_expect = kcache.values(), v_expect = vcache.values();
            DeviceArray<int32_t> ds(b(), slots);
            const int64_t k_off = kc.n_heads * hd, v_off = k_off + nkv * hd;
            if (kc.layers == 1)
                b().kv_write(qkv.at(k_off), qkv.at(v_off), rows, stride, ds.get(), layout, kcache.get(), vcache.get());
            else
                b().kv_write_layers(qkv.at(k_off), qkv.at(v_off), rows, stride, layer_width, kc.layers, ds.get(), layout,
                                    kcache.get(), vcache.get(), cache_stride);
            for (int64_t r = 0; r < rows; ++r) {
                const int32_t sl = slots[size_t(r)];
                if (sl < 0) continue;
                for (int64_t g = 0; g < kc.layers; ++g)
                    for (int64_t h = 0; h < nkv; ++h)
                        for (int64_t d = 0; d < hd; ++d) {
                            const size_t dst = size_t(g * cache_stride + ((sl / bs * nkv + h) * bs + sl % bs) * hd + d);
                            const size_t src = size_t(r * stride + g * layer_width + h * hd + d);
                            k_expect[dst] = qkv.values()[src + size_t(k_off)];
                            v_expect[dst] = qkv.values()[src + size_t(v_off)];
                        }
            }
            const std::string what = "block " + std::to_string(bs) + ", kv heads " + std::to_string(nkv) +
                                     ", head_dim " + std::to_string(hd) + ", layers " + std::to_string(kc.layers) +
                                     ", rows " + std::to_string(rows);
            EXPECT_EQ(kcache.to_host(), k_expect) << "K cache, " << what;
            EXPECT_EQ(vcache.to_host(), v_expect) << "V cache, " << what;
        }
    }
}

// Zero-sized calls do nothing and do not fail (on a device: launch nothing).
TEST_P(BackendOps, EmptyCalls) {
    ActArray a(b(), size_t(64));
    DeviceArray<float> f(b(), size_t(64));
    DeviceArray<int32_t> i(b(), size_t(64));
    const auto before = f.to_host();
    b().embedding(WeightMatrix{DType::BF16, 4, 16, a.get()}, i.get(), 0, f.get());
    b().rmsnorm(f.get(), f.get(), a.get(), 0, 16, 1e-5f);
    b().add_rmsnorm(f.get(), a.get(), f.get(), a.get(), 0, 16, 1e-5f);
    b().rope(a.get(), 0, 16, 2, 8, i.get(), f.get());
    b().silu_mul(a.get(), a.get(), 0, 8);
    b().kv_write(a.get(), a.get(), 0, 16, i.get(), KvLayout{1, 16, 1, 8}, a.get(), a.get());
    b().gather_rows(f.get(), i.get(), 0, 16, f.get());
    b().sample(f.get(), 0, 16, nullptr, i.get());
    b().matmul(a.get(), 0, WeightMatrix{DType::BF16, 4, 16, a.get()}, f.get(), DType::F32);
    b().synchronize();
    EXPECT_EQ(f.to_host(), before);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOps, ::testing::ValuesIn(all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
