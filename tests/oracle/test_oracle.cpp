// swiftkv against llama.cpp on the default model. References come from scripts/make_oracle_refs.py
// (llama-cpp-python, F32 weights identical to our dequantized Q4_1, F32 KV cache); see the JSON's
// "tool_version" and "llama_params". For every prompt (short, long up to 2048 tokens, chat-formatted):
//  - our tokenizer gives llama.cpp's prompt ids;
//  - full-vocabulary last-position logits agree (max abs diff, KL divergence);
//  - 32 greedy tokens agree token for token, unless llama.cpp's own top-2 margin at the first
//    differing step is a near-tie (then the rest of the continuation legitimately differs).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "engine/engine.h"

using namespace swiftkv;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kRefDir = std::string(SWIFTKV_SOURCE_DIR) + "/tests/oracle/data";

// Tolerances (logits of this model span roughly -30..30).
constexpr double kMaxAbsLogitDiff = 1e-3;  // measured: 1.2e-4
constexpr double kMaxKl = 1e-7;  // measured: 1.6e-9
constexpr double kNearTieMargin = 2e-2;

double kl_divergence(const float* p_logits, const float* q_logits, int64_t n) {
    auto log_softmax = [n](const float* x) {
        double m = -1e300;
        for (int64_t i = 0; i < n; ++i) m = std::max(m, double(x[i]));
        double s = 0;
        for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
        std::vector<double> out(n);
        for (int64_t i = 0; i < n; ++i) out[i] = double(x[i]) - m - std::log(s);
        return out;
    };
    auto lp = log_softmax(p_logits), lq = log_softmax(q_logits);
    double kl = 0;
    for (int64_t i = 0; i < n; ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
    return kl;
}

class OracleTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!std::filesystem::exists(kModel)) return;
        std::ifstream in(kRefDir + "/oracle_refs.json");
        refs_ = new nlohmann::json(nlohmann::json::parse(in));
        std::ifstream lf(kRefDir + "/last_logits.f32", std::ios::binary);
        logits_ = new std::vector<char>((std::istreambuf_iterator<char>(lf)), std::istreambuf_iterator<char>());
        EngineOptions o;
        o.model.path = kModel;
        o.context_length = 4096;
        engine_ = new Engine(o);
    }
    static void TearDownTestSuite() {
        delete engine_;
        delete refs_;
        delete logits_;
    }
    void SetUp() override {
        if (engine_ == nullptr) GTEST_SKIP() << "default model not found at " << kModel;
    }
    static Engine* engine_;
    static nlohmann::json* refs_;
    static std::vector<char>* logits_;
};
Engine* OracleTest::engine_ = nullptr;
nlohmann::json* OracleTest::refs_ = nullptr;
std::vector<char>* OracleTest::logits_ = nullptr;

}  // namespace

TEST_F(OracleTest, HasEnoughPrompts) {
    EXPECT_GE((*refs_)["prompts"].size(), 20u);
}

TEST_F(OracleTest, TokenizationMatchesLlamaCpp) {
    for (const auto& p : (*refs_)["prompts"]) {
        const auto ids = engine_->tokenizer().encode(p["text"].get<std::string>(), true, true);
        EXPECT_EQ(ids, p["prompt_ids"].get<std::vector<int32_t>>()) << p["name"];
    }
}

TEST_F(OracleTest, LastLogitsMatchLlamaCpp) {
    const int64_t V = engine_->config().vocab;
    double worst_abs = 0, worst_kl = 0;
    for (const auto& p : (*refs_)["prompts"]) {
        const auto ids = p["prompt_ids"].get<std::vector<int32_t>>();
        const auto ours = engine_->prompt_logits(ids, {int32_t(ids.size()) - 1});
        const size_t offset = p["logits_offset"].get<size_t>();
        ASSERT_LE(offset + size_t(V) * 4, logits_->size());
        const float* ref = reinterpret_cast<const float*>(logits_->data() + offset);
        double max_abs = 0;
        for (int64_t i = 0; i < V; ++i) max_abs = std::max(max_abs, std::fabs(double(ours[i]) - ref[i]));
        const double kl = kl_divergence(ref, ours.data(), V);
        worst_abs = std::max(worst_abs, max_abs);
        worst_kl = std::max(worst_kl, kl);
        EXPECT_LT(max_abs, kMaxAbsLogitDiff) << p["name"] << " (" << ids.size() << " tokens)";
        EXPECT_LT(kl, kMaxKl) << p["name"];
    }
    std::printf("[oracle] %zu prompts: worst max|logit diff| = %.3g, worst KL(llama.cpp || swiftkv) = %.3g\n",
                (*refs_)["prompts"].size(), worst_abs, worst_kl);
}

TEST_F(OracleTest, GreedyContinuationsMatchLlamaCpp) {
    int exact = 0, near_tie = 0;
    for (const auto& p : (*refs_)["prompts"]) {
        GenerationRequest req;
        req.prompt = p["prompt_ids"].get<std::vector<int32_t>>();
        const auto expect = p["greedy_ids"].get<std::vector<int32_t>>();
        const auto margins = p["greedy_top2_margin"].get<std::vector<double>>();
        req.max_tokens = int64_t(expect.size());
        req.ignore_eos = true;
        const auto got = engine_->generate(req).tokens;
        ASSERT_EQ(got.size(), expect.size()) << p["name"];
        size_t first_diff = 0;
        while (first_diff < got.size() && got[first_diff] == expect[first_diff]) ++first_diff;
        if (first_diff == got.size()) {
            ++exact;
        } else {
            // Allowed only where llama.cpp itself was at a near-tie.
            EXPECT_LT(margins[first_diff], kNearTieMargin)
                << p["name"] << ": diverges at step " << first_diff << " (ours " << got[first_diff] << ", llama.cpp "
                << expect[first_diff] << ", llama.cpp top-2 margin " << margins[first_diff] << ")";
            ++near_tie;
            std::printf("[oracle] %s: diverges at step %zu at a near-tie (llama.cpp top-2 margin %.4g)\n",
                        p["name"].get<std::string>().c_str(), first_diff, margins[first_diff]);
        }
    }
    std::printf("[oracle] greedy 32-token continuations: %d identical, %d diverging at a near-tie\n", exact, near_tie);
}
