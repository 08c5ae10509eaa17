#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace swiftkv::server {

std::string prometheus_number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
    std::string s(buf, r.ptr);
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    return s;
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
    counts_[i] += 1;
    sum_ += v;
    count_ += 1;
}

void Histogram::write(std::ostringstream& os, const std::string& name, const std::string& help,
                      const std::string& labels) const {
    std::lock_guard<std::mutex> lock(mu_);
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    uint64_t cum = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
        cum += counts_[i];
        os << name << "_bucket{" << labels << ",le=\"" << prometheus_number(bounds_[i]) << "\"} " << cum << "\n";
    }
    cum += counts_.back();
    os << name << "_bucket{" << labels << ",le=\"+Inf\"} " << cum << "\n";
    os << name << "_sum{" << labels << "} " << prometheus_number(sum_) << "\n";
    os << name << "_count{" << labels << "} " << count_ << "\n";
}

void ServingMetrics::record(double e2e_s, const double* ttft_s, int64_t completion_tokens, int n,
                            const std::vector<std::string>& finish_reasons) {
    e2e_.observe(e2e_s);
    if (ttft_s != nullptr) {
        ttft_.observe(*ttft_s);
        const int64_t per_choice = n > 0 ? completion_tokens / n : completion_tokens;
        if (per_choice > 1) tpot_.observe((e2e_s - *ttft_s) / double(completion_tokens - n));
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& r : finish_reasons) success_[r] += 1;
}

std::string ServingMetrics::text(const EngineStats& s, const std::string& model_name) const {
    std::ostringstream os;
    const std::string labels = "model_name=\"" + model_name + "\"";
    auto scalar = [&](const char* type, const char* name, const char* help, double v) {
        os << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
           << name << "{" << labels << "} " << prometheus_number(v) << "\n";
    };
    scalar("gauge", "swiftkv:num_requests_running", "Number of requests currently running.", double(s.running));
    scalar("gauge", "swiftkv:num_requests_waiting", "Number of requests waiting to run.", double(s.waiting));
    scalar("gauge", "swiftkv:kv_cache_blocks_used", "KV cache blocks in use.", double(s.kv_blocks_used));
    scalar("gauge", "swiftkv:kv_cache_blocks_total", "KV cache blocks in all.", double(s.kv_blocks_total));
    scalar("gauge", "swiftkv:kv_cache_usage_perc", "KV cache usage (0 to 1).",
           s.kv_blocks_total > 0 ? double(s.kv_blocks_used) / double(s.kv_blocks_total) : 0.0);
    scalar("gauge", "swiftkv:prefix_cache_hit_rate", "Prefix cache hit rate (0 to 1).", s.prefix_cache_hit_rate);
    scalar("counter", "swiftkv:prompt_tokens_total", "Prompt tokens processed.", double(s.prompt_tokens_total));
    scalar("counter", "swiftkv:generation_tokens_total", "Tokens generated.", double(s.generation_tokens_total));
    os << "# HELP swiftkv:request_success_total Finished sequences by finish reason.\n"
          "# TYPE swiftkv:request_success_total counter\n";
    std::map<std::string, uint64_t> success;
    {
        std::lock_guard<std::mutex> lock(mu_);
        success = success_;
    }
    for (const char* r : {"stop", "length", "abort"}) success.emplace(r, 0);
    for (const auto& [reason, count] : success)
        os << "swiftkv:request_success_total{" << labels << ",finished_reason=\"" << reason << "\"} " << count << "\n";
    ttft_.write(os, "swiftkv:time_to_first_token_seconds", "Time to first token in seconds.", labels);
    tpot_.write(os, "swiftkv:time_per_output_token_seconds", "Time per output token in seconds.", labels);
    e2e_.write(os, "swiftkv:e2e_request_latency_seconds", "End-to-end request latency in seconds.", labels);
    return os.str();
}

}  // namespace swiftkv::server
