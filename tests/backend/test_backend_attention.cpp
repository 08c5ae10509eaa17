// Paged causal GQA attention on every backend against a double-precision reference, over a grid of
// head_dim (64, 128, and odd 36 and 8), GQA ratios 1/2/3/4, block sizes 16 and 1, and mixed batches:
// prefill (query rows = context), chunked prefill (a suffix), decode (one row), sequences with zero
// rows, long decodes that take the split-context path. Device backends also run the model-sized grid
// (heads 32/8 and 9/3, block sizes 16 and 32, contexts up to 4097: their tensor-core prefill, decode and
// split-KV kernels). q, the caches and out are in the backend's act dtype (ActArray); K/V go into the
// cache through kv_write at shuffled blocks; unused cache slots hold NaN and unused block-table entries
// are -1, so reading anything outside the context shows up.
// Tolerance per output element: |err| <= t * sum_j p_j |v_j| (the weighted average's condition scale,
// as for matmul; p the reference softmax) + u * 2^-24 * S * sum_j p_j |v_j - out|, where
// S = max_j scale * sum_d |q_d k_jd|: the second term is what rounding scores of magnitude S to f32
// (a few ulps) unavoidably does to the output; it only matters for very peaked softmaxes.
// f32 (CPU): t = 1e-5, u = 4. bf16 (CUDA): t = 1e-2 -- the output is rounded to bf16 (2^-8 of |out| <=
// 2^-8 of the scale) and P enters the P.V tensor-core product in bf16 (another 2^-8 of the scale) --
// and u = 16 (scores accumulate on tensor cores, then scale * log2(e) and exp2 in f32).
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "backend_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv::test {
namespace {

const bool kPoolSized = (ThreadPool::set_global_threads(3), true);

struct Seq { int32_t context, queries; };

struct AttentionCase {
    int64_t head_dim, n_kv_heads, group, block_size;
    std::vector<Seq> seqs;
    float q_scale = 3.0f;  // larger queries make the softmax peaky, which stresses max handling
};

std::string describe(const AttentionCase& c) {
    std::string s = "head_dim " + std::to_string(c.head_dim) + ", kv heads " + std::to_string(c.n_kv_heads) +
                    ", group " + std::to_string(c.group) + ", block " + std::to_string(c.block_size) + ", seqs";
    for (const Seq q : c.seqs) s += " (" + std::to_string(q.context) + "," + std::to_string(q.queries) + ")";
    return s;
}

// The paged batch of one case, in host arrays: block tables, logical K/V per sequence, queries.
struct PagedBatch {
    KvLayout layout;
    int64_t n_heads = 0, q_stride = 0, total_queries = 0, max_blocks = 0;
    std::vector<int32_t> query_start, seq_lens, block_tables;
    std::vector<std::vector<float>> keys, values;  // per sequence [context][n_kv][head_dim]
    std::vector<float> q;                          // [total_queries][q_stride], heads at the start
};

PagedBatch build_batch(const AttentionCase& c, Random& rng) {
    PagedBatch pb;
    const int64_t hd = c.head_dim, bs = c.block_size;
    pb.n_heads = c.n_kv_heads * c.group;
    pb.q_stride = (pb.n_heads + 2 * c.n_kv_heads) * hd;  // as in a fused QKV row
    int64_t total_blocks = 0;
    for (const Seq s : c.seqs) {
        pb.max_blocks = std::max<int64_t>(pb.max_blocks, (s.context + bs - 1) / bs);
        total_blocks += (s.context + bs - 1) / bs;
    }
    pb.max_blocks += 2;
    pb.layout = KvLayout{total_blocks + 5, bs, c.n_kv_heads, hd};
    std::vector<int32_t> free_blocks(static_cast<size_t>(pb.layout.num_blocks));
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng.engine());
    size_t next_block = 0;
    pb.query_start.push_back(0);
    for (const Seq s : c.seqs) {
        const int64_t blocks = (s.context + bs - 1) / bs;
        for (int64_t i = 0; i < pb.max_blocks; ++i)
            pb.block_tables.push_back(i < blocks ? free_blocks[next_block++] : -1);
        pb.seq_lens.push_back(s.context);
        pb.query_start.push_back(pb.query_start.back() + s.queries);
        pb.keys.push_back(rng.floats(size_t(s.context * c.n_kv_heads * hd)));
        pb.values.push_back(rng.floats(size_t(s.context * c.n_kv_heads * hd)));
    }
    pb.total_queries = pb.query_start.back();
    pb.q = rng.floats(size_t(pb.total_queries * pb.q_stride), -c.q_scale, c.q_scale);
    return pb;
}

// Writes every sequence's K/V through kv_write into caches that start out NaN.
void fill_cache(Backend& b, PagedBatch& pb, ActArray& k_cache, ActArray& v_cache) {
    const int64_t row = pb.layout.n_kv_heads * pb.layout.head_dim, bs = pb.layout.block_size;
    for (size_t s = 0; s < pb.seq_lens.size(); ++s) {
        const int64_t ctx = pb.seq_lens[s];
        if (ctx == 0) continue;
        std::vector<int32_t> slots(static_cast<size_t>(ctx));
        for (int64_t t = 0; t < ctx; ++t)
            slots[size_t(t)] = pb.block_tables[s * size_t(pb.max_blocks) + size_t(t / bs)] * int32_t(bs) + int32_t(t % bs);
        ActArray dk(b, pb.keys[s]), dv(b, pb.values[s]);
        pb.keys[s] = dk.values();  // as the backend holds them
        pb.values[s] = dv.values();
        DeviceArray<int32_t> dslots(b, slots);
        b.kv_write(dk.get(), dv.get(), ctx, row, dslots.get(), pb.layout, k_cache.get(), v_cache.get());
    }
}

// The reference output and each element's absolute tolerance (t and u as in the header). Rows of a
// sequence are computed in parallel (the model-sized cases).
void reference(const AttentionCase& c, const PagedBatch& pb, float scale, double t, double u, std::vector<double>& out,
               std::vector<double>& tol) {
    const int64_t hd = c.head_dim, n_kv = c.n_kv_heads, row = pb.n_heads * hd;
    out.assign(size_t(pb.total_queries * row), 0.0);
    tol.assign(out.size(), 0.0);
    for (size_t s = 0; s < pb.seq_lens.size(); ++s) {
        const int64_t ctx = pb.seq_lens[s], q0 = pb.query_start[s], nq = pb.query_start[s + 1] - q0;
        const auto& K = pb.keys[s];
        const auto& V = pb.values[s];
        parallel_ranges(nq * pb.n_heads, [&](int64_t begin, int64_t end) {
            std::vector<double> p;
            for (int64_t ih = begin; ih < end; ++ih) {
                const int64_t i = ih / pb.n_heads, h = ih % pb.n_heads, kvh = h / c.group, pos = ctx - nq + i;
                const float* q = pb.q.data() + (q0 + i) * pb.q_stride + h * hd;
                p.assign(size_t(pos + 1), 0.0);
                double mx = -std::numeric_limits<double>::infinity(), score_scale = 0;
                for (int64_t j = 0; j <= pos; ++j) {
                    double dot = 0, mag = 0;
                    for (int64_t d = 0; d < hd; ++d) {
                        const double term = double(q[d]) * double(K[size_t((j * n_kv + kvh) * hd + d)]);
                        dot += term;
                        mag += std::abs(term);
                    }
                    p[size_t(j)] = dot * double(scale);
                    mx = std::max(mx, p[size_t(j)]);
                    score_scale = std::max(score_scale, mag * double(scale));
                }
                double sum = 0;
                for (auto& x : p) sum += (x = std::exp(x - mx));
                for (auto& x : p) x /= sum;
                for (int64_t d = 0; d < hd; ++d) {
                    double acc = 0, mag = 0;
                    for (int64_t j = 0; j <= pos; ++j) {
                        const double v = V[size_t((j * n_kv + kvh) * hd + d)];
                        acc += p[size_t(j)] * v;
                        mag += p[size_t(j)] * std::abs(v);
                    }
                    double spread = 0;
                    for (int64_t j = 0; j <= pos; ++j) spread += p[size_t(j)] * std::abs(V[size_t((j * n_kv + kvh) * hd + d)] - acc);
                    const size_t at = size_t((q0 + i) * row + h * hd + d);
                    out[at] = acc;
                    tol[at] = t * mag + u * 0x1p-24 * score_scale * spread + 1e-30;
                }
            }
        });
    }
}

void check_case(Backend& b, const AttentionCase& c, uint32_t seed) {
    Random rng(seed);
    PagedBatch pb = build_batch(c, rng);
    const size_t cache_floats = size_t(pb.layout.num_blocks * pb.layout.block_elems());
    const std::vector<float> nan_fill(cache_floats, std::numeric_limits<float>::quiet_NaN());
    ActArray k_cache(b, nan_fill), v_cache(b, nan_fill);
    fill_cache(b, pb, k_cache, v_cache);
    ActArray dq(b, pb.q), dout(b, size_t(std::max<int64_t>(pb.total_queries, 1) * pb.n_heads * c.head_dim));
    pb.q = dq.values();
    DeviceArray<int32_t> dstart(b, pb.query_start), dlens(b, pb.seq_lens), dtables(b, pb.block_tables);
    AttentionBatch batch;
    batch.num_seqs = int64_t(c.seqs.size());
    batch.num_rows = pb.total_queries;
    batch.query_start = dstart.get();
    batch.seq_lens = dlens.get();
    batch.block_tables = dtables.get();
    batch.max_blocks_per_seq = pb.max_blocks;
    batch.max_seq_len = *std::max_element(pb.seq_lens.begin(), pb.seq_lens.end());
    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    b.attention(dq.get(), pb.q_stride, batch, pb.layout, k_cache.get(), v_cache.get(), pb.n_heads, scale, dout.get());
    const bool f32 = b.act_dtype() == DType::F32;
    std::vector<double> ref, tol;
    reference(c, pb, scale, f32 ? 1e-5 : 1e-2, f32 ? 4.0 : 16.0, ref, tol);
    auto got = dout.to_host();
    got.resize(ref.size());
    EXPECT_TRUE(all_close(got, ref, tol, 1.0)) << describe(c);
}

class BackendAttention : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        backend_ = make_backend(GetParam());
        ASSERT_TRUE(backend_) << "backend " << GetParam() << " unavailable";
    }
    std::unique_ptr<Backend> backend_;
};

// Mixed batches over the full grid of head_dim x GQA ratio x block size.
TEST_P(BackendAttention, MixedBatchesGrid) {
    const std::vector<Seq> mixed = {{1, 1}, {300, 300}, {300, 1}, {17, 0}, {150, 40}, {64, 64}, {0, 0}, {129, 2}, {33, 33}};
    struct Heads { int64_t n_kv, group; };
    uint32_t seed = 100;
    for (int64_t hd : {64, 128})
        for (const Heads h : {Heads{2, 1}, Heads{3, 3}, Heads{1, 4}, Heads{2, 4}})
            for (int64_t bs : {16, 1}) check_case(*backend_, AttentionCase{hd, h.n_kv, h.group, bs, mixed}, seed++);
}

TEST_P(BackendAttention, OddHeadDim) {
    check_case(*backend_, AttentionCase{36, 2, 2, 16, {{200, 200}, {90, 1}, {45, 7}}}, 200);
    check_case(*backend_, AttentionCase{8, 1, 3, 4, {{70, 70}, {1000, 1}}}, 201);
}

// Few work items: the context is split across threads and merged (decode, chunked prefill).
TEST_P(BackendAttention, LongContextSplits) {
    uint32_t seed = 300;
    for (int64_t hd : {64, 128}) {
        check_case(*backend_, AttentionCase{hd, 3, 3, 16, {{1000, 1}}}, seed++);
        check_case(*backend_, AttentionCase{hd, 1, 4, 16, {{2000, 50}}}, seed++);
        check_case(*backend_, AttentionCase{hd, 2, 1, 1, {{700, 1}, {5, 1}}}, seed++);
        check_case(*backend_, AttentionCase{hd, 3, 3, 16, {{512, 1}, {1537, 3}}}, seed++);
    }
}

TEST_P(BackendAttention, ExtremeScores) {
    // Very peaked softmax (one key dominates by ~100 nats) and nearly flat ones.
    check_case(*backend_, AttentionCase{64, 3, 3, 16, {{300, 300}, {900, 1}}, 40.0f}, 400);
    check_case(*backend_, AttentionCase{64, 3, 3, 16, {{300, 30}, {900, 1}}, 0.01f}, 401);
}

// Model-sized heads and batches on device backends: decode batches, mixed prefill, chunked prefill with
// contexts up to 4097 (Llama-3.1-8B's 32/8 heads, and 9/3), block sizes 16 and 32.
TEST_P(BackendAttention, ModelSizedBatches) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes above";
    const std::vector<Seq> decode = {{1, 1}, {17, 1}, {300, 1}, {4097, 1}, {64, 1}};
    const std::vector<Seq> mixed = {{300, 300}, {500, 17}, {33, 1}, {100, 0}, {1, 1}, {129, 64}, {4097, 3}};
    const std::vector<Seq> chunked = {{4097, 1}, {1000, 64}, {64, 64}, {2048, 300}};
    uint32_t seed = 800;
    for (int64_t hd : {64, 128})
        for (const auto& [nkv, group] : {std::pair<int64_t, int64_t>{8, 4}, std::pair<int64_t, int64_t>{3, 3}})
            for (int64_t bs : {16, 32})
                for (const auto* seqs : {&decode, &mixed, &chunked})
                    check_case(*backend_, AttentionCase{hd, nkv, group, bs, *seqs, 2.0f}, seed++);
}

// Arguments every backend checks on the host.
TEST_P(BackendAttention, RejectsInvalidShapes) {
    Backend& b = *backend_;
    const KvLayout layout{4, 16, 2, 64};
    ActArray kc(b, size_t(layout.num_blocks * layout.block_elems())), vc(b, kc.values().size());
    ActArray q(b, size_t(6 * 64)), out(b, size_t(6 * 64));
    DeviceArray<int32_t> ds(b, std::vector<int32_t>{0, 1}), dl(b, std::vector<int32_t>{1}), dt(b, std::vector<int32_t>{0});
    const AttentionBatch batch{1, 1, ds.get(), dl.get(), dt.get(), 1, 1};
    EXPECT_NO_THROW(b.attention(q.get(), 6 * 64, batch, layout, kc.get(), vc.get(), 4, 0.125f, out.get()));
    // 3 query heads over 2 KV heads; a q row shorter than the heads; a layout without heads.
    EXPECT_THROW(b.attention(q.get(), 6 * 64, batch, layout, kc.get(), vc.get(), 3, 0.125f, out.get()), Error);
    EXPECT_THROW(b.attention(q.get(), 4 * 64 - 1, batch, layout, kc.get(), vc.get(), 4, 0.125f, out.get()), Error);
    EXPECT_THROW(b.attention(q.get(), 6 * 64, batch, KvLayout{4, 16, 0, 64}, kc.get(), vc.get(), 4, 0.125f, out.get()),
                 Error);
    b.synchronize();
}

// Batch contents (query_start, seq_lens, block tables) are checked where they live on the host.
TEST_P(BackendAttention, RejectsInvalidBatches) {
    if (!is_cpu(GetParam())) GTEST_SKIP() << "the batch arrays live on the device there; the runner builds them";
    Backend& b = *backend_;
    const KvLayout layout{4, 16, 1, 64};
    DeviceArray<float> kc(b, size_t(layout.num_blocks * layout.block_elems())), vc(b, kc.size());
    DeviceArray<float> q(b, size_t(2 * 64)), out(b, size_t(2 * 64));
    auto run = [&](std::vector<int32_t> start, std::vector<int32_t> lens, std::vector<int32_t> tables, int64_t max_blocks) {
        DeviceArray<int32_t> ds(b, start), dl(b, lens), dt(b, tables);
        AttentionBatch batch{int64_t(lens.size()), start.back(), ds.get(), dl.get(), dt.get(), max_blocks, 64};
        b.attention(q.get(), 64, batch, layout, kc.get(), vc.get(), 1, 0.125f, out.get());
    };
    EXPECT_NO_THROW(run({0, 2}, {20}, {0, 3}, 2));
    EXPECT_THROW(run({0, 2}, {1}, {0, 3}, 2), Error);   // more query rows than context
    EXPECT_THROW(run({0, 2}, {20}, {0, 4}, 2), Error);  // block 4 of a 4-block cache
    EXPECT_THROW(run({0, 2}, {20}, {0, -1}, 2), Error); // negative block
    EXPECT_THROW(run({0, 2}, {40}, {0, 1}, 2), Error);  // 3 blocks needed, table holds 2
    EXPECT_THROW(run({2, 0}, {20}, {0, 1}, 2), Error);  // decreasing query_start
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendAttention, ::testing::ValuesIn(all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
