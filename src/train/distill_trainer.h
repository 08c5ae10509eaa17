// run_distill — the SwiftKV distillation run (issue 6; DESIGN.md section 1, "Distillation"): reads and packs
// the data, loads the student (teacher = the same weights with SwiftKV off), and runs AdamW on the
// trainable tensors (norm_swiftkv, q/k/v_proj_swiftkv) with linear warmup then linear decay to zero,
// global gradient-norm clipping and gradient accumulation, logging every step, checkpointing at intervals
// and when asked to stop, and at the end writing
//   <out>/config.json, model.safetensors, tokenizer files   the distilled llama_swiftkv Hugging Face
//                                                            directory (when the student is one);
//   <out>/swiftkv_tensors.safetensors + swiftkv_tensors.json  only the trainable tensors, as a SwiftKV
//                                                            overlay on the base (model/swiftkv_overlay.h);
//   <out>/train_log.jsonl                                    one JSON line per step.
// Resuming (options.resume) continues from <out>/checkpoint with the same data order and optimizer state:
// the result is bit-identical to a run that was never interrupted (same backend and thread count).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/distill_data.h"

namespace swiftkv {

struct DistillOptions {
    std::string model;               // the student: Hugging Face directory from `swiftkv convert`, or an overlay
    std::vector<std::string> data;   // data files (distill_data.h)
    std::string out;                 // output directory (checkpoints, logs, the distilled model)
    std::string base;                // base model recorded in the overlay descriptor (default: the student)
    int64_t tokens = 0;              // training tokens; steps = ceil(tokens / tokens per step)
    int64_t seq_len = 512;           // tokens per packed row
    int64_t batch_size = 8;          // packed rows per micro-batch
    int64_t grad_accum = 1;          // micro-batches per optimizer step
    double temperature = 2.0;
    double hidden_mse = 0.0;         // weight of the hidden-state MSE term (0: off)
    std::string loss_mask = "all";   // "all" tokens, or "assistant" tokens only
    double lr = 2e-4;
    double warmup = 0.05;            // share of the steps for linear warmup
    double weight_decay = 0.0;
    double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
    double clip = 1.0;               // global gradient-norm clip (0: off)
    uint64_t seed = 0;               // data order
    // Run control (may differ between an interrupted run and its resumption).
    std::string device = "cpu";
    int threads = 0;
    std::string dtype;               // weights on the device: "" (f32 on the CPU, bf16 on CUDA), "f32", "bf16"
    int64_t save_every = 100;        // checkpoint every N steps (0: only when stopping and at the end)
    bool resume = false;
    bool force = false;              // start over in an output directory that holds a checkpoint
    int64_t max_steps = 0;           // stop (with a checkpoint) after this many steps in this invocation
    double peak_tflops = 0;          // for MFU; 0: known GPUs (H100/H200 bf16 dense) or n/a
    std::string overlay_dtype = "auto";  // auto (the student's), f32, bf16
    bool write_model = true;         // write the full Hugging Face directory at the end
    // Speed benchmark: random weights of a named shape (ModelConfig::synthetic, e.g. "llama-3.1-8b") cut at
    // synthetic_swiftkv ("50%", "50%:2"), trained on random tokens; no model, data, checkpoint or overlay.
    std::string synthetic;
    std::string synthetic_swiftkv = "50%";
};

// The options that decide the result (recorded in checkpoints and compared on resume), and back.
nlohmann::json distill_options_to_json(const DistillOptions& options);
void distill_options_from_json(const nlohmann::json& json, DistillOptions& options);

struct DistillStepLog {
    int64_t step = 0, total_steps = 0;
    double loss = 0, kl = 0, mse = 0, lr = 0, grad_norm = 0;
    int64_t tokens = 0;              // tokens processed in this step
    int64_t loss_tokens = 0;         // rows whose loss counted
    double step_seconds = 0, tokens_per_second = 0;
    // Model FLOPs utilisation: the FLOPs this step executed (DistillModel::step_flops: shared layers,
    // teacher, student forward and backward, LM heads, attention) / step time / peak. < 0: n/a (no peak).
    double mfu = -1;
    double elapsed_seconds = 0;
};

struct DistillHooks {
    std::function<void(const std::string&)> message;       // progress and summary lines for the user
    std::function<void(const DistillStepLog&)> on_step;    // after every optimizer step
    const std::atomic<bool>* stop = nullptr;               // when set: finish the step, checkpoint, return
};

struct DistillResult {
    int64_t steps_done = 0, total_steps = 0;
    bool finished = false;      // all steps done and the outputs written
    bool interrupted = false;   // stopped early with a checkpoint (resume to continue)
    int64_t first_step = 0;     // the first step this invocation ran (after a resume: checkpoint step + 1)
    double first_loss = 0, last_loss = 0;  // losses of first_step and of the last step run
    double mean_tokens_per_second = 0;
    double mean_mfu = -1;
    std::string log_path, overlay_path, model_dir;  // model_dir empty when the full directory was not written
    int64_t data_tokens = 0, malformed_records = 0;
};

// Throws swiftkv::Error with a message that says what to do; a checkpoint written before an error stays.
DistillResult run_distill(const DistillOptions& options, const DistillTextCodec& codec, const DistillHooks& hooks = {});

// Learning rate of optimizer step t (0-based) of `total`: linear warmup over `warmup_steps` steps to lr,
// then linear decay to zero at the end.
double distill_lr_at(int64_t t, int64_t total, int64_t warmup_steps, double lr);

}  // namespace swiftkv
