// Distillation data: reading --data files into token documents with an assistant mask, and packing them
// into fixed-length rows in a reproducible order (DESIGN.md section 1: "1 epoch" over the data; issue 6).
//
// File kinds, by extension:
//   .jsonl  one record per line; .json: a JSON array of records. A record is
//           - a chat: {"messages": [{"role": ..., "content": ...}, ...]} (roles system/user/assistant/tool),
//             rendered with the model's own chat template;
//           - an instruction pair: {"prompt" | "instruction" | "question" [, "input"], "response" | "output" |
//             "answer" | "completion"} (optional "system"), rendered as a user/assistant chat; without an
//             answer, a user-only chat;
//           - {"turns": ["...", ...]} (MT-bench style user turns) or a bare JSON string: user-only chats;
//           - {"text": "..."}: plain text;
//           - {"input_ids": [ids...] [, "assistant_mask": [0|1...]]}: pre-tokenized, taken as given (no BOS
//             added; ids outside the vocabulary make the record malformed).
//           Anything else (bad JSON, missing or mistyped fields, a template error, no tokens) is a malformed
//           line: skipped and counted, never silently (the first few are kept with file:line and why).
//   .txt, .raw, .text, .md   plain text, tokenized whole and cut into pieces of seq_len tokens.
// Documents longer than seq_len are cut into pieces of seq_len tokens.
//
// Assistant mask: token t of a chat is an assistant token when it belongs to an assistant message's
// content as the template renders it (from after the assistant header to the end of the turn, the
// end-of-turn token included). Found by rendering the conversation prefix by prefix; a template whose
// renders are not prefixes of each other leaves the record unmasked (counted).
//
// Packing (PackedStream): epoch e lays the documents end to end in a shuffled order that is a pure function
// of (seed, e) and cuts the stream into rows of seq_len tokens (the last partial row of an epoch is dropped).
// A document that crosses a row boundary continues in the next row as a new segment starting at position
// 0; attention never crosses segments. Row r of a run is row r mod rows_per_epoch of epoch r div
// rows_per_epoch, so a run is reproducible from the row cursor alone (what a checkpoint stores).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/distill_model.h"

namespace swiftkv {

// Tokenization and chat rendering, supplied by the caller (the CLI builds them from the model's tokenizer
// and chat template; train/ itself does not load tokenizers).
struct DistillTextCodec {
    // Text to token ids; add_bos: prepend BOS when the tokenizer does so for plain text. Special tokens
    // written in the text (e.g. <|im_start|>) must be recognised.
    std::function<std::vector<int32_t>(const std::string& text, bool add_bos)> encode;
    // Renders {"role", "content"} messages with the model's chat template; empty when it has none.
    std::function<std::string(const nlohmann::json& messages, bool add_generation_prompt)> render_chat;
    // Vocabulary size for checking pre-tokenized records (0: unchecked).
    int64_t vocab = 0;
};

struct DistillDocument {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> assistant;  // per token: 1 inside an assistant message's rendered content
};

struct DataFileStats {
    std::string path;
    std::string kind;        // "jsonl", "json" or "text"
    int64_t records = 0;     // records read (lines that are not blank; array items)
    int64_t documents = 0;   // documents produced (after cutting to seq_len)
    int64_t tokens = 0;
    int64_t malformed = 0;   // records skipped
};

struct DistillCorpus {
    std::vector<DistillDocument> documents;  // each at most seq_len tokens, in file order
    std::vector<DataFileStats> files;
    int64_t tokens = 0;
    int64_t assistant_tokens = 0;
    int64_t malformed = 0;
    std::vector<std::string> malformed_examples;  // "file:line: why", the first 10
    int64_t unmasked_chats = 0;  // chats whose template renders are not prefix-stable (no assistant mask)
    int64_t seq_len = 0;
    uint64_t fingerprint = 0;    // of every document's tokens and mask, and seq_len
};

// Reads every file. Throws swiftkv::Error for a missing or unreadable file, an unknown extension, chat
// records when the model has no chat template, or when nothing usable is left.
DistillCorpus load_distill_corpus(const std::vector<std::string>& files, const DistillTextCodec& codec,
                                  int64_t seq_len);

// Which rows' loss terms count: every row, or rows whose next token is an assistant token.
enum class LossMask { AllTokens, Assistant };

class PackedStream {
public:
    PackedStream(const DistillCorpus& corpus, uint64_t seed);
    int64_t seq_len() const { return seq_len_; }
    int64_t rows_per_epoch() const { return rows_per_epoch_; }
    // Appends the run's row `row` to batch as segments, with raw row weights (1 for a row whose loss counts,
    // else 0): the caller scales them to a mean.
    void append_row(int64_t row, LossMask mask, PackedBatch& batch);

private:
    void prepare_epoch(int64_t epoch);

    const DistillCorpus& corpus_;
    uint64_t seed_;
    int64_t seq_len_;
    int64_t total_tokens_ = 0;
    int64_t rows_per_epoch_ = 0;
    int64_t epoch_ = -1;
    std::vector<int32_t> order_;    // document indices in this epoch's order
    std::vector<int64_t> starts_;   // stream offset of each document in that order, plus the end
};

// A 64-bit FNV-1a step over bytes (shared by the data and checkpoint fingerprints).
uint64_t fnv1a64(const void* data, size_t bytes, uint64_t hash = 1469598103934665603ull);

}  // namespace swiftkv
