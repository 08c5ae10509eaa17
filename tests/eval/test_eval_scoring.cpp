// The evaluation scorers on tiny random models, against quantities computed here by hand from
// LlamaModel::forward directly (one sequence per step, logits at every position):
//  - the batched scorer's logits rows equal scoring each sequence alone (any packing, block size,
//    capped KV cache, full-student rows), and for a SwiftKV model the survivor rows equal the
//    full-student rows;
//  - perplexity equals exp(mean NLL) over llama-perplexity's scored positions, with its error formula;
//  - KL of a model against itself is exactly 0 with 100% top-1 agreement; against another model the
//    mean, percentiles and agreement equal the hand computation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "convert/swiftkv_convert.h"
#include "core/error.h"
#include "eval/batch_scorer.h"
#include "eval/eval_model.h"
#include "eval/eval_stats.h"
#include "eval/perplexity.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "model/model_source.h"
#include "tiny_model.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& name) {
    auto d = fs::temp_directory_path() / ("swiftkv_eval_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    return d.string();
}

struct Loaded {
    std::string dir;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<LlamaModel> model;
    ~Loaded() {
        model.reset();
        if (!dir.empty()) fs::remove_all(dir);
    }
};

std::unique_ptr<Loaded> load_tiny(const TinySpec& spec, const std::string& name) {
    auto l = std::make_unique<Loaded>();
    l->dir = temp_dir(name);
    write_tiny_model(make_tiny_model(spec), l->dir);
    auto source = ModelSource::open(l->dir);
    l->backend = make_cpu_backend(2);
    l->model = std::make_unique<LlamaModel>(*source, *l->backend, LoadOptions{});
    return l;
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int64_t vocab) {
    std::uniform_int_distribution<int32_t> d(0, int32_t(vocab) - 1);
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (auto& t : out) t = d(rng);
    return out;
}

// Logits [n, vocab] at every position of one sequence, in one step on a fresh cache.
std::vector<float> logits_alone(LlamaModel& model, const std::vector<int32_t>& tokens) {
    const int64_t n = int64_t(tokens.size());
    PagedKvCache cache(model.backend(), model.config(), (n + 15) / 16, 16);
    std::vector<int32_t> table(size_t((n + 15) / 16));
    std::iota(table.begin(), table.end(), 0);
    ForwardBatch b = ForwardBatch::with_block_table_width(int64_t(table.size()));
    b.add_sequence(tokens.data(), 0, n, table, 0);
    std::vector<float> logits;
    ModelRunner(model, RunnerOptions{false}).forward(b, cache.view(), logits);
    return logits;
}

// Log-softmax of each row, in double.
std::vector<double> log_softmax_rows(const float* x, int64_t rows, int64_t V) {
    std::vector<double> out(size_t(rows * V));
    for (int64_t r = 0; r < rows; ++r) {
        double m = -1e300;
        for (int64_t v = 0; v < V; ++v) m = std::max(m, double(x[r * V + v]));
        double s = 0;
        for (int64_t v = 0; v < V; ++v) s += std::exp(double(x[r * V + v]) - m);
        for (int64_t v = 0; v < V; ++v) out[size_t(r * V + v)] = double(x[r * V + v]) - m - std::log(s);
    }
    return out;
}

std::vector<ScoreRequest> random_requests(std::mt19937& rng, int64_t vocab, int count) {
    std::vector<ScoreRequest> reqs;
    std::uniform_int_distribution<int> len(1, 45);
    for (int i = 0; i < count; ++i) {
        ScoreRequest r;
        r.tokens = random_tokens(rng, len(rng), vocab);
        r.first_row = std::uniform_int_distribution<int>(0, int(r.tokens.size()) - 1)(rng);
        reqs.push_back(std::move(r));
    }
    return reqs;
}

// Every request's handed-on rows, as log-probabilities.
std::vector<std::vector<double>> score_all(LlamaModel& model, const std::vector<ScoreRequest>& reqs,
                                           const BatchScorerOptions& o, int64_t* steps = nullptr) {
    BatchScorer scorer(model, o);
    std::vector<std::vector<double>> out(reqs.size());
    size_t expected = 0;
    scorer.score(reqs, [&](size_t i, const float* logits, int64_t rows) {
        EXPECT_EQ(i, expected++);  // in request order
        EXPECT_EQ(rows, int64_t(reqs[i].tokens.size()) - reqs[i].first_row);
        out[i] = log_softmax_rows(logits, rows, model.config().vocab);
    });
    EXPECT_EQ(expected, reqs.size());
    if (steps) *steps = scorer.forward_steps();
    return out;
}

// Largest difference relative to the largest magnitude (the tiny models' log-probabilities reach
// hundreds; f32 results differ in the last bits when the GEMMs see different row counts).
double max_rel_diff(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
    double worst = 0, scale = 1;
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].size(), b[i].size());
        for (size_t j = 0; j < std::min(a[i].size(), b[i].size()); ++j) {
            worst = std::max(worst, std::fabs(a[i][j] - b[i][j]));
            scale = std::max(scale, std::fabs(b[i][j]));
        }
    }
    return worst / scale;
}

}  // namespace

TEST(BatchScorer, BatchedEqualsEachSequenceAlone) {
    TinySpec spec;
    auto tiny = load_tiny(spec, "batched");
    std::mt19937 rng(7);
    const auto reqs = random_requests(rng, spec.vocab, 24);
    // Alone: each request through LlamaModel::forward by itself, logits at every position.
    std::vector<std::vector<double>> alone;
    for (const auto& r : reqs) {
        const auto logits = logits_alone(*tiny->model, r.tokens);
        const int64_t rows = int64_t(r.tokens.size()) - r.first_row;
        alone.push_back(log_softmax_rows(logits.data() + r.first_row * spec.vocab, rows, spec.vocab));
    }
    struct Case {
        int64_t batch_tokens, block_size, kv_cache_tokens, max_seqs;
        bool all_rows;
    };
    for (const Case& c : {Case{4096, 16, 0, 256, false}, Case{64, 16, 0, 256, false}, Case{1, 16, 0, 256, false},
                          Case{100, 1, 0, 256, false}, Case{4096, 16, 96, 256, false}, Case{4096, 16, 0, 3, false},
                          Case{80, 4, 0, 256, true}}) {
        BatchScorerOptions o;
        o.batch_tokens = c.batch_tokens;
        o.block_size = c.block_size;
        o.kv_cache_tokens = c.kv_cache_tokens;
        o.max_seqs = c.max_seqs;
        o.all_rows = c.all_rows;
        int64_t steps = 0;
        const auto got = score_all(*tiny->model, reqs, o, &steps);
        EXPECT_LT(max_rel_diff(got, alone), 1e-5) << "batch_tokens " << c.batch_tokens << " block " << c.block_size
                                                  << " kv " << c.kv_cache_tokens << " all_rows " << c.all_rows;
        if (c.batch_tokens == 1) {
            EXPECT_EQ(steps, int64_t(reqs.size()));
        }
        if (c.batch_tokens == 4096 && c.kv_cache_tokens == 0 && c.max_seqs == 256) {
            EXPECT_EQ(steps, 1);
        }
        if (c.max_seqs == 3) {
            EXPECT_EQ(steps, (int64_t(reqs.size()) + 2) / 3);
        }
    }
}

TEST(BatchScorer, RejectsMalformedRequests) {
    TinySpec spec;
    auto tiny = load_tiny(spec, "bad");
    BatchScorer scorer(*tiny->model, BatchScorerOptions{});
    auto none = [](size_t, const float*, int64_t) {};
    EXPECT_THROW(scorer.score({ScoreRequest{{}, 0}}, none), Error);
    EXPECT_THROW(scorer.score({ScoreRequest{{1, 2}, 2}}, none), Error);
    EXPECT_THROW(scorer.score({ScoreRequest{{1, int32_t(spec.vocab)}, 0}}, none), Error);
    BatchScorerOptions small;
    small.kv_cache_tokens = 16;
    BatchScorer capped(*tiny->model, small);
    EXPECT_THROW(capped.score({ScoreRequest{std::vector<int32_t>(17, 1), 0}}, none), Error);
}

TEST(BatchScorer, SwiftKvSurvivorRowsEqualFullStudent) {
    // A SwiftKV student of a tiny model (L = 1 of 3, AcrossKV g = 2): the suffix rows of the survivor
    // path (the other tokens skip layers >= L) must equal the full-student path's (every token, every layer).
    TinySpec spec;
    const std::string base = temp_dir("skv_base"), student = temp_dir("skv_student");
    write_tiny_model(make_tiny_model(spec), base);
    ConvertOptions co;
    co.model_path = base;
    co.num_kv_layers = "1";
    co.group_size = 2;
    co.out_dir = student;
    co.dtype = ConvertDType::F32;
    co.allow_no_tokenizer = true;
    convert_to_swiftkv(co);
    {
        auto source = ModelSource::open(student);
        auto backend = make_cpu_backend(2);
        LlamaModel model(*source, *backend, LoadOptions{});
        ASSERT_TRUE(model.config().is_swiftkv());
        std::mt19937 rng(11);
        const auto reqs = random_requests(rng, spec.vocab, 16);
        BatchScorerOptions o;
        o.batch_tokens = 200;
        const auto survivors = score_all(model, reqs, o);
        o.all_rows = true;
        const auto full = score_all(model, reqs, o);
        EXPECT_LT(max_rel_diff(survivors, full), 1e-5);
    }
    fs::remove_all(base);
    fs::remove_all(student);
}

TEST(Perplexity, EqualsExpMeanNllByHand) {
    TinySpec spec;
    auto tiny = load_tiny(spec, "ppl");
    std::mt19937 rng(3);
    const int64_t ctx = 16, first = ctx / 2;
    const auto tokens = random_tokens(rng, 5 * ctx + 7, spec.vocab);  // 5 whole windows, a tail dropped
    PerplexityOptions o;
    o.ctx = ctx;
    o.scorer.batch_tokens = 40;  // two windows per step
    int64_t progress_calls = 0;
    o.on_progress = [&](const PerplexityProgress& p) {
        ++progress_calls;
        EXPECT_EQ(p.chunks_total, 5);
    };
    const PerplexityResult r = evaluate_perplexity(*tiny->model, tokens, o);

    std::vector<double> nll;
    std::vector<double> chunk_ppl;
    for (int64_t c = 0; c < 5; ++c) {
        const std::vector<int32_t> w(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
        const auto logits = logits_alone(*tiny->model, w);
        const auto lp = log_softmax_rows(logits.data(), ctx, spec.vocab);
        double s = 0;
        for (int64_t p = first; p <= ctx - 2; ++p) {
            nll.push_back(-lp[size_t(p * spec.vocab + w[size_t(p + 1)])]);
            s += nll.back();
        }
        chunk_ppl.push_back(std::exp(s / double(ctx - 1 - first)));
    }
    double mean = 0, sq = 0;
    for (double v : nll) mean += v;
    mean /= double(nll.size());
    for (double v : nll) sq += v * v;
    const double n = double(nll.size());
    const double ppl = std::exp(mean);
    const double err = ppl * std::sqrt((sq / n - mean * mean) / (n - 1));

    EXPECT_EQ(r.chunks, 5);
    EXPECT_EQ(r.tokens_scored, 5 * (ctx - 1 - first));
    EXPECT_EQ(int64_t(nll.size()), r.tokens_scored);
    EXPECT_NEAR(r.nll, mean, 1e-5);
    EXPECT_NEAR(r.ppl, ppl, 1e-5 * ppl);
    EXPECT_NEAR(r.ppl_stderr, err, 1e-4 * err);
    ASSERT_EQ(r.chunk_ppl.size(), chunk_ppl.size());
    for (size_t i = 0; i < chunk_ppl.size(); ++i) EXPECT_NEAR(r.chunk_ppl[i], chunk_ppl[i], 1e-5 * chunk_ppl[i]);
    EXPECT_EQ(progress_calls, 3);
    EXPECT_EQ(r.tokens_processed, 5 * ctx);

    // --max-chunks takes the first windows only.
    o.on_progress = nullptr;
    o.max_chunks = 2;
    const PerplexityResult two = evaluate_perplexity(*tiny->model, tokens, o);
    EXPECT_EQ(two.chunks, 2);
    EXPECT_NEAR(two.chunk_ppl[1], chunk_ppl[1], 1e-5 * chunk_ppl[1]);
    // Too short a text, too small a window.
    o.max_chunks = 0;
    EXPECT_THROW(evaluate_perplexity(*tiny->model, std::vector<int32_t>(tokens.begin(), tokens.begin() + 10), o), Error);
    o.ctx = 3;
    EXPECT_THROW(evaluate_perplexity(*tiny->model, tokens, o), Error);
}

TEST(Perplexity, WindowsReplaceTheFirstTokenByBos) {
    std::vector<int32_t> t(40);
    for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(10 + i);
    const auto w = perplexity_windows(t, 16, 0, 2, 1);
    ASSERT_EQ(w.size(), 2u);
    EXPECT_EQ(w[0].tokens[0], 1);
    EXPECT_EQ(w[1].tokens[0], 1);
    EXPECT_EQ(w[1].tokens[1], 27);
    EXPECT_EQ(w[1].first_row, 8);
    const auto plain = perplexity_windows(t, 16, 1, 2);
    EXPECT_EQ(plain[0].tokens[0], 26);
}

TEST(KlDivergence, AgainstItselfIsZero) {
    TinySpec spec;
    auto a = load_tiny(spec, "kl_a");
    auto b = load_tiny(spec, "kl_b");  // the same weights, loaded separately
    std::mt19937 rng(5);
    const auto tokens = random_tokens(rng, 4 * 24, spec.vocab);
    PerplexityOptions o;
    o.ctx = 24;
    o.scorer.batch_tokens = 48;
    const KlResult k = evaluate_kl_divergence(*a->model, *b->model, tokens, o);
    EXPECT_EQ(k.tokens, 4 * (24 - 1 - 12));
    EXPECT_EQ(k.kl_mean, 0.0);
    EXPECT_EQ(k.kl_max, 0.0);
    EXPECT_EQ(k.top1_agreement, 1.0);
    EXPECT_EQ(k.delta_ppl, 0.0);
    EXPECT_EQ(k.ln_ppl_ratio, 0.0);
    const PerplexityResult p = evaluate_perplexity(*a->model, tokens, o);
    EXPECT_NEAR(k.model.ppl, p.ppl, 1e-9 * p.ppl);
    EXPECT_EQ(k.model.ppl, k.reference.ppl);
    // The same model object as its own reference also works.
    const KlResult self = evaluate_kl_divergence(*a->model, *a->model, tokens, o);
    EXPECT_EQ(self.kl_max, 0.0);
}

TEST(KlDivergence, MatchesHandComputation) {
    TinySpec spec;
    auto model = load_tiny(spec, "klm");
    spec.seed = 2;
    auto ref = load_tiny(spec, "klr");
    std::mt19937 rng(9);
    const int64_t ctx = 20, first = ctx / 2, chunks = 3;
    const auto tokens = random_tokens(rng, chunks * ctx, spec.vocab);
    PerplexityOptions o;
    o.ctx = ctx;
    o.scorer.batch_tokens = 45;
    const KlResult k = evaluate_kl_divergence(*model->model, *ref->model, tokens, o);

    std::vector<double> kl;
    double agree = 0, nll_m = 0, nll_r = 0;
    const int64_t V = spec.vocab;
    for (int64_t c = 0; c < chunks; ++c) {
        const std::vector<int32_t> w(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
        const auto lm = logits_alone(*model->model, w);
        const auto lr = logits_alone(*ref->model, w);
        const auto pm = log_softmax_rows(lm.data(), ctx, V), pr = log_softmax_rows(lr.data(), ctx, V);
        for (int64_t p = first; p <= ctx - 2; ++p) {
            double d = 0;
            int64_t am = 0, ar = 0;
            for (int64_t v = 0; v < V; ++v) {
                const double lq = pm[size_t(p * V + v)], lpv = pr[size_t(p * V + v)];
                d += std::exp(lpv) * (lpv - lq);
                if (lm[size_t(p * V + v)] > lm[size_t(p * V + am)]) am = v;
                if (lr[size_t(p * V + v)] > lr[size_t(p * V + ar)]) ar = v;
            }
            kl.push_back(d);
            agree += am == ar;
            nll_m -= pm[size_t(p * V + w[size_t(p + 1)])];
            nll_r -= pr[size_t(p * V + w[size_t(p + 1)])];
        }
    }
    const double n = double(kl.size());
    double mean = 0;
    for (double v : kl) mean += v;
    mean /= n;
    std::sort(kl.begin(), kl.end());
    auto pct = [&](double f) {  // numpy's linear interpolation
        const double pos = f * (n - 1);
        const size_t i = size_t(pos);
        return kl[i] + (pos - double(i)) * (kl[std::min(i + 1, kl.size() - 1)] - kl[i]);
    };
    ASSERT_EQ(k.tokens, int64_t(n));
    EXPECT_GT(mean, 0.01);  // two different random models
    EXPECT_NEAR(k.kl_mean, mean, 1e-5 * mean);
    EXPECT_NEAR(k.kl_median, pct(0.5), 1e-5 * mean);
    EXPECT_NEAR(k.kl_p99, pct(0.99), 1e-5 * mean);
    EXPECT_NEAR(k.kl_max, kl.back(), 1e-5 * mean);
    EXPECT_DOUBLE_EQ(k.top1_agreement, agree / n);
    EXPECT_NEAR(k.model.ppl, std::exp(nll_m / n), 1e-5 * k.model.ppl);
    EXPECT_NEAR(k.reference.ppl, std::exp(nll_r / n), 1e-5 * k.reference.ppl);
    EXPECT_NEAR(k.delta_ppl, std::exp(nll_m / n) - std::exp(nll_r / n), 1e-4 * k.model.ppl);
    EXPECT_NEAR(k.ln_ppl_ratio, (nll_m - nll_r) / n, 1e-5);
    EXPECT_GT(k.delta_ppl_stderr, 0.0);
}

TEST(KlDivergence, ModelsMustShareTheVocabulary) {
    TinySpec spec;
    const std::string a = temp_dir("vocab_a"), b = temp_dir("vocab_b");
    write_tiny_model(make_tiny_model(spec), a);
    spec.vocab = 80;
    write_tiny_model(make_tiny_model(spec), b);
    {
        auto backend = make_cpu_backend(2);
        EvalModelOptions o;
        o.load_tokenizer = false;  // weights-only tiny checkpoints
        o.path = a;
        EvalModel ma(o, *backend), ma2(o, *backend);
        o.path = b;
        EvalModel mb(o, *backend);
        EXPECT_NO_THROW(check_same_vocabulary(ma, ma2));
        try {
            check_same_vocabulary(ma, mb);
            FAIL() << "expected an error";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("same tokenizer"), std::string::npos) << e.what();
        }
        EXPECT_THROW(evaluate_kl_divergence(ma.model(), mb.model(), std::vector<int32_t>(64, 1), PerplexityOptions{}),
                     Error);
        EXPECT_THROW(ma.tokenizer(), Error);
    }
    fs::remove_all(a);
    fs::remove_all(b);
}

TEST(EvalStats, MeansPercentilesAndLengths) {
    const MeanStderr m = mean_stderr({1, 0, 1, 1});
    EXPECT_DOUBLE_EQ(m.mean, 0.75);
    EXPECT_NEAR(m.stderr_, std::sqrt(0.75 * 0.25 / 3), 1e-12);  // lm-eval: sqrt(p(1-p)/(n-1))
    EXPECT_DOUBLE_EQ(percentile_sorted({1, 2, 3, 4}, 0.5), 2.5);
    EXPECT_DOUBLE_EQ(percentile_sorted({1, 2, 3, 4}, 0.99), 3.97);
    EXPECT_DOUBLE_EQ(percentile_sorted({5}, 0.99), 5);
    NllAccumulator acc;
    for (double v : {1.0, 2.0, 3.0}) acc.add(v);
    EXPECT_DOUBLE_EQ(acc.ppl(), std::exp(2.0));
    EXPECT_NEAR(acc.ppl_stderr(), std::exp(2.0) * std::sqrt((14.0 / 3 - 4) / 2), 1e-12);
    EXPECT_EQ(code_point_count("caf\xc3\xa9 \xe2\x82\xac"), 6);
    const float row[] = {1.0f, 3.0f, 3.0f, -2.0f};
    EXPECT_EQ(row_argmax(row, 4), 1);  // lowest index on a tie
    EXPECT_NEAR(row_log_sum_exp(row, 4), std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(-2.0)), 1e-6);
    EXPECT_EQ(kl_divergence(row, row_log_sum_exp(row, 4), row, row_log_sum_exp(row, 4), 4), 0.0);
}
