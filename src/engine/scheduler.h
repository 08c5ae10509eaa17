// Scheduler — continuous batching (DESIGN.md sections 3 and 4). Pure host logic: it decides which
// tokens of which sequences run in the next forward step and manages their KV blocks through the
// BlockManager it owns. It never touches the model or device memory.
//
// One engine step:
//   auto out = scheduler.schedule();
//   perform out.cow_copies IN LIST ORDER (a block released by a preemption earlier in the step may be
//       the destination of a later copy after being the source of an earlier one);
//   run the model on scheduler.to_forward_batch(out) (before update: it reads the sequences' tokens);
//   sample: for each entry with needs_logits, entry.num_samples tokens from its one logits row;
//   scheduler.update(out, sampled);
//   decide stops (EOS, max_tokens, ...) and call finish(); collect take_finished().
//
// Policy (vLLM-like):
//   * Running sequences first, oldest first: first every decode (1 token each), then running
//     sequences in the middle of a chunked prefill (min(remaining, budget) tokens). Then waiting
//     sequences, FCFS: the queue head is never skipped.
//   * Blocks are reserved with BlockManager::ensure_capacity. When the pool is short the most recently
//     arrived running sequence not yet scheduled in this step is preempted (recompute mode: blocks
//     released, num_computed_tokens = 0, tokens kept, put at the FRONT of the waiting queue); when the
//     sequence that needs the blocks is newer than every such candidate, it is preempted itself.
//     No waiting sequence is admitted in a step that preempted. A waiting sequence calls match_prefix
//     each time it is tried (its table is empty while waiting); a head that does not fit gives its
//     matched blocks back, so prefix-cache query statistics count every attempt.
//   * Never deadlocks: a sequence that cannot get its blocks while no other sequence is running (all
//     blocks are free or evictable) can never fit; it is finished with reason "kv_cache" and listed in
//     ScheduleOutput::finished. The engine should size the pool to hold max_model_len tokens
//     (ceil(max_model_len / block_size) blocks) so this never happens in practice; the scheduler does
//     not require it (tests use tiny pools).
//   * A sequence is finished with reason "length" by update() once it holds max_model_len tokens, so no
//     step's context ever exceeds max_model_len.
//   * n > 1: add() creates ONE sequence standing for the group (fork_n = n). The step that completes
//     its prompt has num_samples = n: the engine samples n tokens from that one logits row and passes
//     them consecutively in `sampled`; update() then forks n - 1 siblings (BlockManager::fork, the
//     prompt's blocks shared copy-on-write) and gives sample i to sibling index i (index 0 is the
//     original sequence, whose id is the group id). Admission counts the whole group against
//     max_num_seqs. A group preempted before its prompt completes is still one sequence.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "kv/block_manager.h"
#include "runner/forward_batch.h"

namespace swiftkv {

struct SchedulerConfig {
    int64_t max_num_seqs = 256;         // running sequences (a group awaiting its fork counts n)
    int64_t max_batched_tokens = 2048;  // tokens per forward step
    int64_t max_model_len = 0;          // must be set: longest context (prompt + output) of a sequence
    // Off: a prompt is prefilled in one step (requires max_batched_tokens >= max_model_len).
    bool enable_chunked_prefill = true;
    // The full-student path: every row of every entry returns logits (for a SwiftKV model every token
    // then runs every layer); the engine samples from each entry's last row as usual.
    bool logits_for_every_row = false;
};

enum class SequenceStatus { Waiting, Running, Finished };

struct Sequence {
    uint64_t id = 0;
    uint64_t group_id = 0;                 // id of the group's first sequence (what add() returned)
    int index = 0;                         // sibling index within the group, 0..n-1
    int fork_n = 1;                        // > 1: stands for a group of fork_n until its prompt completes
    // >= 0: logits rows at every prompt position from this one on (prompt logprobs: 0; scoring: the
    // first scored position); no prefix reuse for such a sequence. -1: none.
    int64_t logits_from = -1;
    std::vector<int32_t> tokens;           // prompt followed by the output tokens
    int64_t num_prompt_tokens = 0;
    int64_t num_computed_tokens = 0;       // tokens whose K/V is in the cache
    std::vector<int32_t> block_table;
    SequenceCacheState cache_state;
    SequenceStatus status = SequenceStatus::Waiting;
    uint64_t arrival = 0;                  // order of add(); siblings share their group's
    int64_t num_preemptions = 0;
    std::string finish_reason;             // set when Finished: "kv_cache", "length", "abort", or finish()'s

    int64_t num_output_tokens() const { return int64_t(tokens.size()) - num_prompt_tokens; }
    std::vector<int32_t> output_tokens() const {
        return std::vector<int32_t>(tokens.begin() + num_prompt_tokens, tokens.end());
    }
};

struct ScheduledSequence {
    uint64_t id = 0;
    int64_t start = 0;           // first position = num_computed_tokens before the step
    int64_t num_tokens = 0;      // tokens [start, start + num_tokens) run in this step
    bool needs_logits = false;   // the chunk reaches the last known token: a new token is sampled
    int num_samples = 0;         // tokens to sample from its logits row (n when a group forks, else 1; 0 without logits)
    // >= 0: rows [first_logit_row, num_tokens) of the chunk return logits (prompt logits, scoring, the
    // full student; the last one samples when needs_logits). -1: only the sampling row, if any.
    int64_t first_logit_row = -1;
    std::vector<int32_t> block_table;  // covers start + num_tokens tokens

    // Logits rows this entry contributes to the step's logits_indices (a suffix of its tokens).
    int64_t logit_rows() const { return first_logit_row >= 0 ? num_tokens - first_logit_row : (needs_logits ? 1 : 0); }
};

struct ScheduleOutput {
    std::vector<ScheduledSequence> seqs;                  // batch order
    std::vector<std::pair<int32_t, int32_t>> cow_copies;  // (src, dst) device block copies, before the step
    std::vector<uint64_t> preempted;                      // ids preempted in this step
    std::vector<uint64_t> finished;                       // ids the scheduler finished ("kv_cache") in this step
    int64_t num_batched_tokens = 0;
    int64_t num_decode_seqs = 0;      // entries of exactly one token that continue a computed context
    int64_t num_prefill_tokens = 0;   // tokens of the other entries
    int64_t num_samples = 0;          // size update() expects of `sampled`

    bool empty() const { return seqs.empty(); }
};

class Scheduler {
public:
    // Owns a BlockManager of num_blocks blocks of block_size tokens.
    Scheduler(const SchedulerConfig& config, int64_t num_blocks, int64_t block_size,
              bool enable_prefix_caching = true);

    // Enqueues a request of n completions; returns its group id (= the id of its first sequence).
    // logits_from >= 0: every prompt chunk reaching that position yields logits at its rows from it on
    // (the prompt is computed in full, without prefix-cache reuse, in chunks of at most
    // kPromptLogitsChunk tokens); prompt logprobs use 0. Throws swiftkv::Error for an empty prompt, a
    // prompt longer than max_model_len, n < 1, n > max_num_seqs or logits_from past the prompt.
    uint64_t add(std::vector<int32_t> prompt, int n = 1, int64_t logits_from = -1);
    static constexpr int64_t kPromptLogitsChunk = 512;

    ScheduleOutput schedule();
    // The flattened batch of `out`; call between schedule() and update().
    ForwardBatch to_forward_batch(const ScheduleOutput& out) const;
    // After the step: `sampled` holds out.num_samples tokens, entry by entry in batch order
    // (num_samples of each entry with needs_logits). Entries whose sequence was finished or aborted
    // since schedule() are skipped (their samples still occupy their slots).
    void update(const ScheduleOutput& out, const std::vector<int32_t>& sampled);

    // Finishes a waiting or running sequence, releasing its blocks now. Throws for an unknown id.
    void finish(uint64_t id, std::string reason);
    // finish(id, "abort") for a live sequence; false (and nothing done) if the id is not live.
    bool abort(uint64_t id);
    // Sequences finished since the last call (by finish/abort, "length" or "kv_cache"), in finishing order.
    std::vector<Sequence> take_finished();

    int64_t num_waiting() const { return int64_t(waiting_.size()); }
    int64_t num_running() const { return int64_t(running_.size()); }
    bool has_work() const { return !waiting_.empty() || !running_.empty(); }
    // A live (waiting or running) sequence, or nullptr.
    const Sequence* find(uint64_t id) const;
    std::vector<uint64_t> running_ids() const { return running_; }
    std::vector<uint64_t> waiting_ids() const { return {waiting_.begin(), waiting_.end()}; }

    const SchedulerConfig& config() const { return config_; }
    const BlockManager& block_manager() const { return blocks_; }
    BlockManager& block_manager() { return blocks_; }

    // Scheduler and block-manager consistency (every live table's references accounted for). Throws.
    void check_invariants() const;

private:
    Sequence* live(uint64_t id);
    bool older(const Sequence& a, const Sequence& b) const;  // a arrived before b (ties: lower id)
    void insert_running(uint64_t id);
    void remove_running(uint64_t id);
    void preempt(Sequence& s, ScheduleOutput& out);
    void finish_seq(Sequence& s, std::string reason);
    // Reserves blocks for n more tokens of running sequence s, preempting as needed. False if s itself
    // was preempted or finished.
    bool reserve(Sequence& s, int64_t n, ScheduleOutput& out);
    void add_entry(Sequence& s, int64_t n, ScheduleOutput& out);
    int64_t chunk_cap(const Sequence& s, int64_t budget) const;
    int64_t running_slots() const;

    SchedulerConfig config_;
    BlockManager blocks_;
    std::unordered_map<uint64_t, Sequence> seqs_;  // live sequences
    std::vector<uint64_t> running_;                // sorted oldest first (arrival, id)
    std::deque<uint64_t> waiting_;
    std::vector<Sequence> finished_;
    uint64_t next_id_ = 1;
    uint64_t next_arrival_ = 0;
    std::unordered_set<uint64_t> scheduled_now_;   // ids scheduled in the step being built
};

}  // namespace swiftkv
