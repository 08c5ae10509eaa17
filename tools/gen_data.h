// Teacher data for distillation (swiftkv gen-data): a teacher model answers prompt sets with the
// continuous-batching engine and the answers are written as chat-format JSON lines; raw text files are
// cut into chunks and copied through as text records. Records (one JSON object a line):
//   {"id": "<file>:<index>", "source": "<file>", "messages": [{"role": "user", "content"},
//    {"role": "assistant", "content"}...], "finish_reason", "prompt_tokens", "completion_tokens"}
//   {"id": "<file>:<chunk>", "source": "<file>", "text": "..."}
// A multi-turn prompt (MT-bench) is answered turn by turn: each turn's prompt is the conversation so
// far, messages holds every turn, finish_reason is the last turn's (with "finish_reasons" listing
// each turn's), prompt_tokens the last turn's prompt length and completion_tokens the sum. A record
// is written (and flushed) as soon as its prompt finishes; the file is fsynced every few seconds.
// Resuming: records already in the output file (by id) are skipped; a truncated last line is cut off
// first. Ids depend only on the file name and the record's position in its file (text: on the chunk
// size and the tokenizer), so a rerun with the same inputs continues where the last one stopped.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "io/prompt_sets.h"

namespace swiftkv {

struct GenDataOptions {
    EngineOptions engine;                      // the teacher (model, device, context, batching)
    std::vector<std::string> prompt_files;
    std::vector<std::string> text_files;       // raw text copied through as {"text"} chunks
    std::string out;                           // JSON-lines output, appended to (resumed)
    PromptFormat format = PromptFormat::Auto;  // forced format of every prompt file
    int64_t limit = 0;                         // > 0: the first N prompts (text: chunks) of each file
    int64_t max_prompts = 0;                   // > 0: at most N prompts in all (after dedup and shuffle)
    bool shuffle = false;                      // shuffle the prompts (with `seed`) before max_prompts
    bool first_turn_only = false;              // answer only the first turn of multi-turn prompts
    uint64_t seed = 0;                         // prompt i (in the final order) samples with seed + i
    // Sampling; unset: the model's generation_config.json, else temperature 0.7, top_p 1 (0: greedy).
    std::optional<float> temperature, top_p, min_p, repetition_penalty;
    std::optional<int32_t> top_k;
    int64_t max_tokens = 1024;                 // per answer (per turn)
    int64_t text_chunk_tokens = 1024;
    bool quiet = false;                        // no progress bar or progress lines
};

// Runs gen-data; returns the process exit status: 0 when done, 130 when `stop` became non-zero
// (in-flight requests are aborted and not written; what is written stays, ready to resume).
// Throws swiftkv::Error for bad inputs (unreadable files, no format, duplicate file names, a model
// without a chat template).
int run_gen_data(const GenDataOptions& options, const std::atomic<int>& stop);

}  // namespace swiftkv
