#include "random_schedule.h"

#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

using namespace swiftkv;

void run_random_schedule(LlamaModel& model, PagedKvCache& cache, const std::vector<std::vector<int>>& sequences,
                         std::mt19937& rng, const LogitsCheck& check, const ScheduleOptions& options) {
    ModelRunner runner(model);
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
        int64_t max_blocks = 0;
        for (auto& b : blocks) max_blocks = std::max<int64_t>(max_blocks, int64_t(b.size()));
        ForwardBatch batch = ForwardBatch::with_block_table_width(max_blocks);
        std::vector<std::pair<size_t, int64_t>> wanted;
        bool all_done = true;
        for (size_t i = 0; i < sequences.size(); ++i) {
            const int64_t left = int64_t(sequences[i].size()) - done[i];
            all_done &= left == 0;
            if (left == 0 || rng() % 3 == 0) continue;
            const int64_t n = std::min<int64_t>(left, 1 + rng() % options.max_step_tokens);
            int64_t keep = rng() % (n + 1);
            if (options.always_last_logits) keep = std::max<int64_t>(keep, 1);
            batch.add_sequence(sequences[i].data() + done[i], done[i], n, blocks[i], n - keep);
            for (int64_t k = n - keep; k < n; ++k) wanted.push_back({i, done[i] + k});
            done[i] += n;
        }
        if (all_done) break;
        if (batch.tokens.empty()) continue;
        runner.forward(batch, cache.view(), logits);
        ASSERT_EQ(logits.size(), wanted.size() * size_t(V));
        for (size_t r = 0; r < wanted.size(); ++r) check(wanted[r].first, wanted[r].second, logits.data() + r * V);
    }
}
