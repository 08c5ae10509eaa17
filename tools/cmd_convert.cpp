// swiftkv convert — makes a SwiftKV student (directory or GGUF file) from a base Llama model (convert/swiftkv_convert.h),
// with a progress bar on stderr when it is a terminal and a summary on stdout.
#include <unistd.h>

#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli_common.h"
#include "cmd_convert.h"
#include "convert/swiftkv_convert.h"
#include "core/error.h"
#include "kv/paged_kv_cache.h"

using namespace swiftkv;

void add_convert_args(CLI::App& app, ConvertArgs& args) {
    app.add_option("--model", args.model, "base model: GGUF file or Hugging Face directory (default: the bundled model)");
    app.add_option("--swiftkv-layers", args.num_kv_layers,
                   "the cut L: layers 0..L-1 stay unchanged, later layers take K/V from layer L's input; a layer "
                   "index (15) or a share of the layers (50%)")
        ->required();
    app.add_option("--group", args.group, "AcrossKV group size g: later layers share one KV cache per g layers; must "
                                          "divide the number of layers after the cut")
        ->check(CLI::Range(int64_t(1), int64_t(1024)));
    app.add_option("--out", args.out,
                   "output: a directory (--format hf, llama_swiftkv Hugging Face layout) or a .gguf file (--format gguf)")
        ->required();
    app.add_option("--format", args.format,
                   "hf: Hugging Face directory (default); gguf: one GGUF file, architecture llama_swiftkv "
                   "(docs/swiftkv-gguf.md)")
        ->check(CLI::IsMember({"hf", "gguf"}));
    app.add_option("--dtype", args.dtype,
                   "tensor dtype: auto (bf16 if the base is bf16, else f32), f32, bf16, or q8_0 (gguf only)")
        ->check(CLI::IsMember({"auto", "f32", "bf16", "q8_0"}));
    app.add_flag("--force", args.force, "replace the output directory (or file) if it exists");
    app.add_flag("--no-tokenizer", args.no_tokenizer, "allow a source without tokenizer.json (weights-only student)");
    app.add_option("--max-shard-size", args.max_shard_bytes,
                   "split the weights into model-0000i-of-0000n.safetensors files of at most this size (e.g. 2GB, "
                   "500MB; default 4GB)")
        ->transform(CLI::AsSizeValue(true));
}

int cmd_convert(const ConvertArgs& args) {
    ConvertOptions o;
    o.model_path = args.model.empty() ? cli::default_model_path() : args.model;
    o.num_kv_layers = args.num_kv_layers;
    o.group_size = args.group;
    o.out_dir = args.out;
    o.format = args.format == "gguf" ? ConvertFormat::Gguf : ConvertFormat::HuggingFace;
    o.allow_no_tokenizer = args.no_tokenizer;
    o.dtype = args.dtype == "bf16"   ? ConvertDType::BF16
              : args.dtype == "f32"  ? ConvertDType::F32
              : args.dtype == "q8_0" ? ConvertDType::Q8_0
                                     : ConvertDType::Auto;
    o.force = args.force;
    o.max_shard_bytes = args.max_shard_bytes;
    const bool tty = ::isatty(STDERR_FILENO) != 0;
    bool bar_shown = false;
    if (tty) {
        o.on_progress = [&bar_shown](const ConvertProgress& p) {
            constexpr int kWidth = 30;
            const double done = p.bytes_total > 0 ? double(p.bytes_done) / double(p.bytes_total) : 1.0;
            const int filled = int(done * kWidth + 0.5);
            fmt::print(stderr, "\r[{}{}] {:3.0f}%  {}/{} tensors  {:.0f}/{:.0f} MB ", std::string(filled, '#'),
                       std::string(kWidth - filled, '.'), done * 100, p.tensors_done, p.tensors_total,
                       double(p.bytes_done) / 1e6, double(p.bytes_total) / 1e6);
            std::fflush(stderr);
            bar_shown = true;
        };
    }
    ConvertResult r;
    try {
        r = convert_to_swiftkv(o);
    } catch (...) {
        if (bar_shown) fmt::print(stderr, "\n");
        throw;
    }
    if (bar_shown) fmt::print(stderr, "\n");

    const ModelConfig& c = r.config;
    fmt::print("wrote {}\n", r.out_dir);
    fmt::print("  {}: {} layers, cut L = {}, AcrossKV group g = {}\n", c.architecture, c.n_layers, c.num_kv_layers,
               c.kv_group_size);
    fmt::print("  {} tensors, {} ({:.1f} MB) in {}\n", r.tensors, dtype_name(r.dtype), double(r.tensor_bytes) / 1e6,
               fmt::join(r.weight_files, ", "));
    if (!r.other_files.empty()) fmt::print("  {}\n", fmt::join(r.other_files, ", "));
    ModelConfig base = c;
    base.num_kv_layers = base.n_layers;
    base.kv_group_size = 1;
    const double before = double(base.kv_bytes_per_token()), after = double(c.kv_bytes_per_token());
    fmt::print("  KV cache per token: {:.0f} -> {:.0f} bytes ({:.1f}% less)\n", before, after,
               before > 0 ? 100.0 * (1.0 - after / before) : 0.0);
    if (!r.skipped_tensors.empty()) {
        fmt::print("  not carried over (not part of a Llama model): {}\n", fmt::join(r.skipped_tensors, ", "));
    }
    fmt::print("The {} runs as the teacher with --swiftkv off and as the (not yet distilled) student with "
               "--swiftkv on.\n",
               o.format == ConvertFormat::Gguf ? "file" : "directory");
    return 0;
}
