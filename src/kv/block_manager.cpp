#include "kv/block_manager.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace swiftkv {

namespace {

int32_t checked_block_count(int64_t num_blocks) {
    SKV_CHECK(num_blocks > 0 && num_blocks <= std::numeric_limits<int32_t>::max(),
              "the KV cache needs between 1 and {} blocks (got {})", std::numeric_limits<int32_t>::max(),
              num_blocks);
    return int32_t(num_blocks);
}

SequenceCacheState fresh_state(uint64_t generation) {
    SequenceCacheState s;
    s.generation = generation;
    return s;
}

int64_t blocks_for(int64_t tokens, int64_t block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      ref_counts_(size_t(checked_block_count(num_blocks)), 0),
      cache_(checked_block_count(num_blocks), block_size) {
    free_list_.reserve(size_t(num_blocks));
    for (int64_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(int32_t(b));  // low ids first
}

void BlockManager::check_block(int32_t block, const char* what) const {
    SKV_CHECK(block >= 0 && block < num_blocks(), "{}: KV block {} is not one of this cache's {} blocks", what,
              block, num_blocks());
    SKV_CHECK(ref_counts_[size_t(block)] > 0, "{}: KV block {} is not referenced (released twice?)", what, block);
}

int32_t BlockManager::ref_count(int32_t block) const {
    SKV_CHECK(block >= 0 && block < num_blocks(), "KV block {} is not one of this cache's {} blocks", block,
              num_blocks());
    return ref_counts_[size_t(block)];
}

bool BlockManager::is_cached(int32_t block) const {
    SKV_CHECK(block >= 0 && block < num_blocks(), "KV block {} is not one of this cache's {} blocks", block,
              num_blocks());
    return cache_.is_cached(block);
}

bool BlockManager::can_allocate(int64_t n_blocks) const {
    SKV_CHECK(n_blocks >= 0, "cannot allocate a negative number of KV blocks ({})", n_blocks);
    return n_blocks <= num_available_blocks();
}

int32_t BlockManager::take_block() {
    if (free_list_.empty()) {
        const auto evicted = cache_.evict_lru();
        SKV_CHECK(evicted.has_value(), "internal error: no KV block to take although one was counted");
        free_list_.push_back(*evicted);
    }
    const int32_t b = free_list_.back();
    free_list_.pop_back();
    ref_counts_[size_t(b)] = 1;
    ++num_used_;
    return b;
}

int64_t BlockManager::match_prefix(const std::vector<int32_t>& tokens, std::vector<int32_t>& table,
                                   SequenceCacheState* state) {
    SKV_CHECK(table.empty(), "match_prefix is for a new sequence, but its block table holds {} blocks",
              table.size());
    if (state) *state = fresh_state(cache_.generation());
    if (!enable_prefix_caching_ || tokens.empty()) return 0;

    const int64_t len = int64_t(tokens.size());
    const int64_t max_blocks = (len - 1) / block_size_;  // leave at least the last token to compute
    PrefixCacheStats& st = cache_.stats();
    ++st.queries;
    st.query_tokens += len;
    st.query_blocks += max_blocks;

    uint64_t key = PrefixCache::kRootHash;
    uint64_t serial = PrefixCache::kRootSerial;
    for (int64_t j = 0; j < max_blocks; ++j) {
        const std::span<const int32_t> blk(tokens.data() + j * block_size_, size_t(block_size_));
        const uint64_t k = cache_.hash(key, blk);
        const auto hit = cache_.lookup(k, serial, blk);
        if (!hit) break;
        int32_t& rc = ref_counts_[size_t(hit->block)];
        if (rc == 0) {
            cache_.set_in_use(hit->block);
            ++num_used_;
        }
        ++rc;
        table.push_back(hit->block);
        key = k;
        serial = hit->serial;
    }
    const int64_t matched = int64_t(table.size());
    st.hit_blocks += matched;
    st.hit_tokens += matched * block_size_;
    if (state) {
        state->num_registered_blocks = matched;
        state->last_hash = key;
        state->last_serial = serial;
    }
    return matched * block_size_;
}

bool BlockManager::ensure_capacity(std::vector<int32_t>& table, int64_t computed_tokens, int64_t num_tokens,
                                   std::vector<std::pair<int32_t, int32_t>>& cow_copies) {
    SKV_CHECK(computed_tokens >= 0 && computed_tokens <= num_tokens,
              "ensure_capacity needs 0 <= computed_tokens <= num_tokens (got {} and {})", computed_tokens,
              num_tokens);
    const int64_t have = int64_t(table.size());
    SKV_CHECK(computed_tokens <= have * block_size_,
              "ensure_capacity: {} tokens are computed but the block table only holds {}", computed_tokens,
              have * block_size_);
    for (const int32_t b : table) check_block(b, "ensure_capacity");

    const int64_t want = blocks_for(num_tokens, block_size_);
    const int64_t first_written = computed_tokens / block_size_;
    const int64_t last_existing = std::min(have, want);  // existing blocks that receive writes: [first, last)
    int64_t copies = 0;
    if (computed_tokens < num_tokens)
        for (int64_t j = first_written; j < last_existing; ++j)
            if (ref_counts_[size_t(table[size_t(j)])] > 1) ++copies;
    const int64_t grow = std::max<int64_t>(0, want - have);
    if (!can_allocate(grow + copies)) return false;

    if (computed_tokens < num_tokens) {
        for (int64_t j = first_written; j < last_existing; ++j) {
            int32_t& slot = table[size_t(j)];
            if (ref_counts_[size_t(slot)] > 1) {
                const int32_t dst = take_block();
                --ref_counts_[size_t(slot)];  // stays > 0: others still hold it
                cow_copies.emplace_back(slot, dst);
                slot = dst;
            } else if (cache_.is_cached(slot)) {
                cache_.erase(slot);  // private, about to be overwritten: its cached content goes stale
            }
        }
    }
    for (int64_t j = 0; j < grow; ++j) table.push_back(take_block());
    return true;
}

void BlockManager::register_full_blocks(const std::vector<int32_t>& tokens, const std::vector<int32_t>& table,
                                        int64_t computed_tokens, SequenceCacheState& state) {
    SKV_CHECK(computed_tokens >= 0 && computed_tokens <= int64_t(tokens.size()),
              "register_full_blocks: {} tokens computed but only {} known", computed_tokens, tokens.size());
    SKV_CHECK(computed_tokens <= int64_t(table.size()) * block_size_,
              "register_full_blocks: {} tokens computed but the block table only holds {}", computed_tokens,
              int64_t(table.size()) * block_size_);
    if (!enable_prefix_caching_) return;
    const int64_t full = computed_tokens / block_size_;
    if (state.generation != cache_.generation() || state.num_registered_blocks > full)
        state = fresh_state(cache_.generation());  // cache reset or sequence rewound
    if (state.stopped) return;
    for (int64_t j = state.num_registered_blocks; j < full; ++j) {
        const int32_t block = table[size_t(j)];
        check_block(block, "register_full_blocks");
        const std::span<const int32_t> blk(tokens.data() + j * block_size_, size_t(block_size_));
        const uint64_t key = cache_.hash(state.last_hash, blk);
        const auto serial = cache_.insert(key, state.last_serial, blk, block);
        if (!serial) {  // collision: later blocks cannot be chained reliably, stop caching this sequence
            state.stopped = true;
            return;
        }
        state.num_registered_blocks = j + 1;
        state.last_hash = key;
        state.last_serial = *serial;
    }
}

void BlockManager::fork(const std::vector<int32_t>& src, std::vector<int32_t>& dst) {
    SKV_CHECK(dst.empty(), "fork needs an empty destination table, it holds {} blocks", dst.size());
    for (const int32_t b : src) check_block(b, "fork");
    for (const int32_t b : src) ++ref_counts_[size_t(b)];
    dst = src;
}

void BlockManager::release(std::vector<int32_t>& table) {
    // Validate everything first (counting repeats within the table) so a bad call changes nothing.
    std::vector<int32_t> sorted(table);
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
        size_t j = i;
        while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
        check_block(sorted[i], "release");
        SKV_CHECK(int64_t(ref_counts_[size_t(sorted[i])]) >= int64_t(j - i),
                  "release: KV block {} appears {} times but holds {} references", sorted[i], j - i,
                  ref_counts_[size_t(sorted[i])]);
        i = j;
    }
    for (auto it = table.rbegin(); it != table.rend(); ++it) {  // tail first: evicted before the head
        const int32_t b = *it;
        if (--ref_counts_[size_t(b)] > 0) continue;
        --num_used_;
        if (cache_.is_cached(b))
            cache_.set_evictable(b);
        else
            free_list_.push_back(b);
    }
    table.clear();
}

void BlockManager::reset_prefix_cache() {
    for (const int32_t b : cache_.clear()) free_list_.push_back(b);
}

void BlockManager::check_invariants() const {
    const int64_t n = num_blocks();
    std::vector<char> in_free(size_t(n), 0);
    for (const int32_t b : free_list_) {
        SKV_CHECK(b >= 0 && b < n, "invariant: free list holds out-of-range block {}", b);
        SKV_CHECK(!in_free[size_t(b)], "invariant: block {} is on the free list twice", b);
        in_free[size_t(b)] = 1;
    }
    int64_t used = 0, evictable = 0, cached = 0;
    for (int32_t b = 0; b < n; ++b) {
        const int32_t rc = ref_counts_[size_t(b)];
        SKV_CHECK(rc >= 0, "invariant: block {} has negative ref count {}", b, rc);
        const bool c = cache_.is_cached(b), ev = cache_.is_evictable(b);
        cached += c;
        SKV_CHECK(!ev || c, "invariant: block {} is evictable but not cached", b);
        if (rc > 0) {
            ++used;
            SKV_CHECK(!in_free[size_t(b)] && !ev, "invariant: referenced block {} is free or evictable", b);
        } else if (ev) {
            ++evictable;
            SKV_CHECK(!in_free[size_t(b)], "invariant: evictable block {} is also on the free list", b);
        } else {
            SKV_CHECK(in_free[size_t(b)] && !c, "invariant: unreferenced block {} is neither free nor evictable", b);
        }
    }
    SKV_CHECK(used == num_used_, "invariant: {} blocks referenced but the counter says {}", used, num_used_);
    SKV_CHECK(evictable == cache_.num_evictable(), "invariant: {} evictable blocks but the LRU list holds {}",
              evictable, cache_.num_evictable());
    SKV_CHECK(cached == cache_.num_cached(), "invariant: {} cached blocks but the key map holds {}", cached,
              cache_.num_cached());
    SKV_CHECK(num_free_blocks() + used + evictable == n, "invariant: free {} + used {} + evictable {} != total {}",
              num_free_blocks(), used, evictable, n);
    SKV_CHECK(enable_prefix_caching_ || cached == 0, "invariant: prefix caching is off but {} blocks are cached",
              cached);
}

void BlockManager::check_invariants(const std::vector<const std::vector<int32_t>*>& live_tables) const {
    check_invariants();
    std::vector<int32_t> counts(size_t(num_blocks()), 0);
    for (const auto* t : live_tables)
        for (const int32_t b : *t) {
            SKV_CHECK(b >= 0 && b < num_blocks(), "invariant: a live table holds out-of-range block {}", b);
            ++counts[size_t(b)];
        }
    for (int32_t b = 0; b < num_blocks(); ++b)
        SKV_CHECK(counts[size_t(b)] == ref_counts_[size_t(b)],
                  "invariant: block {} has ref count {} but {} table entries hold it", b, ref_counts_[size_t(b)],
                  counts[size_t(b)]);
}

}  // namespace swiftkv
