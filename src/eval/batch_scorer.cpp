#include "eval/batch_scorer.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "model/model_loader.h"

namespace swiftkv {

BatchScorer::BatchScorer(LlamaModel& model, const BatchScorerOptions& options) : model_(model), runner_(model, RunnerOptions{false}), options_(options) {
    SKV_CHECK(options_.batch_tokens > 0, "batch tokens must be positive, got {}", options_.batch_tokens);
    SKV_CHECK(options_.max_seqs > 0, "sequences per step must be positive, got {}", options_.max_seqs);
    check_kv_block_size(options_.block_size);
    SKV_CHECK(options_.kv_cache_tokens >= 0, "KV cache tokens must be >= 0, got {}", options_.kv_cache_tokens);
    if (options_.kv_cache_tokens > 0) {
        ensure_cache((options_.kv_cache_tokens + options_.block_size - 1) / options_.block_size);
    }
}

BatchScorer::~BatchScorer() = default;

void BatchScorer::ensure_cache(int64_t blocks) {
    if (cache_ && cache_->num_blocks() >= blocks) return;
    const int64_t bs = options_.block_size;
    if (options_.kv_cache_tokens > 0 && cache_) {
        SKV_THROW("a step needs {} KV cache tokens but --kv-cache-tokens is {}; raise it or lower the batch",
                  blocks * bs, options_.kv_cache_tokens);
    }
    // Room for a full step of batch_tokens with some block rounding, so the cache is made once.
    const int64_t want = options_.kv_cache_tokens > 0 ? blocks : std::max(blocks, (options_.batch_tokens + bs - 1) / bs + 32);
    cache_.reset();
    cache_ = std::make_unique<PagedKvCache>(model_.backend(), model_.config(), want, bs);
}

void BatchScorer::score(const std::vector<ScoreRequest>& requests, const RowsCallback& on_rows) {
    const ModelConfig& c = model_.config();
    const int64_t bs = options_.block_size;
    for (size_t i = 0; i < requests.size(); ++i) {
        const auto& r = requests[i];
        const int64_t n = int64_t(r.tokens.size());
        SKV_CHECK(n > 0, "scoring request {} has no tokens", i);
        SKV_CHECK(r.first_row >= 0 && r.first_row < n, "scoring request {}: first logits row {} is outside its {} tokens",
                  i, r.first_row, n);
        SKV_CHECK(n <= c.max_position, "scoring request {} has {} tokens, more than the model's context of {}", i, n,
                  c.max_position);
        for (int32_t t : r.tokens) {
            SKV_CHECK(t >= 0 && t < c.vocab, "scoring request {}: token id {} is outside the vocabulary (0..{})", i, t,
                      c.vocab - 1);
        }
    }
    const int64_t cap_blocks = options_.kv_cache_tokens > 0 ? (options_.kv_cache_tokens + bs - 1) / bs : 0;
    const int64_t V = c.vocab;
    size_t next = 0;
    while (next < requests.size()) {
        // Pack consecutive requests while the step stays within the token, sequence and block budgets.
        const size_t begin = next;
        int64_t tokens = 0, blocks = 0, max_blocks = 0;
        while (next < requests.size()) {
            const int64_t n = int64_t(requests[next].tokens.size());
            const int64_t nb = (n + bs - 1) / bs;
            const bool first = next == begin;
            if (!first && (tokens + n > options_.batch_tokens || int64_t(next - begin) >= options_.max_seqs ||
                           (cap_blocks > 0 && blocks + nb > cap_blocks))) {
                break;
            }
            SKV_CHECK(cap_blocks == 0 || nb <= cap_blocks,
                      "a sequence of {} tokens does not fit the KV cache of {} tokens; raise --kv-cache-tokens", n,
                      options_.kv_cache_tokens);
            tokens += n;
            blocks += nb;
            max_blocks = std::max(max_blocks, nb);
            ++next;
        }
        ensure_cache(blocks);

        ForwardBatch batch = ForwardBatch::with_block_table_width(max_blocks);
        batch.tokens.reserve(size_t(tokens));
        batch.positions.reserve(size_t(tokens));
        std::vector<int64_t> row_offset;  // index of each request's first handed-on row in the logits
        int32_t block = 0;
        int64_t rows = 0;
        std::vector<int32_t> table;
        for (size_t i = begin; i < next; ++i) {
            const auto& r = requests[i];
            const int32_t n = int32_t(r.tokens.size());
            const int32_t nb = (n + int32_t(bs) - 1) / int32_t(bs);
            table.resize(size_t(nb));
            for (int32_t b = 0; b < nb; ++b) table[size_t(b)] = block + b;
            block += nb;
            const int32_t first = options_.all_rows ? 0 : r.first_row;
            batch.add_sequence(r.tokens.data(), 0, n, table, first);
            row_offset.push_back(rows + (r.first_row - first));
            rows += n - first;
        }
        const auto t0 = std::chrono::steady_clock::now();
        runner_.forward(batch, cache_->view(), logits_);
        seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokens_ += tokens;
        rows_ += rows;
        ++steps_;
        SKV_CHECK(int64_t(logits_.size()) == rows * V, "the forward returned {} logits, expected {} rows of {}",
                  logits_.size(), rows, V);
        for (size_t i = begin; i < next; ++i) {
            const auto& r = requests[i];
            on_rows(i, logits_.data() + row_offset[i - begin] * V, int64_t(r.tokens.size()) - r.first_row);
        }
    }
}

}  // namespace swiftkv
