// Perplexity of a model on a text, and the KL-divergence statistics of a model against a reference
// model on the same text, with llama-perplexity's conventions:
//  - the text is tokenized whole (the tokenizer's default BOS handling, special tokens not parsed)
//    and cut into non-overlapping windows of ctx tokens; a tail shorter than ctx is dropped;
//  - when the tokenizer adds BOS, the first token of every window is replaced by BOS;
//  - in each window the first half (first = ctx/2 tokens) is context only; the logits at positions
//    first..ctx-2 predict tokens first+1..ctx-1, so ctx - 1 - ctx/2 tokens are scored per window
//    (255 for ctx 512);
//  - PPL = exp(mean NLL) over all scored tokens, +/- PPL * sqrt(var(NLL) / (count - 1)).
// KL statistics are per scored token, KL(reference || model) over the full vocabulary, as
// llama-perplexity --kl-divergence reports them (reference = its "base" model).
// Windows are processed a group at a time (batch_tokens / ctx windows): neither model's logits for the
// whole text are ever held.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "eval/batch_scorer.h"

namespace swiftkv {

struct PerplexityProgress {
    int64_t chunks_done = 0, chunks_total = 0;
    double ppl = 0;            // running estimate over the chunks done
    double reference_ppl = 0;  // KL mode: the reference's running estimate
    double kl_mean = 0;        // KL mode: running mean KL
};

struct PerplexityOptions {
    int64_t ctx = 512;          // window length in tokens
    int64_t max_chunks = 0;     // 0: every whole window of the text
    int32_t bos_id = -1;        // >= 0: replace the first token of every window by this (BOS-adding tokenizers)
    BatchScorerOptions scorer;  // batching; scorer.batch_tokens / ctx windows per group
    std::function<void(const PerplexityProgress&)> on_progress;
};

struct PerplexityResult {
    int64_t ctx = 0;
    int64_t first = 0;             // context-only tokens at the start of each window (ctx / 2)
    int64_t chunks = 0;
    int64_t text_tokens = 0;       // tokens of the whole text
    int64_t tokens_scored = 0;     // chunks * (ctx - 1 - first)
    double nll = 0;                // mean negative log-likelihood (nats per token)
    double ppl = 0, ppl_stderr = 0;
    std::vector<double> chunk_ppl; // exp(mean NLL) of each chunk
    double seconds = 0;            // wall time, scoring included
    double forward_seconds = 0;    // time inside the model's forward
    int64_t tokens_processed = 0;  // tokens run through the model
};

struct KlResult {
    PerplexityResult model, reference;
    int64_t tokens = 0;  // scored tokens
    double kl_mean = 0, kl_stderr = 0;
    double kl_median = 0, kl_p90 = 0, kl_p95 = 0, kl_p99 = 0, kl_p999 = 0, kl_max = 0;
    double top1_agreement = 0, top1_stderr = 0;  // fraction of tokens where both argmaxes agree
    double delta_ppl = 0, delta_ppl_stderr = 0;  // PPL(model) - PPL(reference), delta-method error
    double ln_ppl_ratio = 0, ln_ppl_ratio_stderr = 0;  // mean of NLL(model) - NLL(reference)
    double seconds = 0;
};

// The windows of chunks [chunk_begin, chunk_end) as scoring requests (logits from position ctx/2).
std::vector<ScoreRequest> perplexity_windows(const std::vector<int32_t>& tokens, int64_t ctx, int64_t chunk_begin,
                                             int64_t chunk_end, int32_t bos_id = -1);

// Throws swiftkv::Error if the text has fewer than ctx tokens or ctx < 4.
PerplexityResult evaluate_perplexity(LlamaModel& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options);

// Both models run the same windows; they must share the vocabulary (checked: same size).
KlResult evaluate_kl_divergence(LlamaModel& model, LlamaModel& reference, const std::vector<int32_t>& tokens,
                                const PerplexityOptions& options);

}  // namespace swiftkv
