// The batched, paged forward pass against a plain double-precision Llama on a tiny random model:
// several sequences of different lengths, prompts split into chunks across steps, mixed steps,
// shuffled KV blocks, tied and separate heads, llama3 rope scaling, f32 and bf16 weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "core/error.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "model/model_source.h"
#include "random_schedule.h"
#include "tiny_model.h"

using namespace swiftkv;

namespace {

std::string temp_dir(const std::string& name) {
    auto d = std::filesystem::temp_directory_path() / ("swiftkv_test_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(d);
    return d.string();
}

// Runs all sequences to completion on a random schedule and returns the worst logits error relative
// to each row's largest reference logit.
double run_and_compare(const TinyModel& tiny, DType dtype, unsigned seed, int64_t block_size) {
    const std::string dir = temp_dir("fwd" + std::to_string(seed));
    write_tiny_model(tiny, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(2);
    LoadOptions lo;
    lo.weight_dtype = dtype;
    LlamaModel model(*source, *backend, lo);
    PagedKvCache cache(*backend, model.config(), 128, block_size);

    std::mt19937 rng(seed);
    std::vector<std::vector<int>> seqs;
    std::uniform_int_distribution<int> tok(0, tiny.spec.vocab - 1);
    for (int len : {1, 5, 23, 40}) {
        seqs.emplace_back();
        for (int t = 0; t < len; ++t) seqs.back().push_back(tok(rng));
    }
    std::vector<std::vector<double>> refs;
    for (auto& s : seqs) refs.push_back(reference_logits(tiny, s));

    double worst = 0;
    const int64_t V = tiny.spec.vocab;
    run_random_schedule(model, cache, seqs, rng, [&](size_t seq, int64_t pos, const float* logits) {
        double scale = 0, err = 0;
        for (int64_t v = 0; v < V; ++v) {
            const double expect = refs[seq][size_t(pos * V + v)];
            scale = std::max(scale, std::fabs(expect));
            err = std::max(err, std::fabs(expect - double(logits[v])));
        }
        worst = std::max(worst, err / scale);
    });
    std::filesystem::remove_all(dir);
    return worst;
}

}  // namespace

TEST(LlamaForward, MatchesReferenceF32) {
    TinySpec s;
    EXPECT_LT(run_and_compare(make_tiny_model(s), DType::F32, 1, 16), 2e-5);
    EXPECT_LT(run_and_compare(make_tiny_model(s), DType::F32, 2, 1), 2e-5);  // one token per block
}

TEST(LlamaForward, TiedEmbeddingsAndLlama3Scaling) {
    TinySpec s;
    s.tie = true;
    s.llama3_scaling = true;
    s.heads = 6;
    s.kv_heads = 2;
    EXPECT_LT(run_and_compare(make_tiny_model(s), DType::F32, 3, 4), 2e-5);
}

TEST(LlamaForward, MultiHeadAttentionWithoutGrouping) {
    TinySpec s;
    s.kv_heads = 4;
    s.head_dim = 16;
    EXPECT_LT(run_and_compare(make_tiny_model(s), DType::F32, 4, 16), 2e-5);
}

TEST(LlamaForward, Bf16WeightsMatchReferenceOnRoundedWeights) {
    TinySpec s;
    // The loader rounds matrices (not norm vectors) to bf16; activations stay f32. With the reference
    // run on the same rounded weights the forward must be as exact as in f32.
    TinyModel m = make_tiny_model(s);
    for (auto& [name, v] : m.tensors) {
        if (m.shapes[name].size() != 2) continue;
        for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
    }
    EXPECT_LT(run_and_compare(m, DType::BF16, 5, 16), 2e-5);
}

// Loading the model must fail with an error that names `tensor`.
void expect_load_error_naming(const TinyModel& m, const std::string& tensor) {
    const std::string dir = temp_dir("bad");
    write_tiny_model(m, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(1);
    try {
        LlamaModel model(*source, *backend, LoadOptions{});
        ADD_FAILURE() << "expected an error naming " << tensor;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(tensor), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

TEST(LlamaForward, ShapeMismatchNamesTheTensor) {
    TinySpec s;
    TinyModel m = make_tiny_model(s);
    const std::string name = "model.layers.1.mlp.up_proj.weight";
    m.shapes[name] = {s.ffn - 1, s.hidden};
    m.tensors[name].resize(size_t((s.ffn - 1) * s.hidden));
    expect_load_error_naming(m, name);
}

TEST(LlamaForward, MissingTensorNamesTheTensor) {
    TinyModel m = make_tiny_model(TinySpec{});
    const std::string name = "model.layers.2.self_attn.k_proj.weight";
    m.tensors.erase(name);
    m.shapes.erase(name);
    expect_load_error_naming(m, name);
}

namespace {

ModelConfig random_config(int64_t num_kv_layers, int64_t group) {
    ModelConfig c;
    c.n_layers = 4, c.hidden = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.ffn = 96, c.vocab = 101;
    c.max_position = 256, c.rope_theta = 10000.0;
    c.num_kv_layers = num_kv_layers, c.kv_group_size = group;
    if (c.is_swiftkv()) c.architecture = "llama_swiftkv";
    c.validate("random");
    return c;
}

// Two sequences (5 and 3 prompt tokens), logits at each last token.
ForwardBatch two_sequences(int64_t vocab) {
    ForwardBatch b;
    b.query_start = {0, 5, 8};
    b.seq_lens = {5, 3};
    b.max_blocks_per_seq = 2;
    b.block_tables = {0, 1, 2, 3};
    for (int i = 0; i < 8; ++i) b.tokens.push_back(int32_t((i * 37 + 11) % vocab));
    b.positions = {0, 1, 2, 3, 4, 0, 1, 2};
    b.logits_indices = {4, 7};
    return b;
}

}  // namespace

// Random weights generated on the backend (benchmarks use these): deterministic per seed, finite
// logits; greedy sampling on the backend picks the argmax of the logits the plain forward returns.
TEST(LlamaForward, RandomWeightsAndBackendSampling) {
    auto backend = make_cpu_backend(2);
    for (auto [L, g] : {std::pair<int64_t, int64_t>{4, 1}, {2, 1}, {2, 2}}) {
        const ModelConfig c = random_config(L, g);
        LoadOptions lo;
        LlamaModel ma(c, *backend, lo, 7), mb(c, *backend, lo, 7), mother(c, *backend, lo, 8);
        ModelRunner a(ma), b(mb), other(mother);
        a.reserve(16, 4, 4);
        PagedKvCache kv(*backend, ma.config(), 8, 4);
        const ForwardBatch batch = two_sequences(c.vocab);
        std::vector<float> la, lb, lo_other;
        a.forward(batch, kv.view(), la);
        b.forward(batch, kv.view(), lb);
        other.forward(batch, kv.view(), lo_other);
        ASSERT_EQ(la.size(), size_t(2 * c.vocab));
        EXPECT_EQ(la, lb) << "same seed, same weights";
        EXPECT_NE(la, lo_other) << "another seed, other weights";
        for (float x : la) ASSERT_TRUE(std::isfinite(x));
        std::vector<SampleParams> greedy(2);
        std::vector<int32_t> tokens;
        a.forward_sample(batch, kv.view(), greedy, tokens);
        ASSERT_EQ(tokens.size(), 2u);
        for (int r = 0; r < 2; ++r) {
            const auto row = la.begin() + r * c.vocab;
            EXPECT_EQ(tokens[r], int32_t(std::max_element(row, row + c.vocab) - row)) << "L=" << L << " g=" << g;
        }
        std::vector<SampleParams> wrong(3);
        EXPECT_THROW(a.forward_sample(batch, kv.view(), wrong, tokens), Error);
    }
}
