#include "kv/prefix_cache.h"

#include <algorithm>

#include "core/error.h"

namespace swiftkv {

namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// splitmix64 finaliser: a bijective 64-bit mix with full avalanche.
inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

}  // namespace

PrefixCache::PrefixCache(int32_t num_blocks, int64_t block_size)
    : block_size_(block_size), entries_(size_t(std::max(num_blocks, 0))) {
    SKV_CHECK(num_blocks > 0, "the prefix cache needs at least one block (got {})", num_blocks);
    SKV_CHECK(block_size > 0, "the KV block size must be positive (got {})", block_size);
    tokens_.resize(size_t(num_blocks) * size_t(block_size));
}

uint64_t PrefixCache::hash_block(uint64_t parent_hash, std::span<const int32_t> tokens) {
    uint64_t h = mix64(parent_hash + kGolden);
    // Two tokens per mix round; the position-dependent constant keeps (a, b) and (b, a) apart.
    size_t i = 0;
    for (; i + 1 < tokens.size(); i += 2) {
        const uint64_t pair = (uint64_t(uint32_t(tokens[i])) << 32) | uint64_t(uint32_t(tokens[i + 1]));
        h = mix64(h ^ (pair + kGolden * (i + 1)));
    }
    if (i < tokens.size()) h = mix64(h ^ (uint64_t(uint32_t(tokens[i])) + kGolden * (i + 1)));
    return mix64(h ^ uint64_t(tokens.size()));
}

uint64_t PrefixCache::hash(uint64_t parent_hash, std::span<const int32_t> tokens) const {
    return hash_fn_ ? hash_fn_(parent_hash, tokens) : hash_block(parent_hash, tokens);
}

void PrefixCache::set_hash_function_for_testing(std::function<uint64_t(uint64_t, std::span<const int32_t>)> fn) {
    SKV_CHECK(by_key_.empty(), "the prefix cache's hash function can only be replaced while it is empty");
    hash_fn_ = std::move(fn);
}

std::optional<PrefixCache::Hit> PrefixCache::lookup(uint64_t key, uint64_t parent_serial,
                                                    std::span<const int32_t> tokens) const {
    if (int64_t(tokens.size()) != block_size_) return std::nullopt;
    const auto it = by_key_.find(key);
    if (it == by_key_.end()) return std::nullopt;
    const Entry& e = entries_[size_t(it->second)];
    if (e.parent_serial != parent_serial) return std::nullopt;
    const auto stored = tokens_of(it->second);
    if (!std::equal(stored.begin(), stored.end(), tokens.begin())) return std::nullopt;
    return Hit{it->second, e.serial};
}

std::optional<uint64_t> PrefixCache::insert(uint64_t key, uint64_t parent_serial, std::span<const int32_t> tokens,
                                            int32_t block) {
    SKV_CHECK(block >= 0 && size_t(block) < entries_.size(), "KV block {} is out of range for the prefix cache",
              block);
    SKV_CHECK(int64_t(tokens.size()) == block_size_, "only full blocks ({} tokens) can be cached, got {}",
              block_size_, tokens.size());
    if (const auto it = by_key_.find(key); it != by_key_.end()) {
        if (const auto hit = lookup(key, parent_serial, tokens)) return hit->serial;  // same content
        return std::nullopt;                                                         // collision
    }
    Entry& e = entries_[size_t(block)];
    if (e.serial != 0) return std::nullopt;  // cached under another key already
    e.key = key;
    e.parent_serial = parent_serial;
    e.serial = next_serial_++;
    e.evictable = false;
    std::copy(tokens.begin(), tokens.end(), tokens_.begin() + ptrdiff_t(size_t(block) * size_t(block_size_)));
    by_key_.emplace(key, block);
    return e.serial;
}

void PrefixCache::erase(int32_t block) {
    Entry& e = entries_.at(size_t(block));
    if (e.serial == 0) return;
    if (e.evictable) lru_.erase(e.lru_pos);
    by_key_.erase(e.key);
    e = Entry{};
}

void PrefixCache::set_evictable(int32_t block) {
    Entry& e = entries_.at(size_t(block));
    SKV_CHECK(e.serial != 0 && !e.evictable, "KV block {} is not a cached block in use", block);
    e.evictable = true;
    e.lru_pos = lru_.insert(lru_.end(), block);
}

void PrefixCache::set_in_use(int32_t block) {
    Entry& e = entries_.at(size_t(block));
    SKV_CHECK(e.serial != 0 && e.evictable, "KV block {} is not an evictable cached block", block);
    lru_.erase(e.lru_pos);
    e.evictable = false;
}

std::optional<int32_t> PrefixCache::evict_lru() {
    if (lru_.empty()) return std::nullopt;
    const int32_t block = lru_.front();
    erase(block);
    ++stats_.evictions;
    return block;
}

std::vector<int32_t> PrefixCache::clear() {
    std::vector<int32_t> freed(lru_.begin(), lru_.end());
    lru_.clear();
    by_key_.clear();
    std::fill(entries_.begin(), entries_.end(), Entry{});
    ++generation_;
    return freed;
}

}  // namespace swiftkv
