#include "random_schedule.h"

#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

using namespace swiftkv;

void run_random_schedule(LlamaModel& model, PagedKvCache& cache, const std::vector<std::vector<int>>& sequences,
                         std::mt19937& rng, const LogitsCheck& check, const ScheduleOptions& options) {
    const int64_t block_size = cache.block_size();
    std::vector<int32_t> free_blocks(size_t(cache.num_blocks()));
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    std::vector<std::vector<int32_t>> blocks(sequences.size());
    std::vector<int64_t> done(sequences.size(), 0);
    for (size_t i = 0; i < sequences.size(); ++i) {
        const int64_t nb = (int64_t(sequences[i].size()) + block_size - 1) / block_size;
        ASSERT_LE(nb, int64_t(free_blocks.size())) << "test KV pool too small";
        for (int64_t b = 0; b < nb; ++b) {
            blocks[i].push_back(free_blocks.back());
            free_blocks.pop_back();
        }
    }
    const int64_t V = model.config().vocab;
    std::vector<float> logits;
    while (true) {
        ForwardBatch batch;
        batch.query_start.push_back(0);
        int64_t max_blocks = 0;
        for (auto& b : blocks) max_blocks = std::max<int64_t>(max_blocks, int64_t(b.size()));
        batch.max_blocks_per_seq = int32_t(max_blocks);
        std::vector<std::pair<size_t, int64_t>> wanted;
        bool all_done = true;
        for (size_t i = 0; i < sequences.size(); ++i) {
            const int64_t left = int64_t(sequences[i].size()) - done[i];
            all_done &= left == 0;
            if (left == 0 || rng() % 3 == 0) continue;
            const int64_t n = std::min<int64_t>(left, 1 + rng() % options.max_step_tokens);
            const int32_t first_row = int32_t(batch.tokens.size());
            for (int64_t k = 0; k < n; ++k) {
                batch.tokens.push_back(sequences[i][done[i] + k]);
                batch.positions.push_back(int32_t(done[i] + k));
            }
            batch.query_start.push_back(int32_t(batch.tokens.size()));
            batch.seq_lens.push_back(int32_t(done[i] + n));
            for (int64_t b = 0; b < max_blocks; ++b) {
                batch.block_tables.push_back(b < int64_t(blocks[i].size()) ? blocks[i][b] : 0);
            }
            int64_t keep = rng() % (n + 1);
            if (options.always_last_logits) keep = std::max<int64_t>(keep, 1);
            for (int64_t k = n - keep; k < n; ++k) {
                batch.logits_indices.push_back(first_row + int32_t(k));
                wanted.push_back({i, done[i] + k});
            }
            done[i] += n;
        }
        if (all_done) break;
        if (batch.tokens.empty()) continue;
        model.forward(batch, cache.view(), logits);
        ASSERT_EQ(logits.size(), wanted.size() * size_t(V));
        for (size_t r = 0; r < wanted.size(); ++r) check(wanted[r].first, wanted[r].second, logits.data() + r * V);
    }
}
