// Distillation data: file readers, chat rendering with the assistant mask, the reproducible packed
// stream. See distill_data.h for the formats and the packing rule.
#include "train/distill_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"

namespace swiftkv {

namespace fs = std::filesystem;

uint64_t fnv1a64(const void* data, size_t bytes, uint64_t hash) {
    const auto* b = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < bytes; ++i) hash = (hash ^ b[i]) * 1099511628211ull;
    return hash;
}

namespace {

constexpr size_t kMaxExamples = 10;

// A record that cannot be used: the reason goes into the malformed count and examples.
struct Malformed {
    std::string why;
};

std::string lower_extension(const std::string& path) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
    return ext;
}

const nlohmann::json* first_string_field(const nlohmann::json& rec, std::initializer_list<const char*> keys,
                                         const char** found = nullptr) {
    for (const char* k : keys) {
        auto it = rec.find(k);
        if (it != rec.end() && !it->is_null()) {
            if (!it->is_string()) throw Malformed{fmt::format("field \"{}\" is not a string", k)};
            if (found) *found = k;
            return &*it;
        }
    }
    return nullptr;
}

// A chat's tokens and assistant mask, rendered prefix by prefix (see the header).
void render_chat(const nlohmann::json& messages, const DistillTextCodec& codec, DistillDocument& doc, bool& unmasked) {
    std::vector<std::pair<std::string, uint8_t>> pieces;
    std::string prev;
    bool stable = true;
    auto render = [&](size_t n, bool gen) {
        try {
            return codec.render_chat(nlohmann::json(std::vector<nlohmann::json>(messages.begin(), messages.begin() + long(n))),
                                     gen);
        } catch (const Error& e) {
            throw Malformed{fmt::format("chat template error: {}", e.what())};
        }
    };
    for (size_t i = 0; i < messages.size() && stable; ++i) {
        const bool assistant = messages[i]["role"] == "assistant";
        if (assistant) {
            std::string header = render(i, true);
            if (header.compare(0, prev.size(), prev) != 0) {
                stable = false;
                break;
            }
            pieces.emplace_back(header.substr(prev.size()), 0);
            prev = std::move(header);
        }
        std::string full = render(i + 1, false);
        if (full.compare(0, prev.size(), prev) != 0) {
            stable = false;
            break;
        }
        pieces.emplace_back(full.substr(prev.size()), assistant ? 1 : 0);
        prev = std::move(full);
    }
    if (!stable) {
        unmasked = true;
        pieces.assign(1, {render(messages.size(), false), 0});
    }
    for (const auto& [text, mask] : pieces) {
        if (text.empty()) continue;
        const std::vector<int32_t> ids = codec.encode(text, false);
        doc.tokens.insert(doc.tokens.end(), ids.begin(), ids.end());
        doc.assistant.insert(doc.assistant.end(), ids.size(), mask);
    }
}

nlohmann::json message(const char* role, const std::string& content) { return {{"role", role}, {"content", content}}; }

// One JSON record to a document (throws Malformed).
DistillDocument record_to_document(const nlohmann::json& rec, const DistillTextCodec& codec, bool& unmasked) {
    DistillDocument doc;
    nlohmann::json messages = nlohmann::json::array();
    if (rec.is_string()) {
        messages.push_back(message("user", rec.get<std::string>()));
    } else if (!rec.is_object()) {
        throw Malformed{fmt::format("a record must be a JSON object or string, not {}", rec.type_name())};
    } else if (rec.contains("input_ids")) {
        // Pre-tokenized: the ids as given (no BOS added), an optional 0/1 assistant mask of the same length.
        const auto& ids = rec["input_ids"];
        if (!ids.is_array() || ids.empty()) throw Malformed{"\"input_ids\" must be a non-empty array of token ids"};
        doc.tokens.reserve(ids.size());
        for (const auto& v : ids) {
            if (!v.is_number_integer()) throw Malformed{"\"input_ids\" must hold integers"};
            const int64_t id = v.get<int64_t>();
            if (id < 0 || (codec.vocab > 0 && id >= codec.vocab))
                throw Malformed{fmt::format("token id {} is outside the vocabulary [0, {})", id, codec.vocab)};
            doc.tokens.push_back(int32_t(id));
        }
        doc.assistant.assign(doc.tokens.size(), 0);
        if (rec.contains("assistant_mask")) {
            const auto& m = rec["assistant_mask"];
            if (!m.is_array() || m.size() != ids.size())
                throw Malformed{"\"assistant_mask\" must be an array as long as \"input_ids\""};
            for (size_t i = 0; i < m.size(); ++i) {
                if (!m[i].is_number_integer() || (m[i].get<int64_t>() != 0 && m[i].get<int64_t>() != 1))
                    throw Malformed{"\"assistant_mask\" must hold 0 or 1"};
                doc.assistant[i] = uint8_t(m[i].get<int64_t>());
            }
        }
        return doc;
    } else if (rec.contains("messages")) {
        const auto& msgs = rec["messages"];
        if (!msgs.is_array() || msgs.empty()) throw Malformed{"\"messages\" must be a non-empty array"};
        for (size_t i = 0; i < msgs.size(); ++i) {
            const auto& m = msgs[i];
            if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
                !m["content"].is_string())
                throw Malformed{fmt::format("message {} needs string \"role\" and \"content\"", i)};
            const std::string role = m["role"].get<std::string>();
            if (role != "system" && role != "user" && role != "assistant" && role != "tool")
                throw Malformed{fmt::format("message {} has unknown role \"{}\"", i, role)};
            messages.push_back(message(role.c_str(), m["content"].get<std::string>()));
        }
    } else if (const nlohmann::json* prompt = first_string_field(rec, {"prompt", "instruction", "question"})) {
        std::string user = prompt->get<std::string>();
        if (const nlohmann::json* input = first_string_field(rec, {"input"}); input && !input->get<std::string>().empty())
            user += "\n\n" + input->get<std::string>();
        if (const nlohmann::json* sys = first_string_field(rec, {"system"})) messages.push_back(message("system", *sys));
        messages.push_back(message("user", user));
        if (const nlohmann::json* answer = first_string_field(rec, {"response", "output", "answer", "completion"}))
            messages.push_back(message("assistant", answer->get<std::string>()));
    } else if (rec.contains("turns")) {
        const auto& turns = rec["turns"];
        if (!turns.is_array() || turns.empty()) throw Malformed{"\"turns\" must be a non-empty array of strings"};
        for (const auto& t : turns) {
            if (!t.is_string()) throw Malformed{"\"turns\" must be a non-empty array of strings"};
            messages.push_back(message("user", t.get<std::string>()));
        }
    } else if (const nlohmann::json* text = first_string_field(rec, {"text"})) {
        if (text->get<std::string>().empty()) throw Malformed{"empty \"text\""};
        doc.tokens = codec.encode(text->get<std::string>(), true);
        doc.assistant.assign(doc.tokens.size(), 0);
        return doc;
    } else {
        throw Malformed{"no \"messages\", \"prompt\"/\"instruction\"/\"question\", \"turns\", \"text\" or \"input_ids\" field"};
    }
    if (!codec.render_chat) throw Error("chat records need the model's chat template, and this model has none");
    render_chat(messages, codec, doc, unmasked);
    if (doc.tokens.empty()) throw Malformed{"the record renders to no tokens"};
    return doc;
}

void add_document(DistillCorpus& corpus, DataFileStats& stats, DistillDocument&& doc) {
    const int64_t n = int64_t(doc.tokens.size());
    const int64_t S = corpus.seq_len;
    for (int64_t begin = 0; begin < n; begin += S) {
        const int64_t end = std::min(n, begin + S);
        DistillDocument piece;
        piece.tokens.assign(doc.tokens.begin() + begin, doc.tokens.begin() + end);
        piece.assistant.assign(doc.assistant.begin() + begin, doc.assistant.begin() + end);
        for (uint8_t a : piece.assistant) corpus.assistant_tokens += a;
        corpus.tokens += end - begin;
        stats.tokens += end - begin;
        stats.documents++;
        corpus.documents.push_back(std::move(piece));
    }
}

void note_malformed(DistillCorpus& corpus, DataFileStats& stats, const std::string& where, const std::string& why) {
    corpus.malformed++;
    stats.malformed++;
    if (corpus.malformed_examples.size() < kMaxExamples) corpus.malformed_examples.push_back(where + ": " + why);
}

void read_text_file(const std::string& path, const std::string& content, const DistillTextCodec& codec,
                    DistillCorpus& corpus, DataFileStats& stats) {
    // Tokenize in pieces of about 64 KB cut after a newline, so that no single call sees a huge string.
    DistillDocument doc;
    size_t pos = 0;
    bool first = true;
    while (pos < content.size()) {
        size_t end = std::min(content.size(), pos + (size_t(64) << 10));
        if (end < content.size()) {
            const size_t nl = content.rfind('\n', end);
            if (nl != std::string::npos && nl > pos) end = nl + 1;
        }
        const std::vector<int32_t> ids = codec.encode(content.substr(pos, end - pos), first);
        doc.tokens.insert(doc.tokens.end(), ids.begin(), ids.end());
        first = false;
        pos = end;
    }
    doc.assistant.assign(doc.tokens.size(), 0);
    stats.records = 1;
    if (doc.tokens.empty()) {
        note_malformed(corpus, stats, path, "the file holds no text");
        return;
    }
    add_document(corpus, stats, std::move(doc));
}

}  // namespace

DistillCorpus load_distill_corpus(const std::vector<std::string>& files, const DistillTextCodec& codec, int64_t seq_len) {
    SKV_CHECK(!files.empty(), "no data files given (--data FILE...)");
    SKV_CHECK(seq_len >= 2, "--seq-len {} is too short (at least 2 tokens)", seq_len);
    SKV_CHECK(codec.encode != nullptr, "distillation data needs a tokenizer");
    DistillCorpus corpus;
    corpus.seq_len = seq_len;
    for (const std::string& path : files) {
        std::error_code ec;
        SKV_CHECK(fs::is_regular_file(path, ec), "data file '{}' does not exist or is not a file", path);
        const std::string ext = lower_extension(path);
        DataFileStats stats;
        stats.path = path;
        std::ifstream in(path, std::ios::binary);
        SKV_CHECK(in.good(), "cannot read data file '{}'", path);
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string content = ss.str();
        auto one_record = [&](const nlohmann::json& rec, const std::string& where) {
            stats.records++;
            bool unmasked = false;
            try {
                DistillDocument doc = record_to_document(rec, codec, unmasked);
                add_document(corpus, stats, std::move(doc));
                if (unmasked) corpus.unmasked_chats++;
            } catch (const Malformed& m) {
                note_malformed(corpus, stats, where, m.why);
            }
        };
        if (ext == ".jsonl") {
            stats.kind = "jsonl";
            size_t pos = 0;
            int64_t line_no = 0;
            while (pos < content.size()) {
                size_t nl = content.find('\n', pos);
                if (nl == std::string::npos) nl = content.size();
                std::string line = content.substr(pos, nl - pos);
                pos = nl + 1;
                ++line_no;
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are not records
                const std::string where = fmt::format("{}:{}", path, line_no);
                nlohmann::json rec;
                try {
                    rec = nlohmann::json::parse(line);
                } catch (const nlohmann::json::exception& e) {
                    stats.records++;
                    note_malformed(corpus, stats, where, fmt::format("not valid JSON ({})", e.what()));
                    continue;
                }
                one_record(rec, where);
            }
        } else if (ext == ".json") {
            stats.kind = "json";
            nlohmann::json arr;
            try {
                arr = nlohmann::json::parse(content);
            } catch (const nlohmann::json::exception& e) {
                SKV_THROW("data file '{}' is not valid JSON ({}); use .jsonl for one record per line", path, e.what());
            }
            SKV_CHECK(arr.is_array(), "data file '{}' must hold a JSON array of records (or use .jsonl)", path);
            for (size_t i = 0; i < arr.size(); ++i) one_record(arr[i], fmt::format("{}[{}]", path, i));
        } else if (ext == ".txt" || ext == ".raw" || ext == ".text" || ext == ".md") {
            stats.kind = "text";
            read_text_file(path, content, codec, corpus, stats);
        } else {
            SKV_THROW("data file '{}': unknown kind '{}' (use .jsonl or .json records, or .txt/.raw/.text/.md text)",
                      path, ext);
        }
        corpus.files.push_back(stats);
    }
    SKV_CHECK(corpus.tokens > 0, "the data files hold no usable records ({} malformed{})", corpus.malformed,
              corpus.malformed_examples.empty() ? "" : "; first: " + corpus.malformed_examples.front());
    uint64_t h = fnv1a64(&seq_len, sizeof(seq_len));
    for (const DistillDocument& d : corpus.documents) {
        const uint64_t n = d.tokens.size();
        h = fnv1a64(&n, sizeof(n), h);
        h = fnv1a64(d.tokens.data(), d.tokens.size() * 4, h);
        h = fnv1a64(d.assistant.data(), d.assistant.size(), h);
    }
    corpus.fingerprint = h;
    return corpus;
}

// ---- packing ------------------------------------------------------------------------------------------------

namespace {

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

}  // namespace

PackedStream::PackedStream(const DistillCorpus& corpus, uint64_t seed)
    : corpus_(corpus), seed_(seed), seq_len_(corpus.seq_len), total_tokens_(corpus.tokens) {
    SKV_CHECK(seq_len_ >= 2, "packed stream: seq_len {} is too short", seq_len_);
    rows_per_epoch_ = total_tokens_ / seq_len_;
    SKV_CHECK(rows_per_epoch_ >= 1, "the data holds {} tokens, fewer than one sequence of --seq-len {}; add data or "
              "lower --seq-len", total_tokens_, seq_len_);
}

void PackedStream::prepare_epoch(int64_t epoch) {
    if (epoch == epoch_) return;
    const size_t n = corpus_.documents.size();
    order_.resize(n);
    for (size_t i = 0; i < n; ++i) order_[i] = int32_t(i);
    // Fisher-Yates with a portable generator: the same order on every platform and standard library.
    uint64_t state = seed_ ^ (uint64_t(epoch + 1) * 0xD1B54A32D192ED03ull);
    for (size_t i = n; i > 1; --i) {
        const size_t j = size_t(splitmix64(state) % i);
        std::swap(order_[i - 1], order_[j]);
    }
    starts_.assign(n + 1, 0);
    for (size_t i = 0; i < n; ++i) starts_[i + 1] = starts_[i] + int64_t(corpus_.documents[size_t(order_[i])].tokens.size());
    epoch_ = epoch;
}

void PackedStream::append_row(int64_t row, LossMask mask, PackedBatch& batch) {
    SKV_CHECK(row >= 0, "packed stream: negative row {}", row);
    prepare_epoch(row / rows_per_epoch_);
    const int64_t begin = (row % rows_per_epoch_) * seq_len_, end = begin + seq_len_;
    // The first document that ends after `begin`.
    size_t k = size_t(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
    std::vector<float> weights;
    for (int64_t at = begin; at < end; ++k) {
        const DistillDocument& doc = corpus_.documents[size_t(order_[k])];
        const int64_t doc_begin = at - starts_[k];
        const int64_t doc_end = std::min<int64_t>(int64_t(doc.tokens.size()), end - starts_[k]);
        const int64_t n = doc_end - doc_begin;
        weights.assign(size_t(n), 0.0f);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t t = doc_begin + i;
            if (mask == LossMask::AllTokens) {
                weights[size_t(i)] = 1.0f;
            } else {
                // Row t's logits predict the document's token t + 1.
                weights[size_t(i)] = t + 1 < int64_t(doc.tokens.size()) && doc.assistant[size_t(t + 1)] ? 1.0f : 0.0f;
            }
        }
        batch.add_segment(doc.tokens.data() + doc_begin, n, weights.data());
        at += n;
    }
}

}  // namespace swiftkv
