#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "eval/eval_stats.h"

namespace swiftkv {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t count_chunks(const std::vector<int32_t>& tokens, const PerplexityOptions& o) {
    SKV_CHECK(o.ctx >= 4, "the perplexity window must be at least 4 tokens, got {}", o.ctx);
    SKV_CHECK(o.max_chunks >= 0, "--max-chunks must be >= 0, got {}", o.max_chunks);
    const int64_t n = int64_t(tokens.size()) / o.ctx;
    SKV_CHECK(n >= 1, "the text has {} tokens, fewer than one window of {}; give a longer text or a smaller --ctx",
              tokens.size(), o.ctx);
    return o.max_chunks > 0 ? std::min(n, o.max_chunks) : n;
}

// Windows per group: what one batch holds, at least one.
int64_t group_size(const PerplexityOptions& o) { return std::max<int64_t>(1, o.scorer.batch_tokens / o.ctx); }

PerplexityResult make_result(const std::vector<int32_t>& tokens, const PerplexityOptions& o, int64_t chunks) {
    PerplexityResult r;
    r.ctx = o.ctx;
    r.first = o.ctx / 2;
    r.chunks = chunks;
    r.text_tokens = int64_t(tokens.size());
    return r;
}

void finish(PerplexityResult& r, const NllAccumulator& acc, const BatchScorer& scorer) {
    r.tokens_scored = acc.count;
    r.nll = acc.mean();
    r.ppl = acc.ppl();
    r.ppl_stderr = acc.ppl_stderr();
    r.forward_seconds = scorer.forward_seconds();
    r.tokens_processed = scorer.tokens_processed();
}

// Per scored row of one window: negative log-likelihood of the next token (and, optionally, lse and argmax).
struct RowStats {
    std::vector<double> nll, lse;
    std::vector<int32_t> top;
};

void row_stats(const float* logits, int64_t rows, int64_t V, const int32_t* targets, RowStats& out) {
    out.nll.assign(size_t(rows), 0.0);
    out.lse.assign(size_t(rows), 0.0);
    out.top.assign(size_t(rows), 0);
    ThreadPool::global().parallel_for(rows, [&](int64_t b, int64_t e, int) {
        for (int64_t j = b; j < e; ++j) {
            const float* row = logits + j * V;
            const double lse = row_log_sum_exp(row, V);
            out.lse[size_t(j)] = lse;
            out.nll[size_t(j)] = lse - double(row[targets[j]]);
            out.top[size_t(j)] = int32_t(row_argmax(row, V));
        }
    });
}

}  // namespace

std::vector<ScoreRequest> perplexity_windows(const std::vector<int32_t>& tokens, int64_t ctx, int64_t chunk_begin,
                                             int64_t chunk_end, int32_t bos_id) {
    std::vector<ScoreRequest> out;
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        ScoreRequest r;
        r.tokens.assign(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
        if (bos_id >= 0) r.tokens[0] = bos_id;
        r.first_row = int32_t(ctx / 2);
        out.push_back(std::move(r));
    }
    return out;
}

PerplexityResult evaluate_perplexity(LlamaModel& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& o) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t chunks = count_chunks(tokens, o);
    PerplexityResult r = make_result(tokens, o, chunks);
    BatchScorer scorer(model, o.scorer);
    const int64_t V = model.config().vocab;
    const int64_t scored = o.ctx - 1 - r.first;
    NllAccumulator acc;
    RowStats st;
    for (int64_t g = 0; g < chunks; g += group_size(o)) {
        const int64_t g_end = std::min(chunks, g + group_size(o));
        const auto reqs = perplexity_windows(tokens, o.ctx, g, g_end, o.bos_id);
        scorer.score(reqs, [&](size_t i, const float* logits, int64_t) {
            row_stats(logits, scored, V, reqs[i].tokens.data() + r.first + 1, st);
            double chunk_sum = 0;
            for (double v : st.nll) {
                acc.add(v);
                chunk_sum += v;
            }
            r.chunk_ppl.push_back(std::exp(chunk_sum / double(scored)));
        });
        if (o.on_progress) {
            PerplexityProgress p;
            p.chunks_done = g_end;
            p.chunks_total = chunks;
            p.ppl = acc.ppl();
            o.on_progress(p);
        }
    }
    finish(r, acc, scorer);
    r.seconds = seconds_since(t0);
    return r;
}

KlResult evaluate_kl_divergence(LlamaModel& model, LlamaModel& reference, const std::vector<int32_t>& tokens,
                                const PerplexityOptions& o) {
    const auto t0 = std::chrono::steady_clock::now();
    SKV_CHECK(model.config().vocab == reference.config().vocab,
              "the model's vocabulary has {} tokens but the reference's has {}: KL divergence needs the same vocabulary",
              model.config().vocab, reference.config().vocab);
    const int64_t chunks = count_chunks(tokens, o);
    KlResult k;
    k.model = make_result(tokens, o, chunks);
    k.reference = make_result(tokens, o, chunks);
    BatchScorer model_scorer(model, o.scorer);
    BatchScorer ref_scorer(reference, o.scorer);
    const int64_t V = model.config().vocab;
    const int64_t first = o.ctx / 2;
    const int64_t scored = o.ctx - 1 - first;
    NllAccumulator model_acc, ref_acc;
    // Per scored token: KL, top-1 agreement (0/1), and both models' NLL.
    std::vector<double> kl_values, agree, nll_m_all, nll_r_all;
    // The reference's scored rows of one group: logits, lse, argmax and NLL per row.
    std::vector<float> ref_logits;
    std::vector<RowStats> ref_stats;
    RowStats st;
    std::vector<double> kl_rows;
    for (int64_t g = 0; g < chunks; g += group_size(o)) {
        const int64_t g_end = std::min(chunks, g + group_size(o));
        const auto reqs = perplexity_windows(tokens, o.ctx, g, g_end, o.bos_id);
        const size_t n = reqs.size();
        ref_logits.resize(n * size_t(scored * V));
        ref_stats.assign(n, RowStats{});
        ref_scorer.score(reqs, [&](size_t i, const float* logits, int64_t) {
            std::copy(logits, logits + scored * V, ref_logits.begin() + int64_t(i) * scored * V);
            row_stats(logits, scored, V, reqs[i].tokens.data() + first + 1, ref_stats[i]);
            double chunk_sum = 0;
            for (double v : ref_stats[i].nll) {
                ref_acc.add(v);
                chunk_sum += v;
            }
            k.reference.chunk_ppl.push_back(std::exp(chunk_sum / double(scored)));
        });
        model_scorer.score(reqs, [&](size_t i, const float* logits, int64_t) {
            row_stats(logits, scored, V, reqs[i].tokens.data() + first + 1, st);
            const float* ref = ref_logits.data() + int64_t(i) * scored * V;
            const RowStats& rs = ref_stats[i];
            kl_rows.assign(size_t(scored), 0.0);
            ThreadPool::global().parallel_for(scored, [&](int64_t b, int64_t e, int) {
                for (int64_t j = b; j < e; ++j) {
                    kl_rows[size_t(j)] = kl_divergence(ref + j * V, rs.lse[size_t(j)], logits + j * V, st.lse[size_t(j)], V);
                }
            });
            double chunk_sum = 0;
            for (int64_t j = 0; j < scored; ++j) {
                const double nm = st.nll[size_t(j)], nr = rs.nll[size_t(j)];
                model_acc.add(nm);
                chunk_sum += nm;
                kl_values.push_back(kl_rows[size_t(j)]);
                agree.push_back(st.top[size_t(j)] == rs.top[size_t(j)] ? 1.0 : 0.0);
                nll_m_all.push_back(nm);
                nll_r_all.push_back(nr);
            }
            k.model.chunk_ppl.push_back(std::exp(chunk_sum / double(scored)));
        });
        if (o.on_progress) {
            PerplexityProgress p;
            p.chunks_done = g_end;
            p.chunks_total = chunks;
            p.ppl = model_acc.ppl();
            p.reference_ppl = ref_acc.ppl();
            double s = 0;
            for (double v : kl_values) s += v;
            p.kl_mean = kl_values.empty() ? 0.0 : s / double(kl_values.size());
            o.on_progress(p);
        }
    }
    finish(k.model, model_acc, model_scorer);
    finish(k.reference, ref_acc, ref_scorer);
    k.tokens = int64_t(kl_values.size());
    const MeanStderr kl = mean_stderr(kl_values);
    k.kl_mean = kl.mean;
    k.kl_stderr = kl.stderr_;
    std::sort(kl_values.begin(), kl_values.end());
    k.kl_median = percentile_sorted(kl_values, 0.5);
    k.kl_p90 = percentile_sorted(kl_values, 0.90);
    k.kl_p95 = percentile_sorted(kl_values, 0.95);
    k.kl_p99 = percentile_sorted(kl_values, 0.99);
    k.kl_p999 = percentile_sorted(kl_values, 0.999);
    k.kl_max = kl_values.empty() ? 0.0 : kl_values.back();
    const MeanStderr a = mean_stderr(agree);
    k.top1_agreement = a.mean;
    k.top1_stderr = a.stderr_;
    std::vector<double> ln_ratio(nll_m_all.size());
    for (size_t i = 0; i < ln_ratio.size(); ++i) ln_ratio[i] = nll_m_all[i] - nll_r_all[i];
    const MeanStderr lr = mean_stderr(ln_ratio);
    k.ln_ppl_ratio = lr.mean;
    k.ln_ppl_ratio_stderr = lr.stderr_;
    k.delta_ppl = k.model.ppl - k.reference.ppl;
    // Delta method on exp(mean_m) - exp(mean_r), with the covariance of the two per-token NLLs.
    const size_t n = nll_m_all.size();
    if (n > 1) {
        const double mm = k.model.nll, mr = k.reference.nll;
        double vm = 0, vr = 0, cov = 0;
        for (size_t i = 0; i < n; ++i) {
            const double dm = nll_m_all[i] - mm, dr = nll_r_all[i] - mr;
            vm += dm * dm;
            vr += dr * dr;
            cov += dm * dr;
        }
        const double d = double(n - 1) * double(n);  // sample (co)variance of the means
        const double pm = k.model.ppl, pr = k.reference.ppl;
        const double var = pm * pm * vm / d + pr * pr * vr / d - 2 * pm * pr * cov / d;
        k.delta_ppl_stderr = var > 0 ? std::sqrt(var) : 0.0;
    }
    k.seconds = seconds_since(t0);
    k.model.seconds = k.seconds;
    k.reference.seconds = k.seconds;
    return k;
}

}  // namespace swiftkv
