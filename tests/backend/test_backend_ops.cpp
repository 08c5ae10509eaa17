// Backend ops other than matmul, attention and sample, on every backend, against double-precision
// references: memory (incl. memory_info, fill_random), embedding, gather_rows, rmsnorm, add_rmsnorm,
// rope, silu_mul, kv_write, kv_write_layers.
// Tolerances (f32): elementwise results within 1e-5 relative (plus a tiny absolute floor near zero);
// copies (embedding, gather, kv_write, the residual add) must be exact.
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

TEST_P(BackendOps, ActDtype) {
    const DType act = b().act_dtype();
    EXPECT_TRUE(act == DType::F32 || act == DType::BF16) << dtype_name(act);
    if (GetParam() == "cpu") {
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
    if (GetParam() == "cpu") {
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
    if (GetParam() == "cpu") {
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
    if (GetParam() != "cpu") GTEST_SKIP() << "token ids live on the device there; the runner checks them on the host";
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
            const auto out = dout.to_host();
            for (int64_t i = 0; i < n; ++i)
                ASSERT_EQ(0, std::memcmp(out.data() + i * row_bytes, x.data() + idx[size_t(i)] * row_bytes,
                                         size_t(row_bytes)))
                    << "row " << i << " of " << n << ", " << row_bytes << " bytes";
        }
    }
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

TEST_P(BackendOps, RopeRotateHalf) {
    Random rng(5);
    struct Case { int64_t rows, n_heads, head_dim, extra; double theta; int32_t max_pos; };
    for (const Case c : {Case{1, 1, 2, 0, 10000.0, 5}, Case{7, 9, 64, 3 * 64 * 2, 10000.0, 4096},
                         Case{40, 3, 128, 5, 500000.0, 130000}, Case{5, 2, 6, 0, 100.0, 50},
                         Case{300, 4, 64, 0, 10000.0, 299}, Case{3, 2, 64, 0, 10000.0, 2147483647}}) {
        const int64_t half = c.head_dim / 2, stride = c.n_heads * c.head_dim + c.extra;
        std::vector<float> inv_freq(static_cast<size_t>(half));
        for (int64_t i = 0; i < half; ++i)
            inv_freq[size_t(i)] = float(1.0 / std::pow(c.theta, double(2 * i) / double(c.head_dim)));
        std::vector<int32_t> pos(static_cast<size_t>(c.rows));
        for (auto& p : pos) p = rng.integer(0, c.max_pos);
        pos[0] = c.max_pos;
        ActArray dx(b(), rng.floats(size_t(c.rows * stride), -2.0f, 2.0f));
        const std::vector<float>& x = dx.values();
        std::vector<double> ref(x.begin(), x.end()), scale(x.size(), 1e-30);
        for (int64_t r = 0; r < c.rows; ++r)
            for (int64_t h = 0; h < c.n_heads; ++h)
                for (int64_t i = 0; i < half; ++i) {
                    const size_t ia = size_t(r * stride + h * c.head_dim + i), ib = ia + size_t(half);
                    const float angle = float(pos[size_t(r)]) * inv_freq[size_t(i)];  // f32, as PyTorch
                    const double cs = std::cos(double(angle)), sn = std::sin(double(angle));
                    ref[ia] = double(x[ia]) * cs - double(x[ib]) * sn;
                    ref[ib] = double(x[ib]) * cs + double(x[ia]) * sn;
                    scale[ia] = scale[ib] = std::abs(double(x[ia])) + std::abs(double(x[ib]));
                }
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

TEST_P(BackendOps, SiluMul) {
    Random rng(6);
    for (int64_t rows : {1, 5, 64}) {
        for (int64_t ffn : {1, 7, 16, 33, 1536}) {
            auto values = rng.floats(size_t(rows * 2 * ffn), -20.0f, 20.0f);
            const float specials[] = {0.0f, -100.0f, 100.0f, -87.5f, 88.9f, 1e-8f, -1e-8f, 3.0f};
            for (size_t i = 0; i < 8 && i < size_t(ffn); ++i) values[i] = specials[i];
            ActArray dgu(b(), values), dout(b(), size_t(rows * ffn));
            const std::vector<float>& gu = dgu.values();
            std::vector<double> ref(size_t(rows * ffn));
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = 0; j < ffn; ++j) {
                    const double g = gu[size_t(r * 2 * ffn + j)], u = gu[size_t(r * 2 * ffn + ffn + j)];
                    ref[size_t(r * ffn + j)] = g / (1.0 + std::exp(-g)) * u;
                }
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
        if (GetParam() != "cpu") continue;
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
                if (GetParam() != "cpu") continue;
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

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOps, ::testing::ValuesIn(all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
