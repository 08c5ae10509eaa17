// Engine on the real default model: continuous batching must not change what a request gets.
// Each request's greedy continuation equals the single-request Engine's, however requests are mixed,
// chunked, prefix-cached or preempted; n > 1, seeds, stops and aborts behave as the API promises;
// the KV pool is empty again when idle.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/engine.h"

using namespace swiftkv;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Collected {
    std::map<std::pair<uint64_t, int>, std::vector<int32_t>> tokens;
    std::map<std::pair<uint64_t, int>, std::string> text, reason;
    std::vector<int32_t> toks(uint64_t id, int i) { return tokens[std::make_pair(id, i)]; }
    std::string txt(uint64_t id, int i) { return text[std::make_pair(id, i)]; }
    std::string why(uint64_t id, int i) { return reason[std::make_pair(id, i)]; }
    ChoiceCallback callback() {
        return [this](const ChoiceEvent& e) {
            auto key = std::make_pair(e.request_id, e.index);
            auto& t = tokens[key];
            t.insert(t.end(), e.tokens.begin(), e.tokens.end());
            text[key] += e.text;
            if (e.finished) reason[key] = e.finish_reason;
        };
    }
};

const char* kTexts[] = {
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List three colors of the rainbow:",
};

class EngineBatchingTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!std::filesystem::exists(kModel)) return;
        EngineOptions o;
        o.model.path = kModel;
        o.threads = 2;
        o.context_length = 512;
        o.max_num_seqs = 1;  // one request at a time, nothing cached or overlapped: the reference
        o.prefix_caching = false;
        o.overlap = false;
        reference_ = new Engine(o);
    }
    static void TearDownTestSuite() {
        delete reference_;
        reference_ = nullptr;
    }
    void SetUp() override {
        if (!reference_) GTEST_SKIP() << "default model not fetched";
    }
    static std::unique_ptr<Engine> make(int64_t budget, int64_t kv_tokens, bool prefix = true, int64_t ctx = 512,
                                             bool overlap = true) {
        EngineOptions o;
        o.model.path = kModel;
        o.threads = 2;
        o.context_length = ctx;
        o.kv_cache_tokens = kv_tokens;
        o.max_batched_tokens = budget;
        o.max_num_seqs = 8;
        o.prefix_caching = prefix;
        o.overlap = overlap;
        return std::make_unique<Engine>(o);
    }
    static std::vector<int32_t> greedy_reference(const std::vector<int32_t>& prompt, int64_t n) {
        GenerationRequest r;
        r.prompt = prompt;
        r.max_tokens = n;
        r.ignore_eos = true;
        return reference_->generate(r).tokens;
    }
    static std::vector<int32_t> prompt(const std::string& text) { return reference_->tokenizer().encode(text, true, true); }
    // Queues a greedy request of max_tokens for each of kTexts; returns their ids (prompts: theirs).
    static std::vector<uint64_t> add_greedy_texts(Engine& eng, Collected& got, int64_t max_tokens,
                                                  std::vector<std::vector<int32_t>>& prompts) {
        std::vector<uint64_t> ids;
        for (const char* t : kTexts) {
            GenerationRequest r;
            r.prompt = prompt(t);
            r.max_tokens = max_tokens;
            r.ignore_eos = true;
            prompts.push_back(r.prompt);
            ids.push_back(eng.add_request(r, got.callback()));
        }
        return ids;
    }
    static Engine* reference_;
};
Engine* EngineBatchingTest::reference_ = nullptr;


}  // namespace

TEST_F(EngineBatchingTest, ConcurrentGreedyEqualsSingleRequests) {
    // A budget of 24 tokens forces chunked prefill mixed with decodes.
    auto eng = make(24, 0);
    Collected got;
    std::vector<std::vector<int32_t>> prompts;
    const std::vector<uint64_t> ids = add_greedy_texts(*eng, got, 12, prompts);
    eng->run_until_idle();
    for (size_t i = 0; i < ids.size(); ++i) {
        EXPECT_EQ(got.toks(ids[i], 0), greedy_reference(prompts[i], 12)) << kTexts[i];
        EXPECT_EQ(got.why(ids[i], 0), "length");
    }
    EXPECT_EQ(eng->stats().kv_blocks_used, 0);
    EXPECT_GT(eng->stats().steps, 8);
}

TEST_F(EngineBatchingTest, PrefixCacheHitsGiveTheSameOutput) {
    auto eng = make(256, 0);
    const std::string shared = "You are a helpful assistant. Answer briefly and precisely, in one sentence. ";
    Collected got;
    GenerationRequest a, b;
    a.prompt = prompt(shared + "What is the boiling point of water?");
    b.prompt = prompt(shared + "What is the largest planet?");
    a.max_tokens = b.max_tokens = 8;
    a.ignore_eos = b.ignore_eos = true;
    const uint64_t ia = eng->add_request(a, got.callback());
    eng->run_until_idle();
    const uint64_t ib = eng->add_request(b, got.callback());
    eng->run_until_idle();
    EXPECT_GT(eng->stats().prefix_cache_hit_rate, 0.0);
    EXPECT_EQ(got.toks(ia, 0), greedy_reference(a.prompt, 8));
    EXPECT_EQ(got.toks(ib, 0), greedy_reference(b.prompt, 8));
}

TEST_F(EngineBatchingTest, PreemptionWhenTheKvPoolRunsOut) {
    // 12 blocks of 16 tokens for four requests of ~20-token prompts + 40 tokens each: some must wait
    // or be preempted and recomputed; outputs stay the same.
    auto eng = make(64, 12 * 16, false, 128);
    Collected got;
    std::vector<std::vector<int32_t>> prompts;
    const std::vector<uint64_t> ids = add_greedy_texts(*eng, got, 40, prompts);
    eng->run_until_idle();
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(got.toks(ids[i], 0), greedy_reference(prompts[i], 40));
    EXPECT_GT(eng->stats().preemptions, 0);
    EXPECT_EQ(eng->stats().kv_blocks_used, 0);
}

TEST_F(EngineBatchingTest, NChoicesSeedsStopsAndAbort) {
    auto eng = make(128, 0);
    Collected got;
    GenerationRequest r;
    r.prompt = prompt(kTexts[1]);
    r.max_tokens = 10;
    r.ignore_eos = true;
    r.n = 3;
    r.sampling.temperature = 0.9f;
    r.sampling.seed = 42;
    const uint64_t a = eng->add_request(r, got.callback());
    const uint64_t b = eng->add_request(r, got.callback());  // same seed: same three continuations
    eng->run_until_idle();
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(got.toks(a, i).size(), 10u);
        EXPECT_EQ(got.toks(a, i), got.toks(b, i)) << "choice " << i;
    }
    EXPECT_NE(got.toks(a, 0), got.toks(a, 1)) << "choices use different seeds";

    // Stop string: cut before it, reason stop. Stop token id: included in tokens, reason stop.
    GenerationRequest s;
    s.prompt = prompt(kTexts[0]);
    s.max_tokens = 30;
    const auto ref = greedy_reference(s.prompt, 30);
    const std::string ref_text = reference_->tokenizer().decode(ref);
    s.stop = {ref_text.substr(3, 4)};
    const uint64_t is = eng->add_request(s, got.callback());
    GenerationRequest t = s;
    t.stop.clear();
    t.stop_token_ids = {ref[2]};
    const uint64_t it = eng->add_request(t, got.callback());
    eng->run_until_idle();
    EXPECT_EQ(got.why(is, 0), "stop");
    EXPECT_EQ(got.txt(is, 0), ref_text.substr(0, 3));
    EXPECT_EQ(got.why(it, 0), "stop");
    EXPECT_EQ(got.toks(it, 0), std::vector<int32_t>(ref.begin(), ref.begin() + 3));

    // Abort mid-generation: the callback hears it, blocks are released at once.
    GenerationRequest l = s;
    l.stop.clear();
    l.max_tokens = 200;
    l.ignore_eos = true;
    const uint64_t il = eng->add_request(l, got.callback());
    for (int k = 0; k < 5; ++k) eng->step();
    EXPECT_GT(eng->stats().kv_blocks_used, 0);
    EXPECT_TRUE(eng->abort(il));
    EXPECT_FALSE(eng->abort(il));
    EXPECT_EQ(got.why(il, 0), "abort");
    EXPECT_EQ(eng->stats().kv_blocks_used, 0);
    EXPECT_FALSE(eng->has_work());
}

TEST_F(EngineBatchingTest, BadRequestsAreErrors) {
    auto eng = make(64, 0);
    GenerationRequest r;
    EXPECT_THROW(eng->add_request(r, {}), Error);  // empty prompt
    r.prompt = std::vector<int32_t>(600, 1);
    EXPECT_THROW(eng->add_request(r, {}), Error);  // over the context
    r.prompt = {1, 2, 999999};
    EXPECT_THROW(eng->add_request(r, {}), Error);  // outside the vocabulary
    r.prompt = {1, 2, 3};
    r.sampling.temperature = -1.0f;
    EXPECT_THROW(eng->add_request(r, {}), Error);
    EXPECT_FALSE(eng->has_work());
}

// Prompt logprobs (echo) against llama.cpp: the stored per-position log-probability of each next
// prompt token (scripts/make_oracle_refs.py, llama-cpp-python on the f32 GGUF, which holds exactly the
// Q4_1 weights dequantized). Requests are mixed with ordinary ones and the prompt logprobs run in
// several chunks (budget 64), so row bookkeeping across entries is exercised; max_tokens 0 returns
// the prompt logprobs only, max_tokens 4 also generates, with the same tokens as a plain request.
TEST_F(EngineBatchingTest, PromptLogprobsMatchLlamaCpp) {
    std::ifstream in(std::string(SWIFTKV_SOURCE_DIR) + "/tests/oracle/data/oracle_refs.json");
    ASSERT_TRUE(in.good());
    const nlohmann::json refs = nlohmann::json::parse(in);
    auto eng = make(64, 0);
    Collected plain;
    std::map<uint64_t, std::vector<TokenLogprobs>> got;
    std::map<uint64_t, std::vector<int32_t>> generated;
    std::map<uint64_t, int> prompt_events;
    std::vector<std::pair<uint64_t, const nlohmann::json*>> asked;
    int k = 0;
    for (const auto& p : refs["prompts"]) {
        if (!p.contains("position_stats") || p["position_stats"].is_null()) continue;
        GenerationRequest other;  // an ordinary request beside each one
        other.prompt = prompt(kTexts[k % 4]);
        other.max_tokens = 6;
        other.ignore_eos = true;
        eng->add_request(other, plain.callback());
        GenerationRequest r;
        r.prompt = p["prompt_ids"].get<std::vector<int32_t>>();
        r.prompt_logprobs = true;
        r.logprobs = 2;
        r.max_tokens = (k % 2 == 0) ? 0 : 4;
        r.ignore_eos = true;
        const uint64_t id = eng->add_request(r, [&](const ChoiceEvent& e) {
            if (!e.prompt_logprobs.empty()) {
                got[e.request_id] = e.prompt_logprobs;
                prompt_events[e.request_id]++;
            }
            generated[e.request_id].insert(generated[e.request_id].end(), e.tokens.begin(), e.tokens.end());
        });
        asked.emplace_back(id, &p);
        ++k;
    }
    ASSERT_EQ(asked.size(), 3u);
    eng->run_until_idle();
    for (size_t i = 0; i < asked.size(); ++i) {
        const auto [id, p] = asked[i];
        SCOPED_TRACE((*p)["name"].get<std::string>());
        const auto ids = (*p)["prompt_ids"].get<std::vector<int32_t>>();
        const auto ref = (*p)["position_stats"]["next_token_logprob"].get<std::vector<double>>();
        ASSERT_EQ(prompt_events[id], 1);
        const auto& lp = got[id];
        ASSERT_EQ(lp.size(), ids.size());
        EXPECT_TRUE(std::isnan(lp[0].logprob));
        ASSERT_EQ(ref.size() + 1, ids.size());
        double worst = 0.0;
        for (size_t j = 1; j < ids.size(); ++j) {
            EXPECT_EQ(lp[j].token, ids[j]);
            ASSERT_EQ(lp[j].top.size(), 2u);
            EXPECT_GE(lp[j].top[0].second, lp[j].logprob - 1e-6);
            worst = std::max(worst, std::abs(double(lp[j].logprob) - ref[j - 1]));
        }
        EXPECT_LT(worst, 2e-3);
        if (i % 2 == 0) {
            EXPECT_TRUE(generated[id].empty());
        } else {
            EXPECT_EQ(generated[id], greedy_reference(ids, 4));
        }
    }
    EXPECT_EQ(eng->stats().kv_blocks_used, 0);
    GenerationRequest bad;
    bad.prompt = {1, 2, 3};
    bad.max_tokens = 0;  // 0 needs prompt_logprobs
    EXPECT_THROW(eng->add_request(bad, {}), Error);
}

// A prompt longer than the step budget, alone: its first chunks sample nothing, so with overlap they
// are launched as sample-free steps, and their K/V must still be written (it once was not).
TEST_F(EngineBatchingTest, LonePromptLongerThanTheBudget) {
    const auto p = prompt(kTexts[1]);
    ASSERT_GT(p.size(), 16u);
    auto engine = make(/*budget=*/8, /*kv_tokens=*/2048);
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = 12;
    r.ignore_eos = true;
    EXPECT_EQ(engine->generate(r).tokens, greedy_reference(p, 12));
    EXPECT_GT(engine->stats().overlapped_steps, 0);
}

// Overlapped steps (step k+1 launched before step k's tokens are delivered) change nothing a request
// sees: same tokens, text and finish reasons as synchronous steps, with sampling, stop strings that
// end a choice while the next step is in flight, stop tokens and length limits.
TEST_F(EngineBatchingTest, OverlapChangesNothing) {
    std::map<int, Collected> got;
    std::map<int, std::vector<uint64_t>> ids;
    std::map<int, EngineStats> stats;
    for (int overlap = 0; overlap < 2; ++overlap) {
        auto eng = make(96, 0, true, 512, overlap == 1);
        for (int i = 0; i < 6; ++i) {
            GenerationRequest r;
            r.prompt = prompt(kTexts[i % 4]);
            r.max_tokens = 8 + 5 * i;
            r.sampling.temperature = i % 2 ? 0.8f : 0.0f;
            r.sampling.seed = 7 + i;
            if (i == 2) r.stop = {"a"};
            if (i == 3) r.stop_token_ids = {13};
            ids[overlap].push_back(eng->add_request(r, got[overlap].callback()));
        }
        eng->run_until_idle();
        stats[overlap] = eng->stats();
        EXPECT_EQ(stats[overlap].kv_blocks_used, 0);
    }
    EXPECT_EQ(stats[0].overlapped_steps, 0);
    EXPECT_GT(stats[1].overlapped_steps, 0);
    for (size_t i = 0; i < ids[0].size(); ++i) {
        SCOPED_TRACE("request " + std::to_string(i));
        EXPECT_EQ(got[0].toks(ids[0][i], 0), got[1].toks(ids[1][i], 0));
        EXPECT_EQ(got[0].txt(ids[0][i], 0), got[1].txt(ids[1][i], 0));
        EXPECT_EQ(got[0].why(ids[0][i], 0), got[1].why(ids[1][i], 0));
        EXPECT_FALSE(got[1].why(ids[1][i], 0).empty());
    }
}
