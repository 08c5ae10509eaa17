#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "core/error.h"
#include "kv/block_manager.h"

using namespace swiftkv;

namespace {

using CowList = std::vector<std::pair<int32_t, int32_t>>;

// A sequence as the engine would drive it, plus a simulated device: every block slot remembers the
// token whose K/V was written there, so tests can check that cache hits and copies carry the right
// content and that no shared block is ever written.
struct Seq {
    explicit Seq(std::vector<int32_t> t = {}) : tokens(std::move(t)) {}
    std::vector<int32_t> tokens;
    std::vector<int32_t> table;
    SequenceCacheState state;
    int64_t computed = 0;
};

class Sim {
public:
    Sim(int64_t num_blocks, int64_t bs, bool caching)
        : m(num_blocks, bs, caching), bs_(bs), device_(size_t(num_blocks), std::vector<int32_t>(size_t(bs), -1)) {}

    // Matches the prefix and computes the rest of the prompt. False (and nothing held) if short of blocks.
    bool start(Seq& s) {
        s.computed = m.match_prefix(s.tokens, s.table, &s.state);
        for (int64_t p = 0; p < s.computed; ++p) check_slot(s, p);  // hits carry the right K/V
        if (!step(s)) {
            m.release(s.table);
            return false;
        }
        return true;
    }
    // Appends one token and computes it.
    bool append(Seq& s, int32_t token) {
        s.tokens.push_back(token);
        if (!step(s)) {
            s.tokens.pop_back();
            return false;
        }
        return true;
    }
    // Computes tokens [computed, size).
    bool step(Seq& s) {
        CowList cow;
        const auto before = s.table;
        if (!m.ensure_capacity(s.table, s.computed, int64_t(s.tokens.size()), cow)) {
            EXPECT_EQ(s.table, before);
            EXPECT_TRUE(cow.empty());
            return false;
        }
        for (auto [src, dst] : cow) device_[size_t(dst)] = device_[size_t(src)];
        for (int64_t p = s.computed; p < int64_t(s.tokens.size()); ++p) {
            const int32_t b = s.table[size_t(p / bs_)];
            EXPECT_EQ(m.ref_count(b), 1) << "write into shared block " << b;
            device_[size_t(b)][size_t(p % bs_)] = s.tokens[size_t(p)];
        }
        s.computed = int64_t(s.tokens.size());
        m.register_full_blocks(s.tokens, s.table, s.computed, s.state);
        for (int64_t p = 0; p < s.computed; ++p) check_slot(s, p);
        return true;
    }
    void check_slot(const Seq& s, int64_t p) const {
        const int32_t b = s.table[size_t(p / bs_)];
        ASSERT_EQ(device_[size_t(b)][size_t(p % bs_)], s.tokens[size_t(p)]) << "position " << p << " block " << b;
    }

    BlockManager m;

private:
    int64_t bs_;
    std::vector<std::vector<int32_t>> device_;
};

std::vector<int32_t> iota_tokens(int n, int32_t start = 0) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[size_t(i)] = start + i;
    return t;
}

}  // namespace

TEST(BlockManager, ConstructionAndArgumentErrors) {
    EXPECT_THROW(BlockManager(0, 16, true), Error);
    EXPECT_THROW(BlockManager(-3, 16, true), Error);
    EXPECT_THROW(BlockManager(4, 0, true), Error);
    BlockManager m(4, 4, true);
    EXPECT_EQ(m.num_blocks(), 4);
    EXPECT_EQ(m.num_free_blocks(), 4);
    EXPECT_THROW((void)m.can_allocate(-1), Error);
    std::vector<int32_t> t;
    CowList cow;
    EXPECT_THROW((void)m.ensure_capacity(t, -1, 4, cow), Error);
    EXPECT_THROW((void)m.ensure_capacity(t, 5, 4, cow), Error);
    EXPECT_THROW((void)m.ensure_capacity(t, 4, 8, cow), Error);  // 4 computed tokens in an empty table
    std::vector<int32_t> foreign{9};
    EXPECT_THROW(m.release(foreign), Error);
    std::vector<int32_t> unreferenced{1};
    EXPECT_THROW(m.release(unreferenced), Error);
    ASSERT_TRUE(m.ensure_capacity(t, 0, 5, cow));
    auto copy = t;
    m.release(t);
    EXPECT_TRUE(t.empty());
    EXPECT_THROW(m.release(copy), Error);  // double release
    std::vector<int32_t> dst{0};
    EXPECT_THROW(m.fork(copy, dst), Error);
    m.check_invariants({});
}

TEST(BlockManager, AllOrNothingAllocation) {
    BlockManager m(5, 4, false);
    std::vector<int32_t> a, b;
    CowList cow;
    ASSERT_TRUE(m.ensure_capacity(a, 0, 9, cow));  // 3 blocks
    EXPECT_EQ(a.size(), 3u);
    EXPECT_TRUE(m.can_allocate(2));
    EXPECT_FALSE(m.can_allocate(3));
    EXPECT_FALSE(m.ensure_capacity(b, 0, 12, cow));  // needs 3, only 2 left: nothing taken
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(m.num_free_blocks(), 2);
    EXPECT_FALSE(m.ensure_capacity(a, 9, 21, cow));  // needs 3 more
    EXPECT_EQ(a.size(), 3u);
    ASSERT_TRUE(m.ensure_capacity(a, 9, 20, cow));  // needs exactly 2
    EXPECT_EQ(a.size(), 5u);
    EXPECT_EQ(m.num_free_blocks(), 0);
    EXPECT_TRUE(cow.empty());
    m.check_invariants({&a});
    m.release(a);
    EXPECT_EQ(m.num_free_blocks(), 5);
    m.check_invariants({});
}

TEST(BlockManager, ForkAndReleaseCountReferences) {
    BlockManager m(8, 4, false);
    std::vector<int32_t> a, b, c;
    CowList cow;
    ASSERT_TRUE(m.ensure_capacity(a, 0, 8, cow));
    m.fork(a, b);
    m.fork(a, c);
    EXPECT_EQ(b, a);
    for (int32_t blk : a) EXPECT_EQ(m.ref_count(blk), 3);
    EXPECT_EQ(m.num_used_blocks(), 2);
    m.check_invariants({&a, &b, &c});
    m.release(a);
    for (int32_t blk : b) EXPECT_EQ(m.ref_count(blk), 2);
    m.check_invariants({&b, &c});
    m.release(c);
    m.release(b);
    EXPECT_EQ(m.num_used_blocks(), 0);
    EXPECT_EQ(m.num_free_blocks(), 8);
    m.check_invariants({});
}

TEST(BlockManager, CopyOnWriteOfSharedPartialLastBlock) {
    Sim sim(16, 4, true);
    Seq a(iota_tokens(6));  // blocks: [0..3] full, [4,5] partial
    ASSERT_TRUE(sim.start(a));
    Seq b = a;
    b.table.clear();
    sim.m.fork(a.table, b.table);
    sim.m.check_invariants({&a.table, &b.table});
    const auto shared_last = a.table[1];

    ASSERT_TRUE(sim.append(a, 100));  // a writes into the shared partial block: gets a copy
    EXPECT_NE(a.table[1], shared_last);
    EXPECT_EQ(a.table[0], b.table[0]);  // the full block stays shared
    EXPECT_EQ(sim.m.ref_count(shared_last), 1);
    ASSERT_TRUE(sim.append(b, 200));  // b is now the only holder: writes in place
    EXPECT_EQ(b.table[1], shared_last);
    EXPECT_EQ(sim.m.ref_count(b.table[0]), 2);
    sim.m.check_invariants({&a.table, &b.table});

    // The returned copy list: fork again, one step on the child reports (src, dst).
    Seq c = b;
    c.table.clear();
    sim.m.fork(b.table, c.table);
    c.tokens.push_back(300);
    CowList cow;
    ASSERT_TRUE(sim.m.ensure_capacity(c.table, c.computed, int64_t(c.tokens.size()), cow));
    ASSERT_EQ(cow.size(), 1u);
    EXPECT_EQ(cow[0].first, b.table[1]);
    EXPECT_EQ(cow[0].second, c.table[1]);
    sim.m.check_invariants({&a.table, &b.table, &c.table});
    sim.m.release(a.table);
    sim.m.release(b.table);
    sim.m.release(c.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, CopyOnWriteIsAllOrNothing) {
    BlockManager m(3, 4, false);
    std::vector<int32_t> a, b;
    CowList cow;
    ASSERT_TRUE(m.ensure_capacity(a, 0, 6, cow));  // 2 blocks, second partial
    m.fork(a, b);
    // Writing positions 6..9 needs a copy of block 1 plus one new block: only one is free.
    EXPECT_FALSE(m.ensure_capacity(b, 6, 10, cow));
    EXPECT_TRUE(cow.empty());
    EXPECT_EQ(b, a);
    ASSERT_TRUE(m.ensure_capacity(b, 6, 8, cow));  // just the copy
    EXPECT_EQ(cow.size(), 1u);
    m.check_invariants({&a, &b});
    m.release(a);
    m.release(b);
    m.check_invariants({});
}

TEST(BlockManager, HitAfterReleaseReusesEvictableBlocks) {
    Sim sim(16, 4, true);
    Seq a(iota_tokens(14));  // 3 full blocks + 2 tokens
    ASSERT_TRUE(sim.start(a));
    EXPECT_EQ(sim.m.num_cached_blocks(), 3);
    const auto a_blocks = a.table;
    sim.m.release(a.table);
    EXPECT_EQ(sim.m.num_used_blocks(), 0);
    EXPECT_EQ(sim.m.num_evictable_blocks(), 3);
    EXPECT_EQ(sim.m.num_free_blocks(), 13);
    EXPECT_TRUE(sim.m.can_allocate(16));
    sim.m.check_invariants({});

    Seq b(iota_tokens(10));  // shares the first two blocks, then differs
    b.tokens.push_back(555);
    ASSERT_TRUE(sim.start(b));
    EXPECT_EQ(b.table[0], a_blocks[0]);
    EXPECT_EQ(b.table[1], a_blocks[1]);
    EXPECT_EQ(sim.m.prefix_cache_stats().hit_blocks, 2);
    EXPECT_EQ(sim.m.prefix_cache_stats().hit_tokens, 8);
    EXPECT_EQ(sim.m.prefix_cache_stats().queries, 2);
    EXPECT_EQ(sim.m.num_evictable_blocks(), 1);
    sim.m.check_invariants({&b.table});
    sim.m.release(b.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, NeverCoversTheLastToken) {
    Sim sim(16, 4, true);
    Seq a(iota_tokens(12));  // exactly 3 full blocks
    ASSERT_TRUE(sim.start(a));
    EXPECT_EQ(sim.m.num_cached_blocks(), 3);
    Seq b(iota_tokens(12));
    EXPECT_EQ(sim.m.match_prefix(b.tokens, b.table, &b.state), 8);  // the third block is recomputed
    EXPECT_EQ(b.table.size(), 2u);
    sim.m.release(b.table);
    Seq c(iota_tokens(13));
    EXPECT_EQ(sim.m.match_prefix(c.tokens, c.table), 12);
    sim.m.release(c.table);
    Seq d(iota_tokens(1));
    EXPECT_EQ(sim.m.match_prefix(d.tokens, d.table), 0);
    std::vector<int32_t> empty_tokens, t;
    EXPECT_EQ(sim.m.match_prefix(empty_tokens, t), 0);
    // The full prompt recomputed: its last block duplicates a cached one, which stays the entry.
    ASSERT_TRUE(sim.start(b));
    EXPECT_NE(b.table[2], a.table[2]);
    EXPECT_FALSE(sim.m.is_cached(b.table[2]));
    sim.m.release(a.table);
    sim.m.release(b.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, EvictsInLruOrderTailFirst) {
    Sim sim(6, 2, true);
    Seq a({1, 2, 3, 4, 5});  // 2 cached blocks + 1 partial
    Seq b({7, 8, 9, 10, 11});
    ASSERT_TRUE(sim.start(a));
    ASSERT_TRUE(sim.start(b));
    const auto ta = a.table, tb = b.table;
    sim.m.release(a.table);  // a's blocks first (tail first), then b's
    sim.m.release(b.table);
    EXPECT_EQ(sim.m.prefix_cache().lru_order(), (std::vector<int32_t>{ta[1], ta[0], tb[1], tb[0]}));
    EXPECT_EQ(sim.m.num_free_blocks(), 2);

    // Needs 4 blocks: the 2 free ones, then a's blocks are evicted (least recently released).
    Seq c({20, 21, 22, 23, 24, 25, 26});
    ASSERT_TRUE(sim.start(c));
    // a's physical blocks were recycled into c (and may now cache c's content).
    EXPECT_NE(std::find(c.table.begin(), c.table.end(), ta[0]), c.table.end());
    EXPECT_NE(std::find(c.table.begin(), c.table.end(), ta[1]), c.table.end());
    EXPECT_TRUE(sim.m.is_cached(tb[0]));
    EXPECT_TRUE(sim.m.is_cached(tb[1]));
    EXPECT_EQ(sim.m.prefix_cache_stats().evictions, 2);
    sim.m.check_invariants({&c.table});

    // b's prefix still hits; a's is gone.
    Seq b2({7, 8, 9, 10, 11});
    EXPECT_EQ(sim.m.match_prefix(b2.tokens, b2.table), 4);
    Seq a2({1, 2, 3, 4, 5});
    EXPECT_EQ(sim.m.match_prefix(a2.tokens, a2.table), 0);
    sim.m.release(b2.table);
    sim.m.release(c.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, CollisionNeverGivesWrongBlocks) {
    Sim sim(16, 2, true);
    // Every block hashes to the same key: only token verification keeps contents apart.
    sim.m.prefix_cache().set_hash_function_for_testing([](uint64_t, std::span<const int32_t>) { return 42ull; });
    Seq a({1, 2, 3, 4, 5});
    ASSERT_TRUE(sim.start(a));
    EXPECT_EQ(sim.m.num_cached_blocks(), 1);  // block 1 collides with block 0: a's chain stops
    Seq b({9, 9, 3, 4, 5});
    EXPECT_EQ(sim.m.match_prefix(b.tokens, b.table), 0);  // same key, different tokens: miss
    Seq c({1, 2, 3, 4, 5});
    EXPECT_EQ(sim.m.match_prefix(c.tokens, c.table), 2);  // true content still hits
    EXPECT_EQ(c.table[0], a.table[0]);
    sim.m.release(c.table);
    sim.m.release(a.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, CollisionWithDifferentParentIsAMiss) {
    Sim sim(16, 2, true);
    // Key depends only on the block's own tokens: {5,6} after {1,2} and after {3,4} share a key.
    sim.m.prefix_cache().set_hash_function_for_testing(
        [](uint64_t, std::span<const int32_t> t) { return PrefixCache::hash_block(0, t); });
    Seq a({1, 2, 5, 6, 0});
    ASSERT_TRUE(sim.start(a));
    Seq b({3, 4, 5, 6, 0});
    ASSERT_TRUE(sim.start(b));  // block 1 would collide with a's: not cached, b's computed afresh
    EXPECT_NE(b.table[1], a.table[1]);
    sim.m.release(a.table);
    sim.m.release(b.table);
    Seq c({3, 4, 5, 6, 0});
    EXPECT_EQ(sim.m.match_prefix(c.tokens, c.table), 2);  // {3,4} hits, {5,6} under a's parent does not
    sim.m.release(c.table);
    sim.m.check_invariants({});
}

TEST(BlockManager, DisabledCachingAndReset) {
    Sim off(8, 2, false);
    Seq a({1, 2, 3, 4, 5});
    ASSERT_TRUE(off.start(a));
    EXPECT_EQ(off.m.num_cached_blocks(), 0);
    off.m.release(a.table);
    Seq a2({1, 2, 3, 4, 5});
    EXPECT_EQ(off.m.match_prefix(a2.tokens, a2.table), 0);
    EXPECT_EQ(off.m.num_free_blocks(), 8);

    Sim on(8, 2, true);
    Seq b({1, 2, 3, 4, 5}), live({7, 7, 8, 8, 9});
    ASSERT_TRUE(on.start(b));
    ASSERT_TRUE(on.start(live));
    on.m.release(b.table);
    EXPECT_EQ(on.m.num_cached_blocks(), 4);
    on.m.reset_prefix_cache();
    EXPECT_EQ(on.m.num_cached_blocks(), 0);
    EXPECT_EQ(on.m.num_free_blocks(), 5);
    on.m.check_invariants({&live.table});
    // The live sequence's cursor notices the reset and registers its blocks again.
    ASSERT_TRUE(on.append(live, 10));
    EXPECT_EQ(on.m.num_cached_blocks(), 3);
    on.m.release(live.table);
    on.m.check_invariants({});
}

TEST(BlockManager, RandomizedStress) {
    for (const bool caching : {true, false}) {
        const int64_t bs = 4, num_blocks = 48;
        Sim sim(num_blocks, bs, caching);
        std::mt19937 rng(caching ? 1234 : 5678);
        auto rnd = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
        // A few shared "system prompts" so prefixes really repeat.
        std::vector<std::vector<int32_t>> roots;
        for (int r = 0; r < 4; ++r) {
            std::vector<int32_t> t;
            for (int i = 0, n = rnd(1, 14); i < n; ++i) t.push_back(rnd(0, 5));
            roots.push_back(t);
        }
        std::vector<Seq> live;
        int64_t started = 0, refused = 0, forks = 0, appends = 0;
        auto tables = [&] {
            std::vector<const std::vector<int32_t>*> t;
            for (const auto& s : live) t.push_back(&s.table);
            return t;
        };
        for (int op = 0; op < 5000; ++op) {
            const int kind = rnd(0, 9);
            if (kind <= 2 || live.empty()) {
                Seq s(roots[size_t(rnd(0, 3))]);
                for (int i = 0, n = rnd(0, 10); i < n; ++i) s.tokens.push_back(rnd(0, 3));
                if (s.tokens.empty()) s.tokens.push_back(1);
                if (sim.start(s)) {
                    live.push_back(std::move(s));
                    ++started;
                } else {
                    ++refused;
                }
            } else if (kind <= 6) {
                Seq& s = live[size_t(rnd(0, int(live.size()) - 1))];
                if (sim.append(s, rnd(0, 3))) ++appends;
            } else if (kind == 7) {
                const Seq& src = live[size_t(rnd(0, int(live.size()) - 1))];
                Seq s(src.tokens);
                s.state = src.state;
                s.computed = src.computed;
                sim.m.fork(src.table, s.table);
                live.push_back(std::move(s));
                ++forks;
            } else {
                const size_t i = size_t(rnd(0, int(live.size()) - 1));
                sim.m.release(live[i].table);
                live.erase(live.begin() + ptrdiff_t(i));
            }
            ASSERT_NO_THROW(sim.m.check_invariants(tables())) << "op " << op;
            if (HasFatalFailure() || HasNonfatalFailure()) return;
        }
        for (auto& s : live) sim.m.release(s.table);
        live.clear();
        sim.m.check_invariants({});
        EXPECT_EQ(sim.m.num_used_blocks(), 0);
        EXPECT_EQ(sim.m.num_free_blocks() + sim.m.num_evictable_blocks(), num_blocks);
        EXPECT_GT(started, 500);
        EXPECT_GT(forks, 200);
        EXPECT_GT(appends, 1000);
        EXPECT_GT(refused, 0);  // the pool really ran short
        if (caching) {
            EXPECT_GT(sim.m.prefix_cache_stats().hit_blocks, 100);
            EXPECT_GT(sim.m.prefix_cache_stats().evictions, 0);
            EXPECT_GT(sim.m.prefix_cache_stats().hit_rate(), 0.0);
        } else {
            EXPECT_EQ(sim.m.num_cached_blocks(), 0);
        }
    }
}
