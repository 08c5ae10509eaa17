#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "core/error.h"
#include "engine/scheduler.h"

using namespace swiftkv;

namespace {

SchedulerConfig config(int64_t max_model_len, int64_t max_batched_tokens = 2048, int64_t max_num_seqs = 256,
                       bool chunked = true) {
    SchedulerConfig c;
    c.max_model_len = max_model_len;
    c.max_batched_tokens = max_batched_tokens;
    c.max_num_seqs = max_num_seqs;
    c.enable_chunked_prefill = chunked;
    return c;
}

std::vector<int32_t> iota_tokens(int64_t n, int32_t first = 1) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = first + int32_t(i);
    return v;
}

// Drives a scheduler like an engine would, simulating the KV cache contents: every block slot holds
// the token whose K/V was written there, copy-on-write copies are applied in order, and each step
// checks that every scheduled sequence's table reads back exactly its own tokens.
struct Driver {
    Scheduler& s;
    std::vector<std::vector<int32_t>> device;
    std::map<uint64_t, int64_t> max_tokens;  // by group id; default 4
    std::map<uint64_t, Sequence> done;       // by sequence id
    int64_t steps = 0;
    int64_t num_preempted = 0, num_cow = 0, num_forks = 0, num_partial_chunks = 0;

    explicit Driver(Scheduler& sched)
        : s(sched),
          device(size_t(sched.block_manager().num_blocks()),
                 std::vector<int32_t>(size_t(sched.block_manager().block_size()), -1)) {}

    static int32_t token_for(uint64_t id, size_t len, int j) { return int32_t((id * 131 + len * 7 + size_t(j)) % 1000); }

    ScheduleOutput step() {
        ScheduleOutput out = s.schedule();
        s.check_invariants();
        const auto& bm = s.block_manager();
        const int64_t bs = bm.block_size();
        int64_t budget_used = 0;
        for (const auto& e : out.seqs) budget_used += e.num_tokens;
        EXPECT_EQ(budget_used, out.num_batched_tokens);
        EXPECT_LE(out.num_batched_tokens, s.config().max_batched_tokens);
        for (auto [src, dst] : out.cow_copies) device[size_t(dst)] = device[size_t(src)];
        num_preempted += int64_t(out.preempted.size());
        num_cow += int64_t(out.cow_copies.size());
        for (const auto& e : out.seqs) {
            num_forks += e.num_samples > 1;
            num_partial_chunks += !e.needs_logits;
        }
        if (!out.empty()) {
            ForwardBatch b = s.to_forward_batch(out);
            b.validate(bs, bm.num_blocks());
            for (int64_t q = 0; q < b.num_seqs(); ++q) {
                const int32_t* table = &b.block_tables[size_t(q * b.max_blocks_per_seq)];
                for (int32_t r = b.query_start[size_t(q)]; r < b.query_start[size_t(q) + 1]; ++r) {
                    const int32_t p = b.positions[size_t(r)];
                    device[size_t(table[p / bs])][size_t(p % bs)] = b.tokens[size_t(r)];
                }
            }
            for (size_t q = 0; q < out.seqs.size(); ++q) {
                const auto& e = out.seqs[q];
                const Sequence* seq = s.find(e.id);
                EXPECT_NE(seq, nullptr);
                if (seq == nullptr) continue;
                for (int64_t p = 0; p < e.start + e.num_tokens; ++p) {
                    EXPECT_EQ(device[size_t(e.block_table[size_t(p / bs)])][size_t(p % bs)], seq->tokens[size_t(p)])
                        << "sequence " << e.id << " position " << p;
                }
            }
        }
        std::vector<int32_t> sampled;
        for (const auto& e : out.seqs) {
            if (!e.needs_logits) continue;
            const Sequence* seq = s.find(e.id);
            for (int j = 0; j < e.num_samples; ++j) sampled.push_back(token_for(e.id, seq->tokens.size(), j));
        }
        s.update(out, sampled);
        s.check_invariants();
        // Stop decisions.
        for (uint64_t id : s.running_ids()) {
            const Sequence* seq = s.find(id);
            auto it = max_tokens.find(seq->group_id);
            const int64_t limit = it == max_tokens.end() ? 4 : it->second;
            if (seq->num_output_tokens() >= limit) s.finish(id, "stop");
        }
        for (auto& f : s.take_finished()) done.emplace(f.id, std::move(f));
        s.check_invariants();
        ++steps;
        return out;
    }

    void run_until_idle(int64_t max_steps = 10000) {
        while (s.has_work() && steps < max_steps) step();
        EXPECT_FALSE(s.has_work());
    }
};

}  // namespace

TEST(Scheduler, RejectsBadRequestsAndConfigs) {
    Scheduler s(config(32), 16, 16);
    EXPECT_THROW(s.add({}), Error);
    EXPECT_THROW(s.add(iota_tokens(33)), Error);
    EXPECT_THROW(s.add(iota_tokens(4), 0), Error);
    EXPECT_THROW(s.add(iota_tokens(4), 300), Error);
    EXPECT_NO_THROW(s.add(iota_tokens(32)));
    EXPECT_THROW(Scheduler(SchedulerConfig{}, 16, 16), Error);           // max_model_len unset
    EXPECT_THROW(Scheduler(config(64, 32, 8, false), 16, 16), Error);   // no chunking, budget < max_model_len
    EXPECT_THROW(s.finish(12345, "stop"), Error);
    EXPECT_FALSE(s.abort(12345));
}

TEST(Scheduler, BudgetRespectedExactly) {
    Scheduler s(config(64, 10), 64, 4);
    const uint64_t a = s.add(iota_tokens(7));
    const uint64_t b = s.add(iota_tokens(7, 100));
    const uint64_t c = s.add(iota_tokens(7, 200));
    auto out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.num_batched_tokens, 10);
    EXPECT_EQ(out.seqs[0].id, a);
    EXPECT_EQ(out.seqs[0].num_tokens, 7);
    EXPECT_TRUE(out.seqs[0].needs_logits);
    EXPECT_EQ(out.seqs[1].id, b);
    EXPECT_EQ(out.seqs[1].num_tokens, 3);
    EXPECT_FALSE(out.seqs[1].needs_logits);
    EXPECT_EQ(out.num_samples, 1);
    s.update(out, {5});
    EXPECT_EQ(s.num_running(), 2);
    EXPECT_EQ(s.num_waiting(), 1);
    // Next: a's decode (1), b's remaining 4, then c's first 5 tokens.
    out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 3u);
    EXPECT_EQ(out.seqs[0].id, a);
    EXPECT_EQ(out.seqs[0].num_tokens, 1);
    EXPECT_EQ(out.seqs[1].id, b);
    EXPECT_EQ(out.seqs[1].start, 3);
    EXPECT_EQ(out.seqs[1].num_tokens, 4);
    EXPECT_EQ(out.seqs[2].id, c);
    EXPECT_EQ(out.seqs[2].num_tokens, 5);
    EXPECT_EQ(out.num_batched_tokens, 10);
    EXPECT_EQ(out.num_decode_seqs, 1);
    EXPECT_EQ(out.num_prefill_tokens, 9);
    s.check_invariants();
}

TEST(Scheduler, UpdateRejectsWrongSampleCount) {
    Scheduler s(config(64), 64, 4);
    s.add(iota_tokens(5));
    auto out = s.schedule();
    EXPECT_THROW(s.update(out, {}), Error);
    EXPECT_THROW(s.update(out, {1, 2}), Error);
    s.update(out, {1});
    EXPECT_EQ(s.find(out.seqs[0].id)->tokens.size(), 6u);
}

TEST(Scheduler, DecodesBeforePrefills) {
    Scheduler s(config(128, 8), 64, 4);
    Driver d(s);
    d.max_tokens[s.add(iota_tokens(3))] = 100;
    d.max_tokens[s.add(iota_tokens(3, 50))] = 100;
    d.step();  // both prompts
    // An older sequence mid-prefill and a new prompt: the two decodes still come first.
    const uint64_t late = s.add(iota_tokens(40, 300));
    d.max_tokens[late] = 100;
    auto out = d.step();
    ASSERT_EQ(out.seqs.size(), 3u);
    EXPECT_EQ(out.seqs[0].num_tokens, 1);
    EXPECT_EQ(out.seqs[1].num_tokens, 1);
    EXPECT_EQ(out.seqs[2].id, late);
    EXPECT_EQ(out.seqs[2].num_tokens, 6);
    out = d.step();
    ASSERT_EQ(out.seqs.size(), 3u);
    EXPECT_EQ(out.seqs[0].num_tokens, 1);
    EXPECT_EQ(out.seqs[1].num_tokens, 1);
    EXPECT_EQ(out.seqs[2].id, late);
    EXPECT_EQ(out.seqs[2].start, 6);
    EXPECT_EQ(out.num_decode_seqs, 2);
}

TEST(Scheduler, ChunkedPrefillOnlyLastChunkNeedsLogits) {
    Scheduler s(config(128, 16), 64, 16);
    const uint64_t id = s.add(iota_tokens(50));
    const int64_t expect[] = {16, 16, 16, 2};
    for (int i = 0; i < 4; ++i) {
        auto out = s.schedule();
        ASSERT_EQ(out.seqs.size(), 1u);
        EXPECT_EQ(out.seqs[0].start, 16 * i);
        EXPECT_EQ(out.seqs[0].num_tokens, expect[i]);
        EXPECT_EQ(out.seqs[0].needs_logits, i == 3);
        EXPECT_EQ(int64_t(out.seqs[0].block_table.size()), (16 * i + expect[i] + 15) / 16);
        ForwardBatch b = s.to_forward_batch(out);
        b.validate(16, 64);
        EXPECT_EQ(b.logits_indices.size(), i == 3 ? 1u : 0u);
        s.update(out, i == 3 ? std::vector<int32_t>{7} : std::vector<int32_t>{});
    }
    EXPECT_EQ(s.find(id)->num_computed_tokens, 50);
    EXPECT_EQ(s.find(id)->tokens.back(), 7);
    auto out = s.schedule();
    EXPECT_EQ(out.seqs[0].num_tokens, 1);
    EXPECT_EQ(out.seqs[0].start, 50);
}

TEST(Scheduler, ChunkedPrefillOffWaitsForRoom) {
    Scheduler s(config(64, 64, 256, false), 64, 16);
    const uint64_t a = s.add(iota_tokens(40));
    const uint64_t b = s.add(iota_tokens(30, 100));
    auto out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 1u);
    EXPECT_EQ(out.seqs[0].id, a);
    EXPECT_EQ(out.seqs[0].num_tokens, 40);
    s.update(out, {1});
    out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.seqs[1].id, b);
    EXPECT_EQ(out.seqs[1].num_tokens, 30);
    EXPECT_TRUE(out.seqs[1].needs_logits);
}

TEST(Scheduler, PrefixHitNeverCoversWholePrompt) {
    Scheduler s(config(256), 64, 16);
    Driver d(s);
    const auto prefix = iota_tokens(64, 1000);
    d.max_tokens[s.add(prefix)] = 2;
    d.run_until_idle();
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
    EXPECT_GE(s.block_manager().num_evictable_blocks(), 4);

    // Same 64 tokens: the last block is recomputed (the last token must produce logits).
    const uint64_t b = s.add(prefix);
    auto out = d.step();
    ASSERT_EQ(out.seqs.size(), 1u);
    EXPECT_EQ(out.seqs[0].id, b);
    EXPECT_EQ(out.seqs[0].start, 48);
    EXPECT_EQ(out.seqs[0].num_tokens, 16);

    // The prefix plus more: all 64 prefix tokens come from the cache.
    auto longer = prefix;
    for (int i = 0; i < 10; ++i) longer.push_back(5000 + i);
    const uint64_t c = s.add(longer);
    out = d.step();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.seqs[1].id, c);
    EXPECT_EQ(out.seqs[1].start, 64);
    EXPECT_EQ(out.seqs[1].num_tokens, 10);
    EXPECT_EQ(out.seqs[1].block_table[0], out.seqs[0].block_table[0]);  // shared prefix block
    d.run_until_idle();
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
}

TEST(Scheduler, ForkSharesPromptAndCopiesOnWrite) {
    Scheduler s(config(256), 64, 16);
    Driver d(s);
    const uint64_t g = s.add(iota_tokens(20), 3);
    d.max_tokens[g] = 5;
    auto out = d.step();
    ASSERT_EQ(out.seqs.size(), 1u);
    EXPECT_EQ(out.seqs[0].num_samples, 3);
    EXPECT_EQ(out.num_samples, 3);
    ASSERT_EQ(s.num_running(), 3);
    const auto ids = s.running_ids();
    const auto table = s.find(g)->block_table;
    ASSERT_EQ(table.size(), 2u);
    std::set<int32_t> first_tokens;
    for (size_t i = 0; i < ids.size(); ++i) {
        const Sequence* q = s.find(ids[i]);
        EXPECT_EQ(q->group_id, g);
        EXPECT_EQ(q->index, int(i));
        EXPECT_EQ(q->block_table, table);
        EXPECT_EQ(q->num_computed_tokens, 20);
        EXPECT_EQ(q->tokens.size(), 21u);
        first_tokens.insert(q->tokens.back());
    }
    EXPECT_EQ(first_tokens.size(), 3u);  // each sibling got its own sample
    EXPECT_EQ(s.block_manager().ref_count(table[0]), 3);
    EXPECT_EQ(s.block_manager().ref_count(table[1]), 3);

    // Each decode writes position 20 into the shared, partly filled block 1: two copies, and the
    // last sibling keeps the original.
    out = d.step();
    ASSERT_EQ(out.seqs.size(), 3u);
    ASSERT_EQ(out.cow_copies.size(), 2u);
    for (auto [src, dst] : out.cow_copies) {
        EXPECT_EQ(src, table[1]);
        EXPECT_NE(dst, table[1]);
    }
    std::set<int32_t> last_blocks;
    for (uint64_t id : ids) {
        const auto& t = s.find(id)->block_table;
        EXPECT_EQ(t[0], table[0]);
        last_blocks.insert(t[1]);
        EXPECT_EQ(s.block_manager().ref_count(t[1]), 1);
    }
    EXPECT_EQ(last_blocks.size(), 3u);
    EXPECT_EQ(s.block_manager().ref_count(table[0]), 3);
    d.run_until_idle();
    EXPECT_EQ(d.done.size(), 3u);
    for (auto& [id, q] : d.done) EXPECT_EQ(q.num_output_tokens(), 5);
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
}

TEST(Scheduler, GroupCountsAgainstMaxNumSeqs) {
    Scheduler s(config(64, 2048, 3), 64, 4);
    const uint64_t g = s.add(iota_tokens(5), 2);
    const uint64_t a = s.add(iota_tokens(5, 10));
    const uint64_t b = s.add(iota_tokens(5, 20));
    auto out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    EXPECT_EQ(out.seqs[0].id, g);
    EXPECT_EQ(out.seqs[1].id, a);
    EXPECT_EQ(s.find(b)->status, SequenceStatus::Waiting);
    s.update(out, {1, 2, 3});
    EXPECT_EQ(s.num_running(), 3);
    out = s.schedule();
    EXPECT_EQ(out.seqs.size(), 3u);
    s.abort(a);
    s.update(out, {1, 2, 3});  // a's sample is skipped
    out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 3u);
    EXPECT_EQ(out.seqs[2].id, b);
}

TEST(Scheduler, PreemptsNewestAndResumes) {
    // 6 blocks of 4 tokens; two sequences of 8-token prompts each growing to 8 + 10 tokens.
    Scheduler s(config(64), 6, 4);
    Driver d(s);
    const uint64_t a = s.add(iota_tokens(8));
    const uint64_t b = s.add(iota_tokens(8, 100));
    d.max_tokens[a] = 10;
    d.max_tokens[b] = 10;
    bool saw_preemption = false;
    while (s.has_work() && d.steps < 200) {
        auto out = d.step();
        if (!out.preempted.empty() && !saw_preemption) {
            saw_preemption = true;
            ASSERT_EQ(out.preempted.size(), 1u);
            EXPECT_EQ(out.preempted[0], b);  // the newest
            ASSERT_NE(s.find(b), nullptr);
            EXPECT_EQ(s.find(b)->status, SequenceStatus::Waiting);
            EXPECT_EQ(s.find(b)->num_computed_tokens, 0);
            EXPECT_EQ(s.find(b)->num_preemptions, 1);
            EXPECT_TRUE(s.find(b)->block_table.empty());
            EXPECT_GT(s.find(b)->num_output_tokens(), 0);  // output kept for recompute
            EXPECT_EQ(s.waiting_ids().front(), b);
            for (const auto& e : out.seqs) EXPECT_NE(e.id, b);
        }
    }
    EXPECT_TRUE(saw_preemption);
    ASSERT_EQ(d.done.size(), 2u);
    for (uint64_t id : {a, b}) {
        EXPECT_EQ(d.done[id].finish_reason, "stop");
        EXPECT_EQ(d.done[id].num_output_tokens(), 10);
        EXPECT_EQ(d.done[id].tokens.size(), 18u);
    }
    EXPECT_GT(d.done[b].num_preemptions, 0);
    EXPECT_EQ(d.done[a].num_preemptions, 0);
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
}

TEST(Scheduler, PreemptedSequenceGoesAheadOfOtherWaiting) {
    Scheduler s(config(64), 4, 4);
    Driver d(s);
    const uint64_t a = s.add(iota_tokens(6));
    const uint64_t b = s.add(iota_tokens(6, 50));
    d.max_tokens[a] = 12;
    d.max_tokens[b] = 12;
    d.step();
    const uint64_t c = s.add(iota_tokens(3, 90));
    while (s.has_work() && d.steps < 200) {
        auto out = d.step();
        if (!out.preempted.empty()) {
            EXPECT_EQ(s.waiting_ids().front(), out.preempted.back());
        }
    }
    EXPECT_EQ(d.done.size(), 3u);
    EXPECT_EQ(d.done[c].finish_reason, "stop");
}

TEST(Scheduler, LoneSequenceTooBigForPoolFinishesWithKvCache) {
    // 2 blocks of 4 tokens = 8 tokens of KV.
    Scheduler s(config(64), 2, 4);
    Driver d(s);
    const uint64_t big = s.add(iota_tokens(12));
    const uint64_t small = s.add(iota_tokens(3, 100));
    d.max_tokens[small] = 20;  // grows past 8 tokens: finished by the pool, not by a stop
    d.step();
    // Chunked: the first 8 tokens fit; the rest never will.
    d.run_until_idle(100);
    ASSERT_EQ(d.done.size(), 2u);
    EXPECT_EQ(d.done[big].finish_reason, "kv_cache");
    EXPECT_EQ(d.done[small].finish_reason, "kv_cache");
    EXPECT_EQ(d.done[small].tokens.size(), 9u);  // 8 computed + the last sample
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
}

TEST(Scheduler, KvCacheFinishIsReported) {
    Scheduler s(config(64, 64, 256, false), 2, 4);
    const uint64_t big = s.add(iota_tokens(12));
    auto out = s.schedule();
    EXPECT_TRUE(out.seqs.empty());
    ASSERT_EQ(out.finished.size(), 1u);
    EXPECT_EQ(out.finished[0], big);
    auto f = s.take_finished();
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].finish_reason, "kv_cache");
    EXPECT_EQ(f[0].status, SequenceStatus::Finished);
    EXPECT_FALSE(s.has_work());
    EXPECT_EQ(s.block_manager().num_free_blocks(), 2);
}

TEST(Scheduler, NoDeadlockWithTinyPool) {
    Scheduler s(config(32, 16), 3, 4);
    Driver d(s);
    for (int i = 0; i < 12; ++i) {
        const uint64_t id = s.add(iota_tokens(1 + i % 7, 10 * i));
        d.max_tokens[id] = 1 + i % 5;
    }
    d.run_until_idle(2000);
    EXPECT_EQ(d.done.size(), 12u);
    for (auto& [id, q] : d.done) EXPECT_TRUE(q.finish_reason == "stop" || q.finish_reason == "kv_cache") << q.finish_reason;
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
}

TEST(Scheduler, LengthCapFinishes) {
    Scheduler s(config(20), 16, 4);
    Driver d(s);
    const uint64_t id = s.add(iota_tokens(18));
    d.max_tokens[id] = 100;
    d.run_until_idle();
    ASSERT_EQ(d.done.size(), 1u);
    EXPECT_EQ(d.done[id].finish_reason, "length");
    EXPECT_EQ(d.done[id].tokens.size(), 20u);
    // A prompt of exactly max_model_len produces one token.
    const uint64_t full = s.add(iota_tokens(20, 50));
    d.max_tokens[full] = 100;
    d.run_until_idle();
    EXPECT_EQ(d.done[full].finish_reason, "length");
    EXPECT_EQ(d.done[full].num_output_tokens(), 1);
}

TEST(Scheduler, AbortReleasesBlocksImmediately) {
    Scheduler s(config(128), 32, 4, /*enable_prefix_caching=*/false);
    const uint64_t a = s.add(iota_tokens(10));
    const uint64_t b = s.add(iota_tokens(10, 100));
    auto out = s.schedule();
    s.update(out, {1, 2});
    EXPECT_EQ(s.block_manager().num_used_blocks(), 6);
    const uint64_t w = s.add(iota_tokens(5));
    EXPECT_EQ(s.num_waiting(), 1);
    EXPECT_TRUE(s.abort(a));
    EXPECT_EQ(s.block_manager().num_used_blocks(), 3);
    EXPECT_EQ(s.find(a), nullptr);
    EXPECT_TRUE(s.abort(w));
    EXPECT_EQ(s.num_waiting(), 0);
    s.finish(b, "stop");
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
    EXPECT_EQ(s.block_manager().num_free_blocks(), 32);
    EXPECT_FALSE(s.has_work());
    auto f = s.take_finished();
    ASSERT_EQ(f.size(), 3u);
    EXPECT_EQ(f[0].finish_reason, "abort");
    EXPECT_EQ(f[1].finish_reason, "abort");
    EXPECT_EQ(f[2].finish_reason, "stop");
    EXPECT_TRUE(s.take_finished().empty());
    s.check_invariants();
}

TEST(Scheduler, AbortWithPrefixCachingLeavesOnlyEvictable) {
    Scheduler s(config(128), 32, 4);
    const uint64_t a = s.add(iota_tokens(10));
    auto out = s.schedule();
    s.update(out, {1});
    EXPECT_TRUE(s.abort(a));
    EXPECT_EQ(s.block_manager().num_used_blocks(), 0);
    EXPECT_EQ(s.block_manager().num_evictable_blocks(), 2);  // the two full blocks
    EXPECT_EQ(s.block_manager().num_free_blocks(), 30);
}

TEST(Scheduler, AbortBetweenScheduleAndUpdate) {
    Scheduler s(config(128, 8), 32, 4);
    const uint64_t a = s.add(iota_tokens(4));
    const uint64_t b = s.add(iota_tokens(12, 50));
    auto out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 2u);
    s.abort(b);
    s.update(out, {9});
    EXPECT_EQ(s.find(a)->tokens.back(), 9);
    s.check_invariants();
}

TEST(Scheduler, ToForwardBatchLayout) {
    Scheduler s(config(128, 64), 64, 4);
    const uint64_t a = s.add(iota_tokens(3));
    auto out = s.schedule();
    s.update(out, {77});
    const uint64_t b = s.add(iota_tokens(9, 100));
    out = s.schedule();
    ForwardBatch fb = s.to_forward_batch(out);
    fb.validate(4, 64);
    ASSERT_EQ(fb.num_seqs(), 2);
    EXPECT_EQ(fb.query_start, (std::vector<int32_t>{0, 1, 10}));
    EXPECT_EQ(fb.seq_lens, (std::vector<int32_t>{4, 9}));
    EXPECT_EQ(fb.tokens[0], 77);
    EXPECT_EQ(fb.positions[0], 3);
    EXPECT_EQ(fb.tokens[1], 100);
    EXPECT_EQ(fb.positions[9], 8);
    EXPECT_EQ(fb.logits_indices, (std::vector<int32_t>{0, 9}));
    EXPECT_EQ(fb.max_blocks_per_seq, 3);
    const auto& ta = s.find(a)->block_table;
    ASSERT_EQ(ta.size(), 1u);
    EXPECT_EQ(fb.block_tables[0], ta[0]);
    EXPECT_EQ(fb.block_tables[1], ta[0]);  // padded with the last valid id
    EXPECT_EQ(fb.block_tables[2], ta[0]);
    const auto& tb = s.find(b)->block_table;
    EXPECT_EQ(std::vector<int32_t>(fb.block_tables.begin() + 3, fb.block_tables.end()), tb);
    s.update(out, {1, 2});
    EXPECT_THROW(s.to_forward_batch(out), Error);  // stale after update
}

TEST(Scheduler, StressRandom) {
    int64_t preempted = 0, cow = 0, forks = 0, partial = 0, hits = 0, kv_cache = 0, aborts = 0, lengths = 0;
    for (int seed = 0; seed < 40; ++seed) {
        std::mt19937 rng{static_cast<uint32_t>(seed)};
        auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
        const int64_t bs = uni(0, 1) ? 4 : 8;
        const int64_t num_blocks = uni(4, 24);
        const bool chunked = seed % 3 != 0;
        const int64_t max_model_len = 48;
        const int64_t budget = chunked ? uni(4, 40) : uni(48, 80);
        Scheduler s(config(max_model_len, budget, uni(1, 8), chunked), num_blocks, bs, seed % 4 != 1);
        Driver d(s);
        std::vector<std::vector<int32_t>> prefixes;
        for (int i = 0; i < 3; ++i) prefixes.push_back(iota_tokens(uni(4, 24), 1000 * (i + 1)));
        std::set<uint64_t> added, aborted;
        std::map<uint64_t, int> group_n;
        int arrivals = 0;
        while ((arrivals < 60 || s.has_work()) && d.steps < 20000) {
            if (arrivals < 60 && uni(0, 2) == 0) {
                const int k = uni(1, 3);
                for (int j = 0; j < k && arrivals < 60; ++j, ++arrivals) {
                    std::vector<int32_t> p;
                    if (uni(0, 1)) p = prefixes[size_t(uni(0, 2))];
                    const int extra = uni(p.empty() ? 1 : 0, 20);
                    for (int t = 0; t < extra; ++t) p.push_back(uni(0, 50));
                    if (int64_t(p.size()) > max_model_len) p.resize(size_t(max_model_len));
                    const int n = std::min(uni(1, 10) > 8 ? uni(2, 3) : 1, int(s.config().max_num_seqs));
                    const uint64_t g = s.add(p, n);
                    added.insert(g);
                    group_n[g] = n;
                    d.max_tokens[g] = uni(1, 30);
                }
            }
            if (uni(0, 9) == 0) {
                auto live = s.running_ids();
                auto w = s.waiting_ids();
                live.insert(live.end(), w.begin(), w.end());
                if (!live.empty()) {
                    const uint64_t id = live[size_t(uni(0, int(live.size()) - 1))];
                    EXPECT_TRUE(s.abort(id));
                    aborted.insert(id);
                }
            }
            d.step();
        }
        EXPECT_FALSE(s.has_work()) << "seed " << seed;
        for (auto& f : s.take_finished()) d.done.emplace(f.id, std::move(f));
        // Every request finished (all its siblings) or was aborted.
        std::map<uint64_t, int> per_group;
        for (auto& [id, q] : d.done) {
            ++per_group[q.group_id];
            const auto& r = q.finish_reason;
            EXPECT_TRUE(r == "stop" || r == "length" || r == "kv_cache" || r == "abort") << r;
            EXPECT_EQ(r == "abort", aborted.count(id) == 1);
            if (r == "stop") {
                EXPECT_EQ(q.num_output_tokens(), d.max_tokens[q.group_id]);
            }
            if (r == "length") {
                EXPECT_EQ(int64_t(q.tokens.size()), max_model_len);
            }
        }
        for (uint64_t g : added) {
            ASSERT_TRUE(per_group.count(g)) << "seed " << seed << " group " << g;
            EXPECT_TRUE(per_group[g] == group_n[g] || per_group[g] == 1) << "seed " << seed;
        }
        const auto& bm = s.block_manager();
        EXPECT_EQ(bm.num_used_blocks(), 0) << "seed " << seed;
        EXPECT_EQ(bm.num_free_blocks() + bm.num_evictable_blocks(), bm.num_blocks());
        s.check_invariants();
        preempted += d.num_preempted;
        cow += d.num_cow;
        forks += d.num_forks;
        partial += d.num_partial_chunks;
        hits += bm.prefix_cache_stats().hit_blocks;
        for (auto& [id, q] : d.done) {
            kv_cache += q.finish_reason == "kv_cache";
            aborts += q.finish_reason == "abort";
            lengths += q.finish_reason == "length";
        }
    }
    // The random runs exercised every mechanism.
    EXPECT_GT(preempted, 0);
    EXPECT_GT(cow, 0);
    EXPECT_GT(forks, 0);
    EXPECT_GT(partial, 0);
    EXPECT_GT(hits, 0);
    EXPECT_GT(kv_cache, 0);
    EXPECT_GT(aborts, 0);
    EXPECT_GT(lengths, 0);
    std::printf("stress: %lld preemptions, %lld copies, %lld forks, %lld partial chunks, %lld hit blocks, "
                "%lld kv_cache, %lld aborts, %lld length\n",
                (long long)preempted, (long long)cow, (long long)forks, (long long)partial, (long long)hits,
                (long long)kv_cache, (long long)aborts, (long long)lengths);
}
