// swiftkv distill — SwiftKV self-distillation of a student made by `swiftkv convert` (train/distill_trainer.h):
// builds the tokenizer and chat template the data pipeline needs, turns Ctrl-C into "finish the step, save a
// checkpoint, exit 130", prints progress, and at the end draws the loss curve with scripts/plot_distill.py.
#include "cmd_distill.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <unistd.h>

#include <fmt/format.h>

#include "core/error.h"
#include "model/model_loader.h"
#include "model/model_source.h"
#include "train/distill_checkpoint.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_distill_signal(int) {
    if (g_stop.exchange(true)) _exit(130);  // a second Ctrl-C: give up at once
    static const char msg[] = "\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)\n";
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
}

// Flag name of each option that a checkpoint records (for --resume without repeating them).
const std::pair<const char*, const char*> kResumeFlags[] = {
    {"model", "--model"},         {"data", "--data"},           {"base", "--base"},
    {"tokens", "--tokens"},       {"seq_len", "--seq-len"},     {"batch_size", "--batch-size"},
    {"grad_accum", "--grad-accum"}, {"temperature", "--temperature"}, {"hidden_mse", "--hidden-mse"},
    {"loss_mask", "--loss-mask"}, {"lr", "--lr"},               {"warmup", "--warmup"},
    {"weight_decay", "--weight-decay"}, {"beta1", "--beta1"},   {"beta2", "--beta2"},
    {"adam_eps", "--adam-eps"},   {"clip", "--clip"},           {"seed", "--seed"},
    {"dtype", "--dtype"},
};

}  // namespace

void add_distill_args(CLI::App& app, DistillArgs& a) {
    DistillOptions& o = a.options;
    app.add_option("--model", o.model, "the student: the llama_swiftkv directory `swiftkv convert` wrote (its teacher is "
                                       "the same directory with SwiftKV off)");
    app.add_option("--data", o.data, "data files: .jsonl/.json chat ({\"messages\": [...]}) or instruction "
                                     "({\"prompt\", \"response\"}) records, or .txt/.raw text")->expected(1, -1);
    app.add_option("--tokens", o.tokens, "training tokens in total (steps = tokens / (batch-size x seq-len x grad-accum))");
    app.add_option("--out", o.out, "output directory: checkpoints, train_log.jsonl, loss_curve.png, the distilled model "
                                   "and swiftkv_tensors.{safetensors,json}")->required();
    app.add_option("--base", o.base, "the base model the student was converted from (GGUF or directory): checked against "
                                     "the student and recorded in swiftkv_tensors.json (default: the student)");
    app.add_option("--seq-len", o.seq_len, "tokens per packed sequence (default 512)")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
    app.add_option("--batch-size", o.batch_size, "packed sequences per micro-batch (default 8)")->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step (default 1)")->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    app.add_option("--temperature", o.temperature, "distillation temperature T; the loss is T^2 KL (default 2)");
    app.add_option("--hidden-mse", o.hidden_mse, "weight of an MSE term on the hidden state entering the last layer (default 0: off)");
    app.add_option("--loss-mask", o.loss_mask, "all: every token (default); assistant: only where the next token belongs "
                                               "to an assistant turn")->check(CLI::IsMember({"all", "assistant"}));
    app.add_option("--lr", o.lr, "peak learning rate (default 2e-4)");
    app.add_option("--warmup", o.warmup, "share of the steps for linear warmup, then linear decay to 0 (default 0.05)");
    app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay (default 0)");
    app.add_option("--beta1", o.beta1, "Adam beta1 (default 0.9)");
    app.add_option("--beta2", o.beta2, "Adam beta2 (default 0.999)");
    app.add_option("--adam-eps", o.adam_eps, "Adam epsilon (default 1e-8)");
    app.add_option("--clip", o.clip, "clip the global gradient norm to this (default 1.0; 0: off)");
    app.add_option("--seed", o.seed, "data-order seed (default 0)");
    app.add_option("-d,--device", o.device, "cpu, cuda or cuda:N (default cpu)");
    app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
    app.add_option("--dtype", o.dtype, "frozen weights and compute copies: f32 or bf16 (default: f32 on cpu, bf16 on cuda)")
        ->check(CLI::IsMember({"f32", "bf16"}));
    app.add_option("--save-every", o.save_every, "checkpoint every N steps (default 100; 0: only when stopping and at the end)");
    app.add_option("--log-every", a.log_every, "print a progress line every N steps (default 1; the JSON log has every step)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
    app.add_flag("--resume", o.resume, "continue the checkpoint in --out (flags not given are taken from it)");
    app.add_flag("--force", o.force, "start over in an --out that holds a checkpoint (deletes it)");
    app.add_option("--max-steps", o.max_steps, "stop after this many steps in this invocation, with a checkpoint (0: run to the end)");
    app.add_option("--peak-tflops", o.peak_tflops, "peak TFLOP/s of the device for MFU (default: H100/H200 bf16 dense "
                                                   "989 detected, else MFU is n/a)");
    app.add_option("--overlay-dtype", o.overlay_dtype, "dtype of swiftkv_tensors.safetensors: auto (the student's), f32, bf16")
        ->check(CLI::IsMember({"auto", "f32", "bf16"}));
    app.add_flag("--no-plot", a.no_plot, "do not draw loss_curve.png");
    app.add_option("--synthetic", o.synthetic, "speed benchmark: random weights of this shape (llama-3.1-8b[:layers], "
                                               "smollm2-135m[:layers]) trained on random tokens; no --model or --data");
    app.add_option("--synthetic-swiftkv", o.synthetic_swiftkv, "SwiftKV cut of the --synthetic student (default 50%; "
                                                               "50%:2 for AcrossKV g = 2)");
}

int cmd_distill(const CLI::App& app, DistillArgs args) {
    DistillOptions& o = args.options;
    if (o.resume) {
        SKV_CHECK(!o.out.empty() && has_distill_checkpoint(o.out), "--resume: '{}' holds no checkpoint", o.out);
        DistillOptions saved;
        distill_options_from_json(read_distill_checkpoint_options(o.out), saved);
        const nlohmann::json saved_json = distill_options_to_json(saved);
        nlohmann::json merged = distill_options_to_json(o);
        for (const auto& [key, flag] : kResumeFlags) {
            if (app.count(flag) == 0) merged[key] = saved_json[key];
        }
        distill_options_from_json(merged, o);
    }
    SKV_CHECK(o.tokens > 0, "distill needs --tokens N (training tokens)");
    DistillTextCodec codec;
    if (o.synthetic.empty()) {
        SKV_CHECK(!o.model.empty(), "distill needs --model (the student directory from `swiftkv convert`)");
        SKV_CHECK(!o.data.empty(), "distill needs --data FILE...");
        // Tokenizer and chat template of the student (train/ leaves loading them to the caller). A student
        // without a tokenizer can still train on pre-tokenized {"input_ids": [...]} records.
        auto source = ModelSource::open(o.model);
        codec.vocab = source->config().vocab;
        std::shared_ptr<BpeTokenizer> tokenizer;
        std::string why;
        try {
            tokenizer = std::make_shared<BpeTokenizer>(load_tokenizer(*source));
        } catch (const Error& e) {
            why = e.what();
        }
        if (tokenizer) {
            auto chat = std::make_shared<ChatFormat>(load_chat_format(*source, *tokenizer));
            codec.encode = [tokenizer](const std::string& text, bool add_bos) { return tokenizer->encode(text, add_bos, true); };
            if (chat->tmpl) {
                codec.render_chat = [chat](const nlohmann::json& messages, bool gen) { return chat->render(messages, gen); };
            }
        } else {
            codec.encode = [why, model = o.model](const std::string&, bool) -> std::vector<int32_t> {
                SKV_THROW("{} has no usable tokenizer ({}): text and chat data need one; give pre-tokenized "
                          "{{\"input_ids\": [...]}} records instead", model, why);
            };
        }
    }

    g_stop.store(false);
    auto previous = std::signal(SIGINT, on_distill_signal);
    DistillHooks hooks;
    hooks.stop = &g_stop;
    hooks.message = [](const std::string& s) {
        fmt::print("{}\n", s);
        std::fflush(stdout);
    };
    const int64_t every = args.log_every;
    hooks.on_step = [every](const DistillStepLog& s) {
        if (s.step % every != 0 && s.step != s.total_steps && s.step != 1) return;
        fmt::print("step {:>6}/{}  loss {:.5f}  kl {:.5f}{}  lr {:.3g}  |g| {:.3g}  {:.0f} tok/s  MFU {}  ({:.1f} s)\n",
                   s.step, s.total_steps, s.loss, s.kl, s.mse > 0 ? fmt::format("  mse {:.5f}", s.mse) : "", s.lr,
                   s.grad_norm, s.tokens_per_second, s.mfu >= 0 ? fmt::format("{:.1f}%", 100 * s.mfu) : "n/a",
                   s.elapsed_seconds);
        std::fflush(stdout);
    };
    DistillResult r;
    try {
        r = run_distill(o, codec, hooks);
    } catch (...) {
        std::signal(SIGINT, previous);
        throw;
    }
    std::signal(SIGINT, previous);

    if (r.first_step > 0) {
        fmt::print("loss {:.5f} (step {}) -> {:.5f} (step {}); {:.0f} tokens/s{}\n", r.first_loss, r.first_step,
                   r.last_loss, r.steps_done, r.mean_tokens_per_second,
                   r.mean_mfu >= 0 ? fmt::format(", MFU {:.1f}%", 100 * r.mean_mfu) : "");
    }
    if (!args.no_plot) {
        const std::string script = std::string(SWIFTKV_SCRIPTS_DIR) + "/plot_distill.py";
        const std::string png = (fs::path(o.out) / "loss_curve.png").string();
        const std::string cmd = fmt::format("python3 '{}' '{}' --out '{}'", script, r.log_path, png);
        bool ok = false;
        if (std::system("python3 -c 'import matplotlib' >/dev/null 2>&1") == 0) ok = std::system((cmd + " >/dev/null").c_str()) == 0;
        if (ok) {
            fmt::print("loss curve: {}\n", png);
        } else {
            fmt::print("loss curve: python3 with matplotlib is not available; draw it with:\n  {}\n", cmd);
        }
    }
    if (r.interrupted) return g_stop.load() ? 130 : 0;
    return 0;
}
