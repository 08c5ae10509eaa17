// Engine behaviour on the real default model: the batched forward gives the same logits however a
// prompt is split into steps or batched with others, generation honours its limits and stop rules.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "engine/engine.h"

using namespace swiftkv;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";

class EngineTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!std::filesystem::exists(kModel)) return;
        EngineOptions o;
        o.model.path = kModel;
        o.context_length = 1024;
        engine_ = new Engine(o);
        EngineOptions chunked = o;
        chunked.max_batched_tokens = 7;
        chunked_ = new Engine(chunked);
    }
    static void TearDownTestSuite() {
        delete engine_;
        delete chunked_;
    }
    void SetUp() override {
        if (engine_ == nullptr) GTEST_SKIP() << "default model not found at " << kModel;
    }
    std::vector<int32_t> encode(const std::string& s) { return engine_->tokenizer().encode(s, true, true); }
    static Engine* engine_;
    static Engine* chunked_;
};
Engine* EngineTest::engine_ = nullptr;
Engine* EngineTest::chunked_ = nullptr;

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
}

std::vector<float> row(const std::vector<float>& all, int64_t r, int64_t vocab) {
    return std::vector<float>(all.begin() + r * vocab, all.begin() + (r + 1) * vocab);
}

}  // namespace

TEST_F(EngineTest, BatchedSequencesMatchSeparateRuns) {
    std::vector<std::vector<int32_t>> prompts = {encode("The capital of France is"),
                                                 encode("def fibonacci(n):\n    "),
                                                 encode("Once upon a time, in a land far, far away, there lived a")};
    auto batched = engine_->batch_last_logits(prompts);
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto alone = engine_->prompt_logits(prompts[i], {int32_t(prompts[i].size()) - 1});
        EXPECT_LT(max_abs_diff(batched[i], alone), 1e-3) << i;
    }
}

TEST_F(EngineTest, ChunkedPrefillMatchesOneStep) {
    auto p = encode("Paged attention splits the key-value cache into fixed-size blocks, so that memory is "
                    "allocated on demand and shared between sequences.");
    const int32_t last = int32_t(p.size()) - 1;
    auto one = engine_->prompt_logits(p, {last});
    auto chunked = chunked_->prompt_logits(p, {last});
    EXPECT_LT(max_abs_diff(one, chunked), 1e-3);
}

TEST_F(EngineTest, AllPositionLogitsMatchPrefixRuns) {
    auto p = encode("A quick brown fox jumps over the lazy dog.");
    const int64_t V = engine_->config().vocab;
    auto all = engine_->prompt_logits(p, {});
    ASSERT_EQ(all.size(), p.size() * size_t(V));
    for (size_t i : {size_t(0), p.size() / 2, p.size() - 1}) {
        std::vector<int32_t> prefix(p.begin(), p.begin() + i + 1);
        auto last = engine_->prompt_logits(prefix, {int32_t(i)});
        EXPECT_LT(max_abs_diff(row(all, int64_t(i), V), last), 1e-3) << i;
    }
}

TEST_F(EngineTest, GreedyDecodeAgreesWithPrefill) {
    GenerationRequest req;
    req.prompt = encode("The three primary colors are");
    req.max_tokens = 12;
    req.ignore_eos = true;
    auto r = engine_->generate(req);
    ASSERT_EQ(r.tokens.size(), 12u);
    EXPECT_EQ(r.finish_reason, "length");
    // Re-scoring prompt + generation in one prefill must pick the same tokens at each step.
    std::vector<int32_t> all = req.prompt;
    all.insert(all.end(), r.tokens.begin(), r.tokens.end() - 1);
    std::vector<int32_t> positions;
    for (size_t i = req.prompt.size() - 1; i < all.size(); ++i) positions.push_back(int32_t(i));
    auto logits = engine_->prompt_logits(all, positions);
    const int64_t V = engine_->config().vocab;
    for (size_t k = 0; k < r.tokens.size(); ++k) {
        auto l = row(logits, int64_t(k), V);
        EXPECT_EQ(int32_t(std::max_element(l.begin(), l.end()) - l.begin()), r.tokens[k]) << k;
    }
}

TEST_F(EngineTest, StopStringCutsTheText) {
    GenerationRequest req;
    req.prompt = encode("1, 2, 3, 4, 5,");
    req.max_tokens = 40;
    req.ignore_eos = true;
    auto full = engine_->generate(req);
    ASSERT_GE(full.text.size(), 6u);
    const std::string stop = full.text.substr(3, 3);
    req.stop = {stop};
    std::string streamed;
    auto cut = engine_->generate(req, [&](std::string_view t) { streamed += t; return true; });
    EXPECT_EQ(cut.finish_reason, "stop");
    EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
    EXPECT_EQ(streamed, cut.text);
}

TEST_F(EngineTest, SeededSamplingIsReproducible) {
    GenerationRequest req;
    req.prompt = encode("Tell me a story:");
    req.max_tokens = 20;
    req.sampling.temperature = 0.9f;
    req.sampling.top_p = 0.95f;
    req.sampling.seed = 1234;
    auto a = engine_->generate(req);
    auto b = engine_->generate(req);
    EXPECT_EQ(a.tokens, b.tokens);
    req.sampling.seed = 4321;
    auto c = engine_->generate(req);
    EXPECT_NE(a.tokens, c.tokens);
}

TEST_F(EngineTest, RejectsBadRequestsWithoutSideEffects) {
    GenerationRequest req;
    EXPECT_THROW(engine_->generate(req), Error);  // empty prompt
    req.prompt.assign(2000, 100);                 // longer than the 1024-token context
    EXPECT_THROW(engine_->generate(req), Error);
    req.prompt = {100, 200, 999999};              // id outside the vocabulary
    EXPECT_THROW(engine_->generate(req), Error);
    req.prompt = {100};
    req.sampling.top_p = 0;
    EXPECT_THROW(engine_->generate(req), Error);
    EXPECT_EQ(engine_->stats().kv_blocks_used, 0);  // nothing leaked
    req.sampling.top_p = 1;
    req.max_tokens = 3;
    EXPECT_EQ(engine_->generate(req).tokens.size(), 3u);
}

TEST_F(EngineTest, ChatTemplateProducesChatML) {
    ASSERT_TRUE(engine_->has_chat_template());
    nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", "Hi"}}});
    const std::string text = engine_->apply_chat_template(messages, true);
    EXPECT_NE(text.find("<|im_start|>user\nHi<|im_end|>\n"), std::string::npos);
    EXPECT_TRUE(text.ends_with("<|im_start|>assistant\n"));
}
