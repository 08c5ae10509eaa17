// Prompt sets — readers for the instruction/chat prompt files a teacher answers to make distillation
// data (swiftkv gen-data), and the raw-text chunker that mixes plain text in. Only prompt fields are
// read; reference or example answers in the files ("output", "answer", "reference", instances'
// "output") are never used.
//
// Formats (one per file, auto-detected from the first usable record, or forced):
//   messages     {"messages": [{"role", "content"}...]}: the teacher answers after the last user
//                message (what precedes it is kept as context; trailing assistant turns are dropped);
//                ShareGPT {"conversations": [{"from", "value"}...]} too
//   turns        {"turns": [str | {"content": str}...]}: user turns answered one after the other
//                (MT-bench: 2 turns; Vicuna bench; the arena-hard variant with {"content"} turns)
//   prompt       {"prompt": str} (arena-hard v0.1)
//   instruction  {"instruction" | "Instruction", "input"?, "instances"?: [{"input"}]}: the input (else
//                instances[0].input) appended after a blank line when non-empty (AlpacaEval, self-instruct,
//                WizardLM, Alpaca-style files)
//   question     {"question": str} (GSM8K)
//   data         {"data": str | [str...]}: the string, or the list's first (user) entry (UltraChat)
//   string       the record is a JSON string (OpenAssistant prompt lottery)
// A file is JSON lines, or one JSON array of records when its first non-blank byte is '['. Records
// that do not fit the format (bad JSON, missing or empty fields) are skipped and counted, never fatal.
// Prompt text is stripped of leading and trailing whitespace.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace swiftkv {

enum class PromptFormat { Auto, Messages, Turns, Prompt, Instruction, Question, Data, String };
// "auto", "messages", "turns", "prompt", "instruction", "question", "data", "string"; throws
// swiftkv::Error on anything else.
PromptFormat parse_prompt_format(const std::string& name);
const char* prompt_format_name(PromptFormat format);

struct PromptRecord {
    std::string id;          // "<source>:<index>": stable across runs (resuming relies on it)
    std::string source;      // the file's name (no directory)
    int64_t index = 0;       // the record's position in its file, 0-based, malformed records counted
    // Messages before the first turn to answer ({"role", "content"} objects: a system message, earlier
    // turns of a "messages" record); usually empty.
    nlohmann::json context = nlohmann::json::array();
    std::vector<std::string> turns;  // user messages the teacher answers in order (at least one)
};

// The same prompt (same context, same turns) gives the same key.
std::string prompt_key(const PromptRecord& record);

struct PromptSet {
    std::string path, source;
    PromptFormat format = PromptFormat::Auto;  // the format read (never Auto once loaded)
    std::vector<PromptRecord> records;
    int64_t records_read = 0;                  // records looked at (JSON lines: non-blank lines)
    int64_t skipped = 0;                       // of them, malformed ones skipped
    std::vector<std::string> skip_messages;    // the first few reasons, "FILE:LINE: why"
    int64_t duplicates = 0;                    // dropped by remove_duplicate_prompts
};

struct PromptSetOptions {
    PromptFormat format = PromptFormat::Auto;
    int64_t limit = 0;             // > 0: keep the first `limit` prompts of the file
    bool first_turn_only = false;  // "turns" records: answer the first turn only
};

// Reads one prompt file. Throws swiftkv::Error when the file cannot be read, a JSON array file does
// not parse, or (Auto) no record fits any format.
PromptSet load_prompt_set(const std::string& path, const PromptSetOptions& options = {});

// Drops records whose prompt_key appeared earlier (in an earlier set, or earlier in the same set),
// counting them in each set's `duplicates`; returns the number dropped.
int64_t remove_duplicate_prompts(std::vector<PromptSet>& sets);

// Raw text cut into chunks of about `target_tokens` tokens for language-model data. Chunks end at
// blank lines (lines empty or all whitespace) where possible: paragraphs are packed greedily while
// the sum of their token counts stays within the target; a paragraph longer than the target is cut
// at line ends, a line longer than that at spaces. Each chunk is an exact substring of the text
// without leading or trailing blank lines. count_tokens gives the token count of a piece of text.
struct TextChunk {
    std::string text;
    int64_t tokens = 0;  // the sum of its pieces' counts (approximately the chunk's own count)
};
std::vector<TextChunk> split_text_chunks(std::string_view text, int64_t target_tokens,
                                         const std::function<int64_t(std::string_view)>& count_tokens);

}  // namespace swiftkv
