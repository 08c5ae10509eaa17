// Distillation checkpoints: everything a run needs to continue exactly where it stopped, so that an
// interrupted and resumed run ends with the same weights, bit for bit, as an uninterrupted one.
//
// Layout, under the run's output directory:
//   checkpoint/state.json            step, data cursor (rows consumed), seed, the training options, the
//                                    data fingerprint, the trainable tensors' layout, the checksum of
//   checkpoint/optimizer.safetensors the f32 master weights, Adam's m and v (three flat [P] tensors).
// A checkpoint is written into checkpoint.tmp/ and swapped in by renames (the previous one is kept as
// checkpoint.old/ until the swap is done, and used if a crash left no checkpoint/), so a crash or a full
// disk never destroys the last good checkpoint. Loading verifies the checksum and every shape: a
// corrupted or mismatched checkpoint is a clear error, never a silent restart.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/distill_model.h"

namespace swiftkv {

struct DistillCheckpoint {
    int64_t step = 0;            // optimizer steps done
    int64_t rows_consumed = 0;   // packed rows used (the data cursor)
    double elapsed_seconds = 0;  // training time so far (for logs)
    uint64_t data_fingerprint = 0;
    nlohmann::json options;      // the options that decide the result (compared on resume)
    nlohmann::json layout;       // [[name, [shape], offset], ...] of the trainable tensors
    std::vector<float> params, adam_m, adam_v;
};

// The layout JSON of a model's trainable tensors (what a checkpoint records and checks).
nlohmann::json trainable_layout(const std::vector<TrainableTensor>& tensors, int64_t num_params);

// Writes <out_dir>/checkpoint atomically (see above). Throws swiftkv::Error; the previous checkpoint survives.
void save_distill_checkpoint(const std::string& out_dir, const DistillCheckpoint& ckpt);

// True when <out_dir> holds a checkpoint (checkpoint/ or a left-over checkpoint.old/).
bool has_distill_checkpoint(const std::string& out_dir);

// Reads and verifies <out_dir>/checkpoint. Throws swiftkv::Error saying what is wrong (missing, corrupted
// JSON, checksum mismatch, wrong sizes).
DistillCheckpoint load_distill_checkpoint(const std::string& out_dir);

// Just the options recorded in the checkpoint (for a CLI that resumes without repeating its flags).
nlohmann::json read_distill_checkpoint_options(const std::string& out_dir);

}  // namespace swiftkv
