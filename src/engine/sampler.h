// Sampler — turns one row of logits into the next token under the request's sampling parameters:
// penalties (repetition over prompt+output; frequency and presence over output, as vLLM and the
// OpenAI API define them), then temperature, top-k, top-p, min-p, and a draw from a per-request
// seeded generator (same seed, same parameters, same model: same tokens). temperature 0 is greedy.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace swiftkv {

struct SamplingParams {
    float temperature = 0.0f;
    int32_t top_k = 0;   // 0 or -1: disabled
    float top_p = 1.0f;
    float min_p = 0.0f;
    float repetition_penalty = 1.0f;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    std::optional<uint64_t> seed;

    // Throws swiftkv::Error naming the parameter and its allowed range.
    void validate() const;
    // True when sampling depends on earlier tokens (penalties), which only the host Sampler applies.
    bool needs_history() const {
        return repetition_penalty != 1.0f || frequency_penalty != 0.0f || presence_penalty != 0.0f;
    }
};

class Sampler {
public:
    Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt);

    // Samples from logits[vocab]; `logits` is used as scratch and modified. After the penalties the
    // draw is Backend::sample's (sample_row_host: same top-k/top-p/min-p, Gumbel-max on the shared
    // noise at (seed, offset)), so host and device sampling pick the same token. offset: the number
    // of tokens generated before this one (the first overload counts its own calls).
    int32_t sample(float* logits, int64_t vocab);
    int32_t sample(float* logits, int64_t vocab, uint64_t offset);
    // Records a generated token (feeds the penalties).
    void accept(int32_t token);

    // log-softmax of the raw logits at `token` (for logprobs); does not modify logits.
    static float log_prob(const float* logits, int64_t vocab, int32_t token);

private:
    void apply_penalties(float* logits, int64_t vocab) const;

    SamplingParams params_;
    uint64_t seed_ = 0;
    uint64_t draws_ = 0;  // calls of sample(logits, vocab): its offsets
    std::unordered_map<int32_t, int32_t> output_counts_;
    std::vector<uint8_t> seen_;  // tokens in prompt or output (repetition penalty), indexed by id
};

int32_t argmax(const float* logits, int64_t n);

}  // namespace swiftkv
