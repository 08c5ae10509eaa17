#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model_loader.h"

namespace swiftkv {

namespace {

// Log-softmax of the raw logits at `token`, and the k most likely tokens with theirs.
TokenLogprobs token_logprobs(const float* row, int64_t vocab, int32_t token, int32_t k) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, row[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(row[i]) - mx);
    const float lse = mx + float(std::log(sum));
    TokenLogprobs out;
    out.token = token;
    out.logprob = row[token] - lse;
    if (k > 0) {
        std::vector<int32_t> idx(static_cast<size_t>(vocab));
        std::iota(idx.begin(), idx.end(), 0);
        const int64_t kk = std::min<int64_t>(k, vocab);
        std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                          [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
        for (int64_t i = 0; i < kk; ++i) out.top.emplace_back(idx[size_t(i)], row[idx[size_t(i)]] - lse);
    }
    return out;
}

}  // namespace

Engine::Engine(const EngineOptions& options) : options_(options) {
    const EngineOptions& eo = options_;
    SKV_CHECK(eo.max_num_seqs > 0 && eo.max_batched_tokens > 0, "max_num_seqs and max_batched_tokens must be positive");
    if (eo.threads > 0) ThreadPool::set_global_threads(eo.threads);
    backend_ = make_backend(eo.device, eo.threads);
    model_ = open_model(eo.model, *backend_);
    const ModelConfig& c = model_.config();
    context_length_ = model_.context_length(eo.context_length);
    const int64_t bs = eo.block_size;
    check_kv_block_size(bs);
    runner_ = std::make_unique<ModelRunner>(*model_.model, RunnerOptions{eo.graphs});
    runner_->reserve(eo.max_batched_tokens, eo.max_num_seqs, (context_length_ + bs - 1) / bs);
    KvCacheSizing kv;
    kv.block_size = bs;
    kv.kv_cache_tokens = eo.kv_cache_tokens;
    kv.gpu_memory_fraction = eo.gpu_memory_fraction;
    // On the host: room for max_num_seqs contexts, at most max(context, 16384) tokens.
    kv.host_tokens = std::min(eo.max_num_seqs * context_length_, std::max<int64_t>(context_length_, 16384));
    const int64_t blocks = kv_cache_blocks(c, *backend_, context_length_, kv);
    kv_cache_ = std::make_unique<PagedKvCache>(*backend_, c, blocks, bs);
    SchedulerConfig sc;
    sc.max_num_seqs = eo.max_num_seqs;
    sc.max_batched_tokens = eo.max_batched_tokens;
    sc.max_model_len = context_length_;
    sc.enable_chunked_prefill = true;
    sc.logits_for_every_row = eo.full_student;
    scheduler_ = std::make_unique<Scheduler>(sc, blocks, bs, eo.prefix_caching);
}

Engine::~Engine() = default;

uint64_t Engine::add_request(GenerationRequest request, ChoiceCallback callback) {
    const int64_t logits_from = request.prompt_logprobs ? 0 : -1;
    return add(std::move(request), std::move(callback), logits_from, {});
}

uint64_t Engine::add(GenerationRequest request, ChoiceCallback callback, int64_t logits_from, PromptLogitsSink sink) {
    request.sampling.validate();
    SKV_CHECK(!request.prompt.empty(), "the prompt is empty");
    const int64_t n_prompt = int64_t(request.prompt.size());
    const bool scoring = logits_from >= 0;
    // A prompt that only returns logits may fill the context; one that generates leaves room for a token.
    SKV_CHECK(n_prompt < context_length_ || (scoring && request.max_tokens == 0 && n_prompt <= context_length_),
              "the prompt has {} tokens but the context holds {}; shorten the prompt", n_prompt, context_length_);
    for (int32_t t : request.prompt) {
        SKV_CHECK(t >= 0 && t < config().vocab, "prompt token id {} is outside the vocabulary", t);
    }
    SKV_CHECK(request.max_tokens >= 1 || (request.max_tokens == 0 && scoring),
              "max_tokens must be at least 1 (0 only when asking for prompt logprobs), got {}", request.max_tokens);
    SKV_CHECK(request.max_tokens == 0 || model_.tokenizer != nullptr,
              "{}: generation needs the tokenizer, which was not loaded", model_.path);
    SKV_CHECK(request.n >= 1 && request.n <= options_.max_num_seqs, "n must be in 1..{}, got {}",
              options_.max_num_seqs, request.n);
    SKV_CHECK(request.logprobs <= 20, "logprobs must be at most 20, got {}", request.logprobs);
    const uint64_t id = scheduler_->add(request.prompt, request.n, logits_from);
    Request r;
    if (request.prompt_logprobs) {
        r.prompt_lp.resize(request.prompt.size());
        r.prompt_lp[0].token = request.prompt[0];
        r.prompt_lp[0].logprob = std::numeric_limits<float>::quiet_NaN();
    }
    r.prompt_logits = std::move(sink);
    r.prompt_rows_seen = std::max<int64_t>(logits_from, 0);
    r.max_new = std::max<int64_t>(std::min<int64_t>(request.max_tokens, context_length_ - n_prompt), 0);
    r.callback = std::move(callback);
    const uint64_t base_seed = request.sampling.seed ? *request.sampling.seed : std::random_device{}() * 0x100000001ull;
    for (int i = 0; i < request.n; ++i) {
        Choice ch;
        SamplingParams sp = request.sampling;
        sp.seed = base_seed + uint64_t(i);
        ch.seed = *sp.seed;
        ch.sampler = std::make_unique<Sampler>(sp, request.prompt);
        if (model_.tokenizer) ch.decoder = std::make_unique<StreamDecoder>(*model_.tokenizer);
        ch.filter = std::make_unique<StopStringFilter>(request.stop);
        r.choices.push_back(std::move(ch));
    }
    r.choices[0].seq_id = id;
    r.live = request.n;
    r.req = std::move(request);
    seq_choice_[id] = {id, 0};
    counters_.prompt_tokens_total += n_prompt;
    requests_.emplace(id, std::move(r));
    return id;
}

bool Engine::abort(uint64_t request_id) {
    auto it = requests_.find(request_id);
    if (it == requests_.end()) return false;
    Request& r = it->second;
    for (int i = 0; i < int(r.choices.size()); ++i) {
        ChoiceEvent ev;
        end_choice(r, i, "abort", &ev);
    }
    requests_.erase(it);
    if (inflight_ && !scheduler_->has_work()) {
        // Every sequence of the launched step is gone: wait for it and drop its tokens.
        std::vector<int32_t> unused;
        runner_->forward_sample_wait(unused);
        inflight_.reset();
    }
    return true;
}

void Engine::end_choice(Request& r, int index, const std::string& reason, ChoiceEvent* ev) {
    Choice& c = r.choices[size_t(index)];
    if (c.done) return;
    c.done = true;
    r.live--;
    ev->request_id = r.choices[0].seq_id;
    ev->index = index;
    ev->finished = true;
    ev->finish_reason = reason;
    ev->prompt_tokens = int64_t(r.req.prompt.size());
    ev->completion_tokens = c.generated;
    attach_prompt_logprobs(r, index, *ev);
    if (reason != "stop_string") {
        // Flush what the decoder and the stop filter held back.
        auto [text, hit] = c.filter->push(c.decoder ? c.decoder->finish() : std::string());
        ev->text += text;
        if (!hit) ev->text += c.filter->finish();
    } else {
        ev->finish_reason = "stop";
    }
    if (c.seq_id != 0) {
        if (scheduler_->find(c.seq_id) != nullptr) scheduler_->finish(c.seq_id, ev->finish_reason);
        seq_choice_.erase(c.seq_id);
    }
    if (r.callback) r.callback(*ev);
}

void Engine::attach_prompt_logprobs(Request& r, int index, ChoiceEvent& ev) {
    Choice& c = r.choices[size_t(index)];
    if (!r.req.prompt_logprobs || c.prompt_sent) return;
    c.prompt_sent = true;
    // An abort before the prompt completed leaves the tail unknown: only final entries are sent.
    ev.prompt_logprobs.assign(r.prompt_lp.begin(), r.prompt_lp.begin() + r.prompt_lp_filled);
}

Engine::Request* Engine::live_request(uint64_t id) {
    auto it = requests_.find(id);
    return it == requests_.end() ? nullptr : &it->second;
}

bool Engine::is_stop_token(const Request& r, int32_t token) const {
    const auto& ids = r.req.stop_token_ids;
    return (!r.req.ignore_eos && model_.tokenizer->is_eos(token)) || std::find(ids.begin(), ids.end(), token) != ids.end();
}

void Engine::deliver(Request& r, int index, int32_t token, const TokenLogprobs* lp) {
    Choice& c = r.choices[size_t(index)];
    if (c.done) return;
    if (r.max_new == 0) {  // prompt logprobs only: the sampled token is not part of the answer
        ChoiceEvent ev;
        end_choice(r, index, "length", &ev);
        return;
    }
    c.generated++;
    counters_.generation_tokens_total++;
    ChoiceEvent ev;
    ev.tokens.push_back(token);
    const bool stop_token = is_stop_token(r, token);
    if (lp) ev.logprobs.push_back(*lp);  // a stop token too: one entry per generated token
    if (stop_token) {
        end_choice(r, index, "stop", &ev);
        return;
    }
    auto [safe, hit] = c.filter->push(c.decoder->push(token));
    ev.text = std::move(safe);
    if (hit) {
        end_choice(r, index, "stop_string", &ev);
        return;
    }
    if (c.generated >= r.max_new) {
        end_choice(r, index, "length", &ev);
        return;
    }
    ev.request_id = r.choices[0].seq_id;
    ev.index = index;
    ev.prompt_tokens = int64_t(r.req.prompt.size());
    ev.completion_tokens = c.generated;
    attach_prompt_logprobs(r, index, ev);
    if (r.callback) r.callback(ev);
}

void Engine::apply_cow(const std::vector<std::pair<int32_t, int32_t>>& copies) {
    const KvCacheView& kv = kv_cache_->view();
    const size_t block_bytes = size_t(kv.layout.block_elems() * dtype_row_bytes(backend_->act_dtype(), 1));
    for (const auto& [src, dst] : copies) {  // in list order (see Scheduler)
        for (size_t l = 0; l < kv.k_layers.size(); ++l) {
            backend_->copy(static_cast<char*>(kv.k_layers[l]) + size_t(dst) * block_bytes,
                           static_cast<char*>(kv.k_layers[l]) + size_t(src) * block_bytes, block_bytes);
            backend_->copy(static_cast<char*>(kv.v_layers[l]) + size_t(dst) * block_bytes,
                           static_cast<char*>(kv.v_layers[l]) + size_t(src) * block_bytes, block_bytes);
        }
    }
}

// The logits rows of one entry: rows [first_logit_row, num_tokens) of the chunk, row i at position
// start + first_logit_row + i. A scoring request gets the raw rows of its prompt positions; prompt
// logprobs take row i's distribution at the prompt token that follows it. (With the full student
// every entry has rows, wanted or not.)
void Engine::record_prompt_rows(const ScheduledSequence& e, const float* logits) {
    auto sc = seq_choice_.find(e.id);
    if (sc == seq_choice_.end()) return;
    auto rit = requests_.find(sc->second.first);
    if (rit == requests_.end()) return;
    Request& r = rit->second;
    const int64_t V = config().vocab;
    const int64_t n_prompt = int64_t(r.req.prompt.size());
    const int64_t first = e.start + e.first_logit_row;
    const int64_t end = std::min(e.start + e.num_tokens, n_prompt);
    if (r.prompt_logits && end > r.prompt_rows_seen && first <= r.prompt_rows_seen) {
        // Rows already delivered (a recompute after preemption) are skipped.
        const int64_t from = r.prompt_rows_seen;
        r.prompt_logits(from, logits + (from - first) * V, end - from);
        r.prompt_rows_seen = end;
    }
    if (!r.req.prompt_logprobs) return;
    const int32_t k = std::max<int32_t>(r.req.logprobs, 0);
    for (int64_t pos = first; pos < end; ++pos) {
        const int64_t target = pos + 1;
        if (target >= n_prompt) break;
        if (target < r.prompt_lp_filled) continue;  // already known (a recompute after preemption)
        SKV_CHECK(target == r.prompt_lp_filled, "prompt logprobs: position {} computed before {}", target,
                  r.prompt_lp_filled);
        r.prompt_lp[size_t(target)] = token_logprobs(logits + (pos - first) * V, V, r.req.prompt[size_t(target)], k);
        r.prompt_lp_filled = target + 1;
    }
}

void Engine::sample_entries(const ScheduleOutput& out, const std::vector<std::pair<uint64_t, int>>& targets,
                            std::vector<int32_t>& sampled, std::vector<std::vector<TokenLogprobs>>& logprobs) {
    const ForwardBatch batch = scheduler_->to_forward_batch(out);
    const int64_t V = config().vocab;
    sampled.assign(targets.size(), 0);
    logprobs.assign(targets.size(), {});
    if (backend_->supports_graphs() && device_sampling(out)) {
        // Plain sampling of one token per row: on the device, only the ids come back.
        runner_->forward_sample(batch, kv_cache_->view(), sample_params(targets), sampled);
        return;
    }
    runner_->forward(batch, kv_cache_->view(), logits_);
    std::vector<float> scratch(static_cast<size_t>(V));
    size_t i = 0, row = 0;
    for (const auto& e : out.seqs) {
        const int64_t rows = e.logit_rows();
        if (e.first_logit_row >= 0) record_prompt_rows(e, logits_.data() + row * size_t(V));
        if (!e.needs_logits) {
            row += size_t(rows);
            continue;
        }
        row += size_t(rows) - 1;  // the entry's last row samples
        const float* logits = logits_.data() + row * size_t(V);
        for (int k = 0; k < e.num_samples; ++k, ++i) {
            Request* r = live_request(targets[i].first);
            if (r == nullptr) continue;
            Choice& ch = r->choices[size_t(targets[i].second)];
            if (ch.done) continue;
            std::copy(logits, logits + V, scratch.begin());
            const int32_t tok = ch.sampler->sample(scratch.data(), V, uint64_t(ch.sampled));
            ch.sampler->accept(tok);
            sampled[i] = tok;
            if (r->req.logprobs >= 0) logprobs[i].push_back(token_logprobs(logits, V, tok, r->req.logprobs));
        }
        ++row;
    }
}

// Which (request id, choice) each sample of `out` goes to, captured before update() (which may fork
// siblings); request id 0 when the sequence is gone.
std::vector<std::pair<uint64_t, int>> Engine::sample_targets(const ScheduleOutput& out) const {
    std::vector<std::pair<uint64_t, int>> targets;
    for (const auto& e : out.seqs) {
        if (!e.needs_logits) continue;
        auto sc = seq_choice_.find(e.id);
        for (int k = 0; k < e.num_samples; ++k) {
            if (sc == seq_choice_.end()) {
                targets.emplace_back(0, 0);
            } else {
                targets.emplace_back(sc->second.first, e.num_samples > 1 ? k : sc->second.second);
            }
        }
    }
    return targets;
}

// Whether every sample of the step can be drawn by the backend (only token ids come back), which also
// lets the step overlap the host's work: one plain sample per row, no history-dependent sampling, no
// logprobs. (On the CPU the launch runs the step at once, so nothing overlaps, but the path is the
// same: its draws equal the host sampler's, both Gumbel-max on the shared noise.)
bool Engine::device_sampling(const ScheduleOutput& out) const {
    for (const auto& e : out.seqs) {
        if (e.first_logit_row >= 0 || e.num_samples > 1) return false;
        if (!e.needs_logits) continue;
        auto sc = seq_choice_.find(e.id);
        if (sc == seq_choice_.end()) continue;
        auto rit = requests_.find(sc->second.first);
        if (rit == requests_.end()) continue;
        const GenerationRequest& q = rit->second.req;
        if (q.sampling.needs_history() || q.logprobs >= 0) return false;
    }
    return true;
}

std::vector<SampleParams> Engine::sample_params(const std::vector<std::pair<uint64_t, int>>& targets) const {
    std::vector<SampleParams> params(targets.size());
    for (size_t i = 0; i < targets.size(); ++i) {
        const Request* r = live_request(targets[i].first);
        if (r == nullptr) continue;
        const Choice& ch = r->choices[size_t(targets[i].second)];
        const SamplingParams& sp = r->req.sampling;
        params[i] = SampleParams{sp.temperature, sp.top_k, sp.top_p, sp.min_p, ch.seed, uint64_t(ch.sampled)};
    }
    return params;
}

// After a step's samples are known: the scheduler appends them (forking n > 1 groups) and the
// samples are queued in `ready` for delivery. early_finish: a sample that certainly ends its choice
// (a stop token, the token budget) finishes the sequence in the scheduler now, so the next step,
// scheduled before the sample is delivered, leaves it out; delivery then ends the choice.
void Engine::finish_step(const ScheduleOutput& out, std::vector<std::pair<uint64_t, int>> targets,
                              std::vector<int32_t> sampled, std::vector<std::vector<TokenLogprobs>> logprobs,
                              bool early_finish, Ready& ready) {
    scheduler_->update(out, sampled);
    // Forks: map the new siblings' sequence ids to their choices.
    for (const auto& e : out.seqs) {
        if (e.num_samples <= 1) continue;
        auto rit = requests_.find(e.id);
        if (rit == requests_.end()) continue;
        for (uint64_t sid : scheduler_->running_ids()) {
            const Sequence* s = scheduler_->find(sid);
            if (s && s->group_id == e.id && s->index > 0 && s->index < int(rit->second.choices.size())) {
                rit->second.choices[size_t(s->index)].seq_id = sid;
                seq_choice_[sid] = {e.id, s->index};
            }
        }
    }
    for (size_t i = 0; i < targets.size(); ++i) {  // the draw offsets of the choices' next samples
        if (Request* r = live_request(targets[i].first)) r->choices[size_t(targets[i].second)].sampled++;
    }
    if (early_finish) {
        for (size_t i = 0; i < targets.size(); ++i) {
            const Request* r = live_request(targets[i].first);
            if (r == nullptr) continue;
            const Choice& c = r->choices[size_t(targets[i].second)];
            if (c.done || c.seq_id == 0 || scheduler_->find(c.seq_id) == nullptr) continue;
            if (r->max_new == 0 || c.sampled >= r->max_new || is_stop_token(*r, sampled[i])) {
                scheduler_->finish(c.seq_id, kPendingOutput);
            }
        }
    }
    ready.targets.insert(ready.targets.end(), targets.begin(), targets.end());
    ready.tokens.insert(ready.tokens.end(), sampled.begin(), sampled.end());
    logprobs.resize(targets.size());
    for (auto& l : logprobs) ready.logprobs.push_back(std::move(l));
}

void Engine::deliver_ready(Ready& ready) {
    for (size_t i = 0; i < ready.targets.size(); ++i) {
        Request* r = live_request(ready.targets[i].first);
        if (r == nullptr) continue;
        const auto& lp = ready.logprobs[i];
        deliver(*r, ready.targets[i].second, ready.tokens[i], lp.empty() ? nullptr : &lp[0]);
    }
    ready = Ready{};
}

// One engine step. With overlap (device sampling on a backend with graphs), step k+1 is launched
// before step k's tokens are delivered: detokenizing, stop strings and the requests' callbacks run
// on the host while the device computes the next step. The next step's schedule needs step k's
// tokens, so that part cannot overlap; a choice that a stop string ends during delivery has one
// extra token computed, which is dropped.
bool Engine::step() {
    using Clock = std::chrono::steady_clock;
    auto secs = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    Ready ready;
    if (inflight_) {
        const auto t0 = Clock::now();
        std::vector<int32_t> sampled;
        runner_->forward_sample_wait(sampled);
        const auto t1 = Clock::now();
        counters_.device_wait_s += secs(t0, t1);
        InFlight f = std::move(*inflight_);
        inflight_.reset();
        finish_step(f.out, std::move(f.targets), std::move(sampled), {}, /*early_finish=*/true, ready);
    }
    if (scheduler_->has_work()) {
        const auto t0 = Clock::now();
        ScheduleOutput out = scheduler_->schedule();
        counters_.steps++;
        counters_.preemptions += int64_t(out.preempted.size());
        if (!out.empty()) {
            apply_cow(out.cow_copies);
            auto targets = sample_targets(out);
            if (options_.overlap && device_sampling(out)) {
                const ForwardBatch batch = scheduler_->to_forward_batch(out);
                runner_->forward_sample_launch(batch, kv_cache_->view(), sample_params(targets));
                inflight_ = InFlight{std::move(out), std::move(targets)};
                counters_.overlapped_steps++;
                counters_.host_schedule_s += secs(t0, Clock::now());
            } else {
                deliver_ready(ready);  // step k's tokens before step k+1's
                std::vector<int32_t> sampled;
                std::vector<std::vector<TokenLogprobs>> logprobs;
                sample_entries(out, targets, sampled, logprobs);
                finish_step(out, std::move(targets), std::move(sampled), std::move(logprobs), false, ready);
            }
        }
    }
    const auto t2 = Clock::now();
    deliver_ready(ready);
    // Sequences the scheduler ended itself ("length" at the context limit, "kv_cache"); those finished
    // early for a sample in `ready` were ended by its delivery (the check is a safety net).
    for (const Sequence& s : scheduler_->take_finished()) {
        auto sc = seq_choice_.find(s.id);
        if (sc == seq_choice_.end()) continue;
        auto rit = requests_.find(sc->second.first);
        if (rit == requests_.end()) continue;
        ChoiceEvent ev;
        end_choice(rit->second, sc->second.second, s.finish_reason == kPendingOutput ? "length" : s.finish_reason, &ev);
    }
    for (auto it = requests_.begin(); it != requests_.end();) {
        it = it->second.live == 0 ? requests_.erase(it) : std::next(it);
    }
    counters_.host_output_s += secs(t2, std::chrono::steady_clock::now());
    return has_work();
}

void Engine::run_until_idle() {
    while (step()) {
    }
}

EngineStats Engine::stats() const {
    EngineStats s = counters_;
    s.running = scheduler_->num_running();
    s.waiting = scheduler_->num_waiting();
    s.kv_blocks_used = scheduler_->block_manager().num_used_blocks();
    s.kv_blocks_total = scheduler_->block_manager().num_blocks();
    s.prefix_cache_hit_rate = scheduler_->block_manager().prefix_cache_stats().hit_rate();
    return s;
}

// ---------------------------------------------------------------------------------------------
// Synchronous use: queue, then step until the request is done (other requests advance too).

GenerationResult Engine::generate(const GenerationRequest& request, const std::function<bool(std::string_view)>& on_text,
                                  const std::function<void(const TokenLogprobs&)>& on_token) {
    SKV_CHECK(request.n == 1, "generate() makes one completion (n = {}); queue n > 1 with add_request", request.n);
    using Clock = std::chrono::steady_clock;
    GenerationResult result;
    result.prompt_tokens = int64_t(request.prompt.size());
    const auto t0 = Clock::now();
    std::optional<Clock::time_point> first_token;
    bool done = false, stopped = false;  // stopped: on_text asked to stop; nothing more is emitted
    auto callback = [&](const ChoiceEvent& ev) {
        if (!first_token) first_token = Clock::now();
        result.tokens.insert(result.tokens.end(), ev.tokens.begin(), ev.tokens.end());
        if (on_token)
            for (const auto& lp : ev.logprobs) on_token(lp);
        if (!ev.text.empty() && !stopped) {
            result.text += ev.text;
            if (on_text && !on_text(ev.text)) stopped = true;
        }
        if (ev.finished) {
            done = true;
            result.finish_reason = ev.finish_reason;
        }
    };
    const uint64_t id = add_request(request, callback);
    while (!done) {
        if (stopped) {
            abort(id);
            break;
        }
        step();
    }
    const auto t1 = Clock::now();
    result.prefill_seconds = std::chrono::duration<double>(first_token.value_or(t1) - t0).count();
    result.decode_seconds = std::chrono::duration<double>(t1 - first_token.value_or(t1)).count();
    return result;
}

std::vector<float> Engine::prompt_logits(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions) {
    const int64_t n = int64_t(tokens.size());
    SKV_CHECK(n > 0 && n <= context_length_, "prompt of {} tokens does not fit the context of {}", n, context_length_);
    std::vector<int32_t> wanted = positions;
    if (wanted.empty()) {
        wanted.resize(size_t(n));
        for (int64_t i = 0; i < n; ++i) wanted[size_t(i)] = int32_t(i);
    }
    SKV_CHECK(std::is_sorted(wanted.begin(), wanted.end()) && wanted.front() >= 0 && wanted.back() < n,
              "positions must be sorted and within the prompt's {} tokens", n);
    const int64_t V = config().vocab;
    std::vector<float> out(wanted.size() * size_t(V));
    size_t next = 0;
    auto sink = [&](int64_t first, const float* rows, int64_t count) {
        for (; next < wanted.size() && wanted[next] < first + count; ++next)
            std::copy_n(rows + (wanted[next] - first) * V, V, out.begin() + int64_t(next) * V);
    };
    bool done = false;
    GenerationRequest req;
    req.prompt = tokens;
    req.max_tokens = 0;
    add(std::move(req), [&](const ChoiceEvent& ev) { done = done || ev.finished; }, wanted.front(), sink);
    while (!done && step()) {
    }
    SKV_CHECK(next == wanted.size(), "the prompt's logits did not all come back ({} of {})", next, wanted.size());
    return out;
}

std::vector<std::vector<float>> Engine::batch_last_logits(const std::vector<std::vector<int32_t>>& prompts) {
    for (const auto& p : prompts)
        SKV_CHECK(!p.empty() && int64_t(p.size()) <= context_length_, "each prompt needs 1..{} tokens", context_length_);
    const int64_t V = config().vocab;
    std::vector<std::vector<float>> out(prompts.size());
    size_t finished = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
        GenerationRequest req;
        req.prompt = prompts[i];
        req.max_tokens = 0;
        auto sink = [&out, i, V](int64_t, const float* rows, int64_t) { out[i].assign(rows, rows + V); };
        add(std::move(req), [&finished](const ChoiceEvent& ev) { finished += ev.finished ? 1 : 0; },
            int64_t(prompts[i].size()) - 1, sink);
    }
    while (finished < prompts.size() && step()) {
    }
    for (const auto& row : out) SKV_CHECK(int64_t(row.size()) == V, "a prompt's logits did not come back");
    return out;
}

}  // namespace swiftkv
