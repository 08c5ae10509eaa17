// Backend::sample on every backend, against an independent double-precision statement of the rules
// (documented at cpu::sample in src/backend/cpu/cpu_elementwise.cpp):
//   - greedy (temperature <= 0) is the argmax, lowest index on ties, NaN as -inf;
//   - the allowed set is top_k over the logits (boundary ties kept), then top_p over softmax(logit / T)
//     renormalised over the top_k set (boundary ties kept), then min_p (p >= min_p * max p);
//   - the draw is Gumbel-max over the allowed set with g = -log(-log(noise_uniform(seed, offset, i))).
// Checks: greedy == argmax; top_k = 1 == greedy; draws always in the allowed set; the frequencies over
// many offsets match the restricted, renormalised softmax (chi-square); the draw is the Gumbel-max of
// sampling_noise.h; determinism in (seed, offset) and independence from the batch position and size
// (a device backend splits few long rows over several blocks and fuses many); logit rows of real
// vocabularies (32001, 128256) with peaked, flat, quantised and ulp-spaced values, NaN and -inf.
// The CPU backend computes the set in double, as the rules say, and must match them exactly. A backend
// that computes softmax and the top_p prefix sum in f32 (CUDA) may decide a token within f32 rounding
// of a top_p or min_p boundary the other way: its draws must lie in the set computed with a 1e-4 slack
// on top_p and min_p, and equal the exact rules' draw on >= 99% of rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "backend/sampling_noise.h"
#include "backend_test_util.h"
#include "core/thread_pool.h"

namespace swiftkv::test {
namespace {

const bool kPoolSized = (ThreadPool::set_global_threads(3), true);
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

SampleParams params(float temperature, int32_t top_k = 0, float top_p = 1.0f, float min_p = 0.0f, uint64_t seed = 0,
                    uint64_t offset = 0) {
    SampleParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    p.offset = offset;
    return p;
}

int32_t reference_argmax(const float* l, int64_t vocab) {
    int32_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
        const float v = std::isnan(l[i]) ? -kInf : l[i], bv = std::isnan(l[best]) ? -kInf : l[best];
        if (v > bv) best = int32_t(i);
    }
    return best;
}

// The allowed set (ascending ids) and the probability of each token (0 outside), from the rules.
struct Allowed {
    std::vector<int32_t> tokens;
    std::vector<double> prob;  // over the whole vocabulary, renormalised over `tokens`
};

// slack > 0 widens top_p and min_p (the tolerance for a backend that decides boundaries in f32).
Allowed reference_allowed(const float* l, int64_t vocab, const SampleParams& sp, double slack = 0.0) {
    Allowed a;
    a.prob.assign(size_t(vocab), 0.0);
    const int32_t top = reference_argmax(l, vocab);
    if (!(sp.temperature > 0) || !std::isfinite(l[top])) {
        a.tokens = {top};
        a.prob[size_t(top)] = 1.0;
        return a;
    }
    std::vector<int32_t> finite;
    for (int64_t i = 0; i < vocab; ++i)
        if (std::isfinite(l[i])) finite.push_back(int32_t(i));
    // top_k: sort the finite logits descending.
    std::vector<int32_t> set = finite;
    if (sp.top_k > 0 && size_t(sp.top_k) < finite.size()) {
        std::vector<float> sorted;
        for (int32_t i : finite) sorted.push_back(l[i]);
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        const float kth = sorted[size_t(sp.top_k - 1)];
        set.clear();
        for (int32_t i : finite)
            if (l[i] >= kth) set.push_back(i);
    }
    // Softmax over the set, in double, summed from the most likely token down.
    std::vector<int32_t> by_p = set;
    std::stable_sort(by_p.begin(), by_p.end(), [&](int32_t x, int32_t y) { return l[x] > l[y]; });
    const double t = sp.temperature, z_max = double(l[by_p[0]]) / t;
    double sum = 0;
    std::vector<double> p(size_t(vocab), 0.0);
    for (int32_t i : by_p) sum += (p[size_t(i)] = std::exp(double(l[i]) / t - z_max));
    for (int32_t i : by_p) p[size_t(i)] /= sum;
    double cutoff = 0;
    if (sp.top_p < 1.0f) {
        double cum = 0;
        for (int32_t i : by_p) {
            cum += p[size_t(i)];
            if (cum >= std::min(1.0, double(sp.top_p) + slack)) {
                cutoff = p[size_t(i)];
                break;
            }
        }
    }
    if (sp.min_p > 0.0f)
        cutoff = std::max(cutoff, std::min(double(sp.min_p), 1.0) * p[size_t(by_p[0])] * (1.0 - slack));
    double kept = 0;
    for (int32_t i : set)
        if (p[size_t(i)] >= cutoff) {
            a.tokens.push_back(i);
            kept += p[size_t(i)];
        }
    for (int32_t i : a.tokens) a.prob[size_t(i)] = p[size_t(i)] / kept;
    return a;
}

// The Gumbel-max draw over an allowed set, as sampling_noise.h defines it (f32 arithmetic).
int32_t reference_gumbel(const float* l, const std::vector<int32_t>& allowed, const SampleParams& sp) {
    float best_score = -kInf;
    int32_t best = allowed[0];
    for (int32_t i : allowed) {
        const float u = noise_uniform(sp.seed, sp.offset, uint64_t(i));
        const float score = l[i] / sp.temperature + -std::log(-std::log(u));
        if (score > best_score) {
            best_score = score;
            best = i;
        }
    }
    return best;
}

class BackendSample : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        backend_ = make_backend(GetParam());
        ASSERT_TRUE(backend_) << "backend " << GetParam() << " unavailable";
    }
    // Samples every row of logits [rows, vocab] with its own params.
    std::vector<int32_t> sample(const std::vector<float>& logits, int64_t vocab, const std::vector<SampleParams>& ps) {
        Backend& b = *backend_;
        const int64_t rows = int64_t(ps.size());
        EXPECT_EQ(int64_t(logits.size()), rows * vocab);
        DeviceArray<float> dl(b, logits);
        DeviceArray<SampleParams> dp(b, ps);
        DeviceArray<int32_t> dt(b, size_t(rows));
        b.sample(dl.get(), rows, vocab, dp.get(), dt.get());
        return dt.to_host();
    }
    // One set of logits, sampled once per params.
    std::vector<int32_t> sample_each(const std::vector<float>& logits, const std::vector<SampleParams>& ps) {
        std::vector<float> all;
        for (size_t r = 0; r < ps.size(); ++r) all.insert(all.end(), logits.begin(), logits.end());
        return sample(all, int64_t(logits.size()), ps);
    }
    // Whether the backend decides top_p / min_p boundaries exactly as the rules (in double).
    bool exact_rules() const { return is_cpu(GetParam()); }
    std::unique_ptr<Backend> backend_;
};

// Logit rows of real vocabularies, of five kinds by row: peaked (normal * 4), flat (uniform [-1, 1]),
// quantised (many exact ties), normal with a comb of high tokens, values a few ulps apart with far
// outliers; every seventh row also has NaN and -inf entries.
std::vector<float> model_logits(int64_t rows, int64_t vocab, uint32_t seed) {
    std::vector<float> l(static_cast<size_t>(rows * vocab));
    std::mt19937 eng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
        float* row = l.data() + r * vocab;
        const int kind = int(r % 5);
        for (int64_t i = 0; i < vocab; ++i) {
            switch (kind) {
                case 0: row[i] = 4.0f * normal(eng); break;
                case 1: row[i] = uniform(eng); break;
                case 2: row[i] = std::round(uniform(eng) * 8.0f) * 0.5f; break;
                case 3: row[i] = 2.0f * normal(eng) + (i % 97 == 0 ? 6.0f : 0.0f); break;
                default: row[i] = 1.0f + float(int(uniform(eng) * 200.0f + 201.0f)) * 0x1p-23f; break;
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

// Varied sampling parameters (greedy on some rows), one seed and offset per row.
std::vector<SampleParams> varied_params(int64_t rows, uint32_t seed) {
    std::vector<SampleParams> ps(static_cast<size_t>(rows));
    std::mt19937_64 eng(seed);
    const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f};
    const int32_t top_ks[] = {0, 1, 5, 50, 1000, 5000, -1};
    const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.99f, 0.1f, 0.0f};
    const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.2f};
    for (int64_t r = 0; r < rows; ++r) {
        float t = temps[eng() % 5];
        if (t == 0.0f && r % 3 != 0) t = 0.8f;
        ps[size_t(r)] = params(t, top_ks[eng() % 7], top_ps[eng() % 6], min_ps[eng() % 4], eng(), eng() % 1000);
    }
    return ps;
}

TEST_P(BackendSample, GreedyIsArgmax) {
    Random rng(1);
    const int64_t vocab = 1000;
    std::vector<std::vector<float>> rows;
    for (int i = 0; i < 6; ++i) rows.push_back(rng.floats(size_t(vocab), -10.0f, 10.0f));
    rows[1][17] = rows[1][903] = 50.0f;          // tie: lowest index
    rows[2][0] = kNaN;                           // NaN is -inf
    rows[2][500] = kNaN;
    rows[3].assign(size_t(vocab), -kInf);        // nothing finite: index 0
    rows[3][999] = 1.0f;
    rows[4].assign(size_t(vocab), kNaN);         // all NaN: index 0
    rows[5].assign(size_t(vocab), 2.0f);         // all tied: index 0
    rows[5][0] = kNaN;                           // ... but NaN loses: index 1
    std::vector<float> logits;
    std::vector<SampleParams> ps;
    for (size_t r = 0; r < rows.size(); ++r)
        for (float t : {0.0f, -1.0f}) {
            logits.insert(logits.end(), rows[r].begin(), rows[r].end());
            ps.push_back(params(t, /*top_k=*/5, /*top_p=*/0.5f, /*min_p=*/0.1f, /*seed=*/r, /*offset=*/7));
        }
    const auto tokens = sample(logits, vocab, ps);
    for (size_t j = 0; j < ps.size(); ++j) {
        const auto& row = rows[j / 2];
        EXPECT_EQ(tokens[j], reference_argmax(row.data(), vocab)) << "row " << j / 2;
    }
    EXPECT_EQ(tokens[2], 17);
    EXPECT_EQ(tokens[6], 999);
    EXPECT_EQ(tokens[8], 0);
    EXPECT_EQ(tokens[10], 1);
}

// Rows where no distribution exists fall back to greedy even at temperature > 0.
TEST_P(BackendSample, DegenerateRowsAreGreedy) {
    const int64_t vocab = 6;
    const std::vector<float> logits = {kNaN, kNaN, kNaN, kNaN, kNaN, kNaN,    // all NaN: 0
                                       -kInf, -kInf, -kInf, -kInf, -kInf, -kInf,  // all -inf: 0
                                       1, kInf, 3, kInf, 2, 0,              // +inf: the first +inf
                                       -kInf, kNaN, -kInf, 4, kNaN, -kInf}; // one finite token
    std::vector<SampleParams> ps;
    for (int r = 0; r < 4; ++r) ps.push_back(params(1.0f, 0, 1.0f, 0.0f, 3, uint64_t(r)));
    EXPECT_EQ(sample(logits, vocab, ps), (std::vector<int32_t>{0, 0, 1, 3}));
}

TEST_P(BackendSample, TopK1IsGreedy) {
    Random rng(2);
    const int64_t vocab = 3000;
    std::vector<float> logits;
    std::vector<SampleParams> ps, greedy;
    std::vector<int32_t> expect;
    for (int r = 0; r < 40; ++r) {
        auto row = rng.floats(size_t(vocab), -3.0f, 3.0f);
        if (r % 4 == 1) row[size_t(r)] = kNaN;
        logits.insert(logits.end(), row.begin(), row.end());
        ps.push_back(params(r % 2 ? 5.0f : 0.3f, 1, r % 3 ? 1.0f : 0.3f, r % 5 ? 0.0f : 0.5f, 11, uint64_t(r)));
        expect.push_back(reference_argmax(row.data(), vocab));
    }
    EXPECT_EQ(sample(logits, vocab, ps), expect);
}

// Every draw lies in the allowed set, and is exactly the Gumbel-max of sampling_noise.h over it.
TEST_P(BackendSample, DrawsStayInAllowedSet) {
    Random rng(3);
    struct Case { int64_t vocab; float lo, hi, temperature; int32_t top_k; float top_p, min_p; };
    const Case cases[] = {
        {50, -3, 3, 1.0f, 0, 1.0f, 0.0f},     {50, -3, 3, 0.7f, 10, 1.0f, 0.0f},  {50, -3, 3, 1.3f, 0, 0.8f, 0.0f},
        {50, -3, 3, 1.0f, 0, 1.0f, 0.2f},     {50, -3, 3, 0.5f, 20, 0.9f, 0.05f}, {50, -1, 1, 2.0f, 49, 0.3f, 0.0f},
        {5000, -2, 2, 1.0f, 0, 0.5f, 0.0f},   // a nucleus of thousands of tokens
        {5000, -8, 8, 0.8f, 200, 0.95f, 0.01f}, {5000, -1, 1, 1.0f, 0, 0.999f, 0.0f},
        {5000, -5, 5, 1.0f, 0, 0.0f, 0.0f},   // top_p 0: the most likely token
        {50, -3, 3, 1.0f, 0, 1.0f, 1.5f},     // min_p > 1 acts as 1: the most likely token(s)
        {50, -3, 3, 1.0f, 1000, 1.0f, 0.0f},  // top_k >= vocab: off
    };
    for (const Case& c : cases) {
        for (int variant = 0; variant < 3; ++variant) {
            auto row = rng.floats(size_t(c.vocab), c.lo, c.hi);
            if (variant == 1) {
                // Exact ties everywhere (boundary ties for top_k, top_p and min_p), NaN and -inf entries.
                for (auto& x : row) x = std::round(x * 2.0f) / 2.0f;
                row[3] = kNaN;
                row[7] = -kInf;
            }
            if (variant == 2) row[size_t(c.vocab / 2)] = c.hi + 3.0f;  // one dominant token
            std::vector<SampleParams> ps;
            for (uint64_t off = 0; off < 300; ++off)
                ps.push_back(params(c.temperature, c.top_k, c.top_p, c.min_p, 1234, off * 7919));
            const auto tokens = sample_each(row, ps);
            const Allowed allowed = reference_allowed(row.data(), c.vocab, ps[0]);
            const Allowed loose = exact_rules() ? allowed : reference_allowed(row.data(), c.vocab, ps[0], 1e-4);
            const std::set<int32_t> allowed_set(loose.tokens.begin(), loose.tokens.end());
            std::set<int32_t> seen;
            size_t differ = 0;
            for (size_t j = 0; j < ps.size(); ++j) {
                ASSERT_TRUE(allowed_set.count(tokens[j]))
                    << "token " << tokens[j] << " (logit " << row[size_t(tokens[j])] << ") outside the allowed set of "
                    << loose.tokens.size() << "; vocab " << c.vocab << " T " << c.temperature << " top_k "
                    << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p << " variant " << variant;
                const int32_t expect = reference_gumbel(row.data(), allowed.tokens, ps[j]);
                if (exact_rules()) {
                    ASSERT_EQ(tokens[j], expect) << "offset " << ps[j].offset << "; vocab " << c.vocab << " variant "
                                                 << variant;
                }
                differ += tokens[j] != expect;
                seen.insert(tokens[j]);
            }
            EXPECT_LE(double(differ), 0.01 * double(ps.size()))
                << differ << " draws differ from the exact rules' Gumbel-max; vocab " << c.vocab << " T "
                << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p
                << " variant " << variant;
            if (allowed.tokens.size() > 1 && c.vocab <= 50 && variant != 2) {
                EXPECT_GT(seen.size(), 1u) << "the draws never vary";
            }
        }
    }
}

// Over many offsets the frequencies follow softmax(logits / T) restricted to the allowed set and
// renormalised: Pearson's chi-square against those probabilities, with a loose bound.
TEST_P(BackendSample, FrequenciesMatchSoftmax) {
    const std::vector<float> logits = {1.0f, 2.5f, -0.5f, 2.0f, 0.0f, 1.5f, -3.0f, 2.4f};
    const int64_t vocab = int64_t(logits.size()), draws = 200000;
    struct Case { float temperature; int32_t top_k; float top_p, min_p; };
    for (const Case c : {Case{1.0f, 0, 1.0f, 0.0f}, Case{0.6f, 0, 1.0f, 0.0f}, Case{2.0f, 5, 1.0f, 0.0f},
                         Case{1.0f, 0, 0.8f, 0.0f}, Case{1.5f, 0, 1.0f, 0.15f}, Case{0.8f, 6, 0.95f, 0.02f}}) {
        std::vector<SampleParams> ps;
        for (int64_t i = 0; i < draws; ++i) ps.push_back(params(c.temperature, c.top_k, c.top_p, c.min_p, 99, uint64_t(i)));
        const auto tokens = sample_each(logits, ps);
        std::vector<int64_t> count(size_t(vocab), 0);
        for (int32_t t : tokens) {
            ASSERT_GE(t, 0);
            ASSERT_LT(t, vocab);
            ++count[size_t(t)];
        }
        const Allowed a = reference_allowed(logits.data(), vocab, ps[0]);
        double chi2 = 0;
        for (int64_t i = 0; i < vocab; ++i) {
            const double expected = a.prob[size_t(i)] * double(draws);
            if (expected == 0) {
                EXPECT_EQ(count[size_t(i)], 0) << "token " << i << " is not allowed";
                continue;
            }
            chi2 += (double(count[size_t(i)]) - expected) * (double(count[size_t(i)]) - expected) / expected;
        }
        const double df = double(a.tokens.size()) - 1;
        // Mean df, standard deviation sqrt(2 df): fail only far out in the tail.
        EXPECT_LT(chi2, df + 8.0 * std::sqrt(2.0 * std::max(df, 1.0)) + 10.0)
            << "T " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p
            << ": chi-square " << chi2 << " with " << df << " degrees of freedom";
        EXPECT_GT(a.tokens.size(), 1u);
    }
}

// A draw is a pure function of (seed, offset) and the logits: repeatable, independent of the row's
// position in the batch, and different offsets (or seeds) give different draws.
TEST_P(BackendSample, DeterministicInSeedAndOffset) {
    const int64_t vocab = 1000;
    const std::vector<float> flat(size_t(vocab), 0.0f);
    std::vector<SampleParams> ps;
    for (uint64_t off = 0; off < 200; ++off) ps.push_back(params(1.0f, 0, 1.0f, 0.0f, 5, off));
    const auto first = sample_each(flat, ps);
    EXPECT_EQ(sample_each(flat, ps), first);
    // Reversed batch order: same draws per (seed, offset).
    std::vector<SampleParams> reversed(ps.rbegin(), ps.rend());
    auto back = sample_each(flat, reversed);
    std::reverse(back.begin(), back.end());
    EXPECT_EQ(back, first);
    // One row at a time: same draws.
    for (size_t j = 0; j < 5; ++j) EXPECT_EQ(sample_each(flat, {ps[j]})[0], first[j]);
    // Different offsets differ (uniform over 1000 tokens: ~180 distinct of 200).
    EXPECT_GT(std::set<int32_t>(first.begin(), first.end()).size(), 150u);
    // A different seed gives different draws at the same offsets.
    for (auto& p : ps) p.seed = 6;
    const auto other = sample_each(flat, ps);
    int same = 0;
    for (size_t j = 0; j < ps.size(); ++j) same += other[j] == first[j];
    EXPECT_LT(same, 10);
}

// Greedy over real vocabulary sizes (and 1 and 7), rows of every kind plus all-tied, all-NaN and +inf rows.
TEST_P(BackendSample, GreedyOnModelVocabularies) {
    for (int64_t vocab : {int64_t(1), int64_t(7), int64_t(32001), int64_t(128256)}) {
        const int64_t rows = vocab >= 100000 ? 17 : 64;
        auto logits = model_logits(rows, vocab, uint32_t(vocab));
        std::fill(logits.begin(), logits.begin() + vocab, 2.5f);
        if (rows > 1) std::fill(logits.begin() + vocab, logits.begin() + 2 * vocab, kNaN);
        if (vocab > 3) logits[size_t(2 * vocab + vocab / 2)] = kInf;
        std::vector<SampleParams> ps;
        for (int64_t r = 0; r < rows; ++r) ps.push_back(params(r % 2 ? 0.0f : -1.0f, 5, 0.5f, 0.1f, uint64_t(r), 3));
        const auto tokens = sample(logits, vocab, ps);
        for (int64_t r = 0; r < rows; ++r)
            EXPECT_EQ(tokens[size_t(r)], reference_argmax(logits.data() + r * vocab, vocab))
                << "vocab " << vocab << ", row " << r;
    }
}

// Varied parameters on real vocabularies: every draw in the (loose) allowed set; draws equal the exact
// rules' Gumbel-max (all of them on the CPU, >= 99% elsewhere); at most 1% outside the exact set.
TEST_P(BackendSample, RulesOnModelVocabularies) {
    int64_t total = 0, same = 0, strict_outside = 0;
    for (int64_t vocab : {int64_t(1000), int64_t(32001), int64_t(128256)}) {
        const int64_t rows = vocab >= 100000 ? 80 : 200;
        const auto logits = model_logits(rows, vocab, uint32_t(vocab) + 1);
        const auto ps = varied_params(rows, uint32_t(vocab) + 2);
        const auto tokens = sample(logits, vocab, ps);
        EXPECT_EQ(sample(logits, vocab, ps), tokens) << "not deterministic, vocab " << vocab;
        for (int64_t r = 0; r < rows; ++r) {
            const float* row = logits.data() + r * vocab;
            const int32_t t = tokens[size_t(r)];
            ASSERT_TRUE(t >= 0 && t < vocab) << t;
            const Allowed exact = reference_allowed(row, vocab, ps[size_t(r)]);
            const Allowed loose = reference_allowed(row, vocab, ps[size_t(r)], 1e-4);
            const SampleParams& p = ps[size_t(r)];
            EXPECT_TRUE(std::binary_search(loose.tokens.begin(), loose.tokens.end(), t))
                << "vocab " << vocab << ", row " << r << ": token " << t << " (logit " << row[t]
                << ") is not allowed; T " << p.temperature << ", top_k " << p.top_k << ", top_p " << p.top_p
                << ", min_p " << p.min_p;
            strict_outside += std::binary_search(exact.tokens.begin(), exact.tokens.end(), t) ? 0 : 1;
            const int32_t expect = p.temperature > 0 ? reference_gumbel(row, exact.tokens, p) : exact.tokens[0];
            same += t == expect;
            if (exact_rules()) {
                EXPECT_EQ(t, expect) << "vocab " << vocab << ", row " << r;
            }
            ++total;
        }
    }
    EXPECT_GE(double(same), 0.99 * double(total)) << same << " of " << total << " rows draw the exact rules' token";
    EXPECT_LE(double(strict_outside), 0.01 * double(total));
}

// A row's draw does not depend on how many rows are sampled with it: a few rows of a 128256 vocabulary
// (a device backend splits each over several blocks) against 300 copies (one block per row).
TEST_P(BackendSample, BatchSizeDoesNotChangeDraws) {
    const int64_t vocab = 128256, few = 8, many = 300;
    const auto logits = model_logits(few, vocab, 77);
    auto ps = varied_params(few, 78);
    for (auto& p : ps)
        if (p.temperature == 0.0f) p.temperature = 1.0f;
    std::vector<float> big;
    std::vector<SampleParams> big_ps;
    for (int64_t r = 0; r < many; ++r) {
        big.insert(big.end(), logits.begin() + (r % few) * vocab, logits.begin() + (r % few + 1) * vocab);
        big_ps.push_back(ps[size_t(r % few)]);
    }
    const auto a = sample(logits, vocab, ps);
    const auto b = sample(big, vocab, big_ps);
    for (int64_t r = 0; r < many; ++r) EXPECT_EQ(b[size_t(r)], a[size_t(r % few)]) << "row " << r;
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendSample, ::testing::ValuesIn(all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
