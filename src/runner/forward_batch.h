// ForwardBatch — the one forward interface on the host (DESIGN.md section 3).
// Every forward pass (prefill, decode or mixed) takes one flattened batch of tokens from several
// sequences and returns logits only at logits_indices.
#pragma once

#include <cstdint>
#include <vector>

#include "model/step_inputs.h"

namespace swiftkv {

struct ForwardBatch {
    // All scheduled tokens of all sequences, sequence by sequence, and their absolute positions.
    std::vector<int32_t> tokens;
    std::vector<int32_t> positions;
    // Sequence s owns tokens [query_start[s], query_start[s+1]); they are the last tokens of its
    // context, which holds seq_lens[s] tokens after this step.
    std::vector<int32_t> query_start;
    std::vector<int32_t> seq_lens;
    // [num_seqs, max_blocks_per_seq] physical KV block ids (unused entries may be anything >= 0).
    std::vector<int32_t> block_tables;
    int32_t max_blocks_per_seq = 0;
    // Sorted rows of `tokens` whose logits are wanted; each sequence contributes a suffix of its rows.
    std::vector<int32_t> logits_indices;

    // The one way to build a batch: starts an empty batch whose block tables hold max_blocks_per_seq
    // entries per sequence, then appends each sequence's step.
    static ForwardBatch with_block_table_width(int64_t max_blocks_per_seq);
    // Appends `count` tokens of one sequence, tokens[i] at position start + i, so its context holds
    // start + count tokens after the step; its KV block table (padded with its last entry, or 0); and
    // logits at its rows [first_logit_row, count) (first_logit_row >= count: none).
    void add_sequence(const int32_t* tokens, int64_t start, int64_t count, const std::vector<int32_t>& block_table,
                      int64_t first_logit_row);

    int64_t num_tokens() const { return int64_t(tokens.size()); }
    int64_t num_seqs() const { return query_start.empty() ? 0 : int64_t(query_start.size()) - 1; }

    // Throws swiftkv::Error if the arrays disagree with each other (sizes, ordering, ranges).
    void validate(int64_t block_size, int64_t num_blocks) const;
};

}  // namespace swiftkv
