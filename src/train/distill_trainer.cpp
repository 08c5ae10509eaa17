// run_distill: options, memory planning, the optimizer loop, checkpoints, logs and outputs. See
// distill_trainer.h.
#include "train/distill_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>

#include "backend/sampling_noise.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/safetensors_reader.h"
#include "model/model_source.h"
#include "model/swiftkv_overlay.h"
#include "train/distill_checkpoint.h"

namespace swiftkv {

namespace fs = std::filesystem;

nlohmann::json distill_options_to_json(const DistillOptions& o) {
    return {{"tokens", o.tokens},         {"seq_len", o.seq_len},         {"batch_size", o.batch_size},
            {"grad_accum", o.grad_accum}, {"temperature", o.temperature}, {"hidden_mse", o.hidden_mse},
            {"loss_mask", o.loss_mask},   {"lr", o.lr},                   {"warmup", o.warmup},
            {"weight_decay", o.weight_decay}, {"beta1", o.beta1},         {"beta2", o.beta2},
            {"adam_eps", o.adam_eps},     {"clip", o.clip},               {"seed", o.seed},
            {"dtype", o.dtype},           {"model", o.model},             {"data", o.data},
            {"base", o.base}};
}

void distill_options_from_json(const nlohmann::json& j, DistillOptions& o) {
    auto get = [&](const char* key, auto& field) {
        if (j.contains(key)) field = j[key].get<std::decay_t<decltype(field)>>();
    };
    get("tokens", o.tokens);
    get("seq_len", o.seq_len);
    get("batch_size", o.batch_size);
    get("grad_accum", o.grad_accum);
    get("temperature", o.temperature);
    get("hidden_mse", o.hidden_mse);
    get("loss_mask", o.loss_mask);
    get("lr", o.lr);
    get("warmup", o.warmup);
    get("weight_decay", o.weight_decay);
    get("beta1", o.beta1);
    get("beta2", o.beta2);
    get("adam_eps", o.adam_eps);
    get("clip", o.clip);
    get("seed", o.seed);
    get("dtype", o.dtype);
    get("model", o.model);
    get("data", o.data);
    get("base", o.base);
}

double distill_lr_at(int64_t t, int64_t total, int64_t warmup_steps, double lr) {
    if (t < warmup_steps) return lr * double(t + 1) / double(warmup_steps);
    const int64_t decay = total - warmup_steps;
    if (decay <= 0) return lr;
    return lr * double(total - t) / double(decay);
}

namespace {

using Clock = std::chrono::steady_clock;

// Keys that only steer the run and may change on resume (they do not change the weights).
bool result_key(const std::string& key) { return key != "model" && key != "data" && key != "base"; }

// A corpus of random tokens for --synthetic runs: enough rows for a few distinct steps.
DistillCorpus synthetic_corpus(int64_t vocab, int64_t seq_len, int64_t rows, uint64_t seed) {
    DistillCorpus corpus;
    corpus.seq_len = seq_len;
    const uint64_t key = noise_mix64(seed);
    for (int64_t r = 0; r < rows; ++r) {
        DistillDocument d;
        d.tokens.resize(size_t(seq_len));
        for (int64_t j = 0; j < seq_len; ++j)
            d.tokens[size_t(j)] = int32_t(noise_mix64(key + uint64_t(r * seq_len + j)) % uint64_t(vocab));
        d.assistant.assign(d.tokens.size(), 0);
        corpus.documents.push_back(std::move(d));
    }
    corpus.tokens = rows * seq_len;
    DataFileStats st;
    st.path = "(random tokens)";
    st.kind = "synthetic";
    st.records = st.documents = rows;
    st.tokens = corpus.tokens;
    corpus.files.push_back(st);
    corpus.fingerprint = fnv1a64(&seed, sizeof(seed));
    return corpus;
}

void check_options(const DistillOptions& o) {
    if (!o.synthetic.empty()) {
        SKV_CHECK(o.model.empty() && o.data.empty(), "--synthetic trains random weights on random tokens: drop --model "
                  "and --data");
        SKV_CHECK(!o.resume, "--synthetic runs are benchmarks and cannot be resumed");
        SKV_CHECK(o.loss_mask == "all", "--synthetic data has no assistant turns: use --loss-mask all");
    }
    SKV_CHECK(!o.model.empty() || !o.synthetic.empty(), "no student model given (--model DIR: the output of `swiftkv convert`)");
    SKV_CHECK(!o.out.empty(), "no output directory given (--out DIR)");
    SKV_CHECK(o.tokens > 0, "--tokens must be positive (the number of training tokens), got {}", o.tokens);
    SKV_CHECK(o.seq_len >= 2, "--seq-len {} is too short", o.seq_len);
    SKV_CHECK(o.batch_size >= 1 && o.grad_accum >= 1, "--batch-size and --grad-accum must be at least 1");
    SKV_CHECK(o.temperature > 0 && std::isfinite(o.temperature), "--temperature must be positive, got {}", o.temperature);
    SKV_CHECK(o.hidden_mse >= 0 && std::isfinite(o.hidden_mse), "--hidden-mse must be >= 0, got {}", o.hidden_mse);
    SKV_CHECK(o.loss_mask == "all" || o.loss_mask == "assistant", "--loss-mask must be 'all' or 'assistant', not '{}'",
              o.loss_mask);
    SKV_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr must be positive, got {}", o.lr);
    SKV_CHECK(o.warmup >= 0 && o.warmup <= 1, "--warmup is a share of the steps in [0, 1], got {}", o.warmup);
    SKV_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0");
    SKV_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.adam_eps > 0, "invalid Adam settings");
    SKV_CHECK(o.clip >= 0, "--clip must be >= 0 (0: off), got {}", o.clip);
    SKV_CHECK(o.dtype.empty() || o.dtype == "f32" || o.dtype == "bf16", "--dtype must be f32 or bf16, not '{}'", o.dtype);
    SKV_CHECK(o.overlay_dtype == "auto" || o.overlay_dtype == "f32" || o.overlay_dtype == "bf16",
              "--overlay-dtype must be auto, f32 or bf16");
    SKV_CHECK(o.save_every >= 0 && o.max_steps >= 0, "--save-every and --max-steps must be >= 0");
}

// Device bytes of the frozen weights (teacher) in `dtype`.
size_t frozen_weight_bytes(const ModelConfig& c, DType dtype) {
    const double e = double(dtype_row_bytes(dtype, 1));
    const double H = double(c.hidden);
    double n = double(c.vocab) * H * (c.tie_embeddings ? 1 : 2);
    n += double(c.n_layers) * (H * double(c.q_dim() + 2 * c.kv_dim()) + double(c.q_dim()) * H + 3.0 * H * double(c.ffn));
    return size_t(n * e + double(c.n_layers * 2 + 1) * H * 4);
}

// Trainable parameters (their exact count is DistillModel's; this is for planning).
size_t trainable_bytes(const ModelConfig& c, DType compute) {
    const int64_t later = c.n_layers - c.num_kv_layers, groups = later / c.kv_group_size;
    const double n = double(c.hidden) * (1.0 + double(later * c.q_dim() + 2 * groups * c.kv_dim()));
    return size_t(n * (16.0 + (compute == DType::F32 ? 0.0 : double(dtype_row_bytes(compute, 1)))));  // p, g, m, v
}

// "cuda:0 (NVIDIA H100 80GB HBM3)" -> 989 (bf16 dense, SXM); 0 when unknown.
double detect_peak_tflops(const std::string& backend_name) {
    if (backend_name.find("H100") != std::string::npos) {
        return backend_name.find("PCIe") != std::string::npos ? 756.0 : 989.0;
    }
    if (backend_name.find("H200") != std::string::npos) return 989.0;
    return 0.0;
}

void trim_log(const std::string& path, int64_t last_step) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
        try {
            const auto j = nlohmann::json::parse(line);
            if (j.value("step", int64_t(0)) <= last_step) kept += line + "\n";
        } catch (const nlohmann::json::exception&) {
            // a line cut short by a crash: dropped
        }
    }
    in.close();
    std::ofstream(path, std::ios::trunc) << kept;
}

// The full llama_swiftkv Hugging Face directory: every tensor of the student with the trained ones replaced,
// in their original dtypes, and the student's other files (config, tokenizer, generation config).
void write_model_dir(const ModelSource& student, const std::string& student_dir, const std::string& out,
                     const std::vector<TrainableTensor>& trainables, const std::vector<float>& params) {
    std::vector<SafetensorsWriteItem> items;
    std::vector<std::vector<uint8_t>> owned;
    owned.reserve(trainables.size());
    for (const auto& [name, t] : student.tensors()) {
        const TrainableTensor* tt = nullptr;
        for (const auto& x : trainables)
            if (x.name == name) tt = &x;
        if (tt == nullptr) {
            items.push_back({name, t.dtype, t.shape, t.data});
            continue;
        }
        const float* src = params.data() + tt->offset;
        const int64_t n = tt->numel();
        const DType dt = t.dtype == DType::BF16 ? DType::BF16 : DType::F32;
        owned.emplace_back(size_t(n) * (dt == DType::BF16 ? 2 : 4));
        if (dt == DType::BF16) {
            auto* dst = reinterpret_cast<uint16_t*>(owned.back().data());
            for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
        } else {
            std::memcpy(owned.back().data(), src, size_t(n) * 4);
        }
        items.push_back({name, dt, tt->shape, owned.back().data()});
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(student_dir, ec)) {
        const std::string fname = entry.path().filename().string();
        if (!entry.is_regular_file() || fname.ends_with(".safetensors") || fname == "model.safetensors.index.json")
            continue;
        fs::copy_file(entry.path(), fs::path(out) / fname, fs::copy_options::overwrite_existing, ec);
        SKV_CHECK(!ec, "cannot copy '{}' into '{}': {}", entry.path().string(), out, ec.message());
    }
    // The student may say "swiftkv": false (its directory doubles as the teacher); the distilled model is
    // a student and must load as one.
    if (student.hf_config().value("swiftkv", nlohmann::json(true)) != true) {
        nlohmann::json config = student.hf_config();
        config["swiftkv"] = true;
        const fs::path path = fs::path(out) / "config.json";
        std::ofstream f(path);
        f << config.dump(2) << "\n";
        SKV_CHECK(f.good(), "writing '{}' failed", path.string());
    }
    write_safetensors((fs::path(out) / "model.safetensors").string(), items, {{"format", "pt"}});
}

}  // namespace

DistillResult run_distill(const DistillOptions& opts, const DistillTextCodec& codec, const DistillHooks& hooks) {
    check_options(opts);
    auto say = [&](const std::string& s) {
        if (hooks.message) hooks.message(s);
    };
    DistillResult result;
    std::error_code ec;

    // Output directory and checkpoint state (the directory is created once everything has been checked).
    SKV_CHECK(!fs::exists(opts.out, ec) || fs::is_directory(opts.out, ec), "--out '{}' exists and is not a directory",
              opts.out);
    const bool have_ckpt = has_distill_checkpoint(opts.out);
    if (opts.resume) {
        SKV_CHECK(have_ckpt, "--resume: '{}' holds no checkpoint (start without --resume)", opts.out);
    } else if (have_ckpt) {
        SKV_CHECK(opts.force, "'{}' already holds a distillation checkpoint; pass --resume to continue it, or --force to "
                  "start over (which deletes it)", opts.out);
    }
    if (!opts.model.empty()) {
        const fs::path a = fs::weakly_canonical(fs::absolute(opts.out), ec), b = fs::weakly_canonical(fs::absolute(opts.model), ec);
        SKV_CHECK(a != b, "--out must differ from the student directory '{}' (distill writes a new model)", opts.model);
    }

    // The student (and, through it, the teacher) and the base it must match.
    const bool synthetic = !opts.synthetic.empty();
    std::unique_ptr<ModelSource> student;
    if (!synthetic) student = ModelSource::open(opts.model);
    const ModelConfig cfg = synthetic ? ModelConfig::synthetic(opts.synthetic, opts.synthetic_swiftkv) : student->config();
    SKV_CHECK(cfg.is_swiftkv(), "{} is not a SwiftKV student (num_key_value_layers = num_hidden_layers); make one with "
              "`swiftkv convert --model BASE --swiftkv-layers 50% --out DIR` first", opts.model);
    SKV_CHECK(opts.seq_len <= cfg.max_position, "--seq-len {} exceeds the model's {} positions (max_position_embeddings)",
              opts.seq_len, cfg.max_position);
    std::unique_ptr<ModelSource> base_holder;
    const ModelSource* base = student.get();
    std::string base_path = synthetic || student->overlay_base_path().empty() ? opts.model : student->overlay_base_path();
    if (!opts.base.empty() && !synthetic) {
        base_holder = ModelSource::open(opts.base);
        base = base_holder.get();
        base_path = opts.base;
        const nlohmann::json want = overlay_base_config(base->config()), have = overlay_base_config(cfg);
        for (const auto& [key, value] : want.items()) {
            SKV_CHECK(have[key] == value, "the student '{}' does not match the base '{}': {} is {} in the student and {} in "
                      "the base; convert the student from this base", opts.model, opts.base, key, have[key].dump(),
                      value.dump());
        }
        const std::string fs_ = model_fingerprint(*student), fb = model_fingerprint(*base);
        SKV_CHECK(fs_ == fb, "the student '{}' does not match the base '{}': their norm weights differ (fingerprints {} "
                  "and {}); the student was converted from another model", opts.model, opts.base, fs_, fb);
    }

    // Data.
    const LossMask mask = opts.loss_mask == "assistant" ? LossMask::Assistant : LossMask::AllTokens;
    const DistillCorpus corpus =
        synthetic ? synthetic_corpus(cfg.vocab, opts.seq_len, 4 * opts.batch_size * opts.grad_accum, opts.seed)
                  : load_distill_corpus(opts.data, codec, opts.seq_len);
    result.data_tokens = corpus.tokens;
    result.malformed_records = corpus.malformed;
    for (const auto& f : corpus.files) {
        say(fmt::format("data: {} ({}): {} records, {} documents, {} tokens{}", f.path, f.kind, f.records, f.documents,
                        f.tokens, f.malformed ? fmt::format(", {} malformed lines skipped", f.malformed) : ""));
    }
    if (corpus.malformed > 0) {
        say(fmt::format("data: {} malformed records skipped in total; the first:", corpus.malformed));
        for (const auto& m : corpus.malformed_examples) say("  " + m);
    }
    if (corpus.unmasked_chats > 0)
        say(fmt::format("data: {} chats have a template whose renders are not prefix-stable: no assistant mask for them",
                        corpus.unmasked_chats));
    SKV_CHECK(mask != LossMask::Assistant || corpus.assistant_tokens > 0,
              "--loss-mask assistant: the data has no assistant tokens (use chat or instruction records with answers, "
              "or --loss-mask all)");
    PackedStream stream(corpus, opts.seed);
    {
        const double epochs = double(opts.tokens) / double(stream.rows_per_epoch() * opts.seq_len);
        if (epochs > 1.0)
            say(fmt::format("data: --tokens {} is {:.2f} passes over the data's {} packed tokens (each pass reshuffled)",
                            opts.tokens, epochs, stream.rows_per_epoch() * opts.seq_len));
    }

    // Backend and memory plan.
    if (opts.threads > 0) ThreadPool::set_global_threads(opts.threads);
    auto backend = make_backend(opts.device, opts.threads);
    const DType wdtype = opts.dtype == "f32"    ? DType::F32
                         : opts.dtype == "bf16" ? DType::BF16
                                                : (backend->supports_weight_dtype(DType::F32) ? DType::F32 : DType::BF16);
    SKV_CHECK(backend->supports_weight_dtype(wdtype), "the {} backend cannot hold {} weights", backend->name(),
              dtype_name(wdtype));
    const int64_t micro_tokens = opts.batch_size * opts.seq_len;
    const int64_t tokens_per_step = micro_tokens * opts.grad_accum;
    const int64_t total_steps = (opts.tokens + tokens_per_step - 1) / tokens_per_step;
    const int64_t warmup_steps = int64_t(std::ceil(opts.warmup * double(total_steps)));
    result.total_steps = total_steps;
    {
        size_t free_b = 0, total_b = 0;
        backend->memory_info(&free_b, &total_b);
        const bool mse = opts.hidden_mse > 0;
        const size_t fixed = frozen_weight_bytes(cfg, wdtype) + trainable_bytes(cfg, wdtype);
        auto need = [&](int64_t rows) {
            return fixed + DistillModel::workspace_bytes(cfg, backend->act_dtype(), rows * opts.seq_len, 0, mse);
        };
        const size_t budget = size_t(double(free_b) * 0.95);
        if (free_b > 0 && need(opts.batch_size) > budget) {
            int64_t fits = opts.batch_size - 1;
            while (fits > 0 && need(fits) > budget) --fits;
            SKV_CHECK(false, "--batch-size {} does not fit: a micro-batch of {} x {} tokens needs about {:.2f} GiB on {} "
                      "(weights, optimizer state and activations), but {:.2f} GiB is free. {}", opts.batch_size,
                      opts.batch_size, opts.seq_len, double(need(opts.batch_size)) / double(1ull << 30), backend->name(),
                      double(free_b) / double(1ull << 30),
                      fits > 0 ? fmt::format("The largest --batch-size that fits is {} (use --grad-accum to keep the "
                                             "tokens per step)", fits)
                               : std::string("Even one sequence does not fit: lower --seq-len"));
        }
    }
    DistillModelOptions mo;
    mo.weight_dtype = wdtype;
    mo.max_tokens = micro_tokens;
    mo.hidden_mse = opts.hidden_mse > 0;
    std::unique_ptr<DistillModel> model_holder =
        synthetic ? std::make_unique<DistillModel>(cfg, *backend, mo, opts.seed) : std::make_unique<DistillModel>(*student, *backend, mo);
    DistillModel& model = *model_holder;
    const int64_t P = model.num_params();
    say(fmt::format("student: {} layers, cut L = {}, group g = {}; {} trainable parameters in {} tensors; teacher = the "
                    "same weights with SwiftKV off", cfg.n_layers, cfg.num_kv_layers, cfg.kv_group_size, P,
                    model.trainables().size()));
    say(fmt::format("schedule: {} steps of {} tokens ({} x {} x {} accumulation), warmup {} steps, lr {:g}", total_steps,
                    tokens_per_step, opts.batch_size, opts.seq_len, opts.grad_accum, warmup_steps, opts.lr));

    DeviceBuffer adam_m(*backend, size_t(P) * 4), adam_v(*backend, size_t(P) * 4);
    backend->fill_zero(adam_m.get(), size_t(P) * 4);
    backend->fill_zero(adam_v.get(), size_t(P) * 4);

    nlohmann::json options_json = distill_options_to_json(opts);
    options_json["dtype"] = wdtype == DType::BF16 ? "bf16" : "f32";
    options_json["model_fingerprint"] = synthetic ? "synthetic:" + opts.synthetic + "@" + opts.synthetic_swiftkv
                                                  : model_fingerprint(*student);
    const nlohmann::json layout = trainable_layout(model.trainables(), P);
    int64_t step = 0, rows = 0;
    double elapsed = 0;
    fs::create_directories(opts.out, ec);
    SKV_CHECK(fs::is_directory(opts.out, ec), "cannot create the output directory '{}'", opts.out);
    if (!opts.resume && have_ckpt) {  // --force: start over
        fs::remove_all(fs::path(opts.out) / "checkpoint", ec);
        fs::remove_all(fs::path(opts.out) / "checkpoint.old", ec);
    }
    const std::string log_path = (fs::path(opts.out) / "train_log.jsonl").string();
    result.log_path = log_path;
    if (opts.resume) {
        const DistillCheckpoint ck = load_distill_checkpoint(opts.out);
        std::vector<std::string> diffs;
        for (const auto& [key, value] : options_json.items()) {
            if (!result_key(key)) continue;
            if (!ck.options.contains(key) || ck.options[key] != value)
                diffs.push_back(fmt::format("{}: checkpoint {} vs now {}", key,
                                            ck.options.contains(key) ? ck.options[key].dump() : "(none)", value.dump()));
        }
        SKV_CHECK(diffs.empty(), "--resume: the run's settings differ from the checkpoint's, so it could not continue "
                  "identically ({}); resume with the original settings", fmt::format("{}", fmt::join(diffs, "; ")));
        SKV_CHECK(ck.data_fingerprint == corpus.fingerprint, "--resume: the data differs from the checkpoint's (fingerprint "
                  "{:016x} vs {:016x}); pass the same --data files (same order and contents) and --seq-len",
                  ck.data_fingerprint, corpus.fingerprint);
        SKV_CHECK(ck.layout == layout, "--resume: the checkpoint's trainable tensors do not match this student ({})",
                  opts.model);
        SKV_CHECK(ck.step <= total_steps, "--resume: the checkpoint is at step {} beyond the run's {} steps", ck.step,
                  total_steps);
        model.upload_params(ck.params);
        backend->upload(adam_m.get(), ck.adam_m.data(), size_t(P) * 4);
        backend->upload(adam_v.get(), ck.adam_v.data(), size_t(P) * 4);
        step = ck.step;
        rows = ck.rows_consumed;
        elapsed = ck.elapsed_seconds;
        trim_log(log_path, step);
        say(fmt::format("resumed from {}/checkpoint at step {} of {}", opts.out, step, total_steps));
    } else {
        std::ofstream(log_path, std::ios::trunc);
    }
    auto save = [&] {
        if (synthetic) return;  // a benchmark: nothing worth keeping
        DistillCheckpoint ck;
        ck.step = step;
        ck.rows_consumed = rows;
        ck.elapsed_seconds = elapsed;
        ck.data_fingerprint = corpus.fingerprint;
        ck.options = options_json;
        ck.layout = layout;
        ck.params = model.download_params();
        ck.adam_m.resize(size_t(P));
        ck.adam_v.resize(size_t(P));
        backend->download(ck.adam_m.data(), adam_m.get(), size_t(P) * 4);
        backend->download(ck.adam_v.data(), adam_v.get(), size_t(P) * 4);
        save_distill_checkpoint(opts.out, ck);
    };

    const double peak = opts.peak_tflops > 0 ? opts.peak_tflops : detect_peak_tflops(backend->name());
    if (peak > 0) {
        say(fmt::format("MFU against a peak of {:g} TFLOP/s ({})", peak, opts.peak_tflops > 0 ? "--peak-tflops" : backend->name()));
    }
    LossOptions lo;
    lo.temperature = float(opts.temperature);
    lo.hidden_mse_weight = float(opts.hidden_mse);
    AdamWParams adam;
    adam.beta1 = float(opts.beta1);
    adam.beta2 = float(opts.beta2);
    adam.eps = float(opts.adam_eps);
    adam.weight_decay = float(opts.weight_decay);
    std::ofstream log(log_path, std::ios::app);
    int64_t steps_this_run = 0;
    double sum_tps = 0, sum_mfu = 0;
    bool first = true;
    std::vector<PackedBatch> micro(size_t(opts.grad_accum));
    while (step < total_steps) {
        const auto t0 = Clock::now();
        double weight_sum = 0;
        int64_t step_tokens = 0, loss_tokens = 0;
        for (auto& mb : micro) {
            mb = PackedBatch();
            for (int64_t r = 0; r < opts.batch_size; ++r) stream.append_row(rows++, mask, mb);
            for (float w : mb.row_weights) {
                weight_sum += w;
                loss_tokens += w > 0;
            }
            step_tokens += mb.num_tokens();
        }
        const float inv = weight_sum > 0 ? float(1.0 / weight_sum) : 0.0f;
        model.zero_grads();
        LossParts sum;
        double flops = 0;
        for (auto& mb : micro) {
            for (float& w : mb.row_weights) w *= inv;
            const LossParts p = model.forward_backward(mb, lo, true);
            sum.loss += p.loss;
            sum.kl += p.kl;
            sum.mse += p.mse;
            flops += model.step_flops(mb, true);
        }
        const double grad_norm = std::sqrt(model.training().grad_sq_norm(model.grads(), P));
        SKV_CHECK(std::isfinite(grad_norm) && std::isfinite(sum.loss),
                  "step {}: the loss or gradient is not finite (loss {}, gradient norm {}); the last checkpoint is kept. "
                  "Lower --lr or check the data", step + 1, sum.loss, grad_norm);
        if (opts.clip > 0 && grad_norm > opts.clip) model.training().scale(model.grads(), P, float(opts.clip / grad_norm));
        adam.lr = float(distill_lr_at(step, total_steps, warmup_steps, opts.lr));
        model.training().adamw_step(model.params(), model.grads(), adam_m.as<float>(), adam_v.as<float>(), P, adam, step + 1);
        model.params_updated();
        backend->synchronize();
        ++step;
        ++steps_this_run;
        const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        elapsed += secs;

        DistillStepLog sl;
        sl.step = step;
        sl.total_steps = total_steps;
        sl.loss = sum.loss;
        sl.kl = sum.kl;
        sl.mse = sum.mse;
        sl.lr = adam.lr;
        sl.grad_norm = grad_norm;
        sl.tokens = step_tokens;
        sl.loss_tokens = loss_tokens;
        sl.step_seconds = secs;
        sl.tokens_per_second = double(step_tokens) / secs;
        sl.mfu = peak > 0 ? flops / secs / (peak * 1e12) : -1;
        sl.elapsed_seconds = elapsed;
        nlohmann::json line = {{"step", step},           {"loss", sl.loss},           {"kl", sl.kl},
                               {"mse", sl.mse},          {"lr", sl.lr},               {"grad_norm", grad_norm},
                               {"tokens", step_tokens},  {"loss_tokens", loss_tokens}, {"step_s", secs},
                               {"tokens_per_s", sl.tokens_per_second}, {"tflops", flops / secs / 1e12},
                               {"elapsed_s", elapsed}};
        line["mfu"] = sl.mfu >= 0 ? nlohmann::json(sl.mfu) : nlohmann::json(nullptr);
        log << line.dump() << "\n";
        log.flush();
        if (hooks.on_step) hooks.on_step(sl);
        if (first) result.first_loss = sl.loss, result.first_step = step;
        first = false;
        result.last_loss = sl.loss;
        sum_tps += sl.tokens_per_second;
        sum_mfu += sl.mfu;

        const bool stop_now = (hooks.stop && hooks.stop->load()) || (opts.max_steps > 0 && steps_this_run >= opts.max_steps);
        if (step < total_steps && (stop_now || (opts.save_every > 0 && step % opts.save_every == 0))) {
            save();
            if (stop_now) {
                if (synthetic) {
                    say(fmt::format("stopped at step {} of {} (--max-steps)", step, total_steps));
                } else {
                    say(fmt::format("stopped at step {} of {}; checkpoint saved in {}/checkpoint (continue with --resume)",
                                    step, total_steps, opts.out));
                }
                result.interrupted = true;
                break;
            }
        }
    }
    result.steps_done = step;
    if (steps_this_run > 0) {
        result.mean_tokens_per_second = sum_tps / double(steps_this_run);
        result.mean_mfu = peak > 0 ? sum_mfu / double(steps_this_run) : -1;
    }
    if (result.interrupted) return result;
    if (synthetic) {
        result.finished = true;
        return result;
    }

    // Done: the final checkpoint, the overlay, the full directory.
    save();
    const std::vector<float> params = model.download_params();
    std::vector<OverlayTensor> tensors;
    for (const auto& t : model.trainables()) tensors.push_back({t.name, t.shape, params.data() + t.offset});
    DType overlay_dtype = DType::F32;
    if (opts.overlay_dtype == "bf16") {
        overlay_dtype = DType::BF16;
    } else if (opts.overlay_dtype == "auto") {
        const SourceTensor* q = student->find(model.trainables().back().name);
        overlay_dtype = q && q->dtype == DType::BF16 ? DType::BF16 : DType::F32;
    }
    result.overlay_path = write_swiftkv_overlay(opts.out, "swiftkv_tensors", base_path, *base, cfg, tensors, overlay_dtype);
    say(fmt::format("wrote {} (the trained tensors as an overlay on {})", result.overlay_path, base_path));
    const bool hf_student = !student->is_gguf() && student->overlay_base_path().empty();
    if (opts.write_model && hf_student) {
        write_model_dir(*student, opts.model, opts.out, model.trainables(), params);
        result.model_dir = opts.out;
        say(fmt::format("wrote the distilled llama_swiftkv model to {}", opts.out));
    } else if (opts.write_model) {
        say("the student is not a Hugging Face directory: only the overlay was written (load it with -m " +
            result.overlay_path + ")");
    }
    result.finished = true;
    return result;
}

}  // namespace swiftkv
