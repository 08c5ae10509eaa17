// Multiple-choice evaluation by log-likelihood, the way lm-eval (EleutherAI lm-evaluation-harness)
// scores its standard zero-shot tasks, so that accuracies can be compared with it:
//  - ARC (arc_easy / arc_challenge): context "Question: {stem}\nAnswer:", continuation " {choice}";
//  - PIQA: context "Question: {goal}\nAnswer:", continuation " {sol}";
//  - Winogrande (partial scoring): for each option the context is the sentence up to "_" with the
//    option put in, the continuation " " + the rest of the sentence after "_", stripped;
//  - each (context, continuation) is tokenized as TemplateLM._encode_pair does: trailing whitespace of
//    the context moves to the front of the continuation; whole = encode(context + continuation),
//    context tokens = encode(context), continuation tokens = whole[len(context tokens):]; encode adds
//    BOS only when the tokenizer adds one by default (SmolLM2's does not); an empty context becomes
//    the BOS (else EOS) token; inputs longer than the context keep their last max_length+1 tokens;
//  - the score of a choice is the sum of its continuation tokens' log-probabilities; acc = argmax of
//    the sums, acc_norm = argmax of sum / len(choice), len in Unicode code points of lm-eval's choice
//    string (Python len(str)): the choice text for ARC and PIQA, the filled-in context for Winogrande
//    (whose lm-eval task reports acc only); ties go to the lowest index (numpy argmax);
//  - standard errors are lm-eval's: sample standard deviation / sqrt(n).
// Input files are JSON lines; a malformed line is skipped and counted, never fatal.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/batch_scorer.h"
#include "tokenizer/bpe_tokenizer.h"

namespace swiftkv {

enum class McFormat { Auto, Arc, Piqa, Winogrande };
// "auto", "arc", "piqa", "winogrande"; throws swiftkv::Error on anything else.
McFormat parse_mc_format(const std::string& name);
const char* mc_format_name(McFormat format);

struct McItem {
    std::string id;
    std::vector<std::string> contexts;       // one per choice
    std::vector<std::string> continuations;  // one per choice
    std::vector<int64_t> norm_lengths;       // acc_norm divisor per choice (code points of lm-eval's choice string)
    int gold = -1;
};

struct McDataset {
    McFormat format = McFormat::Auto;  // the format read (never Auto once loaded)
    std::string path, labels_path;
    std::vector<McItem> items;
    int64_t records = 0;                     // non-empty lines read
    int64_t skipped = 0;                     // of them, malformed ones skipped
    std::vector<std::string> skip_messages;  // the first few reasons, "FILE:LINE: why"
};

// Reads a JSON-lines file. ARC lines: {"id", "question": {"stem", "choices": [{"text", "label"}]},
// "answerKey"} (AI2's release; Hugging Face's flat {"question": str, "choices": {"text": [], "label": []}}
// too). PIQA lines: {"goal", "sol1", "sol2"} with gold labels from labels_path (one 0/1 per line, line i
// for record i; default: the sibling FILE-labels.lst of FILE.jsonl) or a "label" field. Winogrande lines:
// {"sentence" (with "_"), "option1", "option2", "answer": "1"|"2"}. Auto picks the format from the first
// record's keys. limit > 0 keeps the first `limit` items. Throws swiftkv::Error when the file (or the
// labels file) cannot be read or no format fits.
McDataset load_mc_dataset(const std::string& path, McFormat format = McFormat::Auto,
                          const std::string& labels_path = "", int64_t limit = 0);

// lm-eval's TemplateLM._encode_pair (see above).
struct EncodedPair {
    std::vector<int32_t> context, continuation;
};
EncodedPair encode_pair(const BpeTokenizer& tokenizer, const std::string& context, const std::string& continuation);

// Python's str.strip() / str.rstrip() whitespace (ASCII and the Unicode White_Space characters).
std::string strip_whitespace(const std::string& s, bool left = true, bool right = true);

struct McOptions {
    BatchScorerOptions scorer;
    int64_t max_length = 0;  // longest model input (lm-eval's max_length); 0: the model's context
    std::function<void(int64_t items_done, int64_t items_total)> on_progress;
};

struct McChoiceResult {
    double loglik = 0;
    bool is_greedy = false;  // every continuation token is the argmax of its position
    int64_t context_tokens = 0, continuation_tokens = 0;
};

struct McItemResult {
    std::string id;
    std::vector<McChoiceResult> choices;
    int pred = -1, pred_norm = -1, gold = -1;
};

struct McResult {
    std::vector<McItemResult> items;
    double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
    int64_t requests = 0;          // (context, continuation) pairs scored
    int64_t skipped_items = 0;     // items dropped because a choice tokenized to nothing
    std::vector<std::string> skip_messages;
    int64_t tokens_processed = 0;  // tokens run through the model
    double seconds = 0, forward_seconds = 0;
};

McResult evaluate_multiple_choice(LlamaModel& model, const BpeTokenizer& tokenizer, const McDataset& data,
                                  const McOptions& options);

}  // namespace swiftkv
