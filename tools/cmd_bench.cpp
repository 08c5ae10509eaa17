// swiftkv bench — prompt processing (ppN) and generation (tgN) throughput in the manner of
// llama-bench: random prompt tokens, a fresh sequence per repetition, one warm-up run, mean and
// standard deviation over repetitions, peak memory, JSON output with the device name.
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "cli_common.h"
#include "core/error.h"

using namespace swiftkv;

namespace {

std::string cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    }
    return "unknown CPU";
}

double peak_rss_mb() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) / 1024.0;
}

struct Stats {
    double mean = 0, stddev = 0;
};

Stats stats(const std::vector<double>& v) {
    Stats s;
    for (double x : v) s.mean += x;
    s.mean /= double(v.size());
    for (double x : v) s.stddev += (x - s.mean) * (x - s.mean);
    s.stddev = v.size() > 1 ? std::sqrt(s.stddev / double(v.size() - 1)) : 0.0;
    return s;
}

}  // namespace

int cmd_bench(const cli::ModelArgs& model_args, const BenchArgs& args) {
    EngineOptions opts = cli::engine_options(model_args);
    int64_t needed = 0;
    for (int64_t p : args.prompt_lengths) needed = std::max(needed, p);
    for (int64_t g : args.gen_lengths) needed = std::max(needed, g + 2);
    if (opts.context_length == 0) opts.context_length = 0;  // model default
    Engine engine(opts);
    SKV_CHECK(needed < engine.context_length(), "bench needs a context of {} tokens; raise --ctx", needed + 1);
    const int threads = model_args.threads > 0 ? model_args.threads : int(std::thread::hardware_concurrency());
    std::mt19937 rng(1234);
    // Random ordinary tokens (ids of special tokens excluded so nothing stops early).
    std::vector<int32_t> ordinary;
    for (int32_t i = 0; i < engine.tokenizer().vocab_size(); ++i) {
        if (!engine.tokenizer().is_special(i)) ordinary.push_back(i);
    }
    auto random_tokens = [&](int64_t n) {
        std::vector<int32_t> t(n);
        std::uniform_int_distribution<size_t> pick(0, ordinary.size() - 1);
        for (auto& x : t) x = ordinary[pick(rng)];
        return t;
    };

    nlohmann::json results = nlohmann::json::array();
    fmt::print("| model | dtype | threads | test | tokens/s | stddev |\n|---|---|---|---|---:|---:|\n");
    const std::string model_name = opts.model_path.substr(opts.model_path.find_last_of('/') + 1);
    auto record = [&](const std::string& test, const std::vector<double>& rates) {
        Stats s = stats(rates);
        fmt::print("| {} | {} | {} | {} | {:.1f} | {:.1f} |\n", model_name, model_args.dtype, threads, test, s.mean, s.stddev);
        std::fflush(stdout);
        results.push_back({{"test", test}, {"tokens_per_s", s.mean}, {"stddev", s.stddev}, {"samples", rates}});
    };
    for (int64_t n : args.prompt_lengths) {
        std::vector<double> rates;
        for (int rep = -1; rep < args.reps; ++rep) {  // rep -1 is the warm-up
            GenerationRequest req;
            req.prompt = random_tokens(n);
            req.max_tokens = 0;
            GenerationResult r = engine.generate(req);
            if (rep >= 0) rates.push_back(double(n) / r.prefill_seconds);
        }
        record(fmt::format("pp{}", n), rates);
    }
    for (int64_t n : args.gen_lengths) {
        std::vector<double> rates;
        for (int rep = -1; rep < args.reps; ++rep) {
            GenerationRequest req;
            req.prompt = random_tokens(1);
            req.max_tokens = n + 1;
            req.ignore_eos = true;
            GenerationResult r = engine.generate(req);
            if (rep >= 0) rates.push_back(double(n) / r.decode_seconds);
        }
        record(fmt::format("tg{}", n), rates);
    }
    const double rss = peak_rss_mb();
    fmt::print("\npeak memory (RSS): {:.0f} MB; weights {:.0f} MB; KV cache {:.0f} MB; device: {}\n", rss,
               double(engine.model().weight_bytes()) / 1e6, double(engine.kv_cache().total_bytes()) / 1e6, cpu_name());
    if (!args.json_out.empty()) {
        nlohmann::json out = {{"tool", "swiftkv bench"},
                              {"model", opts.model_path},
                              {"dtype", model_args.dtype},
                              {"threads", threads},
                              {"device", cpu_name()},
                              {"reps", args.reps},
                              {"peak_rss_mb", rss},
                              {"results", results}};
        std::ofstream f(args.json_out);
        SKV_CHECK(f.good(), "cannot write '{}'", args.json_out);
        f << out.dump(2) << "\n";
    }
    return 0;
}
