// swiftkv bench --synthetic SHAPE — model-level benchmark on random weights generated on the device
// (no checkpoint, no tokenizer): the speed of a model shape, which does not depend on the values.
// Measures, in one run on one device:
//   - the device's two ceilings: a large device-to-device copy (bytes read + written per second) and a
//     large bf16 GEMM through the backend's matmul (cuBLASLt on CUDA);
//   - prefill: tokens/s, time to first token and MFU (model FLOPs over the GEMM rate) for each prompt
//     length and batch size, the whole batch in one forward step;
//   - decode: ms per step at each batch size over a fixed context, steps replayed as graphs where the
//     backend records them, greedy sampling on the device;
//   - the same for SwiftKV cuts of the same shape (speed-up over the base), and for AcrossKV groups the
//     KV bytes per token and the largest decode batch the KV pool holds.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "core/error.h"
#include "kv/block_allocator.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "runner/model_runner.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

ModelConfig shape_config(const std::string& spec) { return ModelConfig::synthetic(spec); }

// A sequence set in the KV cache: block tables of `seqs` sequences of up to `capacity` tokens each.
struct Sequences {
    std::vector<std::vector<int32_t>> blocks;
    int64_t blocks_per_seq = 0;
};

Sequences allocate_sequences(BlockAllocator& blocks, int64_t block_size, int64_t seqs, int64_t capacity) {
    Sequences s;
    s.blocks_per_seq = (capacity + block_size - 1) / block_size;
    for (int64_t i = 0; i < seqs; ++i) {
        std::vector<int32_t> b;
        for (int64_t j = 0; j < s.blocks_per_seq; ++j) {
            auto id = blocks.allocate();
            SKV_CHECK(id.has_value(), "bench: the KV cache cannot hold {} sequences of {} tokens", seqs, capacity);
            b.push_back(*id);
        }
        s.blocks.push_back(std::move(b));
    }
    return s;
}

void release_sequences(BlockAllocator& blocks, Sequences& s) {
    for (auto& b : s.blocks)
        for (int32_t id : b) blocks.release(id);
    s.blocks.clear();
}

// One step: `count` tokens of each sequence starting at position `start`, logits at each last token.
ForwardBatch make_step(const Sequences& seqs, int64_t start, int64_t count, int64_t vocab, uint32_t salt) {
    ForwardBatch b = ForwardBatch::with_block_table_width(seqs.blocks_per_seq);
    uint32_t x = 2463534242u ^ salt;
    std::vector<int32_t> tokens(static_cast<size_t>(count));
    for (const auto& blocks : seqs.blocks) {
        for (auto& t : tokens) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            t = int32_t(x % uint32_t(vocab));
        }
        b.add_sequence(tokens.data(), start, count, blocks, count - 1);
    }
    return b;
}

struct DeviceCeilings {
    double copy_gbps = 0;   // bytes read + written per second / 1e9
    double gemm_tflops = 0;
};

DeviceCeilings measure_ceilings(Backend& backend) {
    DeviceCeilings out;
    // Sizes that fill a GPU; the CPU gets smaller ones so the ceilings take seconds, not minutes.
    const bool device = backend.supports_graphs();
    {
        const size_t bytes = device ? size_t(2) << 30 : size_t(256) << 20;
        DeviceBuffer a(backend, bytes), b(backend, bytes);
        backend.fill_random(a.get(), int64_t(bytes / 4), DType::F32, 7, 1.0f);
        std::vector<double> t;
        for (int i = 0; i < 12; ++i) {
            backend.synchronize();
            const auto t0 = Clock::now();
            backend.copy(b.get(), a.get(), bytes);
            backend.synchronize();
            if (i >= 2) t.push_back(seconds(t0));
        }
        out.copy_gbps = 2.0 * double(bytes) / median(t) / 1e9;
    }
    {
        const int64_t n = device ? 8192 : 1024;
        DeviceBuffer x(backend, size_t(n * n) * 2), w(backend, size_t(n * n) * 2), y(backend, size_t(n * n) * 2);
        const DType dt = backend.act_dtype();
        const int64_t elem = dt == DType::BF16 ? 2 : 4;
        if (elem == 4) {
            x = DeviceBuffer(backend, size_t(n * n) * 4);
            w = DeviceBuffer(backend, size_t(n * n) * 4);
            y = DeviceBuffer(backend, size_t(n * n) * 4);
        }
        backend.fill_random(x.get(), n * n, dt, 11, 1.0f);
        backend.fill_random(w.get(), n * n, dt, 12, 1.0f);
        const WeightMatrix wm{dt, n, n, w.get()};
        std::vector<double> t;
        const int reps = backend.supports_graphs() ? 12 : 2;
        for (int i = 0; i < reps; ++i) {
            backend.synchronize();
            const auto t0 = Clock::now();
            backend.matmul(x.get(), n, wm, y.get(), dt);
            backend.synchronize();
            if (i >= std::min(2, reps - 1)) t.push_back(seconds(t0));
        }
        out.gemm_tflops = 2.0 * double(n) * double(n) * double(n) / median(t) / 1e12;
    }
    return out;
}

}  // namespace

int cmd_bench_synthetic(const cli::ModelArgs& model_args, const SyntheticBenchArgs& args) {
    auto backend = make_backend(model_args.device, model_args.threads);
    const ModelConfig base = shape_config(args.shape);
    const DType wdt = backend->supports_weight_dtype(DType::BF16) ? DType::BF16 : DType::F32;
    fmt::print("device: {}; shape {} ({} layers); weights {}\n", backend->name(), args.shape, base.n_layers,
               dtype_name(wdt));
    const DeviceCeilings ceil = measure_ceilings(*backend);
    fmt::print("ceilings: device-to-device copy {:.0f} GB/s (read+write), {} GEMM {}^3 {:.1f} TFLOP/s\n\n",
               ceil.copy_gbps, dtype_name(backend->act_dtype()), backend->supports_graphs() ? 8192 : 1024,
               ceil.gemm_tflops);

    // Variants: the base, SwiftKV cuts, AcrossKV groups.
    struct Variant {
        std::string label;
        int64_t L;
        int64_t g;
        bool timed;
    };
    std::vector<Variant> variants{{"base", base.n_layers, 1, true}};
    for (const auto& v : args.swiftkv_variants) {
        const size_t colon = v.find(':');
        const std::string cut = v.substr(0, colon);
        const int64_t g = colon == std::string::npos ? 1 : std::stoll(v.substr(colon + 1));
        int64_t L = cut.back() == '%' ? int64_t(std::llround(double(base.n_layers) * std::stod(cut) / 100.0))
                                      : std::stoll(cut);
        L = std::clamp<int64_t>(L, 1, base.n_layers);
        // AcrossKV: round L so the later layers split into whole groups.
        while ((base.n_layers - L) % g != 0) ++L;
        variants.push_back({fmt::format("SwiftKV {} g{}", cut, g), L, g, g == 1 || args.time_acrosskv});
    }

    nlohmann::json jvariants = nlohmann::json::array();
    std::map<std::string, double> base_prefill, base_decode;
    const int64_t max_prompt = *std::max_element(args.prompt_lengths.begin(), args.prompt_lengths.end());
    const int64_t max_batch_prefill = *std::max_element(args.prefill_batches.begin(), args.prefill_batches.end());
    const int64_t max_batch_decode = *std::max_element(args.decode_batches.begin(), args.decode_batches.end());
    const int64_t decode_capacity = args.decode_context + args.decode_steps + 1;

    fmt::print("| variant | L/N | g | KV B/token | test | batch | ms | tokens/s | TTFT ms | MFU | vs base |\n"
               "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for (const Variant& var : variants) {
        ModelConfig c = base;
        c.num_kv_layers = var.L;
        c.kv_group_size = var.g;
        if (c.is_swiftkv()) c.architecture = "llama_swiftkv";
        LoadOptions lo;
        lo.weight_dtype = wdt;
        LlamaModel model(c, *backend, lo, 1234);
        ModelRunner runner(model, RunnerOptions{!model_args.no_graphs});
        const int64_t kv_bpt = c.kv_bytes_per_token(backend->act_dtype());
        const int64_t bs = 16;
        size_t free_b = 0, total_b = 0;
        backend->memory_info(&free_b, &total_b);
        // Workspace for the largest step, then the KV pool.
        runner.reserve(std::min<int64_t>(max_prompt * max_batch_prefill, args.max_step_tokens), max_batch_decode,
                      (std::max(max_prompt, decode_capacity) + bs - 1) / bs);
        backend->memory_info(&free_b, &total_b);
        const int64_t pool_budget = int64_t(double(free_b) * model_args.gpu_memory_fraction) - (int64_t(1) << 30);
        const int64_t pool_blocks_max = std::max<int64_t>(pool_budget, 0) / (kv_bpt * bs);
        const int64_t decode_blocks = (decode_capacity + bs - 1) / bs;
        const int64_t max_decode_batch_fit = pool_blocks_max / decode_blocks;
        nlohmann::json jres = nlohmann::json::array();
        nlohmann::json jvar = {{"label", var.label},       {"swiftkv_layers", c.num_kv_layers},
                               {"n_layers", c.n_layers},   {"kv_group_size", c.kv_group_size},
                               {"kv_bytes_per_token", kv_bpt}, {"weight_bytes", model.weight_bytes()},
                               {"max_decode_batch_at_context", max_decode_batch_fit},
                               {"decode_context", args.decode_context}};
        fmt::print("| {} | {}/{} | {} | {} | fits | {} seqs of {} tokens | | | | | |\n", var.label, c.num_kv_layers,
                   c.n_layers, c.kv_group_size, kv_bpt, max_decode_batch_fit, decode_capacity);
        if (!var.timed) {
            jvar["results"] = jres;
            jvariants.push_back(jvar);
            continue;
        }
        const int64_t need_blocks = std::max(max_batch_prefill * ((max_prompt + bs - 1) / bs),
                                             max_batch_decode * ((decode_capacity + bs - 1) / bs));
        const int64_t pool_blocks = std::min(pool_blocks_max, need_blocks + 64);
        PagedKvCache kv(*backend, c, pool_blocks, bs);
        BlockAllocator pool{int32_t(pool_blocks)};
        std::vector<float> logits;
        std::vector<int32_t> sampled;

        // Prefill: B sequences of n tokens in one step; logits at each last token.
        for (int64_t n : args.prompt_lengths) {
            for (int64_t B : args.prefill_batches) {
                const std::string test = fmt::format("pp{}", n);
                if (n * B > args.max_step_tokens) {
                    fmt::print("| {} | | | | {} | {} | skipped (over --max-step-tokens) | | | | |\n", var.label, test, B);
                    continue;
                }
                Sequences seqs = allocate_sequences(pool, bs, B, n);
                std::vector<double> t;
                for (int rep = -1; rep < args.reps; ++rep) {
                    ForwardBatch batch = make_step(seqs, 0, n, c.vocab, uint32_t(rep + 7));
                    backend->synchronize();
                    const auto t0 = Clock::now();
                    runner.forward(batch, kv.view(), logits);
                    if (rep >= 0) t.push_back(seconds(t0));  // seconds; reported in ms below
                }
                release_sequences(pool, seqs);
                const double sec = median(t);
                const double tps = double(n * B) / sec;
                const double flops = c.prefill_flops_per_token(n) * double(n * B);
                const double mfu = flops / sec / (ceil.gemm_tflops * 1e12);
                const std::string key = fmt::format("{}x{}", test, B);
                if (var.label == "base") base_prefill[key] = sec;
                const double speedup = base_prefill.count(key) ? base_prefill[key] / sec : 0.0;
                fmt::print("| {} | {}/{} | {} | {} | {} | {} | {:.2f} | {:.0f} | {} | {:.1f}% | {:.2f}x |\n", var.label,
                           c.num_kv_layers, c.n_layers, c.kv_group_size, kv_bpt, test, B, sec * 1e3, tps,
                           B == 1 ? fmt::format("{:.2f}", sec * 1e3) : "", mfu * 100, speedup);
                std::fflush(stdout);
                std::vector<double> t_ms;
                for (double x : t) t_ms.push_back(x * 1e3);
                jres.push_back({{"test", test},         {"batch", B},        {"ms", sec * 1e3},
                                {"samples_ms", t_ms},      {"tokens_per_s", tps}, {"ttft_ms", B == 1 ? sec * 1e3 : 0.0},
                                {"model_flops", flops}, {"mfu", mfu},        {"speedup_vs_base", speedup}});
            }
        }

        // Decode: B sequences with a context of decode_context tokens, then decode_steps greedy steps.
        for (int64_t B : args.decode_batches) {
            const std::string test = fmt::format("decode@{}", args.decode_context);
            Sequences seqs = allocate_sequences(pool, bs, B, decode_capacity);
            // Fill the context in steps of at most max_step_tokens tokens.
            const int64_t per_step = std::max<int64_t>(1, std::min(args.decode_context, args.max_step_tokens / B));
            for (int64_t start = 0; start < args.decode_context; start += per_step) {
                const int64_t count = std::min(per_step, args.decode_context - start);
                ForwardBatch batch = make_step(seqs, start, count, c.vocab, 99);
                runner.forward(batch, kv.view(), logits);
            }
            std::vector<SampleParams> params(static_cast<size_t>(B));
            std::vector<double> t;
            for (int64_t step = 0; step < args.decode_steps; ++step) {
                ForwardBatch batch = make_step(seqs, args.decode_context + step, 1, c.vocab, uint32_t(step));
                const auto t0 = Clock::now();
                runner.forward_sample(batch, kv.view(), params, sampled);
                if (step >= 3) t.push_back(seconds(t0));
            }
            release_sequences(pool, seqs);
            const double sec = median(t);
            const std::string key = fmt::format("{}x{}", test, B);
            if (var.label == "base") base_decode[key] = sec;
            const double speedup = base_decode.count(key) ? base_decode[key] / sec : 0.0;
            // Bytes a step must read: every weight once, plus each sequence's KV context.
            const double bytes = double(model.weight_bytes()) + double(B) * double(args.decode_context) * double(kv_bpt);
            const double bw = bytes / sec / 1e9;
            fmt::print("| {} | {}/{} | {} | {} | {} | {} | {:.3f} | {:.0f} | | {:.1f}% of copy BW | {:.2f}x |\n",
                       var.label, c.num_kv_layers, c.n_layers, c.kv_group_size, kv_bpt, test, B, sec * 1e3,
                       double(B) / sec, 100.0 * bw / ceil.copy_gbps, speedup);
            std::fflush(stdout);
            std::vector<double> t_ms;
            for (double x : t) t_ms.push_back(x * 1e3);
            jres.push_back({{"test", test},          {"batch", B},          {"ms_per_step", sec * 1e3},
                            {"samples_ms", t_ms},       {"tokens_per_s", double(B) / sec}, {"bytes_per_step", bytes},
                            {"achieved_gbps", bw},   {"fraction_of_copy_bw", bw / ceil.copy_gbps},
                            {"speedup_vs_base", speedup}});
        }
        jvar["results"] = jres;
        jvar["graphs_recorded"] = runner.graphs_recorded();
        jvar["graph_replays"] = runner.graph_replays();
        jvariants.push_back(jvar);
    }

    if (!args.json_out.empty()) {
        nlohmann::json out = {{"tool", "swiftkv bench --synthetic"},
                              {"device", backend->name()},
                              {"shape", args.shape},
                              {"weights", dtype_name(wdt)},
                              {"copy_gbps", ceil.copy_gbps},
                              {"gemm_tflops", ceil.gemm_tflops},
                              {"reps", args.reps},
                              {"graphs", !model_args.no_graphs},
                              {"variants", jvariants}};
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
