#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/sample_row.h"
#include "core/error.h"

namespace swiftkv {

void SamplingParams::validate() const {
    SKV_CHECK(std::isfinite(temperature) && temperature >= 0.0f && temperature <= 100.0f,
              "temperature must be between 0 and 100, got {}", temperature);
    SKV_CHECK(top_k >= -1, "top_k must be -1, 0 (disabled) or positive, got {}", top_k);
    SKV_CHECK(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f, "top_p must be in (0, 1], got {}", top_p);
    SKV_CHECK(std::isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f, "min_p must be in [0, 1], got {}", min_p);
    SKV_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f && repetition_penalty <= 10.0f,
              "repetition_penalty must be in (0, 10], got {}", repetition_penalty);
    SKV_CHECK(std::isfinite(frequency_penalty) && frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
              "frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
    SKV_CHECK(std::isfinite(presence_penalty) && presence_penalty >= -2.0f && presence_penalty <= 2.0f,
              "presence_penalty must be in [-2, 2], got {}", presence_penalty);
}

int32_t argmax(const float* logits, int64_t n) {
    return int32_t(std::max_element(logits, logits + n) - logits);
}

Sampler::Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt) : params_(params) {
    params_.validate();
    seed_ = params_.seed.has_value() ? *params_.seed
                                     : (uint64_t(std::random_device{}()) << 32) ^ uint64_t(std::random_device{}());
    if (params_.repetition_penalty != 1.0f) {
        for (int32_t t : prompt) {
            if (t >= int32_t(seen_.size())) seen_.resize(size_t(t) + 1, 0);
            seen_[t] = 1;
        }
    }
}

void Sampler::accept(int32_t token) {
    output_counts_[token]++;
    if (params_.repetition_penalty != 1.0f) {
        if (token >= int32_t(seen_.size())) seen_.resize(size_t(token) + 1, 0);
        seen_[token] = 1;
    }
}

void Sampler::apply_penalties(float* logits, int64_t vocab) const {
    if (params_.repetition_penalty != 1.0f) {
        const float p = params_.repetition_penalty;
        for (int64_t t = 0; t < std::min<int64_t>(vocab, int64_t(seen_.size())); ++t) {
            if (seen_[t]) logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
        }
    }
    if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
        for (const auto& [t, count] : output_counts_) {
            if (t < vocab) logits[t] -= params_.frequency_penalty * float(count) + params_.presence_penalty;
        }
    }
}

int32_t Sampler::sample(float* logits, int64_t vocab) { return sample(logits, vocab, draws_++); }

int32_t Sampler::sample(float* logits, int64_t vocab, uint64_t offset) {
    apply_penalties(logits, vocab);
    if (params_.temperature == 0.0f) return argmax(logits, vocab);
    const SampleParams sp{params_.temperature, params_.top_k, params_.top_p, params_.min_p, seed_, offset};
    return sample_row_host(logits, vocab, sp);
}

float Sampler::log_prob(const float* logits, int64_t vocab, int32_t token) {
    const float m = *std::max_element(logits, logits + vocab);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - m));
    return float(double(logits[token] - m) - std::log(sum));
}

}  // namespace swiftkv
