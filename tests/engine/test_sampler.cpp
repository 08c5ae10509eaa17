#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "engine/sampler.h"

using namespace swiftkv;

namespace {
std::vector<float> logits_of(std::initializer_list<float> v) { return std::vector<float>(v); }
}  // namespace

TEST(Sampler, GreedyIsArgmax) {
    SamplingParams p;
    Sampler s(p, {});
    auto l = logits_of({0.1f, 3.0f, -1.0f, 2.9f});
    EXPECT_EQ(s.sample(l.data(), 4), 1);
}

TEST(Sampler, SameSeedSameTokens) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 42;
    std::vector<int32_t> a, b;
    for (auto* out : {&a, &b}) {
        Sampler s(p, {});
        for (int i = 0; i < 200; ++i) {
            auto l = logits_of({0.0f, 0.5f, 1.0f, 0.2f, -0.3f});
            out->push_back(s.sample(l.data(), 5));
        }
    }
    EXPECT_EQ(a, b);
}

TEST(Sampler, TemperatureSamplingFollowsSoftmax) {
    SamplingParams p;
    p.temperature = 0.5f;
    p.seed = 7;
    Sampler s(p, {});
    std::map<int, int> counts;
    const int n = 40000;
    for (int i = 0; i < n; ++i) {
        auto l = logits_of({0.0f, 0.5f, 1.0f});
        counts[s.sample(l.data(), 3)]++;
    }
    // softmax([0, 1, 2]) = [0.0900, 0.2447, 0.6652]
    EXPECT_NEAR(counts[0] / double(n), 0.0900, 0.01);
    EXPECT_NEAR(counts[1] / double(n), 0.2447, 0.01);
    EXPECT_NEAR(counts[2] / double(n), 0.6652, 0.01);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
    for (int mode = 0; mode < 3; ++mode) {
        SamplingParams p;
        p.temperature = 1.0f;
        p.seed = 1;
        if (mode == 0) p.top_k = 1;
        if (mode == 1) p.top_p = 0.01f;
        if (mode == 2) p.min_p = 0.99f;
        Sampler s(p, {});
        for (int i = 0; i < 100; ++i) {
            auto l = logits_of({1.0f, 1.5f, 0.9f, 1.4f});
            EXPECT_EQ(s.sample(l.data(), 4), 1) << mode;
        }
    }
}

TEST(Sampler, TopPKeepsTheNucleus) {
    // probabilities ~ [0.6652, 0.2447, 0.0900]: top_p 0.8 keeps tokens 2 and 1 only.
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = 0.8f;
    p.seed = 3;
    Sampler s(p, {});
    for (int i = 0; i < 2000; ++i) {
        auto l = logits_of({0.0f, 1.0f, 2.0f});
        EXPECT_NE(s.sample(l.data(), 3), 0);
    }
}

TEST(Sampler, PenaltiesChangeTheChoice) {
    SamplingParams p;
    p.repetition_penalty = 2.0f;
    Sampler rep(p, {1});
    auto l = logits_of({1.0f, 1.5f});  // token 1 seen in the prompt: 1.5 / 2 = 0.75 < 1.0
    EXPECT_EQ(rep.sample(l.data(), 2), 0);

    SamplingParams q;
    q.frequency_penalty = 0.3f;
    Sampler freq(q, {});
    freq.accept(1);
    freq.accept(1);
    auto l2 = logits_of({1.0f, 1.5f});  // 1.5 - 0.6 = 0.9 < 1.0
    EXPECT_EQ(freq.sample(l2.data(), 2), 0);

    SamplingParams r;
    r.presence_penalty = 0.6f;
    Sampler pres(r, {});
    pres.accept(1);
    auto l3 = logits_of({1.0f, 1.5f});
    EXPECT_EQ(pres.sample(l3.data(), 2), 0);
}

TEST(Sampler, RejectsOutOfRangeParameters) {
    auto bad = [](auto mutate) {
        SamplingParams p;
        mutate(p);
        EXPECT_THROW(p.validate(), Error);
    };
    bad([](SamplingParams& p) { p.temperature = -1; });
    bad([](SamplingParams& p) { p.temperature = NAN; });
    bad([](SamplingParams& p) { p.top_p = 0; });
    bad([](SamplingParams& p) { p.top_p = 1.5f; });
    bad([](SamplingParams& p) { p.top_k = -2; });
    bad([](SamplingParams& p) { p.min_p = 2; });
    bad([](SamplingParams& p) { p.repetition_penalty = 0; });
    bad([](SamplingParams& p) { p.frequency_penalty = 3; });
    bad([](SamplingParams& p) { p.presence_penalty = -3; });
}

TEST(Sampler, LogProbIsLogSoftmax) {
    auto l = logits_of({0.0f, 1.0f, 2.0f});
    EXPECT_NEAR(Sampler::log_prob(l.data(), 3, 2), std::log(0.66524096), 1e-6);
}
