#include "cli_common.h"

#include <cstdlib>

#include "core/error.h"

namespace swiftkv::cli {

std::string default_model_path() {
    if (const char* env = std::getenv("SWIFTKV_MODEL"); env != nullptr && *env != '\0') return env;
    return SWIFTKV_DEFAULT_MODEL;
}

void add_model_args(CLI::App& app, ModelArgs& a) {
    app.add_option("-m,--model", a.model, "GGUF file or Hugging Face directory (default: $SWIFTKV_MODEL or the bundled SmolLM2-135M-Instruct)");
    app.add_option("-d,--device", a.device, "where to run: cpu, cuda or cuda:N (default: cpu)");
    app.add_option("--dtype", a.dtype, "weight storage precision: f32 or bf16 (default: f32 on cpu, bf16 on cuda)")
        ->check(CLI::IsMember({"f32", "bf16"}));
    app.add_option("--gpu-memory-fraction", a.gpu_memory_fraction,
                   "share of the GPU memory left after the weights that the KV cache takes (default 0.9)")
        ->check(CLI::Range(0.01, 1.0));
    app.add_flag("--no-graphs", a.no_graphs, "run every GPU op eagerly (no CUDA graph replay)");
    app.add_option("-t,--threads", a.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
    app.add_option("-c,--ctx", a.ctx, "context length in tokens (default: the model's, capped at 8192)")->check(CLI::Range(int64_t(0), int64_t(1) << 24));
    app.add_option("--kv-cache-tokens", a.kv_cache_tokens, "KV cache capacity in tokens (default: the context length)")->check(CLI::Range(int64_t(0), int64_t(1) << 30));
    app.add_option("--swiftkv", a.swiftkv,
                   "on: run a SwiftKV model as SwiftKV; off: run it as its teacher (default: its config.json's "
                   "\"swiftkv\" key, else on)")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_flag("--full-student", a.full_student,
                 "run every token through every layer (SwiftKV's training path; same logits, full prefill cost)");
}

std::optional<bool> swiftkv_choice(const std::string& flag) {
    if (flag.empty()) return std::nullopt;
    return flag == "on";
}

EngineOptions engine_options(const ModelArgs& a) {
    EngineOptions o;
    o.model.path = a.model.empty() ? default_model_path() : a.model;
    o.device = a.device;
    if (!a.dtype.empty()) o.model.weight_dtype = a.dtype == "bf16" ? DType::BF16 : DType::F32;
    o.gpu_memory_fraction = a.gpu_memory_fraction;
    o.graphs = !a.no_graphs;
    o.threads = a.threads;
    o.context_length = a.ctx;
    o.kv_cache_tokens = a.kv_cache_tokens;
    o.model.swiftkv = swiftkv_choice(a.swiftkv);
    o.full_student = a.full_student;
    o.max_num_seqs = 1;  // one request at a time (run, chat, score, bench); serve and gen-data raise it
    return o;
}

void add_sampling_args(CLI::App& app, SamplingArgs& s) {
    app.add_option("-n,--max-tokens", s.max_tokens, "maximum tokens to generate");
    app.add_option("--temp,--temperature", s.sampling.temperature, "sampling temperature (0: greedy)");
    app.add_option("--top-k", s.sampling.top_k, "keep the k most likely tokens (0: off)");
    app.add_option("--top-p", s.sampling.top_p, "nucleus sampling mass");
    app.add_option("--min-p", s.sampling.min_p, "drop tokens below min_p times the top probability");
    app.add_option("--repeat-penalty", s.sampling.repetition_penalty, "repetition penalty over prompt and output");
    app.add_option("--frequency-penalty", s.sampling.frequency_penalty, "OpenAI frequency penalty");
    app.add_option("--presence-penalty", s.sampling.presence_penalty, "OpenAI presence penalty");
    app.add_option("-s,--seed", s.seed, "random seed (-1: random)");
    app.add_option("--stop", s.stop, "stop string (repeatable)");
    app.add_flag("--ignore-eos", s.ignore_eos, "keep generating past end-of-sequence tokens");
}

GenerationRequest make_request(const SamplingArgs& s) {
    GenerationRequest r;
    r.sampling = s.sampling;
    if (s.seed >= 0) r.sampling.seed = uint64_t(s.seed);
    r.sampling.validate();
    SKV_CHECK(s.max_tokens >= 0, "--max-tokens must be >= 0, got {}", s.max_tokens);
    r.max_tokens = s.max_tokens;
    r.stop = s.stop;
    r.ignore_eos = s.ignore_eos;
    return r;
}

}  // namespace swiftkv::cli
