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
#include "tiny_model.h"

using namespace swiftkv;

namespace {

std::string temp_dir(const std::string& name) {
    auto d = std::filesystem::temp_directory_path() / ("swiftkv_test_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(d);
    return d.string();
}

struct Seq {
    std::vector<int> tokens;
    int64_t done = 0;
    std::vector<int32_t> blocks;
};

// Runs all sequences to completion with random step sizes, several sequences per step, and checks
// the logits of every token against the reference.
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
    std::vector<Seq> seqs(4);
    const int lengths[] = {1, 5, 23, 40};
    // Hand out blocks in a shuffled order so physical order differs from logical order.
    std::vector<int32_t> free_blocks(128);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    for (size_t i = 0; i < seqs.size(); ++i) {
        std::uniform_int_distribution<int> tok(0, tiny.spec.vocab - 1);
        for (int t = 0; t < lengths[i]; ++t) seqs[i].tokens.push_back(tok(rng));
        const int64_t nb = (lengths[i] + block_size - 1) / block_size;
        for (int64_t b = 0; b < nb; ++b) {
            seqs[i].blocks.push_back(free_blocks.back());
            free_blocks.pop_back();
        }
    }
    std::vector<std::vector<double>> refs;
    for (auto& s : seqs) refs.push_back(reference_logits(tiny, s.tokens));

    double worst = 0;
    const int64_t V = tiny.spec.vocab;
    while (true) {
        ForwardBatch batch;
        batch.query_start.push_back(0);
        int64_t max_blocks = 0;
        for (auto& s : seqs) max_blocks = std::max<int64_t>(max_blocks, int64_t(s.blocks.size()));
        batch.max_blocks_per_seq = int32_t(max_blocks);
        std::vector<std::pair<size_t, int64_t>> wanted;  // (sequence, position) per logits row
        for (size_t i = 0; i < seqs.size(); ++i) {
            auto& s = seqs[i];
            const int64_t left = int64_t(s.tokens.size()) - s.done;
            if (left == 0 || rng() % 3 == 0) continue;  // some sequences sit a step out
            const int64_t n = std::min<int64_t>(left, 1 + rng() % 9);
            const int32_t first_row = int32_t(batch.tokens.size());
            for (int64_t k = 0; k < n; ++k) {
                batch.tokens.push_back(s.tokens[s.done + k]);
                batch.positions.push_back(int32_t(s.done + k));
            }
            batch.query_start.push_back(int32_t(batch.tokens.size()));
            batch.seq_lens.push_back(int32_t(s.done + n));
            for (int64_t b = 0; b < max_blocks; ++b) {
                batch.block_tables.push_back(b < int64_t(s.blocks.size()) ? s.blocks[b] : 0);
            }
            // Ask for logits of a random suffix of this sequence's rows (possibly none).
            const int64_t keep = rng() % (n + 1);
            for (int64_t k = n - keep; k < n; ++k) {
                batch.logits_indices.push_back(first_row + int32_t(k));
                wanted.push_back({i, s.done + k});
            }
            s.done += n;
        }
        if (batch.tokens.empty()) {
            bool all_done = true;
            for (auto& s : seqs) all_done &= s.done == int64_t(s.tokens.size());
            if (all_done) break;
            continue;
        }
        std::vector<float> logits;
        model.forward(batch, cache.view(), logits);
        EXPECT_EQ(logits.size(), wanted.size() * size_t(V));
        for (size_t r = 0; r < wanted.size(); ++r) {
            const auto& ref = refs[wanted[r].first];
            double scale = 0, err = 0;
            for (int64_t v = 0; v < V; ++v) {
                const double expect = ref[size_t(wanted[r].second * V + v)];
                scale = std::max(scale, std::fabs(expect));
                err = std::max(err, std::fabs(expect - double(logits[r * V + v])));
            }
            worst = std::max(worst, err / scale);
        }
    }
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

TEST(LlamaForward, ShapeMismatchNamesTheTensor) {
    TinySpec s;
    TinyModel m = make_tiny_model(s);
    m.shapes["model.layers.1.mlp.up_proj.weight"] = {s.ffn - 1, s.hidden};
    m.tensors["model.layers.1.mlp.up_proj.weight"].resize(size_t((s.ffn - 1) * s.hidden));
    const std::string dir = temp_dir("shape");
    write_tiny_model(m, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(1);
    try {
        LlamaModel model(*source, *backend, LoadOptions{});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

TEST(LlamaForward, MissingTensorNamesTheTensor) {
    TinySpec s;
    TinyModel m = make_tiny_model(s);
    m.tensors.erase("model.layers.2.self_attn.k_proj.weight");
    m.shapes.erase("model.layers.2.self_attn.k_proj.weight");
    const std::string dir = temp_dir("missing");
    write_tiny_model(m, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(1);
    try {
        LlamaModel model(*source, *backend, LoadOptions{});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model.layers.2.self_attn.k_proj.weight"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}
