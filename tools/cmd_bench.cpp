// swiftkv bench — prompt processing (ppN) and generation (tgN) throughput in the manner of
// llama-bench: random prompt tokens, a fresh sequence per repetition, one warm-up run, mean and
// standard deviation over repetitions. Several models are measured side by side in one run: the
// model, any --compare models, and SwiftKV conversions of the model (--swiftkv-cuts 50%,25%,50%:3),
// with prefill FLOPs per token from the config, time to first token, KV bytes per token and the
// speed-up over the first model. Peak memory and the device name go with the JSON output.
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "backend/cpu/cpu_backend.h"
#include "cli_common.h"
#include "convert/swiftkv_convert.h"
#include "core/error.h"

using namespace swiftkv;
namespace fs = std::filesystem;

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

struct Candidate {
    std::string label;
    std::string path;
    bool temporary = false;
};

// Removes converted temporary models however the bench ends.
struct TempDirs {
    std::vector<std::string> dirs;
    ~TempDirs() {
        std::error_code ec;
        for (auto& d : dirs) fs::remove_all(d, ec);
    }
};

}  // namespace

int cmd_bench(const cli::ModelArgs& model_args, const BenchArgs& args) {
    const EngineOptions base_opts = cli::engine_options(model_args);
    std::vector<Candidate> candidates{{fs::path(base_opts.model.path).filename().string(), base_opts.model.path}};
    for (const auto& m : args.compare) candidates.push_back({fs::path(m).filename().string(), m});
    TempDirs temps;
    for (const auto& v : args.swiftkv_variants) {
        const size_t colon = v.find(':');
        ConvertOptions co;
        co.model_path = base_opts.model.path;
        co.num_kv_layers = v.substr(0, colon);
        co.group_size = colon == std::string::npos ? 1 : std::stoll(v.substr(colon + 1));
        co.out_dir = (fs::temp_directory_path() / fmt::format("swiftkv-bench-{}-{}", ::getpid(), temps.dirs.size())).string();
        temps.dirs.push_back(co.out_dir);
        fmt::print(stderr, "converting to SwiftKV {} (group {}) ...\n", co.num_kv_layers, co.group_size);
        convert_to_swiftkv(co);
        candidates.push_back({fmt::format("SwiftKV {} g{}", co.num_kv_layers, co.group_size), co.out_dir, true});
    }

    int64_t needed = 0;
    for (int64_t p : args.prompt_lengths) needed = std::max(needed, p);
    for (int64_t g : args.gen_lengths) needed = std::max(needed, g + 2);
    const int threads = model_args.threads > 0 ? model_args.threads : int(std::thread::hardware_concurrency());
    const std::string dtype = model_args.dtype;

    nlohmann::json models = nlohmann::json::array();
    std::map<std::string, double> baseline;  // test -> tokens/s of the first model
    fmt::print("| model | L/N | g | KV bytes/token | test | GFLOP/token | tokens/s | ± | TTFT ms | vs first |\n"
               "|---|---|---|---:|---|---:|---:|---:|---:|---:|\n");
    for (size_t ci = 0; ci < candidates.size(); ++ci) {
        const Candidate& cand = candidates[ci];
        EngineOptions opts = base_opts;
        opts.model.path = cand.path;
        opts.context_length = std::max<int64_t>(needed + 16, 256);
        Engine engine(opts);
        const ModelConfig& c = engine.config();
        const int64_t kv_bytes = c.kv_bytes_per_token();
        std::mt19937 rng(1234);
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
        auto record = [&](const std::string& test, const std::vector<double>& rates, double ttft_ms, double flops) {
            const Stats s = stats(rates);
            if (ci == 0) baseline[test] = s.mean;
            const double speedup = baseline.count(test) ? s.mean / baseline[test] : 0.0;
            fmt::print("| {} | {}/{} | {} | {} | {} | {} | {:.1f} | {:.1f} | {} | {:.2f}x |\n", cand.label, c.num_kv_layers,
                       c.n_layers, c.kv_group_size, kv_bytes, test, flops > 0 ? fmt::format("{:.3f}", flops / 1e9) : "",
                       s.mean, s.stddev, ttft_ms > 0 ? fmt::format("{:.1f}", ttft_ms) : "", speedup);
            std::fflush(stdout);
            results.push_back({{"test", test}, {"tokens_per_s", s.mean}, {"stddev", s.stddev}, {"samples", rates},
                               {"ttft_ms", ttft_ms}, {"prefill_flops_per_token", flops}, {"speedup_vs_first", speedup}});
        };
        for (int64_t n : args.prompt_lengths) {
            std::vector<double> rates, ttft;
            for (int rep = -1; rep < args.reps; ++rep) {  // rep -1 is the warm-up
                GenerationRequest req;
                req.prompt = random_tokens(n);
                req.max_tokens = 1;  // the first token: prefill plus the logits of the last position
                GenerationResult r = engine.generate(req);
                if (rep >= 0) {
                    rates.push_back(double(n) / r.prefill_seconds);
                    ttft.push_back(r.prefill_seconds * 1e3);
                }
            }
            record(fmt::format("pp{}", n), rates, stats(ttft).mean, c.prefill_flops_per_token(n));
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
            record(fmt::format("tg{}", n), rates, 0, 0);
        }
        models.push_back({{"label", cand.label},
                          {"path", cand.temporary ? std::string("(converted from ") + base_opts.model.path + ")" : cand.path},
                          {"swiftkv_layers", c.num_kv_layers},
                          {"n_layers", c.n_layers},
                          {"kv_group_size", c.kv_group_size},
                          {"kv_bytes_per_token", kv_bytes},
                          {"weight_bytes", engine.model().weight_bytes()},
                          {"results", results}});
    }
    const double rss = peak_rss_mb();
    const std::string isa = cpu::cpu_isa_name(cpu::default_cpu_isa());
    fmt::print("\npeak memory (RSS): {:.0f} MB; dtype {}; {} threads; device: {}; CPU kernels: {}; BLAS: {}\n", rss,
               dtype, threads, cpu_name(), isa, cpu_backend_blas_core());
    if (!args.json_out.empty()) {
        nlohmann::json out = {{"tool", "swiftkv bench"}, {"dtype", dtype},          {"threads", threads},
                              {"device", cpu_name()},    {"cpu_isa", isa},          {"blas_core", cpu_backend_blas_core()},
                              {"reps", args.reps},       {"peak_rss_mb", rss},      {"models", models}};
        const std::string tmp = args.json_out + ".tmp";
        {
            std::ofstream f(tmp);
            SKV_CHECK(f.good(), "cannot write '{}'", args.json_out);
            f << out.dump(2) << "\n";
        }
        fs::rename(tmp, args.json_out);
    }
    return 0;
}
