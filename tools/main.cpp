// swiftkv — command line entry point: run, chat, serve, inspect, bench.
// Every error reaching here is reported as one line on stderr with a non-zero exit code.
#include <cstdio>
#include <iostream>

#include "cli_common.h"
#include "cmd_convert.h"
#include "cmd_distill.h"
#include "cmd_eval.h"
#include "cmd_gen_data.h"
#include "core/error.h"

using namespace swiftkv;

int main(int argc, char** argv) {
    CLI::App app{"swiftkv: serve and build SwiftKV language models"};
    app.require_subcommand(1);
    app.set_version_flag("--version", SWIFTKV_VERSION);

    cli::ModelArgs run_model;
    cli::SamplingArgs run_sampling;
    std::string prompt, system;
    bool chat_format = false;
    auto* run = app.add_subcommand("run", "generate a continuation of a prompt, streaming tokens");
    cli::add_model_args(*run, run_model);
    cli::add_sampling_args(*run, run_sampling);
    run->add_option("-p,--prompt", prompt, "prompt text")->required();
    run->add_flag("--chat", chat_format, "wrap the prompt in the model's chat template as a user message");
    run->add_option("--system", system, "system message (with --chat)");

    cli::ModelArgs chat_model;
    cli::SamplingArgs chat_sampling;
    std::string chat_system;
    auto* chat = app.add_subcommand("chat", "interactive multi-turn chat with the model's chat template");
    cli::add_model_args(*chat, chat_model);
    cli::add_sampling_args(*chat, chat_sampling);
    chat->add_option("--system", chat_system, "system message");

    std::string inspect_model;
    bool all_tensors = false;
    auto* inspect = app.add_subcommand("inspect", "print a model's config, tokenizer summary and tensor table");
    inspect->add_option("model", inspect_model, "GGUF file or Hugging Face directory (default: the bundled model)");
    inspect->add_flag("--all", all_tensors, "list every tensor (default: the first layers only)");

    cli::ModelArgs bench_model;
    BenchArgs bench_args;
    auto* bench = app.add_subcommand("bench", "measure prompt processing and generation speed (like llama-bench)");
    cli::add_model_args(*bench, bench_model);
    bench->add_option("-p,--prompt-lengths", bench_args.prompt_lengths, "prompt lengths to measure (pp)")->delimiter(',');
    bench->add_option("-g,--gen-lengths", bench_args.gen_lengths, "generation lengths to measure (tg)")->delimiter(',');
    bench->add_option("-r,--reps", bench_args.reps, "repetitions")->check(CLI::Range(1, 1000));
    bench->add_option("-o,--json", bench_args.json_out, "write results as JSON to this file");
    bench->add_option("--compare", bench_args.compare, "another model to measure in the same run (repeatable)");
    bench->add_option("--swiftkv-cuts", bench_args.swiftkv_variants,
                      "also convert the model to SwiftKV at these cuts (CUT or CUT:GROUP, e.g. 50%,25%,50%:3) and measure each")
        ->delimiter(',');
    SyntheticBenchArgs syn;
    bench->add_option("--synthetic", syn.shape,
                      "benchmark a model shape on random weights generated on the device instead of a checkpoint "
                      "(llama-3.1-8b[:LAYERS], smollm2-135m[:LAYERS]); uses -p, -r, -o and --swiftkv-cuts too");
    bench->add_option("--prefill-batches", syn.prefill_batches, "synthetic: prefill batch sizes")->delimiter(',');
    bench->add_option("--decode-batches", syn.decode_batches, "synthetic: decode batch sizes")->delimiter(',');
    bench->add_option("--decode-context", syn.decode_context, "synthetic: context length for decode")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    bench->add_option("--decode-steps", syn.decode_steps, "synthetic: timed decode steps")->check(CLI::Range(4, 100000));
    bench->add_option("--max-step-tokens", syn.max_step_tokens, "synthetic: most tokens in one forward step")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
    bench->add_flag("--time-acrosskv", syn.time_acrosskv, "synthetic: time AcrossKV variants (g > 1) too");

    ConvertArgs convert_args;
    auto* convert = app.add_subcommand("convert", "make a SwiftKV student (llama_swiftkv Hugging Face directory or GGUF) from a base Llama model");
    add_convert_args(*convert, convert_args);

    cli::ModelArgs score_model;
    ScoreArgs score_args;
    auto* score = app.add_subcommand("score", "print the logits at chosen positions of a token sequence as JSON");
    cli::add_model_args(*score, score_model);
    score->add_option("--tokens", score_args.tokens, "token ids, comma-separated")->delimiter(',');
    score->add_option("--text", score_args.text, "text to tokenize instead of --tokens");
    score->add_option("--positions", score_args.positions, "positions to score (default: the last)")->delimiter(',');
    score->add_option("-o,--json", score_args.json_out, "write the JSON to this file");
    score->add_option("--npy", score_args.npy_out, "write the logits as a float32 [positions, vocab] .npy file");
    score->add_flag("--all-positions", score_args.all_positions, "score every position");
    score->add_option("--greedy", score_args.greedy, "greedy continuation length (with --prompts-file)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    score->add_option("--prompts-file", score_args.prompts_file,
                      "JSON {\"prompts\": [[ids...], ...]}: print the greedy continuation of each prompt");

    cli::ModelArgs eval_model;
    EvalArgs eval_args;
    auto* eval = app.add_subcommand("eval", "perplexity, KL divergence against a reference model, multiple-choice accuracy");
    cli::add_model_args(*eval, eval_model);
    add_eval_args(*eval, eval_args);

    cli::ModelArgs gen_data_model;
    GenDataArgs gen_data_args;
    auto* gen_data = app.add_subcommand("gen-data", "a teacher model answers prompt sets: chat-format JSON lines for distillation (resumable)");
    cli::add_model_args(*gen_data, gen_data_model);
    add_gen_data_args(*gen_data, gen_data_args);

    DistillArgs distill_args;
    auto* distill = app.add_subcommand("distill", "distill a SwiftKV student (from convert) against its teacher: KL on "
                                                  "the logits, trains only the SwiftKV tensors");
    add_distill_args(*distill, distill_args);

    cli::ModelArgs serve_model;
    ServeArgs serve_args;
    auto* serve = app.add_subcommand("serve", "serve the model over an OpenAI-compatible HTTP API");
    cli::add_model_args(*serve, serve_model);
    serve->add_option("--host", serve_args.host, "address to listen on (default 127.0.0.1)");
    serve->add_option("--port", serve_args.port, "port to listen on (default 8000; 0: any free port)")
        ->check(CLI::Range(0, 65535));
    serve->add_option("--api-key", serve_args.api_key,
                      "require Authorization: Bearer KEY on /v1, /tokenize and /detokenize (default: $SWIFTKV_API_KEY)");
    serve->add_option("--served-model-name", serve_args.served_model_name,
                      "model id in /v1/models and requests (default: the model file's name)");
    serve->add_option("--http-threads", serve_args.http_threads, "HTTP worker threads (default: --max-num-seqs + 16; a streaming request holds one)")
        ->check(CLI::Range(1, 4096));
    serve->add_option("--max-body-bytes", serve_args.max_body_bytes, "largest request body accepted (default 8 MiB)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 34));
    serve->add_option("--max-header-bytes", serve_args.max_header_bytes,
                      "largest request line plus headers accepted; more gets 431 (default 64 KiB)")
        ->check(CLI::Range(int64_t(1024), int64_t(1) << 24));
    serve->add_option("--read-timeout", serve_args.read_timeout_s,
                      "seconds a request's header may take from its first byte, and the longest pause allowed "
                      "inside a body; slower clients get 408 (default 10)")
        ->check(CLI::Range(1, 3600));
    serve->add_option("--keep-alive-timeout", serve_args.keep_alive_timeout_s,
                      "seconds an idle keep-alive connection stays open (default 5)")
        ->check(CLI::Range(1, 3600));
    serve->add_option("--max-num-seqs", serve_args.max_num_seqs, "sequences in one step (default 256)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 16));
    serve->add_option("--max-batched-tokens", serve_args.max_batched_tokens,
                      "tokens in one step; long prompts are prefilled in chunks of what decodes leave (default 2048)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    serve->add_flag("--no-prefix-caching", serve_args.no_prefix_caching, "do not reuse cached prompt prefixes");
    serve->add_flag("--no-overlap", serve_args.no_overlap,
                    "run engine steps synchronously (default: step k+1 is launched before step k's tokens are "
                    "delivered, so detokenizing and streaming overlap the GPU's work)");
    serve->add_option("--synthetic", serve_args.synthetic,
                      "benchmarks: serve random weights of this shape (llama-3.1-8b[:layers], smollm2-135m) "
                      "instead of -m, with a stand-in tokenizer");
    serve->add_option("--synthetic-swiftkv", serve_args.synthetic_swiftkv,
                      "with --synthetic: the SwiftKV cut, e.g. 50% or 50%:2 (AcrossKV group size)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        if (*run) return cmd_run(run_model, run_sampling, prompt, chat_format, system);
        if (*chat) return cmd_chat(chat_model, chat_sampling, chat_system);
        if (*inspect) return cmd_inspect(inspect_model.empty() ? cli::default_model_path() : inspect_model, all_tensors);
        if (*bench && !syn.shape.empty()) {
            bool lengths_given = bench->count("--prompt-lengths") > 0;
            if (lengths_given) syn.prompt_lengths = bench_args.prompt_lengths;
            syn.reps = bench_args.reps;
            syn.json_out = bench_args.json_out;
            syn.swiftkv_variants = bench_args.swiftkv_variants;
            return cmd_bench_synthetic(bench_model, syn);
        }
        if (*bench) return cmd_bench(bench_model, bench_args);
        if (*score) return cmd_score(score_model, score_args);
        if (*convert) return cmd_convert(convert_args);
        if (*serve) return cmd_serve(serve_model, serve_args);
        if (*eval) return cmd_eval(eval_model, eval_args);
        if (*distill) return cmd_distill(*distill, distill_args);
        if (*gen_data) return cmd_gen_data(gen_data_model, gen_data_args);
    } catch (const Error& e) {
        std::fflush(stdout);
        std::cerr << "\nerror: " << e.what() << "\n";
        return 1;
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        std::cerr << "\nerror: out of memory; try a smaller --ctx or --kv-cache-tokens, or --dtype bf16\n";
        return 1;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::cerr << "\nerror: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
