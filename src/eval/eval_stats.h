// Small statistics for evaluation: log-softmax pieces over a logits row, means with standard errors,
// percentiles. Conventions follow the tools whose numbers ours are compared with (noted per function).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace swiftkv {

// log(sum(exp(x))) over a row, accumulated in double.
double row_log_sum_exp(const float* x, int64_t n);
// Index of the largest entry; the lowest index on a tie (as numpy's and torch's argmax).
int64_t row_argmax(const float* x, int64_t n);
// KL(p || q) of the distributions softmax(p_logits) and softmax(q_logits), given their log-sum-exps.
double kl_divergence(const float* p_logits, double p_lse, const float* q_logits, double q_lse, int64_t n);

struct MeanStderr {
    double mean = 0;
    double stderr_ = 0;  // sample standard deviation (n - 1) / sqrt(n); 0 for fewer than two values
};
// lm-eval's mean and mean_stderr; for 0/1 values stderr = sqrt(p (1 - p) / (n - 1)).
MeanStderr mean_stderr(const std::vector<double>& values);

// Running sums for llama-perplexity's estimate: PPL = exp(mean nll), and its error
// PPL * sqrt((mean(nll^2) - mean(nll)^2) / (count - 1)).
struct NllAccumulator {
    double sum = 0, sum_sq = 0;
    int64_t count = 0;
    void add(double nll) {
        sum += nll;
        sum_sq += nll * nll;
        ++count;
    }
    double mean() const { return count > 0 ? sum / double(count) : 0.0; }
    double ppl() const;
    double ppl_stderr() const;
};

// The value at `fraction` (0..1) of the sorted values, interpolating linearly between neighbours (numpy's
// default percentile; the same rule llama-perplexity uses for its KL percentiles). values must be sorted.
double percentile_sorted(const std::vector<double>& sorted, double fraction);

// Number of Unicode code points in UTF-8 text (Python's len(str)): bytes that do not continue a character.
int64_t code_point_count(const std::string_view text);

}  // namespace swiftkv
