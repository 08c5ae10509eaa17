// Prompt-set readers and the raw-text chunker (see prompt_sets.h).
#include "io/prompt_sets.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>
#include <utility>

#include "core/error.h"

namespace swiftkv {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxSkipMessages = 5;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && is_space(s[b])) ++b;
    while (e > b && is_space(s[e - 1])) --e;
    return std::string(s.substr(b, e - b));
}

bool blank(std::string_view s) {
    for (char c : s) {
        if (!is_space(c)) return false;
    }
    return true;
}

const json* field(const json& doc, const char* key) {
    if (!doc.is_object()) return nullptr;
    auto it = doc.find(key);
    return it == doc.end() ? nullptr : &*it;
}

bool has_string(const json& doc, const char* key) {
    const json* f = field(doc, key);
    return f != nullptr && f->is_string();
}

bool has_array(const json& doc, const char* key) {
    const json* f = field(doc, key);
    return f != nullptr && f->is_array();
}

std::string keys_of(const json& doc) {
    if (!doc.is_object()) return doc.type_name();
    std::string s;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        if (!s.empty()) s += ", ";
        s += it.key();
    }
    return s.empty() ? "no keys" : s;
}

// The format a record fits, or Auto when none does.
PromptFormat detect(const json& doc) {
    if (doc.is_string()) return PromptFormat::String;
    if (!doc.is_object()) return PromptFormat::Auto;
    if (has_array(doc, "messages") || has_array(doc, "conversations")) return PromptFormat::Messages;
    if (has_array(doc, "turns")) return PromptFormat::Turns;
    if (has_string(doc, "prompt")) return PromptFormat::Prompt;
    if (has_string(doc, "instruction") || has_string(doc, "Instruction")) return PromptFormat::Instruction;
    if (has_string(doc, "question")) return PromptFormat::Question;
    if (const json* d = field(doc, "data"); d != nullptr && (d->is_string() || d->is_array()))
        return PromptFormat::Data;
    return PromptFormat::Auto;
}

// Message content: a string, or OpenAI-style parts [{"type": "text", "text"}...] joined.
bool content_text(const json& c, std::string& out) {
    if (c.is_string()) {
        out = c.get<std::string>();
        return true;
    }
    if (!c.is_array()) return false;
    out.clear();
    for (const json& part : c) {
        if (!part.is_object() || !has_string(part, "text")) return false;
        if (const json* t = field(part, "type"); t != nullptr && (!t->is_string() || *t != "text")) return false;
        out += part["text"].get<std::string>();
    }
    return true;
}

std::string role_of(const json& m) {
    if (const json* r = field(m, "role"); r != nullptr && r->is_string()) return r->get<std::string>();
    if (const json* f = field(m, "from"); f != nullptr && f->is_string()) {  // ShareGPT
        const std::string from = f->get<std::string>();
        if (from == "human" || from == "user") return "user";
        if (from == "gpt" || from == "assistant" || from == "chatgpt" || from == "bard" || from == "bing") return "assistant";
        if (from == "system") return "system";
        return from;
    }
    return {};
}

std::string parse_messages(const json& doc, PromptRecord& r) {
    const bool sharegpt = !has_array(doc, "messages");
    const json* msgs = field(doc, sharegpt ? "conversations" : "messages");
    if (msgs == nullptr || !msgs->is_array()) return "\"messages\" is missing or not a list";
    json list = json::array();
    int64_t last_user = -1;
    for (const json& m : *msgs) {
        if (!m.is_object()) return "a message is not a JSON object";
        const std::string role = role_of(m);
        if (role != "system" && role != "user" && role != "assistant")
            return role.empty() ? "a message has no \"role\"" : fmt::format("unknown message role '{}'", role);
        const json* c = field(m, sharegpt ? "value" : "content");
        std::string text;
        if (c == nullptr || !content_text(*c, text)) return "a message has no text \"content\"";
        if (role == "user") last_user = int64_t(list.size());
        list.push_back({{"role", role}, {"content", std::move(text)}});
    }
    if (last_user < 0) return "no user message";
    const std::string question = strip(list[size_t(last_user)]["content"].get<std::string>());
    if (question.empty()) return "the last user message is empty";
    for (int64_t i = 0; i < last_user; ++i) r.context.push_back(list[size_t(i)]);
    r.turns = {question};
    return {};
}

std::string parse_turns(const json& doc, bool first_only, PromptRecord& r) {
    const json* turns = field(doc, "turns");
    if (turns == nullptr || !turns->is_array() || turns->empty()) return "\"turns\" is missing, not a list or empty";
    for (const json& t : *turns) {
        std::string text;
        if (t.is_string()) {
            text = t.get<std::string>();
        } else if (const json* c = field(t, "content"); c != nullptr && content_text(*c, text)) {
        } else {
            return "a turn is neither a string nor {\"content\": string}";
        }
        text = strip(text);
        if (text.empty()) return "a turn is empty";
        r.turns.push_back(std::move(text));
        if (first_only) break;
    }
    return {};
}

std::string parse_single(const json& doc, const char* key, PromptRecord& r) {
    if (!has_string(doc, key)) return fmt::format("\"{}\" is missing or not a string", key);
    std::string text = strip(doc[key].get<std::string>());
    if (text.empty()) return fmt::format("\"{}\" is empty", key);
    r.turns = {std::move(text)};
    return {};
}

std::string parse_instruction(const json& doc, PromptRecord& r) {
    const char* key = has_string(doc, "instruction") ? "instruction" : "Instruction";
    if (!has_string(doc, key)) return "\"instruction\" is missing or not a string";
    std::string text = doc[key].get<std::string>();
    std::string input;
    if (const json* in = field(doc, "input"); in != nullptr && !in->is_null()) {
        if (!in->is_string()) return "\"input\" is not a string";
        input = in->get<std::string>();
    } else if (const json* inst = field(doc, "instances"); inst != nullptr && inst->is_array() && !inst->empty()) {
        const json* in0 = field((*inst)[0], "input");
        if (in0 != nullptr && !in0->is_null()) {
            if (!in0->is_string()) return "\"instances\"[0].input is not a string";
            input = in0->get<std::string>();
        }
    }
    // As AlpacaEval built its self-instruct prompts: instruction, blank line, input.
    if (!blank(input)) text += "\n\n" + input;
    text = strip(text);
    if (text.empty()) return "the instruction is empty";
    r.turns = {std::move(text)};
    return {};
}

std::string parse_data(const json& doc, PromptRecord& r) {
    const json* d = field(doc, "data");
    if (d == nullptr) return "\"data\" is missing";
    // A list alternates user and assistant turns; only the first (user) one is a prompt.
    const json* first = d->is_array() ? (d->empty() ? nullptr : &(*d)[0]) : d;
    if (first == nullptr || !first->is_string()) return "\"data\" is neither a string nor a list starting with one";
    std::string text = strip(first->get<std::string>());
    if (text.empty()) return "\"data\" is empty";
    r.turns = {std::move(text)};
    return {};
}

std::string parse_record(const json& doc, PromptFormat format, bool first_turn_only, PromptRecord& r) {
    switch (format) {
        case PromptFormat::String: {
            if (!doc.is_string()) return "not a JSON string";
            std::string text = strip(doc.get<std::string>());
            if (text.empty()) return "the prompt is empty";
            r.turns = {std::move(text)};
            return {};
        }
        case PromptFormat::Messages: return doc.is_object() ? parse_messages(doc, r) : "not a JSON object";
        case PromptFormat::Turns: return doc.is_object() ? parse_turns(doc, first_turn_only, r) : "not a JSON object";
        case PromptFormat::Prompt: return parse_single(doc, "prompt", r);
        case PromptFormat::Instruction: return parse_instruction(doc, r);
        case PromptFormat::Question: return parse_single(doc, "question", r);
        case PromptFormat::Data: return parse_data(doc, r);
        case PromptFormat::Auto: break;
    }
    return "no format";
}

std::string read_file(const std::string& path) {
    SKV_CHECK(!std::filesystem::is_directory(path), "cannot read '{}': it is a directory", path);
    std::ifstream in(path, std::ios::binary);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

PromptFormat parse_prompt_format(const std::string& name) {
    for (PromptFormat f : {PromptFormat::Auto, PromptFormat::Messages, PromptFormat::Turns, PromptFormat::Prompt,
                           PromptFormat::Instruction, PromptFormat::Question, PromptFormat::Data, PromptFormat::String}) {
        if (name == prompt_format_name(f)) return f;
    }
    SKV_THROW("unknown prompt format '{}'; expected auto, messages, turns, prompt, instruction, question, data or string",
              name);
}

const char* prompt_format_name(PromptFormat format) {
    switch (format) {
        case PromptFormat::Auto: return "auto";
        case PromptFormat::Messages: return "messages";
        case PromptFormat::Turns: return "turns";
        case PromptFormat::Prompt: return "prompt";
        case PromptFormat::Instruction: return "instruction";
        case PromptFormat::Question: return "question";
        case PromptFormat::Data: return "data";
        case PromptFormat::String: return "string";
    }
    return "?";
}

std::string prompt_key(const PromptRecord& record) {
    std::string key = record.context.dump(-1, ' ', false, json::error_handler_t::replace);
    for (const std::string& t : record.turns) {
        key += '\x1e';
        key += t;
    }
    return key;
}

PromptSet load_prompt_set(const std::string& path, const PromptSetOptions& options) {
    PromptSet set;
    set.path = path;
    set.source = std::filesystem::path(path).filename().string();
    const std::string text = read_file(path);

    // Records with their place: (where, for messages; document).
    std::vector<std::pair<std::string, json>> records;
    size_t first = 0;
    while (first < text.size() && is_space(text[first])) ++first;
    if (first < text.size() && text[first] == '[') {
        json doc;
        try {
            doc = json::parse(text);
        } catch (const json::exception& e) {
            SKV_THROW("{}: the file starts with '[' but is not a valid JSON array: {}", path, e.what());
        }
        SKV_CHECK(doc.is_array(), "{}: not a JSON array", path);
        for (size_t i = 0; i < doc.size(); ++i) records.emplace_back(fmt::format("{}: record {}", path, i + 1), std::move(doc[i]));
    } else {
        size_t pos = 0;
        int64_t line_no = 0;
        while (pos < text.size()) {
            size_t end = text.find('\n', pos);
            if (end == std::string::npos) end = text.size();
            std::string_view line(text.data() + pos, end - pos);
            ++line_no;
            pos = end + 1;
            if (blank(line)) continue;
            records.emplace_back(fmt::format("{}:{}", path, line_no), json::parse(line, nullptr, false));
        }
    }
    SKV_CHECK(!records.empty(), "{} has no records", path);

    PromptFormat format = options.format;
    if (format == PromptFormat::Auto) {
        for (const auto& [where, doc] : records) {
            if (!doc.is_discarded() && (format = detect(doc)) != PromptFormat::Auto) break;
        }
        if (format == PromptFormat::Auto) {
            const json* example = nullptr;
            for (const auto& [where, doc] : records) {
                if (!doc.is_discarded()) {
                    example = &doc;
                    break;
                }
            }
            SKV_CHECK(example != nullptr, "{}: no record is valid JSON", path);
            SKV_THROW("{}: cannot tell the prompt format (the first record has {}); expected records with \"messages\", "
                      "\"conversations\", \"turns\", \"prompt\", \"instruction\", \"question\" or \"data\", or JSON "
                      "strings; or pass --format",
                      path, keys_of(*example));
        }
    }
    set.format = format;

    for (size_t i = 0; i < records.size(); ++i) {
        if (options.limit > 0 && int64_t(set.records.size()) >= options.limit) break;
        ++set.records_read;
        const auto& [where, doc] = records[i];
        std::string why;
        PromptRecord r;
        if (doc.is_discarded()) {
            why = "not valid JSON";
        } else {
            why = parse_record(doc, format, options.first_turn_only, r);
        }
        if (!why.empty()) {
            ++set.skipped;
            if (set.skip_messages.size() < kMaxSkipMessages) set.skip_messages.push_back(fmt::format("{}: {}", where, why));
            continue;
        }
        r.source = set.source;
        r.index = int64_t(i);
        r.id = fmt::format("{}:{}", set.source, i);
        set.records.push_back(std::move(r));
    }
    return set;
}

int64_t remove_duplicate_prompts(std::vector<PromptSet>& sets) {
    std::unordered_set<std::string> seen;
    int64_t dropped = 0;
    for (PromptSet& s : sets) {
        std::vector<PromptRecord> kept;
        kept.reserve(s.records.size());
        for (PromptRecord& r : s.records) {
            if (seen.insert(prompt_key(r)).second) {
                kept.push_back(std::move(r));
            } else {
                ++s.duplicates;
                ++dropped;
            }
        }
        s.records = std::move(kept);
    }
    return dropped;
}

std::vector<TextChunk> split_text_chunks(std::string_view text, int64_t target_tokens,
                                         const std::function<int64_t(std::string_view)>& count_tokens) {
    SKV_CHECK(target_tokens > 0, "the text chunk size must be positive, got {}", target_tokens);
    struct Piece {
        size_t begin = 0, end = 0;
        int64_t tokens = 0;
    };
    auto view = [&](size_t b, size_t e) { return text.substr(b, e - b); };

    // Lines (without their '\n'), grouped into paragraphs at blank lines.
    std::vector<std::vector<Piece>> paragraphs;
    bool in_paragraph = false;
    for (size_t pos = 0; pos < text.size();) {
        size_t end = text.find('\n', pos);
        if (end == std::string_view::npos) end = text.size();
        if (blank(view(pos, end))) {
            in_paragraph = false;
        } else {
            if (!in_paragraph) paragraphs.emplace_back();
            in_paragraph = true;
            paragraphs.back().push_back({pos, end, 0});
        }
        pos = end + 1;
    }

    // Cuts a line longer than the target at spaces (else at a UTF-8 character boundary).
    auto split_line = [&](const Piece& line, std::vector<Piece>& out) {
        const double bytes_per_token = double(line.end - line.begin) / double(std::max<int64_t>(line.tokens, 1));
        const size_t step = std::max<size_t>(size_t(double(target_tokens) * bytes_per_token * 0.9), 1);
        size_t pos = line.begin;
        while (pos < line.end) {
            size_t cut = pos + step, next = cut;
            if (cut >= line.end) {
                cut = next = line.end;
            } else {
                size_t sp = text.rfind(' ', cut);
                if (sp != std::string_view::npos && sp > pos) {
                    cut = sp;
                    next = sp + 1;
                } else {
                    while (cut > pos + 1 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
                    next = cut;
                }
            }
            if (!blank(view(pos, cut))) out.push_back({pos, cut, count_tokens(view(pos, cut))});
            pos = next;
        }
    };

    std::vector<Piece> pieces;
    for (const auto& lines : paragraphs) {
        Piece para{lines.front().begin, lines.back().end, 0};
        para.tokens = count_tokens(view(para.begin, para.end));
        if (para.tokens <= target_tokens) {
            pieces.push_back(para);
            continue;
        }
        for (Piece line : lines) {
            line.tokens = count_tokens(view(line.begin, line.end));
            if (line.tokens <= target_tokens) {
                pieces.push_back(line);
            } else {
                split_line(line, pieces);
            }
        }
    }

    std::vector<TextChunk> chunks;
    size_t chunk_begin = 0, chunk_end = 0;
    int64_t chunk_tokens = 0;
    bool open = false;
    auto emit = [&] {
        if (open) chunks.push_back({std::string(view(chunk_begin, chunk_end)), chunk_tokens});
        open = false;
        chunk_tokens = 0;
    };
    for (const Piece& p : pieces) {
        if (open && chunk_tokens + p.tokens > target_tokens) emit();
        if (!open) {
            chunk_begin = p.begin;
            open = true;
        }
        chunk_end = p.end;
        chunk_tokens += p.tokens;
    }
    emit();
    return chunks;
}

}  // namespace swiftkv
