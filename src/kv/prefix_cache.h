// PrefixCache — maps the content of a FULL KV block (its tokens and everything before them) to the
// physical block that holds its K/V, so that a new prompt that starts like an earlier one reuses the
// computed blocks (DESIGN.md section 4).
//
// Keys are chained 64-bit hashes: h_0 = H(kRootHash, tokens of block 0), h_i = H(h_{i-1}, tokens of
// block i); equal prefixes give equal keys, and one different token changes the key of its block and
// of every later block. Hashes are never trusted alone: every entry keeps its block's tokens and the
// serial number of its parent entry (serials are never reused), and a lookup must match both, so a
// chain of lookups from block 0 only hits blocks whose whole prefix is token-for-token equal. A hash
// collision therefore costs a miss, never wrong K/V.
//
// The cache does not own reference counts: BlockManager tells it when a cached block loses its last
// reference (set_evictable) or gains one again (set_in_use). Evictable blocks keep their entries and
// are handed back in least-recently-released order by evict_lru() when a free block is needed.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace swiftkv {

struct PrefixCacheStats {
    int64_t queries = 0;       // match_prefix calls
    int64_t query_tokens = 0;  // prompt tokens looked up (whole prompts)
    int64_t query_blocks = 0;  // full blocks that were eligible for a hit
    int64_t hit_tokens = 0;    // tokens whose K/V came from the cache
    int64_t hit_blocks = 0;    // blocks that came from the cache
    int64_t evictions = 0;     // cached blocks evicted to make room
    // Fraction of queried tokens served from the cache (0 when nothing was queried).
    double hit_rate() const { return query_tokens > 0 ? double(hit_tokens) / double(query_tokens) : 0.0; }
};

class PrefixCache {
public:
    // Parent hash of block 0, and the parent serial of block 0's entries (no entry has serial 0).
    static constexpr uint64_t kRootHash = 0x243f6a8885a308d3ull;
    static constexpr uint64_t kRootSerial = 0;

    struct Hit {
        int32_t block;    // physical block holding the K/V
        uint64_t serial;  // entry serial, the parent serial for the next block's lookup
    };

    PrefixCache(int32_t num_blocks, int64_t block_size);

    // The default key function: a splitmix64-style mix of the parent key and each token.
    static uint64_t hash_block(uint64_t parent_hash, std::span<const int32_t> tokens);
    // The key used by this cache (hash_block unless a test replaced it).
    uint64_t hash(uint64_t parent_hash, std::span<const int32_t> tokens) const;
    // Test hook: replace the key function (e.g. with one that collides) — call only on an empty cache.
    void set_hash_function_for_testing(std::function<uint64_t(uint64_t, std::span<const int32_t>)> fn);

    // The entry under `key` whose parent serial and tokens equal these, if any. Does not change state.
    std::optional<Hit> lookup(uint64_t key, uint64_t parent_serial, std::span<const int32_t> tokens) const;

    // Enters `block` (not cached yet, referenced) under `key`. Returns the serial of the entry now
    // holding this content: a new one, or an existing one with equal parent and tokens (the block is
    // then not entered: another block already holds the same K/V). Returns nullopt, entering
    // nothing, when `key` is taken by different content (a hash collision) or `block` is already
    // cached under another key.
    std::optional<uint64_t> insert(uint64_t key, uint64_t parent_serial, std::span<const int32_t> tokens,
                                   int32_t block);

    bool is_cached(int32_t block) const { return entries_.at(size_t(block)).serial != 0; }
    bool is_evictable(int32_t block) const { return entries_.at(size_t(block)).evictable; }
    // Removes `block`'s entry (no-op if not cached). Entries chained below it become unreachable and
    // are evicted in time.
    void erase(int32_t block);
    // The last reference to cached `block` was dropped: it joins the LRU tail (most recent).
    void set_evictable(int32_t block);
    // Cached, evictable `block` is referenced again: it leaves the LRU list.
    void set_in_use(int32_t block);
    // Removes the least recently released evictable entry and returns its block (nullopt if none).
    std::optional<int32_t> evict_lru();
    // Evictable blocks from least to most recently released (for tests and diagnostics).
    std::vector<int32_t> lru_order() const { return {lru_.begin(), lru_.end()}; }

    // Drops every entry; returns the blocks that were evictable (they become plain free blocks).
    // Bumps generation() so that per-sequence registration cursors start over.
    std::vector<int32_t> clear();
    uint64_t generation() const { return generation_; }

    int64_t num_cached() const { return int64_t(by_key_.size()); }
    int64_t num_evictable() const { return int64_t(lru_.size()); }
    int64_t block_size() const { return block_size_; }

    PrefixCacheStats& stats() { return stats_; }
    const PrefixCacheStats& stats() const { return stats_; }

private:
    struct Entry {
        uint64_t key = 0;
        uint64_t parent_serial = 0;
        uint64_t serial = 0;  // 0: block not cached
        bool evictable = false;
        std::list<int32_t>::iterator lru_pos;
    };
    std::span<const int32_t> tokens_of(int32_t block) const {
        return {tokens_.data() + size_t(block) * size_t(block_size_), size_t(block_size_)};
    }

    int64_t block_size_;
    std::vector<Entry> entries_;                   // indexed by block id
    std::vector<int32_t> tokens_;                  // block_size tokens per block id
    std::unordered_map<uint64_t, int32_t> by_key_; // key -> block
    std::list<int32_t> lru_;                       // evictable blocks, oldest first
    uint64_t next_serial_ = 1;
    uint64_t generation_ = 0;
    std::function<uint64_t(uint64_t, std::span<const int32_t>)> hash_fn_;
    PrefixCacheStats stats_;
};

}  // namespace swiftkv
