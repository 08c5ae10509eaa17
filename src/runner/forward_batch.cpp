#include "runner/forward_batch.h"

#include "core/error.h"

namespace swiftkv {

ForwardBatch ForwardBatch::with_block_table_width(int64_t max_blocks_per_seq) {
    ForwardBatch b;
    b.query_start.push_back(0);
    b.max_blocks_per_seq = int32_t(max_blocks_per_seq);
    return b;
}

void ForwardBatch::add_sequence(const int32_t* seq_tokens, int64_t start, int64_t count,
                                const std::vector<int32_t>& block_table, int64_t first_logit_row) {
    SKV_CHECK(!query_start.empty(), "ForwardBatch::add_sequence on a batch not made by with_block_table_width");
    SKV_CHECK(int64_t(block_table.size()) <= max_blocks_per_seq, "a block table of {} entries in a batch {} wide",
              block_table.size(), max_blocks_per_seq);
    const int32_t first_row = int32_t(tokens.size());
    tokens.insert(tokens.end(), seq_tokens, seq_tokens + count);
    for (int64_t i = 0; i < count; ++i) positions.push_back(int32_t(start + i));
    query_start.push_back(int32_t(tokens.size()));
    seq_lens.push_back(int32_t(start + count));
    const int32_t pad = block_table.empty() ? 0 : block_table.back();
    block_tables.insert(block_tables.end(), block_table.begin(), block_table.end());
    block_tables.insert(block_tables.end(), size_t(max_blocks_per_seq) - block_table.size(), pad);
    for (int64_t r = std::max<int64_t>(first_logit_row, 0); r < count; ++r) logits_indices.push_back(first_row + int32_t(r));
}

void ForwardBatch::validate(int64_t block_size, int64_t num_blocks) const {
    const int64_t T = num_tokens();
    SKV_CHECK(positions.size() == tokens.size(), "batch: {} positions for {} tokens", positions.size(), T);
    SKV_CHECK(query_start.size() >= 2, "batch: query_start needs at least two entries");
    const int64_t S = num_seqs();
    SKV_CHECK(int64_t(seq_lens.size()) == S, "batch: {} seq_lens for {} sequences", seq_lens.size(), S);
    SKV_CHECK(query_start.front() == 0 && query_start.back() == T, "batch: query_start must span [0, {}]", T);
    SKV_CHECK(max_blocks_per_seq >= 0 && int64_t(block_tables.size()) == S * max_blocks_per_seq,
              "batch: block_tables has {} entries, expected {} x {}", block_tables.size(), S, max_blocks_per_seq);
    for (int64_t s = 0; s < S; ++s) {
        const int64_t q = query_start[s + 1] - query_start[s];
        SKV_CHECK(q >= 0, "batch: query_start must be non-decreasing");
        SKV_CHECK(seq_lens[s] >= q, "batch: sequence {} has {} new tokens but a context of {}", s, q, seq_lens[s]);
        SKV_CHECK((seq_lens[s] + block_size - 1) / block_size <= max_blocks_per_seq,
                  "batch: sequence {} needs more KV blocks than its table holds", s);
        for (int64_t i = 0; i < q; ++i) {
            SKV_CHECK(positions[query_start[s] + i] == seq_lens[s] - q + i,
                      "batch: token {} of sequence {} has position {}, expected {}", i, s,
                      positions[query_start[s] + i], seq_lens[s] - q + i);
        }
        const int64_t used = (seq_lens[s] + block_size - 1) / block_size;
        for (int64_t b = 0; b < used; ++b) {
            const int32_t id = block_tables[s * max_blocks_per_seq + b];
            SKV_CHECK(id >= 0 && id < num_blocks, "batch: sequence {} uses KV block {} outside 0..{}", s, id,
                      num_blocks - 1);
        }
    }
    for (size_t i = 0; i < logits_indices.size(); ++i) {
        SKV_CHECK(logits_indices[i] >= 0 && logits_indices[i] < T, "batch: logits index {} outside 0..{}",
                  logits_indices[i], T - 1);
        SKV_CHECK(i == 0 || logits_indices[i] > logits_indices[i - 1], "batch: logits_indices must be sorted");
    }
}

}  // namespace swiftkv
