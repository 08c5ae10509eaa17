// Serving metrics in Prometheus text format 0.0.4 (vLLM's metric names under the swiftkv: prefix):
// latency histograms, finished sequences by reason, and the gauges and counters the engine reports.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "server/serving_engine.h"

namespace swiftkv::server {

// The shortest decimal that reads back as v ("0.005", not "0.0050000000000000001"); integral
// values keep a ".0" so Prometheus parses them as floats either way.
std::string prometheus_number(double v);

class Histogram {
public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double v);
    void write(std::ostringstream& os, const std::string& name, const std::string& help, const std::string& labels) const;

private:
    mutable std::mutex mu_;
    std::vector<double> bounds_;
    std::vector<uint64_t> counts_;
    double sum_ = 0;
    uint64_t count_ = 0;
};

class ServingMetrics {
public:
    // One finished request: when it started, when its first output came (if any), its tokens, and
    // the finish reason of each of its n sequences ("stop", "length", "abort").
    void record(double e2e_s, const double* ttft_s, int64_t completion_tokens, int n,
                const std::vector<std::string>& finish_reasons);
    std::string text(const EngineStats& stats, const std::string& model_name) const;

private:
    Histogram ttft_{{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0}};
    Histogram tpot_{{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5}};
    Histogram e2e_{{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0}};
    mutable std::mutex mu_;
    std::map<std::string, uint64_t> success_;  // finish reason -> sequences
};

}  // namespace swiftkv::server
