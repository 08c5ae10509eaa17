// The whole forward pass on the CUDA backend against the CPU backend, with identical random weights
// (fill_random is the same function of (seed, index) on both; both hold bf16 weights), through the
// paths that only a graph-capable backend takes: decode steps recorded and replayed as graphs, and the
// SwiftKV survivors' later layers recorded and replayed per padded survivor count. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "runner/model_runner.h"

using namespace swiftkv;

namespace {

ModelConfig config(int64_t L, int64_t g) {
    ModelConfig c;
    c.n_layers = 4, c.hidden = 256, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 32, c.ffn = 512, c.vocab = 1000;
    c.max_position = 4096, c.rope_theta = 10000.0, c.num_kv_layers = L, c.kv_group_size = g;
    if (c.is_swiftkv()) c.architecture = "llama_swiftkv";
    c.validate("test");
    return c;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
    }
    return std::sqrt(num / den);
}

// Sequences with given prompt lengths, blocks assigned in order; `step(start, count)` builds the batch
// that feeds tokens [start, start+count) of every sequence (clamped to its length), logits at each last.
struct Workload {
    std::vector<int64_t> lengths;
    int64_t block_size = 16;
    int64_t blocks_per_seq = 0;
    int64_t vocab = 0;
    ForwardBatch step(int64_t start, int64_t count) const {
        ForwardBatch b = ForwardBatch::with_block_table_width(blocks_per_seq);
        for (size_t s = 0; s < lengths.size(); ++s) {
            const int64_t end = std::min(lengths[s], start + count);
            std::vector<int32_t> tokens;
            for (int64_t p = start; p < end; ++p) tokens.push_back(int32_t((p * 131 + s * 17 + 5) % vocab));
            // A sequence already past its length takes part with no tokens (its context stays at `end`).
            const int64_t from = std::min(start, std::max<int64_t>(end, 0));
            b.add_sequence(tokens.data(), from, int64_t(tokens.size()), table(s), int64_t(tokens.size()) - 1);
        }
        return b;
    }
    std::vector<int32_t> table(size_t s) const {
        std::vector<int32_t> t(static_cast<size_t>(blocks_per_seq));
        for (int64_t k = 0; k < blocks_per_seq; ++k) t[size_t(k)] = int32_t(int64_t(s) * blocks_per_seq + k);
        return t;
    }
};

class CudaForward : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {
protected:
    void SetUp() override {
        std::string why;
        if (!cuda_backend_available(&why)) GTEST_SKIP() << why;
    }
};

}  // namespace

TEST_P(CudaForward, GraphedStepsMatchTheCpu) {
    const auto [L, g] = GetParam();
    const ModelConfig c = config(L, g);
    auto cpu = make_cpu_backend(2);
    auto gpu = make_cuda_backend(0);
    LoadOptions lo;
    lo.weight_dtype = DType::BF16;
    LlamaModel model_c(c, *cpu, lo, 3), model_g(c, *gpu, lo, 3);
    ModelRunner mc(model_c), mg(model_g);
    Workload w{{300, 77, 5, 150}, 16, 0, c.vocab};
    w.blocks_per_seq = (300 + 40 + 15) / 16;
    mg.reserve(512, 8, w.blocks_per_seq);
    const int64_t blocks = int64_t(w.lengths.size()) * w.blocks_per_seq;
    PagedKvCache kc(*cpu, model_c.config(), blocks, 16), kg(*gpu, model_g.config(), blocks, 16);
    std::vector<float> lc, lg, first_chunk;
    std::vector<std::vector<float>> graphed_chunks;
    // Prefill in chunks of 128 (SwiftKV: a chunk where every sequence has one survivor runs the later
    // layers as a recorded graph).
    for (int64_t start = 0; start < 300; start += 128) {
        const ForwardBatch b = w.step(start, 128);
        mc.forward(b, kc.view(), lc);
        mg.forward(b, kg.view(), lg);
        ASSERT_EQ(lc.size(), lg.size());
        EXPECT_LT(rel_error(lg, lc), 3e-2) << "prefill chunk at " << start;
        if (start == 0) first_chunk = lc;
        graphed_chunks.push_back(lg);
    }
    // The first chunk again (same K/V rewritten): SwiftKV models now replay the survivors' graph.
    const int64_t replays_before = mg.graph_replays();
    mg.forward(w.step(0, 128), kg.view(), lg);
    EXPECT_LT(rel_error(lg, first_chunk), 3e-2) << "replayed prefill chunk";
    if (c.is_swiftkv()) {
        EXPECT_EQ(mg.graph_replays(), replays_before + 1);
    }
    // Decode 40 steps for all sequences: every step a recorded graph after the first of its shape.
    std::vector<int64_t> lens = w.lengths;
    for (int step = 0; step < 40; ++step) {
        ForwardBatch b = ForwardBatch::with_block_table_width(w.blocks_per_seq);
        for (size_t s = 0; s < lens.size(); ++s) {
            const int32_t token = int32_t((step * 7 + s) % c.vocab);
            b.add_sequence(&token, lens[s]++, 1, w.table(s), 0);
        }
        mc.forward(b, kc.view(), lc);
        mg.forward(b, kg.view(), lg);
        ASSERT_LT(rel_error(lg, lc), 3e-2) << "decode step " << step;
    }
    EXPECT_GE(mg.graphs_recorded(), 1);
    EXPECT_GE(mg.graph_replays(), 30);
    // The same prefill chunks with graphs off give the logits they gave with graphs on.
    LlamaModel model_e(c, *gpu, lo, 3);
    ModelRunner me(model_e, RunnerOptions{false});
    PagedKvCache ke(*gpu, model_e.config(), blocks, 16);
    std::vector<float> le;
    size_t chunk = 0;
    for (int64_t start = 0; start < 300; start += 128, ++chunk) {
        me.forward(w.step(start, 128), ke.view(), le);
        // Same device and kernels; only the attention's context bound (a power of two when graphed) may
        // change how the work is split.
        EXPECT_LT(rel_error(le, graphed_chunks[chunk]), 1e-2) << "eager prefill chunk at " << start;
    }
    EXPECT_EQ(me.graphs_recorded(), 0);
}

TEST_P(CudaForward, SampleOnDeviceIsArgmaxWhenGreedy) {
    const auto [L, g] = GetParam();
    const ModelConfig c = config(L, g);
    auto gpu = make_cuda_backend(0);
    LoadOptions lo;
    lo.weight_dtype = DType::BF16;
    LlamaModel model(c, *gpu, lo, 5);
    ModelRunner m(model);
    Workload w{{40, 9}, 16, 3, c.vocab};
    m.reserve(64, 4, 3);
    PagedKvCache kv(*gpu, model.config(), 6, 16);
    const ForwardBatch b = w.step(0, 64);
    std::vector<float> logits;
    m.forward(b, kv.view(), logits);
    std::vector<SampleParams> greedy(2);
    std::vector<int32_t> tokens;
    m.forward_sample(b, kv.view(), greedy, tokens);
    for (int r = 0; r < 2; ++r) {
        const auto row = logits.begin() + r * c.vocab;
        EXPECT_EQ(tokens[r], int32_t(std::max_element(row, row + c.vocab) - row));
    }
}

INSTANTIATE_TEST_SUITE_P(Cuts, CudaForward,
                         ::testing::Values(std::pair<int64_t, int64_t>{4, 1}, std::pair<int64_t, int64_t>{2, 1},
                                           std::pair<int64_t, int64_t>{2, 2}, std::pair<int64_t, int64_t>{1, 3}));
