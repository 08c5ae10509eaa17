#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace swiftkv {

Scheduler::Scheduler(const SchedulerConfig& config, int64_t num_blocks, int64_t block_size,
                     bool enable_prefix_caching)
    : config_(config), blocks_(num_blocks, block_size, enable_prefix_caching) {
    SKV_CHECK(config_.max_num_seqs >= 1, "scheduler: max_num_seqs must be at least 1, got {}", config_.max_num_seqs);
    SKV_CHECK(config_.max_batched_tokens >= 1, "scheduler: max_batched_tokens must be at least 1, got {}",
              config_.max_batched_tokens);
    SKV_CHECK(config_.max_model_len >= 1, "scheduler: max_model_len must be set (got {})", config_.max_model_len);
    SKV_CHECK(config_.enable_chunked_prefill || config_.max_batched_tokens >= config_.max_model_len,
              "scheduler: without chunked prefill max_batched_tokens ({}) must be at least max_model_len ({})",
              config_.max_batched_tokens, config_.max_model_len);
}

uint64_t Scheduler::add(std::vector<int32_t> prompt, int n, int64_t logits_from) {
    SKV_CHECK(!prompt.empty(), "request has an empty prompt");
    SKV_CHECK(int64_t(prompt.size()) <= config_.max_model_len,
              "prompt of {} tokens is longer than the maximum context length {}", prompt.size(),
              config_.max_model_len);
    SKV_CHECK(n >= 1, "n must be at least 1, got {}", n);
    SKV_CHECK(n <= config_.max_num_seqs, "n = {} is more than max_num_seqs = {}", n, config_.max_num_seqs);
    SKV_CHECK(logits_from < int64_t(prompt.size()), "logits from position {} of a prompt of {} tokens", logits_from,
              prompt.size());
    Sequence s;
    s.id = next_id_++;
    s.group_id = s.id;
    s.fork_n = n;
    s.logits_from = std::max<int64_t>(logits_from, -1);
    s.num_prompt_tokens = int64_t(prompt.size());
    s.tokens = std::move(prompt);
    s.arrival = next_arrival_++;
    const uint64_t id = s.id;
    seqs_.emplace(id, std::move(s));
    waiting_.push_back(id);
    return id;
}

Sequence* Scheduler::live(uint64_t id) {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
}

const Sequence* Scheduler::find(uint64_t id) const {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
}

bool Scheduler::older(const Sequence& a, const Sequence& b) const {
    return a.arrival != b.arrival ? a.arrival < b.arrival : a.id < b.id;
}

void Scheduler::insert_running(uint64_t id) {
    const Sequence& s = seqs_.at(id);
    auto pos = std::lower_bound(running_.begin(), running_.end(), id,
                                [&](uint64_t a, uint64_t) { return older(seqs_.at(a), s); });
    running_.insert(pos, id);
}

void Scheduler::remove_running(uint64_t id) {
    auto it = std::find(running_.begin(), running_.end(), id);
    if (it != running_.end()) running_.erase(it);
}

int64_t Scheduler::running_slots() const {
    int64_t n = 0;
    for (uint64_t id : running_) n += seqs_.at(id).fork_n;
    return n;
}

void Scheduler::preempt(Sequence& s, ScheduleOutput& out) {
    blocks_.release(s.block_table);
    s.num_computed_tokens = 0;
    s.cache_state = SequenceCacheState{};
    s.status = SequenceStatus::Waiting;
    ++s.num_preemptions;
    remove_running(s.id);
    waiting_.push_front(s.id);
    out.preempted.push_back(s.id);
}

void Scheduler::finish_seq(Sequence& s, std::string reason) {
    if (!s.block_table.empty()) blocks_.release(s.block_table);
    if (s.status == SequenceStatus::Running) {
        remove_running(s.id);
    } else {
        auto it = std::find(waiting_.begin(), waiting_.end(), s.id);
        if (it != waiting_.end()) waiting_.erase(it);
    }
    s.status = SequenceStatus::Finished;
    s.finish_reason = std::move(reason);
    const uint64_t id = s.id;
    finished_.push_back(std::move(s));
    seqs_.erase(id);
}

void Scheduler::finish(uint64_t id, std::string reason) {
    Sequence* s = live(id);
    SKV_CHECK(s != nullptr, "scheduler: no live sequence {}", id);
    finish_seq(*s, std::move(reason));
}

bool Scheduler::abort(uint64_t id) {
    Sequence* s = live(id);
    if (s == nullptr) return false;
    finish_seq(*s, "abort");
    return true;
}

std::vector<Sequence> Scheduler::take_finished() {
    std::vector<Sequence> out;
    out.swap(finished_);
    return out;
}

bool Scheduler::reserve(Sequence& s, int64_t n, ScheduleOutput& out) {
    for (;;) {
        if (blocks_.ensure_capacity(s.block_table, s.num_computed_tokens, s.num_computed_tokens + n,
                                    out.cow_copies)) {
            return true;
        }
        // The newest running sequence not scheduled in this step (other than s).
        Sequence* victim = nullptr;
        for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
            if (*it == s.id || scheduled_now_.count(*it)) continue;
            victim = &seqs_.at(*it);
            break;
        }
        if (victim != nullptr && older(s, *victim)) {
            preempt(*victim, out);
            continue;
        }
        if (running_.size() == 1) {
            // Alone, with every other block free or evictable: it can never fit.
            const uint64_t id = s.id;
            finish_seq(s, "kv_cache");
            out.finished.push_back(id);
            return false;
        }
        preempt(s, out);
        return false;
    }
}

int64_t Scheduler::chunk_cap(const Sequence& s, int64_t budget) const {
    // Chunks that bring back a logits row per token are kept bounded.
    const bool rows = config_.logits_for_every_row || (s.logits_from >= 0 && s.num_computed_tokens < s.num_prompt_tokens);
    return rows ? std::min(budget, kPromptLogitsChunk) : budget;
}

void Scheduler::add_entry(Sequence& s, int64_t n, ScheduleOutput& out) {
    ScheduledSequence e;
    e.id = s.id;
    e.start = s.num_computed_tokens;
    e.num_tokens = n;
    e.needs_logits = s.num_computed_tokens + n == int64_t(s.tokens.size());
    if (e.needs_logits) {
        const bool forks = s.fork_n > 1 && int64_t(s.tokens.size()) == s.num_prompt_tokens;
        e.num_samples = forks ? s.fork_n : 1;
    }
    if (config_.logits_for_every_row) {
        e.first_logit_row = 0;
    } else if (s.logits_from >= 0 && e.start < s.num_prompt_tokens && e.start + n > s.logits_from) {
        e.first_logit_row = std::max<int64_t>(s.logits_from - e.start, 0);
    }
    e.block_table = s.block_table;
    out.num_batched_tokens += n;
    if (n == 1 && e.start > 0 && e.needs_logits) {
        ++out.num_decode_seqs;
    } else {
        out.num_prefill_tokens += n;
    }
    out.num_samples += e.num_samples;
    scheduled_now_.insert(s.id);
    out.seqs.push_back(std::move(e));
}

ScheduleOutput Scheduler::schedule() {
    ScheduleOutput out;
    scheduled_now_.clear();
    int64_t budget = config_.max_batched_tokens;

    // Running sequences: decodes first, then chunked prefills, each pass oldest first.
    for (int pass = 0; pass < 2; ++pass) {
        const std::vector<uint64_t> order = running_;  // preemption edits running_
        for (uint64_t id : order) {
            if (budget == 0) break;
            Sequence* s = live(id);
            if (s == nullptr || s->status != SequenceStatus::Running || scheduled_now_.count(id)) continue;
            const int64_t remaining = int64_t(s->tokens.size()) - s->num_computed_tokens;
            const bool decode = remaining == 1;
            if (decode != (pass == 0)) continue;
            int64_t n = 1;
            if (!decode) {
                if (config_.enable_chunked_prefill) {
                    n = std::min(remaining, chunk_cap(*s, budget));
                } else if (remaining <= budget) {
                    n = remaining;
                } else {
                    continue;
                }
            }
            if (!reserve(*s, n, out)) continue;
            add_entry(*s, n, out);
            budget -= n;
        }
    }

    // Waiting sequences, FCFS; none in a step that had to preempt.
    int64_t slots = running_slots();
    while (out.preempted.empty() && !waiting_.empty() && budget > 0) {
        Sequence& s = seqs_.at(waiting_.front());
        if (slots + s.fork_n > config_.max_num_seqs) break;
        // Waiting sequences hold no blocks (new, or preempted in recompute mode).
        s.cache_state = SequenceCacheState{};
        s.num_computed_tokens =
            s.logits_from >= 0 ? 0 : blocks_.match_prefix(s.tokens, s.block_table, &s.cache_state);
        const int64_t remaining = int64_t(s.tokens.size()) - s.num_computed_tokens;
        int64_t n = 0;
        if (config_.enable_chunked_prefill) {
            n = std::min(remaining, chunk_cap(s, budget));
        } else if (remaining <= budget) {
            n = remaining;
        }
        std::vector<std::pair<int32_t, int32_t>> cow;
        const bool ok = n > 0 && blocks_.ensure_capacity(s.block_table, s.num_computed_tokens,
                                                          s.num_computed_tokens + n, cow);
        if (!ok) {
            if (!s.block_table.empty()) blocks_.release(s.block_table);
            s.num_computed_tokens = 0;
            s.cache_state = SequenceCacheState{};
            if (n > 0 && running_.empty()) {
                // Nothing else holds blocks, so it can never fit.
                const uint64_t id = s.id;
                finish_seq(s, "kv_cache");
                out.finished.push_back(id);
                continue;
            }
            break;
        }
        out.cow_copies.insert(out.cow_copies.end(), cow.begin(), cow.end());
        waiting_.pop_front();
        s.status = SequenceStatus::Running;
        insert_running(s.id);
        slots += s.fork_n;
        add_entry(s, n, out);
        budget -= n;
    }
    return out;
}

ForwardBatch Scheduler::to_forward_batch(const ScheduleOutput& out) const {
    const int64_t bs = blocks_.block_size();
    int64_t max_blocks = 0;
    for (const auto& e : out.seqs) max_blocks = std::max<int64_t>(max_blocks, int64_t(e.block_table.size()));
    ForwardBatch b = ForwardBatch::with_block_table_width(max_blocks);
    for (const auto& e : out.seqs) {
        const Sequence* s = find(e.id);
        SKV_CHECK(s != nullptr && s->status == SequenceStatus::Running, "to_forward_batch: sequence {} is not running",
                  e.id);
        SKV_CHECK(s->num_computed_tokens == e.start && e.start + e.num_tokens <= int64_t(s->tokens.size()),
                  "to_forward_batch: sequence {} has changed since schedule() (call it before update())", e.id);
        SKV_CHECK(int64_t(e.block_table.size()) * bs >= e.start + e.num_tokens,
                  "to_forward_batch: block table of sequence {} is too short", e.id);
        b.add_sequence(s->tokens.data() + e.start, e.start, e.num_tokens, e.block_table, e.num_tokens - e.logit_rows());
    }
    return b;
}

void Scheduler::update(const ScheduleOutput& out, const std::vector<int32_t>& sampled) {
    SKV_CHECK(int64_t(sampled.size()) == out.num_samples, "scheduler update: {} sampled tokens, expected {}",
              sampled.size(), out.num_samples);
    size_t k = 0;
    for (const auto& e : out.seqs) {
        const size_t first = k;
        k += size_t(e.num_samples);
        Sequence* s = live(e.id);
        if (s == nullptr || s->status != SequenceStatus::Running || s->num_computed_tokens != e.start) continue;
        SKV_CHECK(s->num_computed_tokens + e.num_tokens <= int64_t(s->tokens.size()) &&
                      int64_t(s->block_table.size()) * blocks_.block_size() >= e.start + e.num_tokens,
                  "scheduler update: entry for sequence {} does not match it", e.id);
        s->num_computed_tokens += e.num_tokens;
        // Prompt logits are delivered once: a later recompute (preemption) may reuse cached blocks.
        if (s->num_computed_tokens >= s->num_prompt_tokens) s->logits_from = -1;
        blocks_.register_full_blocks(s->tokens, s->block_table, s->num_computed_tokens, s->cache_state);
        if (!e.needs_logits) continue;

        std::vector<uint64_t> members{s->id};
        if (e.num_samples > 1) {
            SKV_CHECK(e.num_samples == s->fork_n, "scheduler update: fork of sequence {} into {} is stale", e.id,
                      e.num_samples);
            for (int i = 1; i < s->fork_n; ++i) {
                Sequence sib;
                sib.id = next_id_++;
                sib.group_id = s->group_id;
                sib.index = i;
                sib.tokens = s->tokens;
                sib.num_prompt_tokens = s->num_prompt_tokens;
                sib.num_computed_tokens = s->num_computed_tokens;
                blocks_.fork(s->block_table, sib.block_table);
                sib.cache_state = s->cache_state;
                sib.status = SequenceStatus::Running;
                sib.arrival = s->arrival;
                const uint64_t sid = sib.id;
                seqs_.emplace(sid, std::move(sib));
                insert_running(sid);
                members.push_back(sid);
            }
            s->fork_n = 1;  // unordered_map keeps references valid across the inserts
        }
        for (size_t i = 0; i < members.size(); ++i) {
            Sequence& m = seqs_.at(members[i]);
            m.tokens.push_back(sampled[first + i]);
            if (int64_t(m.tokens.size()) >= config_.max_model_len) finish_seq(m, "length");
        }
    }
}

void Scheduler::check_invariants() const {
    std::vector<const std::vector<int32_t>*> tables;
    int64_t n_running = 0, n_waiting = 0;
    for (const auto& [id, s] : seqs_) {
        SKV_CHECK(s.id == id, "scheduler: sequence key {} holds id {}", id, s.id);
        SKV_CHECK(s.num_computed_tokens >= 0 && s.num_computed_tokens <= int64_t(s.tokens.size()),
                  "scheduler: sequence {} has {} computed of {} tokens", id, s.num_computed_tokens, s.tokens.size());
        SKV_CHECK(s.num_prompt_tokens >= 1 && s.num_prompt_tokens <= int64_t(s.tokens.size()),
                  "scheduler: sequence {} has a bad prompt length", id);
        SKV_CHECK(int64_t(s.tokens.size()) <= config_.max_model_len, "scheduler: sequence {} is over max_model_len", id);
        SKV_CHECK(int64_t(s.block_table.size()) * blocks_.block_size() >= s.num_computed_tokens,
                  "scheduler: sequence {} computed more tokens than its table holds", id);
        if (s.status == SequenceStatus::Running) {
            ++n_running;
            SKV_CHECK(std::find(running_.begin(), running_.end(), id) != running_.end(),
                      "scheduler: running sequence {} is not in the running list", id);
            SKV_CHECK(s.num_computed_tokens < int64_t(s.tokens.size()),
                      "scheduler: running sequence {} has nothing to compute", id);
        } else {
            SKV_CHECK(s.status == SequenceStatus::Waiting, "scheduler: live sequence {} is finished", id);
            ++n_waiting;
            SKV_CHECK(s.block_table.empty() && s.num_computed_tokens == 0,
                      "scheduler: waiting sequence {} holds blocks", id);
            SKV_CHECK(std::find(waiting_.begin(), waiting_.end(), id) != waiting_.end(),
                      "scheduler: waiting sequence {} is not queued", id);
        }
        if (s.fork_n > 1) {
            SKV_CHECK(int64_t(s.tokens.size()) == s.num_prompt_tokens, "scheduler: unforked group {} has output", id);
        }
        tables.push_back(&s.block_table);
    }
    SKV_CHECK(n_running == int64_t(running_.size()) && n_waiting == int64_t(waiting_.size()),
              "scheduler: queue sizes disagree with sequence states");
    for (size_t i = 1; i < running_.size(); ++i) {
        SKV_CHECK(older(seqs_.at(running_[i - 1]), seqs_.at(running_[i])), "scheduler: running list out of order");
    }
    SKV_CHECK(running_slots() <= config_.max_num_seqs, "scheduler: more than max_num_seqs running");
    blocks_.check_invariants(tables);
}

}  // namespace swiftkv
