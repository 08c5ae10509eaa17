// BlockManager — the host-side bookkeeping of the paged KV cache (DESIGN.md section 4): reference
// counts, the free list, the prefix cache, copy-on-write and forking. It never touches device memory:
// copies it decides on are returned as (src, dst) block pairs for the engine to perform.
//
// Every physical block is in exactly one state:
//   used       — referenced by at least one block table (ref count > 0), cached or not;
//   evictable  — ref count 0 but still in the prefix cache (reusable by a later prompt, or evicted
//                in LRU order when a free block is needed);
//   free       — ref count 0 and not cached.
// free + used + evictable == num_blocks() at all times.
//
// Errors in the caller's arguments (negative sizes, block ids that are not in range or not
// referenced, double release) throw swiftkv::Error. Running out of blocks is not an error: the
// allocating calls return false and change nothing, so the scheduler can preempt.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "kv/prefix_cache.h"

namespace swiftkv {

// One sequence's progress in registering its full blocks with the prefix cache. Keep one per
// sequence (copy it along with the table on fork); a default-constructed one is a fresh sequence.
struct SequenceCacheState {
    int64_t num_registered_blocks = 0;             // blocks [0, n) of the table are accounted for
    uint64_t last_hash = PrefixCache::kRootHash;   // chained key of block n-1
    uint64_t last_serial = PrefixCache::kRootSerial;  // cache entry holding block n-1's content
    uint64_t generation = 0;                       // PrefixCache::generation() the cursor is valid for
    bool stopped = false;                          // a hash collision ended this sequence's chain
};

class BlockManager {
public:
    // num_blocks physical blocks of block_size tokens each. Prefix caching off makes match_prefix a
    // miss and register_full_blocks a no-op; everything else is the same.
    BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching);

    // For a new sequence (empty `table`): appends the longest run of cached full blocks matching the
    // start of `tokens`, taking a reference on each, and returns the number of tokens they cover (a
    // multiple of block_size). At least the last token is always left to compute, so the cover is at
    // most ((len - 1) / block_size) * block_size. If `state` is given it is set up so that
    // register_full_blocks does not walk the matched blocks again. Counts toward the hit statistics.
    int64_t match_prefix(const std::vector<int32_t>& tokens, std::vector<int32_t>& table,
                         SequenceCacheState* state = nullptr);

    // True if n_blocks blocks can be allocated now (free plus evictable cached blocks).
    bool can_allocate(int64_t n_blocks) const;

    // Prepares `table` for writing K/V of positions [computed_tokens, num_tokens): appends blocks
    // until it holds num_tokens tokens, and makes every block already in the table that will receive
    // one of those positions private. A shared block (ref > 1) is replaced by a fresh copy and
    // (src, dst) is appended to `cow_copies` — the engine must copy those device blocks before the
    // step. A private block that is in the prefix cache is removed from the cache instead (nobody
    // else reads it, and its cached content is about to change). All or nothing: returns false and
    // changes nothing when there are not enough blocks. Requires 0 <= computed_tokens <= num_tokens
    // and computed_tokens <= table capacity.
    [[nodiscard]] bool ensure_capacity(std::vector<int32_t>& table, int64_t computed_tokens, int64_t num_tokens,
                                       std::vector<std::pair<int32_t, int32_t>>& cow_copies);

    // After a step computed K/V for tokens[0, computed_tokens), enters the newly completed full blocks
    // of `table` into the prefix cache with chained keys, resuming from `state`. A block whose content
    // is already cached in another block is skipped (the existing one keeps serving it). Cheap when
    // nothing new is complete. `tokens` must hold at least computed_tokens tokens.
    void register_full_blocks(const std::vector<int32_t>& tokens, const std::vector<int32_t>& table,
                              int64_t computed_tokens, SequenceCacheState& state);

    // n > 1 completions: `dst` (empty) becomes a copy of `src`, sharing every block (ref + 1 each).
    // Writes into shared blocks go through ensure_capacity's copy-on-write.
    void fork(const std::vector<int32_t>& src, std::vector<int32_t>& dst);

    // Drops one reference per entry of `table` and clears it. Blocks reaching 0 references become
    // free, or evictable if cached (the table's tail blocks are queued for eviction before its head,
    // since a prefix's later blocks are useless without the earlier ones). Throws, changing nothing,
    // if an entry is out of range or not referenced (double release).
    void release(std::vector<int32_t>& table);

    int64_t num_blocks() const { return int64_t(ref_counts_.size()); }
    int64_t block_size() const { return block_size_; }
    bool prefix_caching_enabled() const { return enable_prefix_caching_; }
    int64_t num_free_blocks() const { return int64_t(free_list_.size()); }        // not referenced, not cached
    int64_t num_used_blocks() const { return num_used_; }                          // referenced by a table
    int64_t num_cached_blocks() const { return cache_.num_cached(); }              // in the prefix cache
    int64_t num_evictable_blocks() const { return cache_.num_evictable(); }        // cached, not referenced
    int64_t num_available_blocks() const { return num_free_blocks() + num_evictable_blocks(); }
    int32_t ref_count(int32_t block) const;
    bool is_cached(int32_t block) const;

    const PrefixCacheStats& prefix_cache_stats() const { return cache_.stats(); }
    void reset_prefix_cache_stats() { cache_.stats() = PrefixCacheStats{}; }
    // Empties the prefix cache: evictable blocks become free; referenced blocks stay with their
    // tables, uncached. Sequence cursors notice (generation) and register their blocks again.
    void reset_prefix_cache();

    // The underlying cache, for tests and diagnostics (e.g. the hash test hook).
    PrefixCache& prefix_cache() { return cache_; }
    const PrefixCache& prefix_cache() const { return cache_; }

    // Internal consistency: free list, LRU list and counters agree with the per-block state and
    // free + used + evictable == total. Throws swiftkv::Error on a violation.
    void check_invariants() const;
    // The above, plus: every block's ref count equals the number of entries holding it across
    // `live_tables`, which must be all tables currently holding references.
    void check_invariants(const std::vector<const std::vector<int32_t>*>& live_tables) const;

private:
    // Takes a block from the free list, evicting the LRU cached block if the list is empty.
    // Callers check availability first.
    int32_t take_block();
    void check_block(int32_t block, const char* what) const;

    int64_t block_size_;
    bool enable_prefix_caching_;
    std::vector<int32_t> ref_counts_;
    std::vector<int32_t> free_list_;  // popped from the back: low ids first on a fresh manager
    int64_t num_used_ = 0;
    PrefixCache cache_;
};

}  // namespace swiftkv
