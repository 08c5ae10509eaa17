// SwiftKV exactness on the default model (DESIGN.md section 1): K/V of layers >= L depend only on
// h_L, so a token whose logits nobody needs can skip layers >= L with no approximation. For cuts at
// 25%, 50% and 75% of the layers and AcrossKV group sizes 1, 2, 3 where they divide N - L, the
// survivor path (only logits rows run the later layers) must give the full-student path's logits
// (every token through every layer) for single prompts, several sequences per step, prompts split
// into chunks, mixed prefill + decode steps, and 64 greedy decode steps. L = N must be the base model.
//
// Tolerance: 2e-4 of the row's largest logit. Both paths compute the same values; they differ only
// in how many rows each GEMM and attention call sees, which changes f32 summation order.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "convert/swiftkv_convert.h"
#include "core/error.h"
#include "engine/engine.h"
#include "kv/paged_kv_cache.h"
#include "model/model_source.h"
#include "random_schedule.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr double kRelTol = 2e-4;

struct Cut {
    const char* layers;
    int64_t group;
};

std::string work_dir() {
    static const std::string d = (fs::temp_directory_path() / ("swiftkv_exact_" + std::to_string(::getpid()))).string();
    return d;
}

std::string converted(const Cut& cut, ConvertDType dtype = ConvertDType::BF16) {
    std::string name = std::string(cut.layers) + "_g" + std::to_string(cut.group) + (dtype == ConvertDType::F32 ? "_f32" : "");
    for (auto& ch : name) if (ch == '%') ch = 'p';
    const std::string out = work_dir() + "/" + name;
    if (!fs::exists(out)) {
        ConvertOptions o;
        o.model_path = kModel;
        o.num_kv_layers = cut.layers;
        o.group_size = cut.group;
        o.out_dir = out;
        o.dtype = dtype;  // bf16 halves the disk traffic; the model is loaded as f32 either way
        convert_to_swiftkv(o);
    }
    return out;
}

double rel_error(const float* got, const float* want, int64_t n) {
    double scale = 0, err = 0;
    for (int64_t i = 0; i < n; ++i) {
        scale = std::max(scale, double(std::fabs(want[i])));
        err = std::max(err, double(std::fabs(got[i] - want[i])));
    }
    return err / scale;
}

std::vector<std::vector<int>> test_sequences(const BpeTokenizer& tok) {
    const char* texts[] = {
        "Hi",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again.",
        "<|im_start|>user\nExplain why the sky is blue in two sentences.<|im_end|>\n<|im_start|>assistant\n",
        "def merge_sort(xs):\n    if len(xs) <= 1:\n        return xs\n    mid = len(xs) // 2\n    left = merge_sort(xs[:mid])\n",
    };
    std::vector<std::vector<int>> out;
    for (const char* t : texts) {
        auto ids = tok.encode(t, true, true);
        out.emplace_back(ids.begin(), ids.end());
    }
    // One longer prompt (about 300 tokens) made from the others.
    std::vector<int> longer;
    while (longer.size() < 300) for (auto& s : out) longer.insert(longer.end(), s.begin(), s.end());
    out.push_back(longer);
    return out;
}

class SwiftKVExactness : public ::testing::TestWithParam<Cut> {
protected:
    static void SetUpTestSuite() { fs::create_directories(work_dir()); }
    static void TearDownTestSuite() { fs::remove_all(work_dir()); }
    void SetUp() override {
        if (!fs::exists(kModel)) GTEST_SKIP() << "default model not found at " << kModel;
    }
};

}  // namespace

TEST_P(SwiftKVExactness, SurvivorLogitsEqualFullStudent) {
    const Cut cut = GetParam();
    const std::string dir = converted(cut);
    auto source = ModelSource::open(dir);
    ASSERT_TRUE(source->config().is_swiftkv());
    ASSERT_EQ(source->config().kv_group_size, cut.group);
    auto backend = make_cpu_backend(0);
    LlamaModel model(*source, *backend, LoadOptions{});
    ModelRunner runner(model);
    PagedKvCache cache(*backend, model.config(), 256, 16);
    const auto seqs = test_sequences(load_tokenizer(*source));
    const int64_t V = model.config().vocab;

    // Full student: each sequence alone in one step with logits at every row, so every token runs
    // through every layer.
    std::vector<std::vector<float>> full(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
        const int32_t nb = int32_t((seqs[i].size() + 15) / 16);
        std::vector<int32_t> table(static_cast<size_t>(nb));
        std::iota(table.begin(), table.end(), 0);
        ForwardBatch b = ForwardBatch::with_block_table_width(nb);
        b.add_sequence(seqs[i].data(), 0, int64_t(seqs[i].size()), table, 0);
        runner.forward(b, cache.view(), full[i]);
    }

    // Survivors only, on random schedules: chunks, several sequences per step, decode-like steps.
    double worst = 0;
    int64_t rows = 0;
    for (unsigned seed : {1u, 2u, 3u}) {
        std::mt19937 rng(seed);
        ScheduleOptions opts;
        opts.max_step_tokens = seed == 3 ? 1 : 40;  // seed 3: token-by-token, i.e. all decode steps
        run_random_schedule(model, cache, seqs, rng, [&](size_t s, int64_t pos, const float* logits) {
            worst = std::max(worst, rel_error(logits, full[s].data() + pos * V, V));
            ++rows;
        }, opts);
    }
    std::printf("[swiftkv L=%s g=%lld] %lld survivor rows, worst relative error %.3g\n", cut.layers,
                (long long)cut.group, (long long)rows, worst);
    EXPECT_GT(rows, 50);
    EXPECT_LT(worst, kRelTol);
}

TEST_P(SwiftKVExactness, GreedyDecodeEqualsFullStudent) {
    const Cut cut = GetParam();
    EngineOptions eo;
    eo.model.path = converted(cut);
    eo.context_length = 512;
    Engine engine(eo);
    GenerationRequest req;
    req.prompt = engine.tokenizer().encode("<|im_start|>user\nWrite a short poem about rivers.<|im_end|>\n<|im_start|>assistant\n", true, true);
    req.max_tokens = 64;
    req.ignore_eos = true;
    const auto gen = engine.generate(req);
    ASSERT_EQ(gen.tokens.size(), 64u);
    // Full student over prompt + generation: logits at the positions that produced each token.
    std::vector<int32_t> all = req.prompt;
    all.insert(all.end(), gen.tokens.begin(), gen.tokens.end() - 1);
    std::vector<int32_t> positions;
    for (size_t p = req.prompt.size() - 1; p < all.size(); ++p) positions.push_back(int32_t(p));
    // prompt_logits with every position requested runs every token through every layer.
    std::vector<int32_t> every(all.size());
    for (size_t p = 0; p < all.size(); ++p) every[p] = int32_t(p);
    const auto logits = engine.prompt_logits(all, every);
    const int64_t V = engine.config().vocab;
    for (size_t k = 0; k < gen.tokens.size(); ++k) {
        const float* row = logits.data() + size_t(positions[k]) * V;
        EXPECT_EQ(int32_t(std::max_element(row, row + V) - row), gen.tokens[k]) << "step " << k;
    }
}

TEST_P(SwiftKVExactness, FullStudentSwitchGeneratesTheSameTokens) {
    const Cut cut = GetParam();
    if (std::string(cut.layers) != "50%") GTEST_SKIP() << "checked at the 50% cuts";
    EngineOptions eo;
    eo.model.path = converted(cut);
    eo.context_length = 512;
    eo.max_batched_tokens = 16;  // several chunks: non-final chunks run the later layers too
    Engine survivors(eo);
    eo.full_student = true;
    Engine full(eo);
    GenerationRequest req;
    req.prompt = survivors.tokenizer().encode("Count the colours of the rainbow, then name the brightest star in the night sky:", true, true);
    req.max_tokens = 24;
    req.ignore_eos = true;
    EXPECT_EQ(survivors.generate(req).tokens, full.generate(req).tokens);
}

INSTANTIATE_TEST_SUITE_P(Cuts, SwiftKVExactness,
                         ::testing::Values(Cut{"25%", 1}, Cut{"25%", 2}, Cut{"50%", 1}, Cut{"50%", 3}, Cut{"75%", 1}),
                         [](const auto& info) {
                             std::string n = std::string(info.param.layers) + "_g" + std::to_string(info.param.group);
                             for (auto& c : n) if (c == '%') c = 'p';
                             return n;
                         });

TEST(SwiftKVBase, FullCutIsExactlyTheBaseModel) {
    if (!fs::exists(kModel)) GTEST_SKIP() << "default model not found";
    fs::create_directories(work_dir());
    const std::string dir = converted(Cut{"100%", 1}, ConvertDType::F32);
    EngineOptions base_opts, cut_opts;
    base_opts.model.path = kModel;
    cut_opts.model.path = dir;
    base_opts.context_length = cut_opts.context_length = 256;
    Engine base(base_opts), full_cut(cut_opts);
    EXPECT_FALSE(full_cut.config().is_swiftkv());
    const auto p = base.tokenizer().encode("SwiftKV with L = N is the base model.", true, true);
    const auto a = base.prompt_logits(p, {});
    const auto b = full_cut.prompt_logits(p, {});
    ASSERT_EQ(a.size(), b.size());
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << "logits must be bitwise identical";
    fs::remove_all(work_dir());
}
