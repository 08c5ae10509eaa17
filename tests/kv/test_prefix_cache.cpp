#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "core/error.h"
#include "kv/prefix_cache.h"

using namespace swiftkv;

namespace {

std::vector<uint64_t> chain_keys(const std::vector<int32_t>& tokens, int64_t bs) {
    std::vector<uint64_t> keys;
    uint64_t h = PrefixCache::kRootHash;
    for (size_t j = 0; (j + 1) * size_t(bs) <= tokens.size(); ++j) {
        h = PrefixCache::hash_block(h, std::span<const int32_t>(tokens.data() + j * size_t(bs), size_t(bs)));
        keys.push_back(h);
    }
    return keys;
}

std::vector<int32_t> iota_tokens(int n, int32_t start = 0) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[size_t(i)] = start + i;
    return t;
}

}  // namespace

TEST(PrefixCacheHash, SamePrefixSameKeysOneTokenChangesItsBlockAndAllLater) {
    const int64_t bs = 4;
    const auto a = iota_tokens(20);
    auto b = a;
    b.resize(16);  // a shorter prompt with the same start
    const auto full = chain_keys(a, bs);
    EXPECT_EQ(chain_keys(b, bs), std::vector<uint64_t>(full.begin(), full.begin() + 4));

    auto c = a;
    c[9] = 1000;  // block 2
    const auto ka = chain_keys(a, bs), kc = chain_keys(c, bs);
    ASSERT_EQ(ka.size(), 5u);
    EXPECT_EQ(ka[0], kc[0]);
    EXPECT_EQ(ka[1], kc[1]);
    for (size_t j = 2; j < ka.size(); ++j) EXPECT_NE(ka[j], kc[j]) << "block " << j;

    // The same block content under a different prefix gets a different key.
    auto d = a;
    d[0] = 99;
    std::copy(a.begin() + 4, a.end(), d.begin() + 4);
    const auto kd = chain_keys(d, bs);
    for (size_t j = 0; j < ka.size(); ++j) EXPECT_NE(ka[j], kd[j]);
}

TEST(PrefixCacheHash, OrderAndValuesMatter) {
    const std::vector<int32_t> x{1, 2, 3, 4}, y{2, 1, 3, 4}, z{1, 2, 3, 5}, neg{-1, 2, 3, 4};
    const auto h = [](const std::vector<int32_t>& t) { return PrefixCache::hash_block(PrefixCache::kRootHash, t); };
    std::set<uint64_t> keys{h(x), h(y), h(z), h(neg)};
    EXPECT_EQ(keys.size(), 4u);
    // Many single-token blocks: no collisions among 100k distinct inputs.
    std::set<uint64_t> many;
    for (int32_t t = 0; t < 100000; ++t) many.insert(PrefixCache::hash_block(PrefixCache::kRootHash, std::vector<int32_t>{t}));
    EXPECT_EQ(many.size(), 100000u);
}

TEST(PrefixCache, LookupVerifiesTokensAndParent) {
    PrefixCache c(8, 2);
    const std::vector<int32_t> t0{1, 2}, t1{3, 4};
    const uint64_t k0 = c.hash(PrefixCache::kRootHash, t0);
    const auto s0 = c.insert(k0, PrefixCache::kRootSerial, t0, 5);
    ASSERT_TRUE(s0.has_value());
    const uint64_t k1 = c.hash(k0, t1);
    const auto s1 = c.insert(k1, *s0, t1, 6);
    ASSERT_TRUE(s1.has_value());
    EXPECT_EQ(c.num_cached(), 2);

    auto hit = c.lookup(k1, *s0, t1);
    ASSERT_TRUE(hit.has_value());
    EXPECT_EQ(hit->block, 6);
    EXPECT_FALSE(c.lookup(k1, *s0, std::vector<int32_t>{3, 5}).has_value());  // tokens differ
    EXPECT_FALSE(c.lookup(k1, *s0 + 100, t1).has_value());                     // parent differs

    // Same content again: the existing entry answers, the new block is not entered.
    EXPECT_EQ(c.insert(k0, PrefixCache::kRootSerial, t0, 7), s0);
    EXPECT_FALSE(c.is_cached(7));
    // Same key, different content: a collision, refused.
    EXPECT_FALSE(c.insert(k0, PrefixCache::kRootSerial, std::vector<int32_t>{9, 9}, 7).has_value());
    EXPECT_THROW(c.insert(k0, PrefixCache::kRootSerial, std::vector<int32_t>{1}, 7), Error);  // not full
}

TEST(PrefixCache, EvictsLeastRecentlyReleasedFirst) {
    PrefixCache c(8, 1);
    uint64_t serial = PrefixCache::kRootSerial, key = PrefixCache::kRootHash;
    for (int32_t b = 0; b < 4; ++b) {
        const std::vector<int32_t> t{b};
        key = c.hash(key, t);
        serial = *c.insert(key, serial, t, b);
    }
    c.set_evictable(2);
    c.set_evictable(0);
    c.set_evictable(3);
    c.set_evictable(1);
    c.set_in_use(3);  // reused: leaves the LRU
    EXPECT_EQ(c.lru_order(), (std::vector<int32_t>{2, 0, 1}));
    EXPECT_EQ(c.evict_lru(), 2);
    EXPECT_EQ(c.evict_lru(), 0);
    c.set_evictable(3);
    EXPECT_EQ(c.evict_lru(), 1);
    EXPECT_EQ(c.evict_lru(), 3);
    EXPECT_FALSE(c.evict_lru().has_value());
    EXPECT_EQ(c.num_cached(), 0);
    EXPECT_EQ(c.stats().evictions, 4);
}

TEST(PrefixCache, ClearReturnsEvictableBlocksAndBumpsGeneration) {
    PrefixCache c(4, 1);
    const std::vector<int32_t> t{7};
    ASSERT_TRUE(c.insert(c.hash(PrefixCache::kRootHash, t), PrefixCache::kRootSerial, t, 1).has_value());
    c.set_evictable(1);
    const uint64_t g = c.generation();
    EXPECT_EQ(c.clear(), (std::vector<int32_t>{1}));
    EXPECT_EQ(c.generation(), g + 1);
    EXPECT_EQ(c.num_cached(), 0);
    EXPECT_FALSE(c.is_cached(1));
}
