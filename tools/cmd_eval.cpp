// swiftkv eval — quality numbers straight from the engine's batched forward (src/eval):
//   --text FILE                  perplexity with llama-perplexity's windows (first half of each window
//                                is context, the second half is scored), +/- its standard error;
//   --text FILE --reference REF  the same windows through both models: KL(reference || model) mean,
//                                median and percentiles, top-1 agreement, both perplexities and their
//                                difference (llama-perplexity --kl-divergence style);
//   --mc FILE                    multiple-choice accuracy by log-likelihood, acc and acc_norm, with
//                                lm-eval's prompts and tokenization (ARC, PIQA, Winogrande JSON lines).
// -c/--ctx is the window length for --text (default 512) and the longest input for --mc (default: the
// model's context). --json FILE writes everything, per-item results of --mc included.
#include "cmd_eval.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "eval/eval_model.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"

using namespace swiftkv;

namespace {

constexpr int64_t kDefaultPplCtx = 512;

void write_json(const std::string& path, const nlohmann::json& out) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp);
        SKV_CHECK(f.good(), "cannot write '{}'", path);
        f << out.dump(1) << "\n";
        SKV_CHECK(f.good(), "writing '{}' failed", path);
    }
    std::filesystem::rename(tmp, path);
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

nlohmann::json model_json(const EvalModel& m, const std::string& device, bool full_student) {
    return {{"path", m.path()},
            {"device", device},
            {"weight_dtype", dtype_name(m.weight_dtype())},
            {"swiftkv", m.config().swiftkv_enabled},
            {"swiftkv_layers", m.config().num_kv_layers},
            {"n_layers", m.config().n_layers},
            {"kv_group_size", m.config().kv_group_size},
            {"full_student", full_student}};
}

nlohmann::json ppl_json(const PerplexityResult& r) {
    return {{"ppl", r.ppl},
            {"ppl_stderr", r.ppl_stderr},
            {"nll", r.nll},
            {"chunk_ppl", r.chunk_ppl},
            {"tokens_processed", r.tokens_processed},
            {"forward_seconds", r.forward_seconds}};
}

std::string describe(const EvalModel& m) {
    const auto& c = m.config();
    std::string s = fmt::format("{} ({} weights", m.path(), dtype_name(m.weight_dtype()));
    if (c.is_swiftkv()) {
        s += fmt::format(", SwiftKV L={}/{} g={}", c.num_kv_layers, c.n_layers, c.kv_group_size);
    } else if (c.architecture == "llama_swiftkv" && !c.swiftkv_enabled) {
        s += ", SwiftKV off (--swiftkv off or the config's \"swiftkv\": false): the checkpoint runs as its "
             "teacher";
    }
    return s + ")";
}

}  // namespace

void add_eval_args(CLI::App& app, EvalArgs& a) {
    app.add_option("--text", a.text, "perplexity on this text file (windows of --ctx tokens, default 512)");
    app.add_option("--reference", a.reference,
                   "with --text: also run this reference model on the same windows and report KL(reference || model), "
                   "top-1 agreement and both perplexities");
    app.add_option("--reference-swiftkv", a.reference_swiftkv,
                   "run a SwiftKV reference as SwiftKV (on) or its teacher (off) (default: its config.json's "
                   "\"swiftkv\" key, else on)")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_option("--max-chunks", a.max_chunks, "with --text: score at most this many windows (default: all)")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
    app.add_option("--mc", a.mc, "multiple-choice accuracy on this JSON-lines file (ARC, PIQA or Winogrande records)");
    app.add_option("--format", a.format, "format of --mc: auto (default), arc, piqa, winogrande")
        ->check(CLI::IsMember({"auto", "arc", "piqa", "winogrande"}));
    app.add_option("--labels", a.labels, "PIQA gold labels, one 0/1 per line (default: FILE-labels.lst beside FILE.jsonl)");
    app.add_option("--limit", a.limit, "with --mc: evaluate the first N items only")->check(CLI::Range(int64_t(0), int64_t(1) << 40));
    app.add_option("--batch-tokens", a.batch_tokens, "tokens per batched forward step (default 4096)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
    app.add_option("-o,--json", a.json_out, "write the results (per item for --mc) as JSON to this file");
    app.add_flag("-q,--quiet", a.quiet, "no progress lines on stderr");
}

int cmd_eval(const cli::ModelArgs& margs, const EvalArgs& args) {
    SKV_CHECK(args.text.empty() != args.mc.empty(), "give exactly one of --text FILE (perplexity) or --mc FILE (multiple choice)");
    SKV_CHECK(args.reference.empty() || !args.text.empty(), "--reference needs --text (KL divergence is measured on a text)");
    SKV_CHECK(args.max_chunks == 0 || !args.text.empty(), "--max-chunks applies to --text only");
    SKV_CHECK(args.mc.empty() ? (args.limit == 0 && args.labels.empty() && args.format == "auto") : true,
              "--limit, --labels and --format apply to --mc only");
    // Check the inputs before loading any model.
    SKV_CHECK(args.text.empty() || std::filesystem::is_regular_file(args.text), "cannot read '{}'", args.text);
    SKV_CHECK(args.mc.empty() || std::filesystem::is_regular_file(args.mc), "cannot read '{}'", args.mc);

    if (margs.threads > 0) ThreadPool::set_global_threads(margs.threads);
    auto backend = make_backend(margs.device, margs.threads);
    EvalModelOptions mo;
    mo.path = margs.model.empty() ? cli::default_model_path() : margs.model;
    if (!margs.dtype.empty()) mo.weight_dtype = margs.dtype == "bf16" ? DType::BF16 : DType::F32;
    mo.swiftkv = cli::swiftkv_choice(margs.swiftkv);
    EvalModel model(mo, *backend);

    BatchScorerOptions so;
    so.batch_tokens = args.batch_tokens;
    so.kv_cache_tokens = margs.kv_cache_tokens;
    so.all_rows = margs.full_student;

    nlohmann::json out = {{"tool", "swiftkv eval"}, {"model", model_json(model, backend->name(), margs.full_student)},
                          {"batch_tokens", args.batch_tokens}};
    const std::string device = backend->name();
    fmt::print("model: {} on {}\n", describe(model), device);

    if (!args.text.empty()) {
        const auto t_tok = std::chrono::steady_clock::now();
        const std::string text = read_text(args.text);
        const auto& tok = model.tokenizer();
        // llama-perplexity: the whole file, the tokenizer's default BOS, special tokens not parsed.
        const std::vector<int32_t> tokens = tok.encode(text, true, false);
        const double tok_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count();
        PerplexityOptions po;
        po.ctx = margs.ctx > 0 ? margs.ctx : kDefaultPplCtx;
        po.max_chunks = args.max_chunks;
        po.bos_id = tok.spec().add_bos ? tok.spec().bos_id : -1;
        po.scorer = so;
        const int64_t total_chunks = std::min<int64_t>(int64_t(tokens.size()) / po.ctx,
                                                       args.max_chunks > 0 ? args.max_chunks : int64_t(1) << 62);
        fmt::print("text: {} ({} bytes, {} tokens, tokenized in {:.1f} s); {} windows of {} tokens, the last {} of each "
                   "scored\n",
                   args.text, text.size(), tokens.size(), tok_seconds, total_chunks, po.ctx, po.ctx - 1 - po.ctx / 2);
        std::fflush(stdout);
        out["text"] = args.text;
        out["text_tokens"] = tokens.size();
        out["ctx"] = po.ctx;
        out["convention"] =
            "llama-perplexity: non-overlapping windows of ctx tokens; positions ctx/2..ctx-2 predict the next token "
            "(ctx - 1 - ctx/2 scored per window); PPL = exp(mean NLL) +/- PPL*sqrt(var(NLL)/(N-1))";

        if (args.reference.empty()) {
            if (!args.quiet) {
                po.on_progress = [](const PerplexityProgress& p) {
                    std::fprintf(stderr, "[ppl] %lld/%lld windows, PPL so far %.4f\n", (long long)p.chunks_done,
                                 (long long)p.chunks_total, p.ppl);
                };
            }
            const PerplexityResult r = evaluate_perplexity(model.model(), tokens, po);
            fmt::print("PPL = {:.4f} +/- {:.5f}  ({} windows, {} tokens scored, mean NLL {:.5f})\n", r.ppl, r.ppl_stderr,
                       r.chunks, r.tokens_scored, r.nll);
            fmt::print("time: {:.1f} s ({:.0f} tokens/s through the model)\n", r.seconds,
                       double(r.tokens_processed) / std::max(r.seconds, 1e-9));
            out["mode"] = "perplexity";
            out["chunks"] = r.chunks;
            out["tokens_scored"] = r.tokens_scored;
            out.update(ppl_json(r));
            out["seconds"] = r.seconds;
        } else {
            EvalModelOptions ro = mo;
            ro.path = args.reference;
            ro.swiftkv = cli::swiftkv_choice(args.reference_swiftkv);
            EvalModel reference(ro, *backend);
            check_same_vocabulary(model, reference);
            fmt::print("reference: {}\n", describe(reference));
            std::fflush(stdout);
            if (!args.quiet) {
                po.on_progress = [](const PerplexityProgress& p) {
                    std::fprintf(stderr, "[kl] %lld/%lld windows, PPL %.4f (reference %.4f), mean KL %.6f\n",
                                 (long long)p.chunks_done, (long long)p.chunks_total, p.ppl, p.reference_ppl, p.kl_mean);
                };
            }
            const KlResult k = evaluate_kl_divergence(model.model(), reference.model(), tokens, po);
            fmt::print("windows: {}, tokens scored: {}\n", k.model.chunks, k.tokens);
            fmt::print("PPL(model)     = {:.4f} +/- {:.5f}\n", k.model.ppl, k.model.ppl_stderr);
            fmt::print("PPL(reference) = {:.4f} +/- {:.5f}\n", k.reference.ppl, k.reference.ppl_stderr);
            fmt::print("delta PPL (model - reference) = {:.4f} +/- {:.5f}\n", k.delta_ppl, k.delta_ppl_stderr);
            fmt::print("mean ln(PPL(model)/PPL(reference)) = {:.6f} +/- {:.6f}\n", k.ln_ppl_ratio, k.ln_ppl_ratio_stderr);
            fmt::print("KL(reference || model): mean {:.6f} +/- {:.6f}, median {:.6f}, p90 {:.6f}, p95 {:.6f}, "
                       "p99 {:.6f}, p99.9 {:.6f}, max {:.6f}\n",
                       k.kl_mean, k.kl_stderr, k.kl_median, k.kl_p90, k.kl_p95, k.kl_p99, k.kl_p999, k.kl_max);
            fmt::print("top-1 agreement: {:.3f} +/- {:.3f} %\n", 100 * k.top1_agreement, 100 * k.top1_stderr);
            fmt::print("time: {:.1f} s\n", k.seconds);
            out["mode"] = "kl_divergence";
            out["reference"] = model_json(reference, device, margs.full_student);
            out["chunks"] = k.model.chunks;
            out["tokens_scored"] = k.tokens;
            out["model_result"] = ppl_json(k.model);
            out["reference_result"] = ppl_json(k.reference);
            out["ppl"] = k.model.ppl;
            out["reference_ppl"] = k.reference.ppl;
            out["delta_ppl"] = k.delta_ppl;
            out["delta_ppl_stderr"] = k.delta_ppl_stderr;
            out["ln_ppl_ratio"] = k.ln_ppl_ratio;
            out["ln_ppl_ratio_stderr"] = k.ln_ppl_ratio_stderr;
            out["kl"] = {{"mean", k.kl_mean}, {"stderr", k.kl_stderr}, {"median", k.kl_median}, {"p90", k.kl_p90},
                         {"p95", k.kl_p95},   {"p99", k.kl_p99},       {"p99.9", k.kl_p999},    {"max", k.kl_max}};
            out["top1_agreement"] = k.top1_agreement;
            out["top1_agreement_stderr"] = k.top1_stderr;
            out["seconds"] = k.seconds;
        }
    } else {
        const McDataset data = load_mc_dataset(args.mc, parse_mc_format(args.format), args.labels, args.limit);
        fmt::print("data: {} ({} format{}): {} items", args.mc, mc_format_name(data.format),
                   data.labels_path.empty() ? "" : ", labels " + data.labels_path, data.items.size());
        if (data.skipped > 0) fmt::print(", {} malformed record(s) skipped", data.skipped);
        fmt::print("\n");
        for (const auto& m : data.skip_messages) fmt::print("  skipped: {}\n", m);
        std::fflush(stdout);
        SKV_CHECK(!data.items.empty(), "{}: no usable items", args.mc);
        McOptions mco;
        mco.scorer = so;
        mco.max_length = margs.ctx;
        if (!args.quiet) {
            mco.on_progress = [](int64_t done, int64_t total) {
                std::fprintf(stderr, "[mc] %lld/%lld items\n", (long long)done, (long long)total);
            };
        }
        const McResult r = evaluate_multiple_choice(model.model(), model.tokenizer(), data, mco);
        if (r.skipped_items > 0) {
            fmt::print("{} item(s) skipped:\n", r.skipped_items);
            for (const auto& m : r.skip_messages) fmt::print("  {}\n", m);
        }
        fmt::print("acc      = {:.4f} +/- {:.4f}\n", r.acc, r.acc_stderr);
        fmt::print("acc_norm = {:.4f} +/- {:.4f}\n", r.acc_norm, r.acc_norm_stderr);
        fmt::print("items: {}, requests: {}, tokens through the model: {}; time {:.1f} s ({:.0f} tokens/s)\n",
                   r.items.size(), r.requests, r.tokens_processed, r.seconds,
                   double(r.tokens_processed) / std::max(r.seconds, 1e-9));
        nlohmann::json items = nlohmann::json::array();
        for (const auto& it : r.items) {
            nlohmann::json ll = nlohmann::json::array(), greedy = nlohmann::json::array(), ntok = nlohmann::json::array();
            for (const auto& c : it.choices) {
                ll.push_back(c.loglik);
                greedy.push_back(c.is_greedy);
                ntok.push_back(c.continuation_tokens);
            }
            items.push_back({{"id", it.id},
                             {"loglik", ll},
                             {"is_greedy", greedy},
                             {"continuation_tokens", ntok},
                             {"predicted", it.pred},
                             {"predicted_norm", it.pred_norm},
                             {"gold", it.gold},
                             {"acc", it.pred == it.gold ? 1 : 0},
                             {"acc_norm", it.pred_norm == it.gold ? 1 : 0}});
        }
        out["mode"] = "multiple_choice";
        out["file"] = args.mc;
        out["format"] = mc_format_name(data.format);
        out["labels"] = data.labels_path;
        out["records"] = data.records;
        out["skipped_records"] = data.skipped;
        out["skip_messages"] = data.skip_messages;
        out["skipped_items"] = r.skipped_items;
        out["n"] = r.items.size();
        out["acc"] = r.acc;
        out["acc_stderr"] = r.acc_stderr;
        out["acc_norm"] = r.acc_norm;
        out["acc_norm_stderr"] = r.acc_norm_stderr;
        out["requests"] = r.requests;
        out["tokens_processed"] = r.tokens_processed;
        out["seconds"] = r.seconds;
        out["convention"] =
            "lm-eval zero-shot: ARC/PIQA context 'Question: ...\\nAnswer:', continuation ' ' + choice; Winogrande "
            "partial scoring; TemplateLM._encode_pair tokenization; acc_norm divides by len(choice) in code points";
        out["items"] = items;
    }
    if (!args.json_out.empty()) write_json(args.json_out, out);
    return 0;
}
