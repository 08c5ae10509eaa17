#include "server/serving_engine.h"

#include <cstdio>

#include <algorithm>
#include <exception>
#include <utility>

namespace swiftkv::server {

ServingEngine::ServingEngine(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
    info_.path = engine_->options().model.path;
    info_.context_length = engine_->context_length();
    info_.vocab = engine_->config().vocab;
    info_.has_chat_template = engine_->has_chat_template();
    info_.generation_defaults = engine_->generation_defaults();
    snapshot_ = engine_->stats();
    thread_ = std::thread([this] { loop(); });
}

ServingEngine::~ServingEngine() {
    shutdown();
    if (thread_.joinable()) thread_.join();
}

uint64_t ServingEngine::submit(GenerationRequest request, StreamCallbacks callbacks) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    if (stopping_) {
        lock.unlock();
        if (callbacks.on_done) callbacks.on_done("shutting down");
        return id;
    }
    incoming_.emplace_back(id, std::make_pair(std::move(request), std::move(callbacks)));
    snapshot_.waiting++;
    cv_.notify_all();
    return id;
}

void ServingEngine::abort(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
    cv_.notify_all();
}

void ServingEngine::shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
}

EngineStats ServingEngine::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return snapshot_;
}

// Engine thread: turns the Engine's per-choice events into the server's stream callbacks.
void ServingEngine::on_event(uint64_t id, const ChoiceEvent& e) {
    auto it = live_.find(id);
    if (it == live_.end()) return;
    Live& l = it->second;
    GenerationResult& r = l.results[size_t(e.index)];
    r.tokens.insert(r.tokens.end(), e.tokens.begin(), e.tokens.end());
    r.text += e.text;
    r.prompt_tokens = e.prompt_tokens;
    if (!e.prompt_logprobs.empty() && !l.prompt_sent) {
        l.prompt_sent = true;
        if (l.callbacks.on_prompt_logprobs) l.callbacks.on_prompt_logprobs(std::vector<TokenLogprobs>(e.prompt_logprobs));
    }
    std::vector<TokenLogprobs> lps = e.logprobs;
    if (!e.text.empty() && l.callbacks.on_text) {
        if (!l.callbacks.on_text(e.index, e.text, std::move(lps))) l.aborted = true;  // client gone
        lps.clear();
    } else if (!e.finished && !lps.empty() && l.callbacks.on_text) {
        if (!l.callbacks.on_text(e.index, "", std::move(lps))) l.aborted = true;
        lps.clear();
    }
    if (e.finished) {
        r.finish_reason = e.finish_reason;  // "abort" stays: metrics count aborted sequences
        if (l.callbacks.on_finish) l.callbacks.on_finish(e.index, r, std::move(lps));
        if (--l.remaining == 0) {
            const bool was_aborted = e.finish_reason == "abort";
            StreamCallbacks cb = std::move(l.callbacks);
            live_.erase(it);
            if (cb.on_done) cb.on_done(was_aborted ? "aborted" : "");
        }
    }
}

void ServingEngine::loop() {
    for (;;) {
        std::deque<std::pair<uint64_t, std::pair<GenerationRequest, StreamCallbacks>>> incoming;
        std::vector<uint64_t> aborts;
        bool stopping = false;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !incoming_.empty() || !aborts_.empty() || engine_->has_work(); });
            incoming.swap(incoming_);
            aborts.swap(aborts_);
            stopping = stopping_;
        }
        for (auto& [id, item] : incoming) {
            auto& [req, cb] = item;
            if (stopping) {
                if (cb.on_done) cb.on_done("shutting down");
                continue;
            }
            Live l;
            l.callbacks = std::move(cb);
            l.results.resize(size_t(std::max(1, req.n)));
            l.remaining = std::max(1, req.n);
            try {
                live_[id] = std::move(l);
                const uint64_t rid = id;  // structured bindings cannot be captured before C++20 in clang 14
                const uint64_t eid =
                    engine_->add_request(std::move(req), [this, rid](const ChoiceEvent& e) { on_event(rid, e); });
                live_[id].engine_id = eid;
            } catch (const std::exception& e) {
                StreamCallbacks c = std::move(live_[id].callbacks);
                live_.erase(id);
                if (c.on_done) c.on_done(e.what());
            }
        }
        if (stopping) {
            for (auto& [id, l] : live_) aborts.push_back(id);
        }
        for (uint64_t id : aborts) {
            auto it = live_.find(id);
            if (it != live_.end()) engine_->abort(it->second.engine_id);  // fires the finishing events
        }
        if (engine_->has_work()) {
            try {
                engine_->step();
            } catch (const std::exception& e) {
                // A failed step (e.g. a device error): fail every request in flight, keep serving.
                std::vector<uint64_t> ids;
                for (auto& [id, l] : live_) ids.push_back(id);
                for (uint64_t id : ids) {
                    auto it = live_.find(id);
                    if (it == live_.end()) continue;
                    const uint64_t eid = it->second.engine_id;
                    StreamCallbacks c = std::move(it->second.callbacks);
                    live_.erase(it);
                    engine_->abort(eid);
                    if (c.on_done) c.on_done(std::string("engine step failed: ") + e.what());
                }
            }
            // Clients that went away mid-stream.
            std::vector<uint64_t> gone;
            for (auto& [id, l] : live_)
                if (l.aborted) gone.push_back(id);
            for (uint64_t id : gone) {
                auto it = live_.find(id);
                if (it != live_.end()) engine_->abort(it->second.engine_id);
            }
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            const EngineStats st = engine_->stats();
            snapshot_ = st;
            snapshot_.waiting += int64_t(incoming_.size());
            if (stopping_ && live_.empty() && incoming_.empty()) {
                const double steps = double(std::max<int64_t>(st.steps, 1));
                std::fprintf(stderr,
                             "engine: %lld steps (%lld overlapped), %lld preemptions; per step: host scheduling "
                             "%.3f ms, host output %.3f ms, device wait %.3f ms\n",
                             (long long)st.steps, (long long)st.overlapped_steps, (long long)st.preemptions,
                             1e3 * st.host_schedule_s / steps, 1e3 * st.host_output_s / steps,
                             1e3 * st.device_wait_s / steps);
                return;
            }
        }
    }
}

}  // namespace swiftkv::server
