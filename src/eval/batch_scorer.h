// BatchScorer — logits of many token sequences through the one batched forward (DESIGN.md section 3):
// sequences are packed into ForwardBatches of up to batch_tokens tokens, each with its own KV blocks
// in a paged cache the scorer owns (every step starts from an empty cache), and each sequence asks
// for the logits of a suffix of its positions. Used by perplexity, KL-vs-reference and
// multiple-choice scoring; works on any backend.
//
// For a SwiftKV model the suffix rows are the step's survivors: the rest of the tokens skip layers
// >= L, which is exact (their later-layer K/V depend only on h_L). all_rows = true instead asks for
// the logits of every position — the full-student path, every token through every layer — and hands
// on the same suffix rows.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "runner/model_runner.h"

namespace swiftkv {

struct ScoreRequest {
    std::vector<int32_t> tokens;  // the model input, positions 0..n-1
    int32_t first_row = 0;        // logits wanted at positions [first_row, n)
};

struct BatchScorerOptions {
    int64_t batch_tokens = 4096;  // tokens per forward step (a longer sequence runs alone in its step)
    int64_t max_seqs = 256;       // sequences per forward step
    int64_t block_size = 16;      // KV cache block size
    // KV cache capacity in tokens; 0: grown as the steps need (about batch_tokens plus block rounding).
    int64_t kv_cache_tokens = 0;
    bool all_rows = false;        // full-student path: compute the logits of every position
};

// Called once per request, in request order, with its rows' logits [rows, vocab] (rows =
// tokens.size() - first_row; host memory, valid during the call).
using RowsCallback = std::function<void(size_t request, const float* logits, int64_t rows)>;

class BatchScorer {
public:
    BatchScorer(LlamaModel& model, const BatchScorerOptions& options);
    ~BatchScorer();

    // Scores the requests, packing consecutive ones into steps. Throws swiftkv::Error on a malformed
    // request (empty, first_row out of range, longer than the model's context, token outside the vocab).
    void score(const std::vector<ScoreRequest>& requests, const RowsCallback& on_rows);

    LlamaModel& model() { return model_; }
    const BatchScorerOptions& options() const { return options_; }
    // Totals since construction.
    int64_t tokens_processed() const { return tokens_; }
    int64_t logits_rows() const { return rows_; }
    int64_t forward_steps() const { return steps_; }
    double forward_seconds() const { return seconds_; }

private:
    void ensure_cache(int64_t blocks);

    LlamaModel& model_;
    ModelRunner runner_;  // no graphs: scoring runs prefill-shaped steps only, nothing to replay
    BatchScorerOptions options_;
    std::unique_ptr<PagedKvCache> cache_;
    std::vector<float> logits_;
    int64_t tokens_ = 0, rows_ = 0, steps_ = 0;
    double seconds_ = 0;
};

}  // namespace swiftkv
