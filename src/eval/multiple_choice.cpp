#include "eval/multiple_choice.h"

#include <chrono>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/eval_stats.h"

namespace swiftkv {

namespace {

constexpr size_t kMaxSkipMessages = 5;

// Python's str.isspace() set.
bool is_python_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

// The code point starting at s[i] and its length in bytes (a malformed byte counts as one non-space).
std::pair<uint32_t, size_t> code_point_at(const std::string& s, size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + len > s.size()) return {0xFFFD, 1};
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
        const auto cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) return {0xFFFD, 1};
        cp = (cp << 6) | (cc & 0x3F);
    }
    return {cp, len};
}

std::string json_string(const nlohmann::json& j) {
    if (j.is_string()) return j.get<std::string>();
    if (j.is_number_integer()) return std::to_string(j.get<int64_t>());
    return {};
}

std::string item_id(const nlohmann::json& doc, int64_t line) {
    for (const char* key : {"id", "qID"}) {
        if (doc.contains(key)) {
            const std::string s = json_string(doc[key]);
            if (!s.empty()) return s;
        }
    }
    return fmt::format("line{}", line);
}

bool is_str(const nlohmann::json& doc, const char* key) { return doc.contains(key) && doc[key].is_string(); }

// Parses one record; returns an empty string on success, else why the line is malformed.
std::string parse_arc(const nlohmann::json& doc, McItem& item) {
    std::string stem;
    std::vector<std::string> texts, labels;
    if (!doc.contains("question")) return "no \"question\"";
    const auto& q = doc["question"];
    if (q.is_object()) {  // AI2 release: {"stem", "choices": [{"text", "label"}]}
        if (!is_str(q, "stem")) return "question.stem is missing or not a string";
        stem = q["stem"].get<std::string>();
        if (!q.contains("choices") || !q["choices"].is_array()) return "question.choices is missing or not a list";
        for (const auto& c : q["choices"]) {
            if (!c.is_object() || !is_str(c, "text") || !c.contains("label")) return "a choice lacks text or label";
            texts.push_back(c["text"].get<std::string>());
            labels.push_back(json_string(c["label"]));
        }
    } else if (q.is_string()) {  // Hugging Face: {"question": str, "choices": {"text": [], "label": []}}
        stem = q.get<std::string>();
        if (!doc.contains("choices") || !doc["choices"].is_object()) return "choices is missing or not an object";
        const auto& c = doc["choices"];
        if (!c.contains("text") || !c["text"].is_array() || !c.contains("label") || !c["label"].is_array() ||
            c["text"].size() != c["label"].size()) {
            return "choices.text and choices.label must be lists of equal length";
        }
        for (size_t i = 0; i < c["text"].size(); ++i) {
            if (!c["text"][i].is_string()) return "a choice text is not a string";
            texts.push_back(c["text"][i].get<std::string>());
            labels.push_back(json_string(c["label"][i]));
        }
    } else {
        return "\"question\" is neither an object nor a string";
    }
    if (texts.size() < 2) return fmt::format("{} choice(s); at least 2 are needed", texts.size());
    if (!doc.contains("answerKey")) return "no \"answerKey\"";
    const std::string key = json_string(doc["answerKey"]);
    for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] == key && !key.empty()) item.gold = int(i);
    }
    if (item.gold < 0) return fmt::format("answerKey '{}' is not among the choice labels", key);
    const std::string context = "Question: " + stem + "\nAnswer:";
    for (const auto& t : texts) {
        item.contexts.push_back(context);
        item.continuations.push_back(" " + t);
        item.norm_lengths.push_back(code_point_count(t));
    }
    return {};
}

int parse_binary_label(const nlohmann::json& j, int base) {
    const std::string s = json_string(j);
    if (s == std::to_string(base)) return 0;
    if (s == std::to_string(base + 1)) return 1;
    return -1;
}

std::string parse_piqa(const nlohmann::json& doc, const std::string* label_line, McItem& item) {
    for (const char* key : {"goal", "sol1", "sol2"}) {
        if (!is_str(doc, key)) return fmt::format("\"{}\" is missing or not a string", key);
    }
    if (label_line != nullptr) {
        const std::string l = strip_whitespace(*label_line);
        item.gold = l == "0" ? 0 : l == "1" ? 1 : -1;
        if (item.gold < 0) return fmt::format("label '{}' is not 0 or 1", l);
    } else if (doc.contains("label")) {
        item.gold = parse_binary_label(doc["label"], 0);
        if (item.gold < 0) return "\"label\" is not 0 or 1";
    } else {
        return "no gold label (no labels file line and no \"label\" field)";
    }
    const std::string context = "Question: " + doc["goal"].get<std::string>() + "\nAnswer:";
    for (const char* key : {"sol1", "sol2"}) {
        const std::string sol = doc[key].get<std::string>();
        item.contexts.push_back(context);
        item.continuations.push_back(" " + sol);
        item.norm_lengths.push_back(code_point_count(sol));
    }
    return {};
}

std::string parse_winogrande(const nlohmann::json& doc, McItem& item) {
    for (const char* key : {"sentence", "option1", "option2"}) {
        if (!is_str(doc, key)) return fmt::format("\"{}\" is missing or not a string", key);
    }
    const std::string sentence = doc["sentence"].get<std::string>();
    const size_t blank = sentence.find('_');
    if (blank == std::string::npos) return "the sentence has no \"_\"";
    if (!doc.contains("answer")) return "no \"answer\"";
    item.gold = parse_binary_label(doc["answer"], 1);
    if (item.gold < 0) return "\"answer\" is not \"1\" or \"2\"";
    std::string target = " ";  // (built in two steps: GCC 12 warns falsely on " " + std::string)
    target += strip_whitespace(sentence.substr(blank + 1));
    for (const char* key : {"option1", "option2"}) {
        const std::string context = sentence.substr(0, blank) + doc[key].get<std::string>();
        item.contexts.push_back(context);
        item.continuations.push_back(target);
        item.norm_lengths.push_back(code_point_count(context));
    }
    return {};
}

McFormat detect_format(const nlohmann::json& doc) {
    if (doc.contains("question") && doc.contains("answerKey")) return McFormat::Arc;
    if (doc.contains("goal") && doc.contains("sol1")) return McFormat::Piqa;
    if (doc.contains("sentence") && doc.contains("option1")) return McFormat::Winogrande;
    return McFormat::Auto;
}

std::string default_labels_path(const std::string& path) {
    const std::string ext = ".jsonl";
    if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0) {
        return path.substr(0, path.size() - ext.size()) + "-labels.lst";
    }
    return path + "-labels.lst";
}

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(std::move(line));
    }
    return lines;
}

bool blank_line(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

}  // namespace

McFormat parse_mc_format(const std::string& name) {
    if (name == "auto") return McFormat::Auto;
    if (name == "arc") return McFormat::Arc;
    if (name == "piqa") return McFormat::Piqa;
    if (name == "winogrande") return McFormat::Winogrande;
    SKV_THROW("unknown multiple-choice format '{}' (expected auto, arc, piqa or winogrande)", name);
}

const char* mc_format_name(McFormat f) {
    switch (f) {
        case McFormat::Arc: return "arc";
        case McFormat::Piqa: return "piqa";
        case McFormat::Winogrande: return "winogrande";
        default: return "auto";
    }
}

std::string strip_whitespace(const std::string& s, bool left, bool right) {
    size_t b = 0, e = s.size();
    if (left) {
        while (b < e) {
            auto [cp, len] = code_point_at(s, b);
            if (!is_python_space(cp)) break;
            b += len;
        }
    }
    if (right) {
        while (e > b) {
            size_t start = e - 1;  // back up to the first byte of the last code point
            while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && e - start < 4) --start;
            auto [cp, len] = code_point_at(s, start);
            if (start + len != e || !is_python_space(cp)) break;
            e = start;
        }
    }
    return s.substr(b, e - b);
}

McDataset load_mc_dataset(const std::string& path, McFormat format, const std::string& labels_path, int64_t limit) {
    McDataset d;
    d.path = path;
    const std::vector<std::string> lines = read_lines(path);
    auto skip = [&](int64_t line, const std::string& why) {
        ++d.skipped;
        if (d.skip_messages.size() < kMaxSkipMessages) d.skip_messages.push_back(fmt::format("{}:{}: {}", path, line, why));
    };
    // Parse every non-empty line once; the format comes from the first object when auto.
    std::vector<std::pair<int64_t, nlohmann::json>> records;  // (1-based line, document or discarded)
    for (size_t i = 0; i < lines.size(); ++i) {
        if (blank_line(lines[i])) continue;
        records.emplace_back(int64_t(i) + 1, nlohmann::json::parse(lines[i], nullptr, false));
        if (format == McFormat::Auto && records.back().second.is_object()) {
            format = detect_format(records.back().second);
            SKV_CHECK(format != McFormat::Auto,
                      "{}:{}: cannot tell the multiple-choice format from the keys of this record; expected ARC "
                      "(question, answerKey), PIQA (goal, sol1, sol2) or Winogrande (sentence, option1, option2, "
                      "answer), or pass --format",
                      path, i + 1);
        }
    }
    SKV_CHECK(!records.empty(), "{} has no records", path);
    SKV_CHECK(format != McFormat::Auto, "{}: no line is a JSON object; cannot tell its format", path);
    d.format = format;

    std::vector<std::string> labels;
    bool use_labels = false;
    if (format == McFormat::Piqa) {
        d.labels_path = labels_path.empty() ? default_labels_path(path) : labels_path;
        std::ifstream probe(d.labels_path);
        if (probe.good()) {
            for (auto& l : read_lines(d.labels_path)) {
                if (!blank_line(l)) labels.push_back(l);
            }
            SKV_CHECK(labels.size() == records.size(), "the labels file {} has {} labels but {} has {} records",
                      d.labels_path, labels.size(), path, records.size());
            use_labels = true;
        } else {
            SKV_CHECK(labels_path.empty(), "cannot read the labels file '{}'", labels_path);
            SKV_CHECK(records.front().second.is_object() && records.front().second.contains("label"),
                      "{}: PIQA records carry no \"label\" and there is no labels file {}; pass --labels FILE", path,
                      d.labels_path);
            d.labels_path.clear();
        }
    } else {
        SKV_CHECK(labels_path.empty(), "--labels applies to PIQA files only (this file is {})", mc_format_name(format));
    }

    for (size_t r = 0; r < records.size(); ++r) {
        if (limit > 0 && int64_t(d.items.size()) >= limit) break;
        ++d.records;
        const auto& [line, doc] = records[r];
        if (doc.is_discarded()) {
            skip(line, "not valid JSON");
            continue;
        }
        if (!doc.is_object()) {
            skip(line, "not a JSON object");
            continue;
        }
        McItem item;
        std::string why;
        switch (format) {
            case McFormat::Arc: why = parse_arc(doc, item); break;
            case McFormat::Piqa: why = parse_piqa(doc, use_labels ? &labels[r] : nullptr, item); break;
            default: why = parse_winogrande(doc, item); break;
        }
        if (!why.empty()) {
            skip(line, why);
            continue;
        }
        item.id = item_id(doc, line);
        d.items.push_back(std::move(item));
    }
    return d;
}

EncodedPair encode_pair(const BpeTokenizer& tokenizer, const std::string& context, const std::string& continuation) {
    EncodedPair p;
    if (context.empty()) {
        const auto& spec = tokenizer.spec();
        const int32_t prefix = spec.bos_id >= 0 ? spec.bos_id : spec.eos_id;
        SKV_CHECK(prefix >= 0, "an empty context needs a BOS or EOS token, and this tokenizer has neither");
        p.context = {prefix};
        p.continuation = tokenizer.encode(continuation, true, true);
        return p;
    }
    const std::string ctx = strip_whitespace(context, false, true);
    const std::string cont = context.substr(ctx.size()) + continuation;
    const std::vector<int32_t> whole = tokenizer.encode(ctx + cont, true, true);
    p.context = tokenizer.encode(ctx, true, true);
    if (whole.size() > p.context.size()) p.continuation.assign(whole.begin() + int64_t(p.context.size()), whole.end());
    return p;
}

McResult evaluate_multiple_choice(LlamaModel& model, const BpeTokenizer& tokenizer, const McDataset& data,
                                  const McOptions& options) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t max_length = options.max_length > 0 ? options.max_length : model.config().max_position;
    SKV_CHECK(max_length >= 2, "the longest model input must be at least 2 tokens, got {}", max_length);
    McResult res;

    // Every (item, choice) becomes one scoring request; the continuation tokens stay on the side.
    struct Pending {
        size_t item, choice;
        std::vector<int32_t> continuation;
        int64_t context_tokens;
    };
    std::vector<ScoreRequest> requests;
    std::vector<Pending> pending;
    std::vector<size_t> kept_items;
    for (size_t i = 0; i < data.items.size(); ++i) {
        const McItem& item = data.items[i];
        std::vector<ScoreRequest> reqs;
        std::vector<Pending> pend;
        std::string why;
        for (size_t c = 0; c < item.contexts.size() && why.empty(); ++c) {
            EncodedPair e = encode_pair(tokenizer, item.contexts[c], item.continuations[c]);
            if (e.continuation.empty()) {
                why = fmt::format("choice {} tokenizes to no continuation tokens", c);
            } else if (e.context.empty()) {
                why = fmt::format("choice {}: the context tokenizes to nothing", c);
            } else if (int64_t(e.continuation.size()) > max_length) {
                why = fmt::format("choice {}: the continuation has {} tokens, more than the context of {}", c,
                                  e.continuation.size(), max_length);
            }
            if (!why.empty()) break;
            // lm-eval: (context + continuation)[-(max_length + 1):][:-1].
            std::vector<int32_t> all = e.context;
            all.insert(all.end(), e.continuation.begin(), e.continuation.end());
            if (int64_t(all.size()) > max_length + 1) all.erase(all.begin(), all.end() - (max_length + 1));
            all.pop_back();
            ScoreRequest r;
            r.first_row = int32_t(all.size() - e.continuation.size());
            r.tokens = std::move(all);
            reqs.push_back(std::move(r));
            pend.push_back({res.items.size(), c, std::move(e.continuation), int64_t(e.context.size())});
        }
        if (!why.empty()) {
            ++res.skipped_items;
            if (res.skip_messages.size() < kMaxSkipMessages) res.skip_messages.push_back("item " + item.id + ": " + why);
            continue;
        }
        McItemResult ir;
        ir.id = item.id;
        ir.gold = item.gold;
        ir.choices.resize(item.contexts.size());
        res.items.push_back(std::move(ir));
        kept_items.push_back(i);
        for (auto& r : reqs) requests.push_back(std::move(r));
        for (auto& p : pend) pending.push_back(std::move(p));
    }
    res.requests = int64_t(requests.size());

    BatchScorer scorer(model, options.scorer);
    const int64_t V = model.config().vocab;
    // Score a slice of requests at a time so that progress can be reported; slices end at item boundaries.
    constexpr size_t kSlice = 512;
    size_t begin = 0;
    while (begin < requests.size()) {
        size_t end = std::min(requests.size(), begin + kSlice);
        while (end < requests.size() && pending[end].item == pending[end - 1].item) ++end;
        std::vector<ScoreRequest> slice(std::make_move_iterator(requests.begin() + int64_t(begin)),
                                        std::make_move_iterator(requests.begin() + int64_t(end)));
        scorer.score(slice, [&](size_t k, const float* logits, int64_t rows) {
            const Pending& p = pending[begin + k];
            McChoiceResult& cr = res.items[p.item].choices[p.choice];
            double sum = 0;
            bool greedy = true;
            for (int64_t j = 0; j < rows; ++j) {
                const float* row = logits + j * V;
                const int32_t target = p.continuation[size_t(j)];
                sum += double(row[target]) - row_log_sum_exp(row, V);
                greedy = greedy && row_argmax(row, V) == target;
            }
            cr.loglik = sum;
            cr.is_greedy = greedy;
            cr.context_tokens = p.context_tokens;
            cr.continuation_tokens = rows;
        });
        begin = end;
        if (options.on_progress) options.on_progress(int64_t(pending[end - 1].item) + 1, int64_t(res.items.size()));
    }

    std::vector<double> acc, acc_norm;
    for (size_t k = 0; k < res.items.size(); ++k) {
        McItemResult& ir = res.items[k];
        const McItem& item = data.items[kept_items[k]];
        for (size_t c = 0; c < ir.choices.size(); ++c) {
            const double ll = ir.choices[c].loglik;
            const double norm = ll / double(std::max<int64_t>(1, item.norm_lengths[c]));
            if (ir.pred < 0 || ll > ir.choices[size_t(ir.pred)].loglik) ir.pred = int(c);
            if (ir.pred_norm < 0 ||
                norm > ir.choices[size_t(ir.pred_norm)].loglik /
                           double(std::max<int64_t>(1, item.norm_lengths[size_t(ir.pred_norm)]))) {
                ir.pred_norm = int(c);
            }
        }
        acc.push_back(ir.pred == ir.gold ? 1.0 : 0.0);
        acc_norm.push_back(ir.pred_norm == ir.gold ? 1.0 : 0.0);
    }
    const MeanStderr a = mean_stderr(acc), an = mean_stderr(acc_norm);
    res.acc = a.mean;
    res.acc_stderr = a.stderr_;
    res.acc_norm = an.mean;
    res.acc_norm_stderr = an.stderr_;
    res.tokens_processed = scorer.tokens_processed();
    res.forward_seconds = scorer.forward_seconds();
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
}

}  // namespace swiftkv
