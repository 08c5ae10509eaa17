#include "eval/eval_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace swiftkv {

double row_log_sum_exp(const float* x, int64_t n) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(std::exp(x[i] - mx));
    return double(mx) + std::log(s);
}

int64_t row_argmax(const float* x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i) {
        if (x[i] > x[best]) best = i;
    }
    return best;
}

double kl_divergence(const float* p_logits, double p_lse, const float* q_logits, double q_lse, int64_t n) {
    // sum_i p_i (log p_i - log q_i), log p_i = p_logits[i] - p_lse.
    const float pl = float(p_lse);
    const double shift = q_lse - p_lse;
    double kl = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float lp = p_logits[i] - pl;
        kl += double(std::exp(lp)) * (double(p_logits[i]) - double(q_logits[i]));
    }
    // sum p_i (p_logit_i - p_lse - q_logit_i + q_lse) with sum p_i = 1.
    return std::max(0.0, kl + shift);
}

MeanStderr mean_stderr(const std::vector<double>& values) {
    MeanStderr r;
    const size_t n = values.size();
    if (n == 0) return r;
    double s = 0;
    for (double v : values) s += v;
    r.mean = s / double(n);
    if (n < 2) return r;
    double ss = 0;
    for (double v : values) ss += (v - r.mean) * (v - r.mean);
    r.stderr_ = std::sqrt(ss / double(n - 1)) / std::sqrt(double(n));
    return r;
}

double NllAccumulator::ppl() const { return std::exp(mean()); }

double NllAccumulator::ppl_stderr() const {
    if (count < 2) return 0.0;
    const double m = mean();
    const double var = sum_sq / double(count) - m * m;
    return var > 0 ? std::sqrt(var / double(count - 1)) * ppl() : 0.0;
}

double percentile_sorted(const std::vector<double>& v, double fraction) {
    if (v.empty()) return 0.0;
    if (fraction <= 0) return v.front();
    if (fraction >= 1) return v.back();
    const double p = fraction * double(v.size() - 1);
    const size_t i = size_t(p);
    const double w = p - double(i);
    return (1 - w) * v[i] + w * v[std::min(i + 1, v.size() - 1)];
}

int64_t code_point_count(std::string_view text) {
    int64_t n = 0;
    for (unsigned char c : text) n += (c & 0xC0) != 0x80;
    return n;
}

}  // namespace swiftkv
