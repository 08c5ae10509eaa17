// Drives a model (through a ModelRunner) the way a continuous-batching scheduler would, at random: several
// sequences per step, each advancing by a random number of tokens (a prompt chunk, or one token like a
// decode step), some sitting a step out, KV blocks handed out in shuffled order, and logits requested
// for a random suffix of each sequence's rows. Every logits row is passed to `check`.
#pragma once

#include <functional>
#include <random>
#include <vector>

#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "runner/model_runner.h"

using LogitsCheck = std::function<void(size_t sequence, int64_t position, const float* logits)>;

struct ScheduleOptions {
    int64_t max_step_tokens = 9;  // per sequence per step
    bool always_last_logits = false;  // also request the last row of every step (decode-like)
};

void run_random_schedule(swiftkv::LlamaModel& model, swiftkv::PagedKvCache& cache,
                         const std::vector<std::vector<int>>& sequences, std::mt19937& rng, const LogitsCheck& check,
                         const ScheduleOptions& options = {});
