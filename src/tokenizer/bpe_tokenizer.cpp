// BpeTokenizer: byte-level BPE (GPT-2 / SmolLM2 / Llama-3 style), checked token for token against
// Hugging Face `tokenizers` (tests/tokenizer, references from scripts/make_tokenizer_refs.py).
//
// Pipeline of encode(): invalid UTF-8 -> U+FFFD (maximal subparts); added/special tokens split out
// (leftmost-longest, as HF's aho-corasick AddedVocabulary); each remaining segment is cut by the
// pre-tokenizer regex (PCRE2, UTF+UCP, JIT); each piece's bytes become the byte-level symbols and
// are merged by rank (priority queue, lowest rank then leftmost first, exactly HF's order); pieces
// are cached, since text repeats the same words.
#include "tokenizer/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <functional>
#include <mutex>
#include <optional>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace swiftkv {

namespace {

// ---------------------------------------------------------------------------------------------
// UTF-8

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum class Utf8Status { Valid, Invalid, Truncated };

// Looks at the character starting at p[0] (n > 0 bytes available). Valid: *len is its length.
// Invalid: *len is the maximal subpart to replace by one U+FFFD (>= 1). Truncated: the n bytes are
// a proper prefix of a valid character (Table 3-7 of the Unicode standard gives the ranges).
Utf8Status utf8_next(const uint8_t* p, size_t n, size_t* len) {
    const uint8_t b0 = p[0];
    if (b0 < 0x80) {
        *len = 1;
        return Utf8Status::Valid;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        *len = 1;
        return Utf8Status::Invalid;
    }
    for (size_t k = 1; k < need; ++k) {
        if (k >= n) {
            *len = n;
            return Utf8Status::Truncated;
        }
        const uint8_t b = p[k];
        const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) {
            *len = k;
            return Utf8Status::Invalid;
        }
    }
    *len = need;
    return Utf8Status::Valid;
}

uint32_t decode_valid_utf8(const uint8_t* p, size_t len) {
    switch (len) {
        case 1: return p[0];
        case 2: return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
        case 3: return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
        default: return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    }
}

// Rust's char::is_whitespace (the Unicode White_Space property), used for lstrip/rstrip.
bool is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> unicode table: printable bytes stand for themselves, the others are moved to
// U+0100 and up, so every byte string becomes a printable string.

struct ByteUnicodeTable {
    std::array<uint32_t, 256> byte_to_cp{};
    std::array<std::string, 256> byte_to_utf8;
    std::unordered_map<uint32_t, uint8_t> cp_to_byte;

    ByteUnicodeTable() {
        uint32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
            append_utf8(byte_to_utf8[b], byte_to_cp[b]);
            cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
        }
    }
};

const ByteUnicodeTable& byte_table() {
    static const ByteUnicodeTable table;
    return table;
}

std::string bytes_to_byte_level(std::string_view bytes) {
    const auto& table = byte_table();
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) out += table.byte_to_utf8[c];
    return out;
}

// Byte-level form -> bytes, like HF's ByteLevel decoder: a token with a character outside the table
// is taken as its raw UTF-8 text.
std::string byte_level_to_bytes(const std::string& token) {
    const auto& table = byte_table();
    std::string out;
    const auto* p = reinterpret_cast<const uint8_t*>(token.data());
    size_t i = 0;
    while (i < token.size()) {
        size_t len;
        if (utf8_next(p + i, token.size() - i, &len) != Utf8Status::Valid) return token;
        auto it = table.cp_to_byte.find(decode_valid_utf8(p + i, len));
        if (it == table.cp_to_byte.end()) return token;
        out += static_cast<char>(it->second);
        i += len;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer regexes (PCRE2 syntax; identical to the Hugging Face tokenizer.json patterns).

constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kDigitRegex = R"(\p{N})";

struct Regex {
    pcre2_code* code = nullptr;

    explicit Regex(const char* pattern) {
        int error = 0;
        PCRE2_SIZE offset = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                             &error, &offset, nullptr);
        if (!code) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(error, message, sizeof(message));
            SKV_THROW("internal error: pre-tokenizer regex does not compile at {}: {}", offset,
                      reinterpret_cast<const char*>(message));
        }
        pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    }
    ~Regex() { pcre2_code_free(code); }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
};

// Per-thread PCRE2 match state (match data and a JIT stack large enough for long whitespace runs).
struct MatchState {
    pcre2_match_data* data = nullptr;
    pcre2_match_context* context = nullptr;
    pcre2_jit_stack* stack = nullptr;

    MatchState() {
        data = pcre2_match_data_create(4, nullptr);
        context = pcre2_match_context_create(nullptr);
        stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
        if (stack) pcre2_jit_stack_assign(context, nullptr, stack);
    }
    ~MatchState() {
        pcre2_jit_stack_free(stack);
        pcre2_match_context_free(context);
        pcre2_match_data_free(data);
    }
};

MatchState& match_state() {
    thread_local MatchState state;
    return state;
}

// Calls emit(begin, end) for every piece of subject: matches, and any unmatched gap between them
// (HF's Split with behavior Isolated keeps gaps as pieces too). emit may itself call split_isolated
// (SmolLM's digit split, then the regex): the match data is shared per thread, so everything needed
// from it is copied before emit runs.
template <typename Emit>
void split_isolated(const Regex& re, std::string_view subject, Emit&& emit) {
    MatchState& ms = match_state();
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    size_t pos = 0;
    while (pos < subject.size()) {
        const int rc = pcre2_match(re.code, s, subject.size(), pos, PCRE2_NO_UTF_CHECK, ms.data, ms.context);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        SKV_CHECK(rc >= 0, "pre-tokenizer regex failed (PCRE2 error {}) on a {}-byte piece of text", rc,
                  subject.size());
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ms.data);
        size_t begin = ov[0], end = ov[1];
        if (begin > pos) emit(pos, begin);
        if (end == begin) {  // empty match (not produced by our patterns): step over one character
            size_t len = 1;
            utf8_next(reinterpret_cast<const uint8_t*>(subject.data()) + begin, subject.size() - begin, &len);
            end = std::min(subject.size(), begin + len);
            emit(begin, end);
        } else {
            emit(begin, end);
        }
        pos = end;
    }
    if (pos < subject.size()) emit(pos, subject.size());
}

bool is_special_kind(TokenKind kind) { return kind == TokenKind::Control || kind == TokenKind::Unknown; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// UTF-8 public helpers

bool is_valid_utf8(std::string_view bytes) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
    size_t i = 0, n = bytes.size();
    while (i < n) {
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        if (utf8_next(p + i, n - i, &len) != Utf8Status::Valid) return false;
        i += len;
    }
    return true;
}

std::string utf8_lossy(std::string_view bytes) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
    std::string out;
    out.reserve(bytes.size() + 8);
    size_t i = 0, n = bytes.size();
    while (i < n) {
        size_t len;
        if (utf8_next(p + i, n - i, &len) == Utf8Status::Valid) {
            out.append(bytes.data() + i, len);
        } else {
            out += kReplacement;
        }
        i += len;
    }
    return out;
}

std::vector<int32_t> end_of_generation_ids(const TokenizerSpec& spec) {
    static const char* const kEndOfTurn[] = {"<|im_end|>",  "<|eot_id|>", "<|eom_id|>",   "<|end_of_text|>",
                                             "<|endoftext|>", "<|end|>",   "<end_of_turn>"};
    std::vector<int32_t> ids;
    if (spec.eos_id >= 0) ids.push_back(spec.eos_id);
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
        if (id < spec.kinds.size() && spec.kinds[id] != TokenKind::Control) continue;
        for (const char* name : kEndOfTurn) {
            if (spec.tokens[id] == name) ids.push_back(static_cast<int32_t>(id));
        }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
}

// ---------------------------------------------------------------------------------------------
// BpeTokenizer

struct BpeTokenizer::Impl {
    TokenizerSpec spec;
    std::unordered_map<std::string, int32_t> token_to_id;  // byte-level form (raw text for added tokens)
    std::vector<std::string> id_bytes;                      // id -> the bytes it decodes to

    // BPE symbols: ids < vocab size are tokens; above are strings that merges produce or consume but
    // that are not in the vocabulary (they are emitted as their byte tokens at the end).
    std::vector<std::string> virtual_symbols;  // byte-level form
    struct Merge {
        int32_t rank;
        int32_t result;
    };
    std::unordered_map<uint64_t, Merge> merges;  // (left << 32 | right) -> merge
    std::array<int32_t, 256> byte_symbol{};
    std::array<int32_t, 256> byte_token{};       // -1 if the byte's token is absent

    // Added tokens, by first byte, longest first: (id, text).
    std::array<std::vector<int32_t>, 256> added_by_first_byte;

    std::unique_ptr<Regex> regex;
    std::unique_ptr<Regex> digit_regex;

    mutable std::mutex cache_mutex;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    int32_t vocab_size() const { return static_cast<int32_t>(spec.tokens.size()); }

    int32_t symbol_id(const std::string& text, std::unordered_map<std::string, int32_t>& virtual_ids) {
        auto it = token_to_id.find(text);
        if (it != token_to_id.end()) return it->second;
        auto [vit, inserted] = virtual_ids.emplace(text, vocab_size() + static_cast<int32_t>(virtual_symbols.size()));
        if (inserted) virtual_symbols.push_back(text);
        return vit->second;
    }

    void build() {
        const int32_t n = vocab_size();
        SKV_CHECK(n > 0, "tokenizer has an empty vocabulary");
        if (spec.kinds.empty()) spec.kinds.assign(n, TokenKind::Normal);
        SKV_CHECK(static_cast<int32_t>(spec.kinds.size()) == n,
                  "tokenizer has {} tokens but {} token types; the model file is inconsistent", n, spec.kinds.size());
        if (!spec.added_strip.empty()) {
            SKV_CHECK(static_cast<int32_t>(spec.added_strip.size()) == n, "tokenizer added_strip has {} entries, expected {}",
                      spec.added_strip.size(), n);
        }
        for (int32_t id : {spec.bos_id, spec.eos_id, spec.pad_id, spec.unk_id}) {
            SKV_CHECK(id < n, "tokenizer special token id {} is outside the vocabulary of {} tokens", id, n);
        }
        if (spec.eos_ids.empty()) spec.eos_ids = end_of_generation_ids(spec);
        for (int32_t id : spec.eos_ids) {
            SKV_CHECK(id >= 0 && id < n, "tokenizer end-of-generation id {} is outside the vocabulary of {} tokens", id, n);
        }

        token_to_id.reserve(n * 2);
        id_bytes.resize(n);
        for (int32_t id = 0; id < n; ++id) {
            const std::string& text = spec.tokens[id];
            token_to_id.emplace(text, id);  // first id wins for duplicates
            const TokenKind kind = spec.kinds[id];
            if (kind == TokenKind::Normal || kind == TokenKind::Byte) {
                id_bytes[id] = byte_level_to_bytes(text);
            } else {
                id_bytes[id] = text;
            }
            if ((kind == TokenKind::Control || kind == TokenKind::Unknown || kind == TokenKind::UserDefined) &&
                !text.empty()) {
                added_by_first_byte[static_cast<unsigned char>(text[0])].push_back(id);
            }
        }
        for (auto& ids : added_by_first_byte) {
            std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
                return spec.tokens[a].size() > spec.tokens[b].size();
            });
        }

        std::unordered_map<std::string, int32_t> virtual_ids;
        const auto& table = byte_table();
        for (int b = 0; b < 256; ++b) {
            byte_symbol[b] = symbol_id(table.byte_to_utf8[b], virtual_ids);
            byte_token[b] = byte_symbol[b] < n ? byte_symbol[b] : -1;
        }
        merges.reserve(spec.merges.size() * 2);
        for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
            const std::string& m = spec.merges[rank];
            const size_t space = m.find(' ', 1);
            SKV_CHECK(space != std::string::npos && space + 1 < m.size(),
                      "tokenizer merge #{} '{}' is not of the form 'left right'", rank, m);
            const std::string left = m.substr(0, space), right = m.substr(space + 1);
            const int32_t l = symbol_id(left, virtual_ids), r = symbol_id(right, virtual_ids);
            const int32_t result = symbol_id(left + right, virtual_ids);
            const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
            merges.emplace(key, Merge{static_cast<int32_t>(rank), result});  // a repeated pair keeps its first rank
        }

        switch (spec.pre) {
            case PreTokenizer::Gpt2: regex = std::make_unique<Regex>(kGpt2Regex); break;
            case PreTokenizer::SmolLM:
                regex = std::make_unique<Regex>(kGpt2Regex);
                digit_regex = std::make_unique<Regex>(kDigitRegex);
                break;
            case PreTokenizer::Llama3: regex = std::make_unique<Regex>(kLlama3Regex); break;
        }
    }

    // Appends the token ids of symbol (a token, or a virtual symbol spelled out by its byte tokens;
    // a byte without a token is dropped, as HF does when the BPE model has no unk_token).
    void emit_symbol(int32_t sym, std::vector<int32_t>& out) const {
        if (sym < vocab_size()) {
            out.push_back(sym);
            return;
        }
        for (unsigned char c : byte_level_to_bytes(virtual_symbols[sym - vocab_size()])) {
            if (byte_token[c] >= 0) out.push_back(byte_token[c]);
        }
    }

    void bpe(std::string_view piece, std::vector<int32_t>& out) const {
        if (spec.ignore_merges) {
            auto it = token_to_id.find(bytes_to_byte_level(piece));
            if (it != token_to_id.end() && spec.kinds[it->second] == TokenKind::Normal) {
                out.push_back(it->second);
                return;
            }
        }
        struct Symbol {
            int32_t id, prev, next;
        };
        struct Candidate {
            int32_t rank, left, left_id, right_id, result;
            bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
        };
        // A byte whose token is not in the vocabulary is dropped before merging, as HF's BPE does
        // for characters outside the vocabulary (SmolLM2 lacks e.g. 0x04 and 0xF1); its neighbours
        // may then merge with each other.
        std::vector<Symbol> symbols;
        symbols.reserve(piece.size());
        for (unsigned char c : piece) {
            if (byte_token[c] < 0) continue;
            const int32_t i = static_cast<int32_t>(symbols.size());
            symbols.push_back({byte_symbol[c], i - 1, -1});
            if (i > 0) symbols[i - 1].next = i;
        }
        const int32_t n = static_cast<int32_t>(symbols.size());
        if (n == 0) return;
        std::vector<Candidate> storage;
        storage.reserve(n);
        std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue(std::greater<Candidate>(),
                                                                                            std::move(storage));
        auto try_pair = [&](int32_t left) {
            const int32_t right = symbols[left].next;
            if (right < 0) return;
            const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(symbols[left].id)) << 32) |
                                 static_cast<uint32_t>(symbols[right].id);
            auto it = merges.find(key);
            if (it != merges.end()) {
                queue.push({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.result});
            }
        };
        for (int32_t i = 0; i + 1 < n; ++i) try_pair(i);
        while (!queue.empty()) {
            const Candidate c = queue.top();
            queue.pop();
            Symbol& left = symbols[c.left];
            if (left.id != c.left_id || left.next < 0) continue;  // stale: a side was merged since
            Symbol& right = symbols[left.next];
            if (right.id != c.right_id) continue;
            left.id = c.result;
            left.next = right.next;
            if (right.next >= 0) symbols[right.next].prev = c.left;
            right.id = -1;
            if (left.prev >= 0) try_pair(left.prev);
            try_pair(c.left);
        }
        for (int32_t i = 0; i >= 0 && i < n; i = symbols[i].next) emit_symbol(symbols[i].id, out);
    }

    void bpe_cached(std::string_view piece, std::vector<int32_t>& out) const {
        constexpr size_t kMaxCachedPiece = 128, kMaxCacheEntries = 1 << 18;
        if (piece.size() > kMaxCachedPiece) {
            bpe(piece, out);
            return;
        }
        std::string key(piece);
        {
            std::lock_guard<std::mutex> lock(cache_mutex);
            auto it = cache.find(key);
            if (it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const size_t start = out.size();
        bpe(piece, out);
        std::vector<int32_t> ids(out.begin() + start, out.end());
        std::lock_guard<std::mutex> lock(cache_mutex);
        if (cache.size() >= kMaxCacheEntries) cache.clear();
        cache.emplace(std::move(key), std::move(ids));
    }

    // One segment of text without added tokens: pre-tokenize, then BPE each piece.
    void encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
        if (segment.empty()) return;
        auto regex_pieces = [&](std::string_view text) {
            split_isolated(*regex, text, [&](size_t b, size_t e) { bpe_cached(text.substr(b, e - b), out); });
        };
        if (digit_regex) {
            // HF Digits(individual_digits=true): every numeric character is a piece of its own; the
            // ByteLevel regex then runs on each resulting piece separately.
            split_isolated(*digit_regex, segment, [&](size_t b, size_t e) { regex_pieces(segment.substr(b, e - b)); });
        } else {
            regex_pieces(segment);
        }
    }

    // Length of the added token matching at text[pos] (longest), and its id; 0 if none.
    size_t match_added(std::string_view text, size_t pos, bool parse_special, int32_t* id) const {
        for (int32_t candidate : added_by_first_byte[static_cast<unsigned char>(text[pos])]) {
            if (!parse_special && is_special_kind(spec.kinds[candidate])) continue;
            const std::string& t = spec.tokens[candidate];
            if (text.compare(pos, t.size(), t) == 0) {
                *id = candidate;
                return t.size();
            }
        }
        return 0;
    }

    void encode(std::string_view text, bool parse_special, std::vector<int32_t>& out) const {
        const auto* p = reinterpret_cast<const uint8_t*>(text.data());
        size_t segment_start = 0, pos = 0;
        while (pos < text.size()) {
            int32_t id = -1;
            const size_t len = added_by_first_byte[p[pos]].empty() ? 0 : match_added(text, pos, parse_special, &id);
            if (len == 0) {
                ++pos;
                continue;
            }
            size_t begin = pos, end = pos + len;
            const uint8_t strip = spec.added_strip.empty() ? 0 : spec.added_strip[id];
            if (strip & 1) {  // lstrip: the whitespace before the token belongs to it
                while (begin > segment_start) {
                    size_t k = begin - 1;
                    while (k > segment_start && (p[k] & 0xC0) == 0x80) --k;
                    size_t clen;
                    if (utf8_next(p + k, text.size() - k, &clen) != Utf8Status::Valid ||
                        !is_white_space(decode_valid_utf8(p + k, clen)))
                        break;
                    begin = k;
                }
            }
            if (strip & 2) {  // rstrip: the whitespace after the token belongs to it
                while (end < text.size()) {
                    size_t clen;
                    if (utf8_next(p + end, text.size() - end, &clen) != Utf8Status::Valid ||
                        !is_white_space(decode_valid_utf8(p + end, clen)))
                        break;
                    end += clen;
                }
            }
            encode_segment(text.substr(segment_start, begin - segment_start), out);
            out.push_back(id);
            segment_start = pos = end;
        }
        encode_segment(text.substr(segment_start), out);
    }
};

BpeTokenizer::BpeTokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
    impl_->spec = std::move(spec);
    impl_->build();
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

PreTokenizer BpeTokenizer::pre_tokenizer_from_name(const std::string& name) {
    // Names as llama.cpp's converter writes them to tokenizer.ggml.pre, limited to those whose
    // Hugging Face pre-tokenizer is exactly one of ours.
    if (name == "gpt2" || name == "gpt-2" || name == "phi-2") return PreTokenizer::Gpt2;
    if (name == "smollm" || name == "starcoder" || name == "refact") return PreTokenizer::SmolLM;
    if (name == "llama3" || name == "llama-v3" || name == "llama-bpe") return PreTokenizer::Llama3;
    SKV_THROW(
        "unsupported pre-tokenizer '{}' (tokenizer.ggml.pre): supported are gpt2/gpt-2/phi-2 (GPT-2 regex), "
        "smollm/starcoder/refact (digits split, then GPT-2 regex), llama3/llama-v3/llama-bpe (Llama-3 regex)",
        name);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special && impl_->spec.add_bos && impl_->spec.bos_id >= 0) out.push_back(impl_->spec.bos_id);
    if (is_valid_utf8(text)) {
        impl_->encode(text, parse_special, out);
    } else {
        const std::string clean = utf8_lossy(text);
        impl_->encode(clean, parse_special, out);
    }
    return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    std::string out;
    for (int32_t id : ids) {
        SKV_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1);
        if (skip_special && is_special(id)) continue;
        out += impl_->id_bytes[id];
    }
    return out;
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
    SKV_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1);
    return impl_->id_bytes[id];
}

int32_t BpeTokenizer::vocab_size() const { return impl_->vocab_size(); }
const TokenizerSpec& BpeTokenizer::spec() const { return impl_->spec; }

bool BpeTokenizer::is_special(int32_t id) const {
    return id >= 0 && id < vocab_size() && is_special_kind(impl_->spec.kinds[id]);
}

bool BpeTokenizer::is_eos(int32_t id) const {
    const auto& ids = impl_->spec.eos_ids;
    return std::find(ids.begin(), ids.end(), id) != ids.end();
}

int32_t BpeTokenizer::token_id(std::string_view token) const {
    auto it = impl_->token_to_id.find(std::string(token));
    return it == impl_->token_to_id.end() ? -1 : it->second;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

namespace {

std::string describe(const nlohmann::json& j) {
    std::string s = j.dump();
    return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

bool json_is_null_or_empty_string(const nlohmann::json& j) {
    return j.is_null() || (j.is_string() && j.get<std::string>().empty());
}

bool byte_level_ok(const nlohmann::json& j, bool use_regex) {
    return j.is_object() && j.value("type", "") == "ByteLevel" && !j.value("add_prefix_space", false) &&
           j.value("use_regex", true) == use_regex;
}

PreTokenizer pre_tokenizer_from_json(const nlohmann::json& pre) {
    if (byte_level_ok(pre, true)) return PreTokenizer::Gpt2;
    if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) {
        const auto& seq = pre["pretokenizers"];
        if (seq.size() == 2 && seq[0].value("type", "") == "Digits" && seq[0].value("individual_digits", false) &&
            byte_level_ok(seq[1], true)) {
            return PreTokenizer::SmolLM;
        }
        if (seq.size() == 2 && seq[0].value("type", "") == "Split" && byte_level_ok(seq[1], false) &&
            seq[0].value("behavior", "") == "Isolated" && !seq[0].value("invert", false) &&
            seq[0].contains("pattern") && seq[0]["pattern"].contains("Regex") && seq[0]["pattern"]["Regex"].is_string()) {
            const std::string pattern = seq[0]["pattern"]["Regex"].get<std::string>();
            if (pattern == kLlama3Regex) return PreTokenizer::Llama3;
            if (pattern == kGpt2Regex) return PreTokenizer::Gpt2;
        }
    }
    SKV_THROW(
        "unsupported pre_tokenizer in tokenizer.json: {}. Supported: ByteLevel(use_regex) (GPT-2), "
        "Sequence[Digits(individual_digits), ByteLevel] (SmolLM), Sequence[Split(Llama-3 regex), "
        "ByteLevel(use_regex=false)] (Llama-3), all without add_prefix_space",
        describe(pre));
}

// "<s>" or {"content": "<s>", ...} in tokenizer_config.json.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
    if (!config.contains(key)) return std::nullopt;
    const auto& v = config[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return std::nullopt;
}

}  // namespace

BpeTokenizer BpeTokenizer::from_tokenizer_json(const nlohmann::json& doc, const nlohmann::json* config) {
    SKV_CHECK(doc.is_object() && doc.contains("model"), "tokenizer.json has no 'model' section");
    const auto& model = doc["model"];
    const std::string type = model.value("type", "");
    SKV_CHECK(type == "BPE", "tokenizer.json model type is '{}': only byte-level BPE ('BPE') is supported", type);
    SKV_CHECK(!model.value("byte_fallback", false) && json_is_null_or_empty_string(model.value("continuing_subword_prefix", nlohmann::json())) &&
                  json_is_null_or_empty_string(model.value("end_of_word_suffix", nlohmann::json())),
              "tokenizer.json BPE model uses byte_fallback/continuing_subword_prefix/end_of_word_suffix: only "
              "byte-level BPE (GPT-2 style) is supported");
    SKV_CHECK(!doc.contains("normalizer") || doc["normalizer"].is_null(),
              "tokenizer.json has a normalizer ({}): byte-level BPE tokenizers with a normalizer are not supported",
              describe(doc["normalizer"]));
    SKV_CHECK(doc.contains("pre_tokenizer"), "tokenizer.json has no pre_tokenizer");
    if (doc.contains("decoder") && !doc["decoder"].is_null()) {
        SKV_CHECK(doc["decoder"].value("type", "") == "ByteLevel",
                  "tokenizer.json decoder is {}: only the ByteLevel decoder is supported", describe(doc["decoder"]));
    }

    TokenizerSpec spec;
    spec.pre = pre_tokenizer_from_json(doc["pre_tokenizer"]);
    spec.ignore_merges = model.value("ignore_merges", false);

    const auto& vocab = model.at("vocab");
    SKV_CHECK(vocab.is_object(), "tokenizer.json model.vocab is not an object");
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
    std::vector<nlohmann::json> added;
    if (doc.contains("added_tokens") && doc["added_tokens"].is_array()) {
        for (const auto& a : doc["added_tokens"]) {
            max_id = std::max<int64_t>(max_id, a.at("id").get<int64_t>());
            added.push_back(a);
        }
    }
    SKV_CHECK(max_id >= 0 && max_id < (int64_t{1} << 31), "tokenizer.json has no usable vocabulary");
    spec.tokens.assign(max_id + 1, std::string());
    spec.kinds.assign(max_id + 1, TokenKind::Unused);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        const int64_t id = it.value().get<int64_t>();
        SKV_CHECK(id >= 0, "tokenizer.json vocab entry '{}' has a negative id", it.key());
        spec.tokens[id] = it.key();
        spec.kinds[id] = TokenKind::Normal;
    }
    bool any_strip = false;
    std::vector<uint8_t> strip(max_id + 1, 0);
    for (const auto& a : added) {
        const int64_t id = a.at("id").get<int64_t>();
        SKV_CHECK(id >= 0, "tokenizer.json added token {} has a negative id", describe(a));
        SKV_CHECK(!a.value("single_word", false), "tokenizer.json added token {} uses single_word, which is not supported",
                  describe(a));
        spec.tokens[id] = a.at("content").get<std::string>();
        spec.kinds[id] = a.value("special", false) ? TokenKind::Control : TokenKind::UserDefined;
        strip[id] = (a.value("lstrip", false) ? 1 : 0) | (a.value("rstrip", false) ? 2 : 0);
        any_strip = any_strip || strip[id] != 0;
    }
    if (any_strip) spec.added_strip = std::move(strip);

    const auto& merges = model.at("merges");
    spec.merges.reserve(merges.size());
    for (const auto& m : merges) {
        if (m.is_string()) {
            spec.merges.push_back(m.get<std::string>());
        } else {
            SKV_CHECK(m.is_array() && m.size() == 2, "tokenizer.json merge {} is neither 'a b' nor [a, b]", describe(m));
            spec.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
        }
    }

    auto find_id = [&](const std::string& text) -> int32_t {
        for (size_t id = 0; id < spec.tokens.size(); ++id) {
            if (spec.kinds[id] != TokenKind::Normal && spec.tokens[id] == text) return static_cast<int32_t>(id);
        }
        for (size_t id = 0; id < spec.tokens.size(); ++id) {
            if (spec.tokens[id] == text) return static_cast<int32_t>(id);
        }
        return -1;
    };
    // BOS from a TemplateProcessing post-processor that starts with a special token (Llama-3).
    std::function<void(const nlohmann::json&)> scan_post = [&](const nlohmann::json& post) {
        if (!post.is_object()) return;
        if (post.value("type", "") == "Sequence" && post.contains("processors")) {
            for (const auto& p : post["processors"]) scan_post(p);
        } else if (post.value("type", "") == "TemplateProcessing" && post.contains("single") &&
                   post["single"].is_array() && !post["single"].empty() && post["single"][0].contains("SpecialToken")) {
            const std::string name = post["single"][0]["SpecialToken"].value("id", "");
            if (post.contains("special_tokens") && post["special_tokens"].contains(name)) {
                const auto& ids = post["special_tokens"][name]["ids"];
                if (ids.is_array() && ids.size() == 1) spec.bos_id = ids[0].get<int32_t>();
            }
            if (spec.bos_id < 0) spec.bos_id = find_id(name);
            spec.add_bos = spec.bos_id >= 0;
        }
    };
    if (doc.contains("post_processor")) scan_post(doc["post_processor"]);

    if (config) {
        if (auto t = config_token(*config, "bos_token")) spec.bos_id = find_id(*t);
        if (auto t = config_token(*config, "eos_token")) spec.eos_id = find_id(*t);
        if (auto t = config_token(*config, "pad_token")) spec.pad_id = find_id(*t);
        if (auto t = config_token(*config, "unk_token")) spec.unk_id = find_id(*t);
        if (config->contains("add_bos_token") && (*config)["add_bos_token"].is_boolean()) {
            spec.add_bos = (*config)["add_bos_token"].get<bool>() && spec.bos_id >= 0;
        }
    }
    if (spec.unk_id < 0 && model.contains("unk_token") && model["unk_token"].is_string()) {
        spec.unk_id = find_id(model["unk_token"].get<std::string>());
    }
    spec.eos_ids = end_of_generation_ids(spec);
    return BpeTokenizer(std::move(spec));
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder

StreamDecoder::StreamDecoder(const BpeTokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
    if (skip_special_ && tokenizer_.is_special(id)) return {};
    pending_ += tokenizer_.token_bytes(id);
    // Emit everything except a trailing proper prefix of a valid character, which the next token may
    // complete. Anything invalid before it is replaced now, the same way decode + lossy would.
    const auto* p = reinterpret_cast<const uint8_t*>(pending_.data());
    const size_t n = pending_.size();
    size_t keep_from = n;
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        const size_t k = n - back;
        if ((p[k] & 0xC0) == 0x80) continue;  // continuation byte: look further back for the lead
        size_t len;
        if (utf8_next(p + k, n - k, &len) == Utf8Status::Truncated) keep_from = k;
        break;
    }
    std::string out = utf8_lossy(std::string_view(pending_).substr(0, keep_from));
    pending_.erase(0, keep_from);
    return out;
}

std::string StreamDecoder::finish() {
    std::string out = utf8_lossy(pending_);
    pending_.clear();
    return out;
}

TokenizerSpec synthetic_tokenizer_spec(int64_t vocab) {
    SKV_CHECK(vocab >= 258, "a synthetic vocabulary needs at least 258 ids, got {}", vocab);
    TokenizerSpec spec;
    spec.tokens.resize(size_t(vocab));
    spec.kinds.assign(size_t(vocab), TokenKind::Normal);
    for (int b = 0; b < 256; ++b) spec.tokens[size_t(b)] = bytes_to_byte_level(std::string(1, char(b)));
    for (int64_t i = 256; i < vocab - 1; ++i) spec.tokens[size_t(i)] = bytes_to_byte_level(" w" + std::to_string(i));
    spec.tokens[size_t(vocab - 1)] = "<|endoftext|>";
    spec.kinds[size_t(vocab - 1)] = TokenKind::Control;
    spec.eos_id = int32_t(vocab - 1);
    spec.eos_ids = {spec.eos_id};
    spec.pre = PreTokenizer::Gpt2;
    return spec;
}

}  // namespace swiftkv
