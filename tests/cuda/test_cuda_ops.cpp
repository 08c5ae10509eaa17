// Every op of the CUDA backend, through the Backend interface, against the CPU backend on the same inputs.
// Inputs are rounded to bf16 first, so both backends see identical values (bf16 on CUDA, whose act_dtype
// is BF16; f32 on the CPU). Tolerances: relative Frobenius error ||cuda - cpu|| / ||cpu|| <= 1e-2 for ops
// whose CUDA result is rounded to bf16 (matmul, norms, silu_mul, rope, attention); exact for copies
// (embedding, gather_rows, kv_write, the residual update of add_rmsnorm). sample: greedy is exact; with
// temperature / top_k / top_p / min_p the CUDA token equals the CPU token on >= 99% of rows (both are
// Gumbel-max on the shared noise; only f32-vs-f64 rounding at a top_p/min_p boundary can differ) and is
// always inside the allowed set computed here in double (with 1e-4 slack); draw frequencies over many
// offsets follow the restricted softmax (chi-square). Plus fill_random, memory_info, capture/replay and
// the allocation error. Every test skips when no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "backend/sampling_noise.h"
#include "core/error.h"
#include "cuda_test_util.h"

namespace swiftkv::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// --- helpers -------------------------------------------------------------------------------------------

class CudaOps : public CudaVsCpuTest {};

// Row counts x dims, skipping combinations above `max_elems` elements.
std::vector<std::pair<int64_t, int64_t>> shape_grid(std::initializer_list<int64_t> rows,
                                                    std::initializer_list<int64_t> dims, int64_t max_elems) {
    std::vector<std::pair<int64_t, int64_t>> out;
    for (int64_t d : dims)
        for (int64_t r : rows)
            if (r * d <= max_elems) out.emplace_back(r, d);
    return out;
}

// --- basics ---------------------------------------------------------------------------------------------

TEST_F(CudaOps, AllocFailureThrowsWithSize) {
    const size_t huge = size_t(1) << 50;
    try {
        void* p = gpu().alloc(huge);
        gpu().free(p);
        FAIL() << "allocating 2^50 bytes succeeded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(std::to_string(huge)), std::string::npos) << e.what();
    }
    // The backend still works afterwards.
    DeviceArray<float> a(gpu(), std::vector<float>{1.0f, 2.0f, 3.0f});
    EXPECT_EQ(a.to_host(), (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

TEST_F(CudaOps, MemoryInfo) {
    size_t free0 = 0, total = 0;
    gpu().memory_info(&free0, &total);
    EXPECT_GT(total, size_t(1) << 30);
    EXPECT_LE(free0, total);
    const size_t bytes = size_t(1) << 30;
    void* p = gpu().alloc(bytes);
    size_t free1 = 0, total1 = 0;
    gpu().memory_info(&free1, &total1);
    EXPECT_EQ(total1, total);
    EXPECT_LT(free1, free0);
    EXPECT_GE(free0 - free1, bytes / 2);
    gpu().free(p);
}

TEST_F(CudaOps, MemoryRoundTrip) {
    for (size_t n : {size_t(1), size_t(17), size_t(1000003)}) {
        const auto host = fast_floats(n, n);
        DeviceArray<float> a(gpu(), host), b(gpu(), n);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get()) % 64, 0u);
        gpu().copy(b.get(), a.get(), n * 4);
        EXPECT_EQ(b.to_host(), host);
        gpu().fill_zero(b.get(), n * 4);
        const auto zero = b.to_host();
        EXPECT_TRUE(std::all_of(zero.begin(), zero.end(), [](float x) { return x == 0.0f; }));
    }
}

TEST_F(CudaOps, FillRandom) {
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 20, (int64_t(1) << 20) + 7}) {
        for (const float scale : {0.02f, 1.0f}) {
            DeviceArray<float> f(gpu(), size_t(n)), f2(gpu(), size_t(n)), f3(gpu(), size_t(n)), fc(cpu(), size_t(n));
            DeviceArray<uint16_t> h(gpu(), size_t(n)), hc(cpu(), size_t(n));
            gpu().fill_random(f.get(), n, DType::F32, 42, scale);
            gpu().fill_random(f2.get(), n, DType::F32, 42, scale);
            gpu().fill_random(f3.get(), n, DType::F32, 43, scale);
            gpu().fill_random(h.get(), n, DType::BF16, 42, scale);
            cpu().fill_random(fc.get(), n, DType::F32, 42, scale);
            cpu().fill_random(hc.get(), n, DType::BF16, 42, scale);
            const auto a = f.to_host(), b = f2.to_host(), c = f3.to_host();
            EXPECT_EQ(a, b) << "same seed, different values";
            if (n >= 1000) {
                EXPECT_NE(a, c) << "different seeds, same values";
            }
            // Both backends implement the same counter-based formula.
            EXPECT_EQ(a, fc.to_host());
            EXPECT_EQ(h.to_host(), hc.to_host());
            double sum = 0.0;
            for (float x : a) {
                ASSERT_TRUE(x >= -scale && x <= scale) << x;
                sum += x;
            }
            // Mean of n uniforms on [-s, s]: standard deviation s / sqrt(3n); allow 5 of them.
            if (n >= 1000) {
                EXPECT_LT(std::abs(sum / double(n)), 5.0 * scale / std::sqrt(3.0 * double(n)));
            }
            const float bf16_bound = bf16_to_f32(f32_to_bf16(scale));
            for (float x : widen(h.to_host())) ASSERT_TRUE(std::abs(x) <= bf16_bound) << x;
        }
    }
    DeviceArray<float> z(gpu(), std::vector<float>{5.0f});
    gpu().fill_random(z.get(), 0, DType::F32, 1, 1.0f);  // n == 0 writes nothing
    EXPECT_EQ(z.to_host()[0], 5.0f);
}

// --- copies -----------------------------------------------------------------------------------------------

TEST_F(CudaOps, Embedding) {
    const int64_t vocab = 1000;
    uint64_t seed = 1;
    for (const auto& [n, dim] : shape_grid({1, 3, 17, 300, 4097}, {64, 577, 4096, 14336}, int64_t(1) << 24)) {
        const auto table = to_bf16(fast_floats(size_t(vocab * dim), seed++));
        Random rng(static_cast<uint32_t>(seed));
        std::vector<int32_t> tokens(static_cast<size_t>(n));
        for (auto& t : tokens) t = rng.integer(0, int32_t(vocab - 1));
        DeviceArray<uint16_t> tg(gpu(), table), tc(cpu(), table);
        DeviceArray<int32_t> kg(gpu(), tokens), kc(cpu(), tokens);
        DeviceArray<float> og(gpu(), size_t(n * dim)), oc(cpu(), size_t(n * dim));
        gpu().embedding(WeightMatrix{DType::BF16, vocab, dim, tg.get()}, kg.get(), n, og.get());
        cpu().embedding(WeightMatrix{DType::BF16, vocab, dim, tc.get()}, kc.get(), n, oc.get());
        EXPECT_EQ(og.to_host(), oc.to_host()) << shape_name(n, dim);
    }
}

TEST_F(CudaOps, GatherRows) {
    const int64_t src_rows = 500;
    uint64_t seed = 10;
    for (int64_t row_bytes : {2, 6, 100, 16, 8192, 28672}) {
        for (int64_t n : {1, 17, 300}) {
            std::vector<uint8_t> x(static_cast<size_t>(src_rows * row_bytes));
            const auto r = fast_floats(x.size(), seed++, 0.0f, 256.0f);
            for (size_t i = 0; i < x.size(); ++i) x[i] = uint8_t(r[i]);
            Random rng(static_cast<uint32_t>(seed));
            std::vector<int32_t> idx(static_cast<size_t>(n));
            for (auto& i : idx) i = rng.integer(0, int32_t(src_rows - 1));
            std::vector<uint8_t> expect(static_cast<size_t>(n * row_bytes));
            for (int64_t i = 0; i < n; ++i)
                std::memcpy(&expect[size_t(i * row_bytes)], &x[size_t(idx[size_t(i)] * row_bytes)], size_t(row_bytes));
            DeviceArray<uint8_t> xg(gpu(), x), xc(cpu(), x), og(gpu(), expect.size()), oc(cpu(), expect.size());
            DeviceArray<int32_t> ig(gpu(), idx), ic(cpu(), idx);
            gpu().gather_rows(xg.get(), ig.get(), n, row_bytes, og.get());
            cpu().gather_rows(xc.get(), ic.get(), n, row_bytes, oc.get());
            EXPECT_EQ(og.to_host(), expect) << n << " rows of " << row_bytes << " bytes";
            EXPECT_EQ(oc.to_host(), expect) << n << " rows of " << row_bytes << " bytes (cpu)";
        }
    }
    // Unaligned source and destination (16-byte rows starting 2 bytes in): the byte/word paths.
    std::vector<uint8_t> x(4096);
    for (size_t i = 0; i < x.size(); ++i) x[i] = uint8_t(i * 7 + 3);
    DeviceArray<uint8_t> xg(gpu(), x), og(gpu(), size_t(64));
    DeviceArray<int32_t> ig(gpu(), std::vector<int32_t>{3, 0, 100});
    gpu().gather_rows(xg.get() + 2, ig.get(), 3, 16, og.get() + 2);
    const auto got = og.to_host();
    for (int i = 0; i < 3; ++i)
        for (int b = 0; b < 16; ++b)
            EXPECT_EQ(got[size_t(2 + i * 16 + b)], x[size_t(2 + std::vector<int>{3, 0, 100}[size_t(i)] * 16 + b)]);
}

// K/V rows of a fused QKV buffer written into paged caches that start out random; skipped slots and all
// other slots must keep their contents. Compared bit for bit (bf16).
struct KvCase {
    int64_t block_size, n_kv_heads, head_dim, n_heads, layers;
};

void check_kv_write(Backend& gpu, Backend& cpu, const KvCase& kc, int64_t rows, uint64_t seed) {
    const int64_t hd = kc.head_dim, nkv = kc.n_kv_heads, bs = kc.block_size;
    const int64_t layer_width = (kc.n_heads + 2 * nkv) * hd;  // one layer's QKV row
    const int64_t row_stride = layer_width * kc.layers;
    const int64_t num_blocks = (rows * 3 / 2 + bs - 1) / bs + 2;
    const KvLayout layout{num_blocks, bs, nkv, hd};
    const int64_t layer_elems = num_blocks * layout.block_elems();
    const int64_t cache_layer_stride = layer_elems + (kc.layers > 1 ? 8 : 0);
    const int64_t cache_elems = cache_layer_stride * kc.layers;

    Random rng(static_cast<uint32_t>(seed));
    std::vector<int32_t> slots(static_cast<size_t>(num_blocks * bs));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng.engine());
    slots.resize(size_t(rows));
    for (auto& s : slots)
        if (rng.integer(0, 9) == 0) s = -1;

    Act qkv(gpu, cpu, fast_floats(size_t(rows * row_stride), seed));
    Act kcache(gpu, cpu, fast_floats(size_t(cache_elems), seed + 1)), vcache(gpu, cpu, fast_floats(size_t(cache_elems), seed + 2));
    DeviceArray<int32_t> sg(gpu, slots), sc(cpu, slots);
    const int64_t k_off = kc.n_heads * hd, v_off = (kc.n_heads + nkv) * hd;
    auto* qg = qkv.g.get();
    auto* qc = qkv.c.get();
    if (kc.layers == 1) {
        gpu.kv_write(qg + k_off, qg + v_off, rows, row_stride, sg.get(), layout, kcache.g.get(), vcache.g.get());
        cpu.kv_write(qc + k_off, qc + v_off, rows, row_stride, sc.get(), layout, kcache.c.get(), vcache.c.get());
    } else {
        gpu.kv_write_layers(qg + k_off, qg + v_off, rows, row_stride, layer_width, kc.layers, sg.get(), layout,
                            kcache.g.get(), vcache.g.get(), cache_layer_stride);
        cpu.kv_write_layers(qc + k_off, qc + v_off, rows, row_stride, layer_width, kc.layers, sc.get(), layout,
                            kcache.c.get(), vcache.c.get(), cache_layer_stride);
    }
    const std::string what = "block " + std::to_string(bs) + ", kv heads " + std::to_string(nkv) + ", head_dim " +
                             std::to_string(hd) + ", layers " + std::to_string(kc.layers) + ", rows " + std::to_string(rows);
    EXPECT_EQ(kcache.g.to_host(), to_bf16(kcache.c.to_host())) << "K cache, " << what;
    EXPECT_EQ(vcache.g.to_host(), to_bf16(vcache.c.to_host())) << "V cache, " << what;
    // And the CPU result is what the slots say (so both are not wrong the same way).
    const auto kh = kcache.c.to_host();
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t s = slots[size_t(r)];
        if (s < 0) continue;
        for (int64_t g = 0; g < kc.layers; ++g)
            for (int64_t h = 0; h < nkv; ++h) {
                const int64_t dst = g * cache_layer_stride + ((s / bs * nkv + h) * bs + s % bs) * hd;
                const int64_t src = r * row_stride + g * layer_width + k_off + h * hd;
                ASSERT_EQ(kh[size_t(dst)], qkv.host[size_t(src)]) << what;
                ASSERT_EQ(kh[size_t(dst + hd - 1)], qkv.host[size_t(src + hd - 1)]) << what;
            }
    }
}

TEST_F(CudaOps, KvWrite) {
    uint64_t seed = 100;
    for (const KvCase& kc : {KvCase{16, 8, 128, 32, 1}, KvCase{32, 3, 64, 9, 1}, KvCase{16, 2, 36, 4, 1}})
        for (int64_t rows : {1, 3, 17, 300}) check_kv_write(gpu(), cpu(), kc, rows, seed++);
}

TEST_F(CudaOps, KvWriteLayers) {
    uint64_t seed = 200;
    for (const KvCase& kc : {KvCase{16, 8, 128, 32, 3}, KvCase{32, 3, 64, 9, 5}, KvCase{16, 2, 36, 4, 2}})
        for (int64_t rows : {1, 17, 300}) check_kv_write(gpu(), cpu(), kc, rows, seed++);
}

// --- matmul -------------------------------------------------------------------------------------------

TEST_F(CudaOps, Matmul) {
    struct Shape { int64_t rows, n, k; };
    uint64_t seed = 300;
    for (const Shape s : {Shape{1, 4096, 4096}, Shape{3, 576, 576}, Shape{17, 14336, 4096}, Shape{300, 1024, 576},
                          Shape{4097, 64, 576}, Shape{5, 33, 200}, Shape{1, 128256, 576}, Shape{17, 128256, 576},
                          Shape{300, 4096, 4096}}) {
        Act x(gpu(), cpu(), fast_floats(size_t(s.rows * s.k), seed++));
        const auto w = to_bf16(fast_floats(size_t(s.n * s.k), seed++));
        DeviceArray<uint16_t> wg(gpu(), w), wc(cpu(), w);
        DeviceArray<float> out_f32(gpu(), size_t(s.rows * s.n)), out_c(cpu(), size_t(s.rows * s.n));
        DeviceArray<uint16_t> out_bf16(gpu(), size_t(s.rows * s.n));
        gpu().matmul(x.g.get(), s.rows, WeightMatrix{DType::BF16, s.n, s.k, wg.get()}, out_f32.get(), DType::F32);
        gpu().matmul(x.g.get(), s.rows, WeightMatrix{DType::BF16, s.n, s.k, wg.get()}, out_bf16.get(), DType::BF16);
        cpu().matmul(x.c.get(), s.rows, WeightMatrix{DType::BF16, s.n, s.k, wc.get()}, out_c.get(), DType::F32);
        const auto ref = out_c.to_host();
        const std::string what = std::to_string(s.rows) + " x " + std::to_string(s.k) + " by " + std::to_string(s.n);
        EXPECT_LE(rel_error(out_f32.to_host(), ref), 1e-3) << "f32 out, " << what;
        EXPECT_LE(rel_error(widen(out_bf16.to_host()), ref), kBf16Tol) << "bf16 out, " << what;
    }
}

// --- norms and elementwise -------------------------------------------------------------------------------

TEST_F(CudaOps, Rmsnorm) {
    uint64_t seed = 400;
    for (const auto& [rows, dim] :
         shape_grid({1, 3, 17, 300, 4097}, {64, 576, 4096, 14336, 5, 577, 20000}, int64_t(1) << 24)) {
        const auto x = fast_floats(size_t(rows * dim), seed++, -3.0f, 3.0f);
        const auto w = fast_floats(size_t(dim), seed++, 0.5f, 1.5f);
        DeviceArray<float> xg(gpu(), x), xc(cpu(), x), wg(gpu(), w), wc(cpu(), w);
        Act out(gpu(), cpu(), size_t(rows * dim));
        gpu().rmsnorm(xg.get(), wg.get(), out.g.get(), rows, dim, 1e-5f);
        cpu().rmsnorm(xc.get(), wc.get(), out.c.get(), rows, dim, 1e-5f);
        EXPECT_LE(rel_error(out.gpu_values(), out.cpu_values()), kBf16Tol) << shape_name(rows, dim);
        EXPECT_EQ(xg.to_host(), x) << "input modified, " << shape_name(rows, dim);
    }
}

TEST_F(CudaOps, AddRmsnorm) {
    uint64_t seed = 500;
    for (const auto& [rows, dim] :
         shape_grid({1, 3, 17, 300, 4097}, {64, 576, 4096, 14336, 5, 577, 20000}, int64_t(1) << 24)) {
        const auto res = fast_floats(size_t(rows * dim), seed++, -3.0f, 3.0f);
        const auto w = fast_floats(size_t(dim), seed++, 0.5f, 1.5f);
        Act delta(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++, -2.0f, 2.0f));
        DeviceArray<float> rg(gpu(), res), rc(cpu(), res), wg(gpu(), w), wc(cpu(), w);
        Act out(gpu(), cpu(), size_t(rows * dim));
        gpu().add_rmsnorm(rg.get(), delta.g.get(), wg.get(), out.g.get(), rows, dim, 1e-6f);
        cpu().add_rmsnorm(rc.get(), delta.c.get(), wc.get(), out.c.get(), rows, dim, 1e-6f);
        // The residual update is one f32 add of the same values on both sides: exact.
        EXPECT_EQ(rg.to_host(), rc.to_host()) << "residual, " << shape_name(rows, dim);
        EXPECT_LE(rel_error(out.gpu_values(), out.cpu_values()), kBf16Tol) << shape_name(rows, dim);
    }
}

TEST_F(CudaOps, SiluMul) {
    uint64_t seed = 600;
    for (const auto& [rows, ffn] : shape_grid({1, 3, 17, 300, 4097}, {64, 576, 14336, 13}, int64_t(1) << 24)) {
        Act gate_up(gpu(), cpu(), fast_floats(size_t(rows * 2 * ffn), seed++, -6.0f, 6.0f));
        Act out(gpu(), cpu(), size_t(rows * ffn));
        gpu().silu_mul(gate_up.g.get(), out.g.get(), rows, ffn);
        cpu().silu_mul(gate_up.c.get(), out.c.get(), rows, ffn);
        EXPECT_LE(rel_error(out.gpu_values(), out.cpu_values()), kBf16Tol) << shape_name(rows, ffn);
    }
}

TEST_F(CudaOps, Rope) {
    struct RopeCase { int64_t n_heads, n_kv_heads, head_dim; };
    uint64_t seed = 700;
    for (const RopeCase rc : {RopeCase{32, 8, 128}, RopeCase{9, 3, 64}, RopeCase{4, 2, 6}, RopeCase{2, 1, 20}}) {
        for (int64_t rows : {1, 3, 17, 300, 4097}) {
            const int64_t hd = rc.head_dim, half = hd / 2;
            const int64_t stride = (rc.n_heads + 2 * rc.n_kv_heads) * hd;
            Act qkv(gpu(), cpu(), fast_floats(size_t(rows * stride), seed++, -2.0f, 2.0f));
            Random rng(static_cast<uint32_t>(seed));
            std::vector<int32_t> pos(static_cast<size_t>(rows));
            for (auto& p : pos) p = rng.integer(0, 131071);
            if (rows > 1) pos[0] = 0;
            std::vector<float> inv_freq(static_cast<size_t>(half));
            for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = float(std::pow(500000.0, -2.0 * double(i) / double(hd)));
            DeviceArray<int32_t> pg(gpu(), pos), pc(cpu(), pos);
            DeviceArray<float> fg(gpu(), inv_freq), fc(cpu(), inv_freq);
            // Q heads at the start of the row, then K heads (an offset pointer), V untouched.
            gpu().rope(qkv.g.get(), rows, stride, rc.n_heads, hd, pg.get(), fg.get());
            gpu().rope(qkv.g.get() + rc.n_heads * hd, rows, stride, rc.n_kv_heads, hd, pg.get(), fg.get());
            cpu().rope(qkv.c.get(), rows, stride, rc.n_heads, hd, pc.get(), fc.get());
            cpu().rope(qkv.c.get() + rc.n_heads * hd, rows, stride, rc.n_kv_heads, hd, pc.get(), fc.get());
            const auto got = qkv.gpu_values(), ref = qkv.cpu_values();
            const std::string what = "heads " + std::to_string(rc.n_heads) + "/" + std::to_string(rc.n_kv_heads) +
                                     ", head_dim " + std::to_string(hd) + ", rows " + std::to_string(rows);
            EXPECT_LE(rel_error(got, ref), kBf16Tol) << what;
            bool v_same = true;
            for (int64_t r = 0; r < rows && v_same; ++r)
                for (int64_t j = (rc.n_heads + rc.n_kv_heads) * hd; j < stride; ++j)
                    v_same = v_same && got[size_t(r * stride + j)] == qkv.host[size_t(r * stride + j)];
            EXPECT_TRUE(v_same) << "V part modified, " << what;
        }
    }
}

// --- attention ----------------------------------------------------------------------------------------------

struct AttnSeq { int32_t context, queries; };
struct AttnCase {
    int64_t head_dim, n_kv_heads, group, block_size;
    std::vector<AttnSeq> seqs;
};

void check_attention(Backend& gpu, Backend& cpu, const AttnCase& c, uint64_t seed) {
    const int64_t hd = c.head_dim, nkv = c.n_kv_heads, nh = nkv * c.group, bs = c.block_size;
    const int64_t q_stride = (nh + 2 * nkv) * hd;
    int64_t total_blocks = 0, max_blocks = 0, max_seq = 0, max_q = 0;
    for (const AttnSeq s : c.seqs) {
        total_blocks += (s.context + bs - 1) / bs;
        max_blocks = std::max<int64_t>(max_blocks, (s.context + bs - 1) / bs);
        max_seq = std::max<int64_t>(max_seq, s.context);
        max_q = std::max<int64_t>(max_q, s.queries);
    }
    max_blocks += 1;
    const KvLayout layout{total_blocks + 3, bs, nkv, hd};
    Random rng(static_cast<uint32_t>(seed));
    std::vector<int32_t> free_blocks(static_cast<size_t>(layout.num_blocks));
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng.engine());
    std::vector<int32_t> query_start{0}, seq_lens, tables, slots;
    size_t next = 0;
    for (const AttnSeq s : c.seqs) {
        const int64_t blocks = (s.context + bs - 1) / bs;
        const size_t first = tables.size();
        for (int64_t b = 0; b < max_blocks; ++b) tables.push_back(b < blocks ? free_blocks[next++] : -1);
        for (int64_t t = 0; t < s.context; ++t) slots.push_back(tables[first + size_t(t / bs)] * int32_t(bs) + int32_t(t % bs));
        seq_lens.push_back(s.context);
        query_start.push_back(query_start.back() + s.queries);
    }
    const int64_t rows = query_start.back(), ctx_rows = int64_t(slots.size());

    // Caches start NaN; every context position is written through kv_write (one K/V row per position).
    const std::vector<float> nan_cache(size_t(layout.num_blocks * layout.block_elems()), kNaN);
    Act kcache(gpu, cpu, nan_cache), vcache(gpu, cpu, nan_cache);
    Act kv(gpu, cpu, fast_floats(size_t(ctx_rows * 2 * nkv * hd), seed + 1));
    DeviceArray<int32_t> sg(gpu, slots), sc(cpu, slots);
    gpu.kv_write(kv.g.get(), kv.g.get() + nkv * hd, ctx_rows, 2 * nkv * hd, sg.get(), layout, kcache.g.get(), vcache.g.get());
    cpu.kv_write(kv.c.get(), kv.c.get() + nkv * hd, ctx_rows, 2 * nkv * hd, sc.get(), layout, kcache.c.get(), vcache.c.get());

    Act q(gpu, cpu, fast_floats(size_t(std::max<int64_t>(rows, 1) * q_stride), seed + 2, -2.0f, 2.0f));
    Act out(gpu, cpu, size_t(std::max<int64_t>(rows, 1) * nh * hd));
    DeviceArray<int32_t> qsg(gpu, query_start), qsc(cpu, query_start), slg(gpu, seq_lens), slc(cpu, seq_lens),
        tg(gpu, tables), tc(cpu, tables);
    AttentionBatch batch;
    batch.num_seqs = int64_t(c.seqs.size());
    batch.num_rows = rows;
    batch.max_blocks_per_seq = max_blocks;
    batch.max_seq_len = max_seq;
    batch.max_query_len = max_q;
    const float scale = 1.0f / std::sqrt(float(hd));
    AttentionBatch bg = batch, bc = batch;
    bg.query_start = qsg.get();
    bg.seq_lens = slg.get();
    bg.block_tables = tg.get();
    bc.query_start = qsc.get();
    bc.seq_lens = slc.get();
    bc.block_tables = tc.get();
    gpu.attention(q.g.get(), q_stride, bg, layout, kcache.g.get(), vcache.g.get(), nh, scale, out.g.get());
    cpu.attention(q.c.get(), q_stride, bc, layout, kcache.c.get(), vcache.c.get(), nh, scale, out.c.get());
    std::string what = "head_dim " + std::to_string(hd) + ", heads " + std::to_string(nh) + "/" + std::to_string(nkv) +
                       ", block " + std::to_string(bs) + ", seqs";
    for (const AttnSeq s : c.seqs) what += " (" + std::to_string(s.context) + "," + std::to_string(s.queries) + ")";
    EXPECT_LE(rel_error(out.gpu_values(), out.cpu_values()), kBf16Tol) << what;
}

TEST_F(CudaOps, Attention) {
    const std::vector<AttnSeq> decode = {{1, 1}, {17, 1}, {300, 1}, {4097, 1}, {64, 1}};
    const std::vector<AttnSeq> mixed = {{300, 300}, {500, 17}, {33, 1}, {100, 0}, {1, 1}, {129, 64}, {4097, 3}};
    const std::vector<AttnSeq> chunked = {{4097, 1}, {1000, 64}, {64, 64}, {2048, 300}};
    uint64_t seed = 800;
    for (int64_t hd : {64, 128})
        for (const auto& [nkv, group] : {std::pair<int64_t, int64_t>{8, 4}, std::pair<int64_t, int64_t>{3, 3}})
            for (int64_t bs : {16, 32})
                for (const auto* seqs : {&decode, &mixed, &chunked})
                    check_attention(gpu(), cpu(), AttnCase{hd, nkv, group, bs, *seqs}, seed++);
}

// --- sample -----------------------------------------------------------------------------------------------

// The allowed set of the sampling rules (see cpu_elementwise.cpp), in double. `slack` > 0 widens top_p
// and min_p a little (tokens at the boundary may go either way in f32).
std::vector<char> allowed_set(const float* l, int64_t vocab, const SampleParams& p, double slack) {
    std::vector<char> allowed(size_t(vocab), 0);
    int64_t top = 0;
    for (int64_t i = 1; i < vocab; ++i)
        if (l[i] > (std::isnan(l[top]) ? -kInf : l[top])) top = i;
    if (!(p.temperature > 0.0f) || !std::isfinite(l[top])) {
        allowed[size_t(top)] = 1;
        return allowed;
    }
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < vocab; ++i)
        if (std::isfinite(l[i])) ids.push_back(int32_t(i));
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    if (p.top_k > 0 && size_t(p.top_k) < ids.size()) {
        const float kth = l[ids[size_t(p.top_k - 1)]];
        size_t n = size_t(p.top_k);
        while (n < ids.size() && l[ids[n]] >= kth) ++n;
        ids.resize(n);
    }
    const double t = p.temperature, zmax = double(l[ids[0]]) / t;
    std::vector<double> prob(ids.size());
    double sum = 0.0;
    for (size_t j = 0; j < ids.size(); ++j) sum += (prob[j] = std::exp(double(l[ids[j]]) / t - zmax));
    double cutoff = 0.0;
    if (p.top_p < 1.0f) {
        const double target = std::min(1.0, double(p.top_p) + slack) * sum;
        double cum = 0.0;
        for (size_t j = 0; j < ids.size(); ++j) {
            cum += prob[j];
            if (cum >= target) {
                cutoff = prob[j];
                break;
            }
        }
    }
    if (p.min_p > 0.0f) cutoff = std::max(cutoff, std::min(double(p.min_p), 1.0) * (1.0 - slack));
    for (size_t j = 0; j < ids.size(); ++j)
        if (prob[j] >= cutoff) allowed[size_t(ids[j])] = 1;
    return allowed;
}

struct SampleRun {
    std::vector<int32_t> gpu, cpu;
};

SampleRun run_sample(Backend& gpu, Backend& cpu, const std::vector<float>& logits, int64_t vocab,
                     const std::vector<SampleParams>& params) {
    const int64_t rows = int64_t(params.size());
    DeviceArray<float> lg(gpu, logits), lc(cpu, logits);
    DeviceArray<SampleParams> pg(gpu, params), pc(cpu, params);
    DeviceArray<int32_t> tg(gpu, size_t(rows)), tc(cpu, size_t(rows));
    gpu.sample(lg.get(), rows, vocab, pg.get(), tg.get());
    cpu.sample(lc.get(), rows, vocab, pc.get(), tc.get());
    return SampleRun{tg.to_host(), tc.to_host()};
}

// Logit rows of several shapes: peaked (normal * 4), flat (uniform [-1, 1]), quantised (many exact ties),
// normal with a comb of high tokens, values a few ulps apart (with outliers); some rows with NaN and -inf.
std::vector<float> make_logits(int64_t rows, int64_t vocab, uint64_t seed) {
    std::vector<float> l(static_cast<size_t>(rows * vocab));
    std::mt19937_64 eng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
        float* row = l.data() + r * vocab;
        const int kind = int(r % 5);
        const auto u = fast_floats(size_t(vocab), seed * 1000 + uint64_t(r));
        for (int64_t i = 0; i < vocab; ++i) {
            switch (kind) {
                case 0: row[i] = 4.0f * normal(eng); break;
                case 1: row[i] = u[size_t(i)]; break;
                case 2: row[i] = std::round(u[size_t(i)] * 8.0f) * 0.5f; break;
                case 3: row[i] = 2.0f * normal(eng) + (i % 97 == 0 ? 6.0f : 0.0f); break;
                // A few hundred distinct values a few ulps apart, plus far outliers.
                default: row[i] = std::nextafter(1.0f, 2.0f) + float(int(u[size_t(i)] * 200.0f + 200.0f)) * 0x1p-23f; break;
            }
        }
        if (kind == 4) {
            row[0] = -30.0f;
            row[vocab - 1] = 1.5f;
        }
        if (r % 7 == 6) {
            for (int64_t i = 7; i < vocab; i += 101) row[i] = kNaN;
            for (int64_t i = 11; i < vocab; i += 103) row[i] = -kInf;
        }
    }
    return l;
}

std::vector<SampleParams> make_params(int64_t rows, uint64_t seed) {
    std::vector<SampleParams> params(static_cast<size_t>(rows));
    std::mt19937_64 eng(seed);
    const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f};
    const int32_t top_ks[] = {0, 1, 5, 50, 1000, 5000, -1};
    const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.99f, 0.1f, 0.0f};
    const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.2f};
    for (int64_t r = 0; r < rows; ++r) {
        SampleParams& p = params[size_t(r)];
        p.temperature = temps[eng() % 5];
        if (p.temperature == 0.0f && r % 3 != 0) p.temperature = 0.8f;
        p.top_k = top_ks[eng() % 7];
        p.top_p = top_ps[eng() % 6];
        p.min_p = min_ps[eng() % 4];
        p.seed = eng();
        p.offset = eng() % 1000;
    }
    return params;
}

TEST_F(CudaOps, SampleGreedy) {
    for (int64_t vocab : {int64_t(1), int64_t(7), int64_t(1000), int64_t(32001), int64_t(128256)}) {
        const int64_t rows = vocab >= 100000 ? 17 : 64;
        auto logits = make_logits(rows, vocab, uint64_t(vocab));
        // A row of ties (lowest index wins), a row of NaN only (token 0), a row with +inf.
        std::fill(logits.begin(), logits.begin() + vocab, 2.5f);
        if (rows > 1) std::fill(logits.begin() + vocab, logits.begin() + 2 * vocab, kNaN);
        if (rows > 2 && vocab > 3) logits[size_t(2 * vocab + vocab / 2)] = kInf;
        std::vector<SampleParams> params(static_cast<size_t>(rows));
        for (size_t r = 0; r < params.size(); ++r) params[r].temperature = r % 2 ? 0.0f : -1.0f;
        const SampleRun run = run_sample(gpu(), cpu(), logits, vocab, params);
        for (int64_t r = 0; r < rows; ++r) {
            const float* row = logits.data() + r * vocab;
            int64_t expect = 0;
            for (int64_t i = 1; i < vocab; ++i)
                if (row[i] > (std::isnan(row[expect]) ? -kInf : row[expect])) expect = i;
            EXPECT_EQ(run.gpu[size_t(r)], expect) << "vocab " << vocab << ", row " << r;
            EXPECT_EQ(run.cpu[size_t(r)], expect) << "vocab " << vocab << ", row " << r << " (cpu)";
        }
    }
}

TEST_F(CudaOps, SampleTopK1IsGreedy) {
    const int64_t vocab = 32000, rows = 40;
    const auto logits = make_logits(rows, vocab, 5);
    std::vector<SampleParams> greedy(static_cast<size_t>(rows)), topk1(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
        topk1[size_t(r)].temperature = 1.0f + 0.1f * float(r % 5);
        topk1[size_t(r)].top_k = 1;
        topk1[size_t(r)].seed = uint64_t(r);
        topk1[size_t(r)].offset = uint64_t(r * 7);
    }
    const SampleRun a = run_sample(gpu(), cpu(), logits, vocab, greedy);
    const SampleRun b = run_sample(gpu(), cpu(), logits, vocab, topk1);
    for (int64_t r = 0; r < rows; ++r) {
        // The quantised rows (kind 2) and the ulp-spaced ones (kind 4) tie at the top: top_k = 1 then keeps
        // every tied token.
        if (r % 5 == 2 || r % 5 == 4) continue;
        EXPECT_EQ(b.gpu[size_t(r)], a.gpu[size_t(r)]) << "row " << r;
    }
}

TEST_F(CudaOps, SampleMatchesCpuAndStaysAllowed) {
    int64_t total = 0, same = 0, strict_outside = 0;
    for (int64_t vocab : {int64_t(1000), int64_t(32001), int64_t(128256)}) {
        const int64_t rows = vocab >= 100000 ? 80 : 200;
        const auto logits = make_logits(rows, vocab, uint64_t(vocab) + 1);
        const auto params = make_params(rows, uint64_t(vocab) + 2);
        const SampleRun run = run_sample(gpu(), cpu(), logits, vocab, params);
        const SampleRun again = run_sample(gpu(), cpu(), logits, vocab, params);
        EXPECT_EQ(run.gpu, again.gpu) << "not deterministic, vocab " << vocab;
        for (int64_t r = 0; r < rows; ++r) {
            const SampleParams& p = params[size_t(r)];
            const float* row = logits.data() + r * vocab;
            const int32_t t = run.gpu[size_t(r)];
            ASSERT_TRUE(t >= 0 && t < vocab) << t;
            const auto loose = allowed_set(row, vocab, p, 1e-4);
            const auto strict = allowed_set(row, vocab, p, 0.0);
            EXPECT_TRUE(loose[size_t(t)]) << "vocab " << vocab << ", row " << r << ": token " << t << " (logit "
                                          << row[t] << ") is not allowed; T " << p.temperature << ", top_k " << p.top_k
                                          << ", top_p " << p.top_p << ", min_p " << p.min_p;
            strict_outside += strict[size_t(t)] ? 0 : 1;
            ++total;
            same += run.gpu[size_t(r)] == run.cpu[size_t(r)] ? 1 : 0;
        }
    }
    EXPECT_GE(double(same), 0.99 * double(total)) << same << " of " << total << " rows agree with the CPU backend";
    EXPECT_LE(double(strict_outside), 0.01 * double(total));
}

// Few rows take the split path (streaming passes over several blocks per row), many rows one block per
// row: the tokens must not depend on it.
TEST_F(CudaOps, SampleSplitMatchesFused) {
    const int64_t vocab = 128256, few = 8, many = 300;
    const auto logits = make_logits(few, vocab, 77);
    auto params = make_params(few, 78);
    for (int64_t r = 0; r < few; ++r)
        if (params[size_t(r)].temperature == 0.0f) params[size_t(r)].temperature = 1.0f;
    std::vector<float> big;
    std::vector<SampleParams> big_params;
    for (int64_t r = 0; r < many; ++r) {
        big.insert(big.end(), logits.begin() + (r % few) * vocab, logits.begin() + (r % few + 1) * vocab);
        big_params.push_back(params[size_t(r % few)]);
    }
    const SampleRun a = run_sample(gpu(), cpu(), logits, vocab, params);
    DeviceArray<float> lg(gpu(), big);
    DeviceArray<SampleParams> pg(gpu(), big_params);
    DeviceArray<int32_t> tg(gpu(), static_cast<size_t>(many));
    gpu().sample(lg.get(), many, vocab, pg.get(), tg.get());
    const auto b = tg.to_host();
    for (int64_t r = 0; r < many; ++r) EXPECT_EQ(b[size_t(r)], a.gpu[size_t(r % few)]) << "row " << r;
}

// Frequencies over many offsets follow the softmax restricted to the allowed set (chi-square).
TEST_F(CudaOps, SampleFrequencies) {
    const int64_t vocab = 16, draws = 40000;
    std::vector<float> base(static_cast<size_t>(vocab));
    std::mt19937_64 eng(9);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    for (auto& x : base) x = normal(eng);
    struct Filter { float temperature; int32_t top_k; float top_p, min_p; };
    for (const Filter f : {Filter{1.0f, 0, 1.0f, 0.0f}, Filter{0.7f, 6, 1.0f, 0.0f}, Filter{1.3f, 0, 0.8f, 0.0f},
                           Filter{1.0f, 10, 0.9f, 0.05f}}) {
        std::vector<float> logits;
        std::vector<SampleParams> params(static_cast<size_t>(draws));
        for (int64_t d = 0; d < draws; ++d) {
            logits.insert(logits.end(), base.begin(), base.end());
            SampleParams& p = params[size_t(d)];
            p.temperature = f.temperature;
            p.top_k = f.top_k;
            p.top_p = f.top_p;
            p.min_p = f.min_p;
            p.seed = 1234;
            p.offset = uint64_t(d);
        }
        DeviceArray<float> lg(gpu(), logits);
        DeviceArray<SampleParams> pg(gpu(), params);
        DeviceArray<int32_t> tg(gpu(), size_t(draws));
        gpu().sample(lg.get(), draws, vocab, pg.get(), tg.get());
        const auto tokens = tg.to_host();
        const auto allowed = allowed_set(base.data(), vocab, params[0], 0.0);
        std::vector<double> expect(size_t(vocab), 0.0);
        double sum = 0.0;
        for (int64_t i = 0; i < vocab; ++i)
            if (allowed[size_t(i)]) sum += (expect[size_t(i)] = std::exp(double(base[size_t(i)]) / f.temperature));
        std::vector<int64_t> count(size_t(vocab), 0);
        for (int32_t t : tokens) {
            ASSERT_TRUE(t >= 0 && t < vocab && allowed[size_t(t)]) << t;
            ++count[size_t(t)];
        }
        double chi2 = 0.0;
        int dof = -1;
        for (int64_t i = 0; i < vocab; ++i) {
            if (!allowed[size_t(i)]) continue;
            const double e = expect[size_t(i)] / sum * double(draws);
            chi2 += (double(count[size_t(i)]) - e) * (double(count[size_t(i)]) - e) / e;
            ++dof;
        }
        // Critical value for p = 1e-6 at <= 15 degrees of freedom is about 51.
        EXPECT_LT(chi2, 55.0) << "T " << f.temperature << ", top_k " << f.top_k << ", top_p " << f.top_p
                              << ", min_p " << f.min_p << ", dof " << dof;
    }
}

// --- graphs -------------------------------------------------------------------------------------------------

TEST_F(CudaOps, CaptureReplay) {
    ASSERT_TRUE(gpu().supports_graphs());
    const int64_t rows = 5, dim = 576, ffn = 1536, vocab = 4096;
    const auto w = fast_floats(size_t(dim), 1, 0.5f, 1.5f);
    const auto wmat = to_bf16(fast_floats(size_t(vocab * dim), 2));
    DeviceArray<float> x(gpu(), fast_floats(size_t(rows * dim), 3)), weight(gpu(), w);
    DeviceArray<uint16_t> gate_up(gpu(), to_bf16(fast_floats(size_t(rows * 2 * ffn), 4))), wm(gpu(), wmat);
    std::vector<SampleParams> sp(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
        sp[size_t(r)].temperature = r == 0 ? 0.0f : 0.9f;
        sp[size_t(r)].top_p = 0.9f;
        sp[size_t(r)].seed = uint64_t(r);
    }
    DeviceArray<SampleParams> params(gpu(), sp);
    struct Outs {
        Outs(Backend& b, int64_t rows, int64_t dim, int64_t ffn, int64_t vocab)
            : normed(b, size_t(rows * dim)), act(b, size_t(rows * ffn)), logits(b, size_t(rows * vocab)),
              tokens(b, size_t(rows)) {}
        DeviceArray<uint16_t> normed, act;
        DeviceArray<float> logits;
        DeviceArray<int32_t> tokens;
    };
    Outs graph_out(gpu(), rows, dim, ffn, vocab), eager_out(gpu(), rows, dim, ffn, vocab);
    auto step = [&](Outs& o) {
        gpu().rmsnorm(x.get(), weight.get(), o.normed.get(), rows, dim, 1e-5f);
        gpu().silu_mul(gate_up.get(), o.act.get(), rows, ffn);
        gpu().matmul(o.normed.get(), rows, WeightMatrix{DType::BF16, vocab, dim, wm.get()}, o.logits.get(), DType::F32);
        gpu().sample(o.logits.get(), rows, vocab, params.get(), o.tokens.get());
    };
    step(eager_out);  // warms up plans and workspaces before recording
    auto graph = gpu().capture([&] { step(graph_out); });
    ASSERT_TRUE(graph);
    gpu().synchronize();
    const auto untouched = graph_out.normed.to_host();
    EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](uint16_t v) { return v == 0; }))
        << "capture executed the ops";
    for (int round = 0; round < 2; ++round) {
        if (round == 1) {
            // New inputs in the same buffers: the replay must see them.
            // (Host buffers outlive the uploads: they are read asynchronously.)
            static const auto nx = fast_floats(size_t(rows * dim), 30);
            static const auto ngu = to_bf16(fast_floats(size_t(rows * 2 * ffn), 40));
            gpu().upload(x.get(), nx.data(), nx.size() * 4);
            gpu().upload(gate_up.get(), ngu.data(), ngu.size() * 2);
            step(eager_out);
        }
        gpu().replay(*graph);
        gpu().synchronize();
        EXPECT_EQ(graph_out.normed.to_host(), eager_out.normed.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.act.to_host(), eager_out.act.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.logits.to_host(), eager_out.logits.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.tokens.to_host(), eager_out.tokens.to_host()) << "round " << round;
    }
}

// Zero-sized calls launch nothing and do not fail.
TEST_F(CudaOps, EmptyCalls) {
    DeviceArray<float> f(gpu(), size_t(64));
    DeviceArray<uint16_t> h(gpu(), size_t(64));
    DeviceArray<int32_t> i(gpu(), size_t(64));
    gpu().embedding(WeightMatrix{DType::BF16, 4, 16, h.get()}, i.get(), 0, f.get());
    gpu().rmsnorm(f.get(), f.get(), h.get(), 0, 16, 1e-5f);
    gpu().add_rmsnorm(f.get(), h.get(), f.get(), h.get(), 0, 16, 1e-5f);
    gpu().rope(h.get(), 0, 16, 2, 8, i.get(), f.get());
    gpu().silu_mul(h.get(), h.get(), 0, 8);
    gpu().kv_write(h.get(), h.get(), 0, 16, i.get(), KvLayout{1, 16, 1, 8}, h.get(), h.get());
    gpu().gather_rows(f.get(), i.get(), 0, 16, f.get());
    gpu().sample(f.get(), 0, 16, nullptr, i.get());
    gpu().matmul(h.get(), 0, WeightMatrix{DType::BF16, 4, 16, h.get()}, f.get(), DType::F32);
    gpu().synchronize();
}

}  // namespace
}  // namespace swiftkv::test
