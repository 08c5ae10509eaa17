// Row-wise kernels of the CPU backend: rmsnorm, add_rmsnorm, rope (with cos/sin supplied by the
// backend's table), silu_mul, and the two that read no activations: fill_random and sample (the
// reference implementation of the sampling rules). The fused ops are memory-bound; their vector loops
// are the instruction-set kernels of cpu_rowwise.cpp, and rows split over the pool once a call is large
// enough to pay for waking the workers.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/sample_row.h"
#include "backend/sampling_noise.h"

namespace swiftkv::cpu {

namespace {

// Below this many elements a call runs on the calling thread alone.
constexpr int64_t kParallelElements = 1 << 15;

template <class F>
void for_rows(ThreadPool& pool, int64_t rows, int64_t elems_per_row, F&& f) {
    if (rows <= 1 || rows * elems_per_row < kParallelElements || pool.size() == 1) {
        f(0, rows);
        return;
    }
    pool.parallel_for(rows, [&](int64_t begin, int64_t end, int) { f(begin, end); });
}

// 1 / sqrt(mean(x^2) + eps), in double from the kernel's sum of squares.
float rms_scale(const VectorKernels& vk, const float* x, int64_t dim, float eps) {
    return float(1.0 / std::sqrt(vk.sum_squares(x, dim) / double(dim) + double(eps)));
}

}  // namespace

void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t dim, float eps, ThreadPool& pool,
             const VectorKernels& vk) {
    for_rows(pool, rows, dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
            vk.scale_mul(x + r * dim, weight, rms_scale(vk, x + r * dim, dim, eps), out + r * dim, dim);
    });
}

void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out, int64_t rows,
                 int64_t dim, float eps, ThreadPool& pool, const VectorKernels& vk) {
    for_rows(pool, rows, dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            float* h = residual + r * dim;
            vk.add_inplace(h, delta + r * dim, dim);
            vk.scale_mul(h, weight, rms_scale(vk, h, dim, eps), out + r * dim, dim);
        }
    });
}

void rope_apply(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                const int32_t* positions, const float* cos_sin_table, ThreadPool& pool, const VectorKernels& vk) {
    const int64_t half = head_dim / 2;
    for_rows(pool, rows, n_heads * head_dim, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* cs = cos_sin_table + int64_t(positions[r]) * 2 * half;
            for (int64_t h = 0; h < n_heads; ++h) {
                float* a = x + r * row_stride + h * head_dim;
                vk.rotate_half(a, a + half, cs, cs + half, half);
            }
        }
    });
}

void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t ffn, ThreadPool& pool, const VectorKernels& vk) {
    for_rows(pool, rows, ffn * 4, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
            vk.silu_mul_row(gate_up + r * 2 * ffn, gate_up + r * 2 * ffn + ffn, out + r * ffn, ffn);
    });
}

// --- fill_random -----------------------------------------------------------------------------------

void fill_random(void* dst, int64_t n, DType dtype, uint64_t seed, float scale, ThreadPool& pool) {
    const uint64_t key = noise_mix64(seed);
    auto fill = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const uint64_t h = noise_mix64(key + uint64_t(i));
            // k / 2^23 - 1 is exact in f32 for k < 2^24: a uniform grid on [-1, 1).
            const float x = scale * (float(uint32_t(h >> 40)) * 0x1p-23f - 1.0f);
            if (dtype == DType::BF16)
                static_cast<uint16_t*>(dst)[i] = f32_to_bf16(x);
            else
                static_cast<float*>(dst)[i] = x;
        }
    };
    if (n < kParallelElements * 4 || pool.size() == 1) {
        fill(0, n);
        return;
    }
    pool.parallel_for(n, [&](int64_t begin, int64_t end, int) { fill(begin, end); });
}

// --- sample --------------------------------------------------------------------------------------------
//
// The sampling rules, per row r with parameters sp = params[r] (the CUDA backend implements the same):
//  * NaN logits count as -inf everywhere.
//  * Greedy when !(sp.temperature > 0): the argmax of the logits, the lowest index on ties. Also used
//    when no logit is finite or some logit is +inf (there is no distribution to draw from).
//  * Otherwise the allowed set A is built from the finite logits, in this order:
//     1. top_k (when 0 < top_k < number of finite logits): the k largest logits, compared as raw f32
//        logits; every token tied with the k-th largest value is kept (so |A| may exceed k).
//     2. top_p (when top_p < 1): with p = softmax(logit / temperature) over the tokens left by step 1
//        (renormalised over them; computed in double, z = double(logit) / double(temperature)), sort by
//        p descending (lowest index first among equal p) and take the shortest prefix whose cumulative
//        sum is >= top_p (at least one token; all of them if rounding keeps the sum below top_p);
//        then keep every token with p >= the p of the prefix's last token (ties at the boundary kept).
//     3. min_p (when min_p > 0): keep tokens with p >= min(min_p, 1) * max p (p as in step 2; the
//        ratio does not depend on the normalisation).
//    The argmax token always survives, so A is never empty.
//  * The draw is Gumbel-max over A in f32:
//        token = argmax_{i in A} (logits[i] / temperature + g_i),  g_i = -log(-log(u_i)),
//        u_i = noise_uniform(seed, offset, i)   (f32 IEEE division; std::log on floats, i.e. logf)
//    with the lowest index winning exact ties. This samples softmax(logit / temperature) restricted to
//    A and renormalised, and is a pure function of (seed, offset) and the logits. (Should u_i be exactly
//    1, g_i is +inf and that token wins.)
namespace {

// The largest Gumbel value from a u < 1: -log(-log(1 - 2^-24)) = 16.64 (rounded up with margin).
constexpr float kGumbelBound = 18.0f;
// top_p's histogram of p: 8 bins per octave below the largest p, 128 octaves, the rest in the last bin.
constexpr uint32_t kTopPBins = 1024;

inline float sample_key(float x) { return std::isnan(x) ? -INFINITY : x; }

int32_t argmax_row(const float* logits, int64_t vocab) {
    int64_t best = 0;
    float best_value = sample_key(logits[0]);
    for (int64_t i = 1; i < vocab; ++i) {
        if (logits[i] > best_value) {  // false for NaN: NaN never wins, as -inf
            best_value = logits[i];
            best = i;
        }
    }
    return int32_t(best);
}

struct SampleScratch {
    std::vector<int32_t> allowed;  // ascending token ids
    std::vector<double> prob;      // p of allowed[j] (steps 2 and 3 only)
    std::vector<float> values;     // top_k selection
    std::vector<std::pair<double, int32_t>> order;  // top_p: (p, token) of the candidates
    std::vector<uint16_t> bin;                      // top_p: histogram bin of allowed[j]
    std::vector<double> bin_mass;                   // top_p: probability mass per bin
};

int32_t sample_row(const float* logits, int64_t vocab, const SampleParams& sp, SampleScratch& s) {
    const int32_t top = argmax_row(logits, vocab);
    const float temperature = sp.temperature;
    if (!(temperature > 0.0f) || !std::isfinite(logits[top])) return top;

    // 1. top_k over the finite logits (NaN and -inf never pass `>= threshold` with a finite threshold,
    //    nor `> -inf`).
    float threshold = -INFINITY;
    if (sp.top_k > 0) {
        s.values.clear();
        for (int64_t i = 0; i < vocab; ++i)
            if (logits[i] > -INFINITY) s.values.push_back(logits[i]);
        if (int64_t(sp.top_k) < int64_t(s.values.size())) {
            auto kth = s.values.begin() + (sp.top_k - 1);
            std::nth_element(s.values.begin(), kth, s.values.end(), std::greater<float>());
            threshold = *kth;
        }
    }
    s.allowed.clear();
    for (int64_t i = 0; i < vocab; ++i)
        if (logits[i] > -INFINITY && logits[i] >= threshold) s.allowed.push_back(int32_t(i));

    // 2-3. top_p and min_p over the softmax (double) of the tokens left.
    const bool use_top_p = sp.top_p < 1.0f, use_min_p = sp.min_p > 0.0f;
    if (use_top_p || use_min_p) {
        const double t = double(temperature), z_max = double(logits[top]) / t;
        const size_t n = s.allowed.size();
        s.prob.resize(n);
        double sum = 0.0;
        for (size_t j = 0; j < n; ++j) sum += (s.prob[j] = std::exp(double(logits[s.allowed[j]]) / t - z_max));
        for (double& p : s.prob) p /= sum;
        if (use_top_p) {
            s.bin.resize(n);
            s.bin_mass.assign(kTopPBins, 0.0);
            uint64_t bits_of_max;
            const double p_max = 1.0 / sum;  // the top token's weight is exp(0) = 1
            std::memcpy(&bits_of_max, &p_max, sizeof(double));
            for (size_t j = 0; j < n; ++j) {
                uint64_t bits;
                std::memcpy(&bits, &s.prob[j], sizeof(double));
                // 8 bins per octave below p_max (p <= p_max up to rounding; clamp both ends).
                const uint64_t below = bits < bits_of_max ? (bits_of_max - bits) >> 49 : 0;
                s.bin[j] = uint16_t(std::min<uint64_t>(below, kTopPBins - 1));
                s.bin_mass[s.bin[j]] += s.prob[j];
            }
        }
        double cutoff = 0.0;  // keep p >= cutoff
        if (use_top_p) {
            const double top_p = double(sp.top_p);
            // Only the most likely tokens need sorting: find the histogram bins (by p, most likely first)
            // whose mass covers top_p, sort the tokens in them, and fall back to sorting all of them if
            // rounding left that prefix short. Bins are ranges of p (its f64 bit pattern, monotonic in p),
            // so the sorted candidates are exactly the head of the fully sorted order.
            double cum_bins = 0.0;
            uint32_t last_bin = kTopPBins - 1;
            for (uint32_t b = 0; b < kTopPBins; ++b) {
                cum_bins += s.bin_mass[b];
                if (cum_bins >= top_p) {
                    last_bin = b;
                    break;
                }
            }
            auto more_likely = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
                return a.first > b.first || (a.first == b.first && a.second < b.second);
            };
            double boundary = -1.0;
            for (;;) {
                s.order.clear();
                for (size_t j = 0; j < n; ++j)
                    if (s.bin[j] <= last_bin) s.order.emplace_back(s.prob[j], s.allowed[j]);
                std::sort(s.order.begin(), s.order.end(), more_likely);
                double cum = 0.0;
                for (const auto& [p, token] : s.order) {
                    cum += p;
                    if (cum >= top_p) {
                        boundary = p;
                        break;
                    }
                }
                if (boundary >= 0.0 || last_bin == kTopPBins - 1) break;
                last_bin = kTopPBins - 1;
            }
            if (boundary >= 0.0) cutoff = boundary;  // else rounding kept the total below top_p: keep all
        }
        if (use_min_p) cutoff = std::max(cutoff, std::min(double(sp.min_p), 1.0) * (1.0 / sum));  // max p = 1/sum
        size_t kept = 0;
        for (size_t j = 0; j < n; ++j)
            if (s.prob[j] >= cutoff) s.allowed[kept++] = s.allowed[j];
        s.allowed.resize(kept);
    }

    // Gumbel-max: the largest score, the lowest index among equal scores. The argmax token (always
    // allowed) goes first so that the bound below prunes well: a token with u < 1 has g <= kGumbelBound,
    // so it cannot reach the best score when logit/T + kGumbelBound is below it (f32 rounding is
    // monotonic), and skipping it changes nothing.
    auto gumbel_score = [&](int32_t i, float z) {
        return z + -std::log(-std::log(noise_uniform(sp.seed, sp.offset, uint64_t(i))));
    };
    int32_t best = top;
    float best_score = gumbel_score(top, logits[top] / temperature);
    for (const int32_t i : s.allowed) {
        const float z = logits[i] / temperature;
        if (z + kGumbelBound < best_score && noise_uniform(sp.seed, sp.offset, uint64_t(i)) < 1.0f) continue;
        const float score = gumbel_score(i, z);
        if (score > best_score || (score == best_score && i < best)) {
            best_score = score;
            best = i;
        }
    }
    return best;
}

}  // namespace

void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params, int32_t* tokens,
            ThreadPool& pool) {
    auto run = [&](int64_t begin, int64_t end) {
        SampleScratch scratch;
        for (int64_t r = begin; r < end; ++r) tokens[r] = sample_row(logits + r * vocab, vocab, params[r], scratch);
    };
    if (rows <= 1 || pool.size() == 1) {
        run(0, rows);
        return;
    }
    pool.parallel_for(rows, [&](int64_t begin, int64_t end, int) { run(begin, end); });
}

}  // namespace swiftkv::cpu

namespace swiftkv {

int32_t sample_row_host(const float* logits, int64_t vocab, const SampleParams& params) {
    thread_local cpu::SampleScratch scratch;
    return cpu::sample_row(logits, vocab, params, scratch);
}

}  // namespace swiftkv
