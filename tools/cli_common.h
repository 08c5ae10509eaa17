// Shared pieces of the swiftkv command line: model/engine options every subcommand accepts.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "engine/engine.h"

namespace swiftkv::cli {

struct ModelArgs {
    std::string model;
    std::string device = "cpu";
    std::string dtype;  // empty: the device's default (f32 on cpu, bf16 on cuda)
    double gpu_memory_fraction = 0.9;
    bool no_graphs = false;
    int threads = 0;
    int64_t ctx = 0;
    int64_t kv_cache_tokens = 0;
    std::string swiftkv;  // "on", "off" or empty: the checkpoint's config decides
    bool full_student = false;
};

void add_model_args(CLI::App& app, ModelArgs& args);
std::string default_model_path();
EngineOptions engine_options(const ModelArgs& args);
// A --swiftkv value ("on", "off", or "" when not given) as LoadOptions::swiftkv takes it.
std::optional<bool> swiftkv_choice(const std::string& flag);

struct SamplingArgs {
    SamplingParams sampling;  // bound to the flags directly; the seed is set from `seed`
    int64_t seed = -1;
    int64_t max_tokens = 256;
    std::vector<std::string> stop;
    bool ignore_eos = false;
};
void add_sampling_args(CLI::App& app, SamplingArgs& args);
GenerationRequest make_request(const SamplingArgs& args);

}  // namespace swiftkv::cli

int cmd_run(const swiftkv::cli::ModelArgs& model, const swiftkv::cli::SamplingArgs& sampling, const std::string& prompt,
            bool chat_format, const std::string& system);
int cmd_chat(const swiftkv::cli::ModelArgs& model, const swiftkv::cli::SamplingArgs& sampling, const std::string& system);
int cmd_inspect(const std::string& model, bool all_tensors);
struct BenchArgs {
    std::vector<int64_t> prompt_lengths{512, 2048};
    std::vector<int64_t> gen_lengths{128};
    int reps = 3;
    std::string json_out;
    std::vector<std::string> compare;           // more models to measure side by side
    std::vector<std::string> swiftkv_variants;  // "50%" or "50%:3": convert the model and measure it too
};
int cmd_bench(const swiftkv::cli::ModelArgs& model, const BenchArgs& args);
struct SyntheticBenchArgs {
    std::string shape;                               // "llama-3.1-8b" or "llama-3.1-8b:LAYERS"
    std::vector<int64_t> prompt_lengths{512, 2048, 8192};
    std::vector<int64_t> prefill_batches{1, 8};
    std::vector<int64_t> decode_batches{1, 8, 32, 128};
    int64_t decode_context = 1024;
    int64_t decode_steps = 32;
    int64_t max_step_tokens = 65536;                 // tokens in one forward step
    int reps = 3;
    std::vector<std::string> swiftkv_variants;       // "50%", "25%", "50%:2"
    bool time_acrosskv = false;                      // time AcrossKV variants too (else sizes only)
    std::string json_out;
};
int cmd_bench_synthetic(const swiftkv::cli::ModelArgs& model, const SyntheticBenchArgs& args);
struct ScoreArgs {
    std::vector<int32_t> tokens;
    std::string text;
    std::vector<int32_t> positions;
    bool all_positions = false;
    std::string json_out;
    std::string npy_out;
    int64_t greedy = 0;          // also generate this many greedy tokens (with --prompts-file)
    std::string prompts_file;    // {"prompts": [[ids...], ...]}: greedy continuations of each
};
int cmd_score(const swiftkv::cli::ModelArgs& model, const ScoreArgs& args);
struct ServeArgs {
    std::string host = "127.0.0.1";
    int port = 8000;
    std::string api_key;            // empty: $SWIFTKV_API_KEY, else no authentication
    std::string served_model_name;  // empty: the model file's stem
    int http_threads = 0;           // 0: max-num-seqs + 16 (a streaming request holds a thread)
    int64_t max_body_bytes = int64_t(8) << 20;
    int64_t max_header_bytes = int64_t(64) << 10;
    int read_timeout_s = 10;
    int keep_alive_timeout_s = 5;
    int64_t max_num_seqs = 256;
    int64_t max_batched_tokens = 2048;
    bool no_prefix_caching = false;
    bool no_overlap = false;        // synchronous engine steps
    std::string synthetic;          // random weights of this shape (benchmarks)
    std::string synthetic_swiftkv;  // its SwiftKV cut
};
int cmd_serve(const swiftkv::cli::ModelArgs& model, const ServeArgs& args);
