#include "server/serving_engine.h"

#include <algorithm>
#include <exception>
#include <utility>

namespace swiftkv::server {

SerialEngineBackend::SerialEngineBackend(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
    info_.path = engine_->options().model_path;
    info_.context_length = engine_->context_length();
    info_.vocab = engine_->config().vocab;
    info_.has_chat_template = engine_->has_chat_template();
    info_.generation_defaults = engine_->generation_defaults();
    if (!info_.generation_defaults.is_object()) info_.generation_defaults = nlohmann::json::object();
    worker_ = std::thread([this] { worker_loop(); });
}

SerialEngineBackend::~SerialEngineBackend() {
    shutdown();
    if (worker_.joinable()) worker_.join();
}

std::string SerialEngineBackend::apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const {
    return engine_->apply_chat_template(messages, add_generation_prompt);
}

uint64_t SerialEngineBackend::submit(ServingRequest request, StreamCallbacks callbacks) {
    auto job = std::make_shared<Job>();
    job->request = std::move(request);
    job->callbacks = std::move(callbacks);
    {
        std::lock_guard<std::mutex> lock(mu_);
        job->id = next_id_++;
        if (!stopping_) {
            queue_.push_back(job);
            cv_.notify_all();
            return job->id;
        }
    }
    if (job->callbacks.on_done) job->callbacks.on_done("shutting down");
    return job->id;
}

void SerialEngineBackend::abort(uint64_t id) {
    std::shared_ptr<Job> dropped;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (running_ && running_->id == id) {
            running_->cancelled = true;
            return;
        }
        auto it = std::find_if(queue_.begin(), queue_.end(), [&](const auto& j) { return j->id == id; });
        if (it == queue_.end()) return;
        dropped = *it;
        queue_.erase(it);
    }
    if (dropped->callbacks.on_done) dropped->callbacks.on_done("aborted");
}

void SerialEngineBackend::shutdown() {
    std::deque<std::shared_ptr<Job>> dropped;
    {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
        if (running_) running_->cancelled = true;
        dropped.swap(queue_);
        cv_.notify_all();
    }
    for (auto& j : dropped) {
        if (j->callbacks.on_done) j->callbacks.on_done("aborted");
    }
}

ServingStats SerialEngineBackend::stats() const {
    ServingStats s;
    {
        std::lock_guard<std::mutex> lock(mu_);
        s.running = running_ ? 1 : 0;
        s.waiting = int64_t(queue_.size());
    }
    s.kv_blocks_used = kv_used_.load();
    s.kv_blocks_total = engine_->kv_cache().num_blocks();
    s.prefix_cache_hit_rate = 0.0;
    s.prompt_tokens_total = prompt_tokens_.load();
    s.generation_tokens_total = generation_tokens_.load();
    return s;
}

void SerialEngineBackend::worker_loop() {
    for (;;) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_ && queue_.empty()) return;
            job = queue_.front();
            queue_.pop_front();
            running_ = job;
        }
        run_job(*job);
        {
            std::lock_guard<std::mutex> lock(mu_);
            running_.reset();
        }
    }
}

void SerialEngineBackend::run_job(Job& job) {
    std::string error;
    try {
        const int n = std::max(job.request.n, 1);
        for (int i = 0; i < n && !job.cancelled; ++i) {
            GenerationRequest gen = job.request.gen;
            if (gen.sampling.seed) gen.sampling.seed = *gen.sampling.seed + uint64_t(i);
            const int64_t n_prompt = int64_t(gen.prompt.size());
            const int64_t bs = std::max<int64_t>(engine_->kv_cache().block_size(), 1);
            const int64_t reserved = n_prompt + std::max<int64_t>(0, std::min(gen.max_tokens, info_.context_length - n_prompt));
            kv_used_ = (reserved + bs - 1) / bs;
            std::vector<TokenLogprobs> pending;
            int64_t generated = 0;
            auto on_token = [&](const TokenLogprobs& lp) { pending.push_back(lp); };
            auto on_text = [&](std::string_view text) -> bool {
                if (job.cancelled) return false;
                bool keep = true;
                if (job.callbacks.on_text) keep = job.callbacks.on_text(i, text, std::move(pending));
                pending.clear();
                if (!keep) job.cancelled = true;
                return keep && !job.cancelled;
            };
            GenerationResult r;
            try {
                r = engine_->generate(gen, on_text, on_token);
            } catch (...) {
                kv_used_ = 0;
                throw;
            }
            kv_used_ = 0;
            generated = int64_t(r.tokens.size());
            prompt_tokens_ += r.prompt_tokens;
            generation_tokens_ += generated;
            if (job.cancelled) break;
            if (job.callbacks.on_finish) job.callbacks.on_finish(i, r, std::move(pending));
        }
        if (job.cancelled) error = "aborted";
    } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "internal error";
    } catch (...) {
        error = "internal error";
    }
    try {
        if (job.callbacks.on_done) job.callbacks.on_done(error);
    } catch (...) {
    }
}

}  // namespace swiftkv::server
