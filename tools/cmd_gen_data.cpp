// swiftkv gen-data — a teacher model answers prompt sets (JSON lines of chat messages or plain
// instructions; every set in ../shared/data is recognised) in large continuous batches and writes
// chat-format JSON lines for distillation; raw text files can be mixed in as text chunks. Resumable:
// rerun the same command after an interruption. SIGINT/SIGTERM: stop admitting, abort the requests in
// flight (not written), flush and exit 130; a second signal exits at once (the partial last line, if
// any, is cut off by the next run).
#include "cmd_gen_data.h"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <limits>

#include "core/error.h"
#include "gen_data.h"

using namespace swiftkv;

namespace {

std::atomic<int> g_stop{0};

extern "C" void on_stop_signal(int sig) {
    if (g_stop.exchange(sig) != 0) std::_Exit(130);
}

}  // namespace

void add_gen_data_args(CLI::App& app, GenDataArgs& a) {
    app.add_option("--prompts", a.prompts,
                   "prompt files: JSON lines or a JSON array; formats messages, turns, prompt, instruction, question, "
                   "data or plain JSON strings, auto-detected per file")
        ->expected(1, -1);
    app.add_option("--text", a.texts, "raw text files copied through as {\"text\"} chunks cut at blank lines")->expected(1, -1);
    app.add_option("-o,--out", a.out, "output JSON-lines file; appended to, and prompts already in it are skipped")->required();
    app.add_option("--format", a.format, "force the format of every prompt file (default auto)")
        ->check(CLI::IsMember({"auto", "messages", "turns", "prompt", "instruction", "question", "data", "string"}));
    app.add_option("--limit", a.limit, "the first N prompts (text: chunks) of each file")->check(CLI::Range(int64_t(0), int64_t(1) << 40));
    app.add_option("--max-prompts", a.max_prompts, "at most N prompts in all, after deduplication and --shuffle")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
    app.add_flag("--shuffle", a.shuffle, "shuffle the prompts with --seed before --max-prompts");
    app.add_option("-s,--seed", a.seed, "seed of --shuffle; prompt i samples with seed + i (default 0)")
        ->check(CLI::Range(int64_t(0), std::numeric_limits<int64_t>::max()));
    app.add_flag("--first-turn-only", a.first_turn_only, "answer only the first turn of multi-turn prompts (MT-bench)");
    app.add_option("--temp,--temperature", a.temperature,
                   "sampling temperature, 0: greedy (default: the model's generation_config.json, else 0.7)");
    app.add_option("--top-p", a.top_p, "nucleus sampling mass (default: generation_config.json, else 1)");
    app.add_option("--top-k", a.top_k, "keep the k most likely tokens, 0: off (default: generation_config.json, else 0)");
    app.add_option("--min-p", a.min_p, "drop tokens below min_p times the top probability");
    app.add_option("--repeat-penalty", a.repetition_penalty, "repetition penalty over prompt and output");
    app.add_option("-n,--max-tokens", a.max_tokens, "longest answer (per turn) in tokens (default 1024)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
    app.add_option("--text-chunk-tokens", a.text_chunk_tokens, "size of --text chunks in tokens (default 1024)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
    app.add_option("--max-num-seqs", a.max_num_seqs, "requests in flight and sequences in one step (default 256)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 16));
    app.add_option("--max-batched-tokens", a.max_batched_tokens,
                   "tokens in one step; long prompts are prefilled in chunks of what decodes leave (default 2048)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    app.add_flag("--no-prefix-caching", a.no_prefix_caching, "do not reuse cached prompt prefixes");
    app.add_flag("-q,--quiet", a.quiet, "no progress bar or progress lines on stderr");
}

int cmd_gen_data(const cli::ModelArgs& model, const GenDataArgs& a) {
    GenDataOptions o;
    o.engine = cli::engine_options(model);
    o.engine.max_num_seqs = a.max_num_seqs;
    o.engine.max_batched_tokens = a.max_batched_tokens;
    o.engine.prefix_caching = !a.no_prefix_caching;
    o.prompt_files = a.prompts;
    o.text_files = a.texts;
    o.out = a.out;
    o.format = parse_prompt_format(a.format);
    o.limit = a.limit;
    o.max_prompts = a.max_prompts;
    o.shuffle = a.shuffle;
    o.first_turn_only = a.first_turn_only;
    o.seed = uint64_t(a.seed);
    o.temperature = a.temperature;
    o.top_p = a.top_p;
    o.top_k = a.top_k;
    o.min_p = a.min_p;
    o.repetition_penalty = a.repetition_penalty;
    o.max_tokens = a.max_tokens;
    o.text_chunk_tokens = a.text_chunk_tokens;
    o.quiet = a.quiet;

    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    return run_gen_data(o, g_stop);
}
