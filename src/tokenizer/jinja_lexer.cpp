// jinja_lexer.cpp — the chat-template lexer (declared in jinja_lexer.h). It follows jinja2's lexer.py
// closely (same rule order, same whitespace handling), because whitespace control is where a
// re-implementation silently drifts.
#include "tokenizer/jinja_lexer.h"

#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "tokenizer/jinja_value.h"

namespace swiftkv::jinja {
namespace {

struct OperatorSpelling {
    std::string_view text;
    Tok type;
};
// Longest first, as jinja2 sorts its operator regex.
constexpr OperatorSpelling kOperators[] = {
    {"//", Tok::FloorDiv}, {"**", Tok::Pow}, {"==", Tok::Eq}, {"!=", Tok::Ne}, {">=", Tok::GtEq},
    {"<=", Tok::LtEq}, {"+", Tok::Add}, {"-", Tok::Sub}, {"/", Tok::Div}, {"*", Tok::Mul},
    {"%", Tok::Mod}, {"~", Tok::Tilde}, {"[", Tok::LBracket}, {"]", Tok::RBracket}, {"(", Tok::LParen},
    {")", Tok::RParen}, {"{", Tok::LBrace}, {"}", Tok::RBrace}, {">", Tok::Gt}, {"<", Tok::Lt},
    {"=", Tok::Assign}, {".", Tok::Dot}, {":", Tok::Colon}, {"|", Tok::Pipe}, {",", Tok::Comma},
    {";", Tok::Semicolon},
};

class Lexer {
public:
    explicit Lexer(const std::string& raw) {
        // jinja2 normalizes every newline to \n and drops one trailing newline
        // (keep_trailing_newline=False) before lexing.
        src_.reserve(raw.size());
        for (size_t i = 0; i < raw.size(); ++i) {
            if (raw[i] == '\r') {
                src_ += '\n';
                if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
            } else {
                src_ += raw[i];
            }
        }
        if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    }

    std::vector<Token> run() {
        while (pos_ < src_.size()) lex_root();
        push(Tok::Eof, "", pos_);
        return std::move(tokens_);
    }

private:
    [[noreturn]] void error(const std::string& message, size_t at) {
        auto [line, col] = line_col(at);
        SKV_THROW("chat template syntax error: {} (line {}, column {})", message, line, col);
    }

    std::pair<int, int> line_col(size_t at) const {
        int line = 1, col = 1;
        for (size_t i = 0; i < at && i < src_.size(); ++i) {
            if (src_[i] == '\n') {
                ++line;
                col = 1;
            } else if ((static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80) {
                ++col;
            }
        }
        return {line, col};
    }

    Token& push(Tok type, std::string text, size_t at) {
        Token t;
        t.type = type;
        t.text = std::move(text);
        // Line numbers are computed incrementally: tokens are pushed in source order.
        while (line_pos_ < at && line_pos_ < src_.size()) {
            if (src_[line_pos_] == '\n') {
                ++line_;
                col_ = 1;
            } else if ((static_cast<unsigned char>(src_[line_pos_]) & 0xC0) != 0x80) {
                ++col_;
            }
            ++line_pos_;
        }
        t.line = line_;
        t.column = col_;
        tokens_.push_back(std::move(t));
        return tokens_.back();
    }

    bool starts_with(size_t at, std::string_view s) const { return src_.compare(at, s.size(), s) == 0; }

    // Decodes one code point at `at` for Python's \s (unicode whitespace); returns its byte length
    // or 0 when it is not whitespace.
    size_t space_len(size_t at) const {
        auto c = static_cast<unsigned char>(src_[at]);
        if (c < 0x80) return is_space(c) ? 1 : 0;
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (at + len > src_.size()) return 0;
        std::u32string u = utf8_decode(std::string_view(src_).substr(at, len));
        return u.size() == 1 && is_space(u[0]) ? len : 0;
    }

    size_t skip_spaces(size_t at) const {
        while (at < src_.size()) {
            size_t n = space_len(at);
            if (!n) break;
            at += n;
        }
        return at;
    }

    // Python str.rstrip() on text (unicode whitespace).
    static std::string rstrip(const std::string& text) { return py_strip(text, std::nullopt, false, true); }

    // jinja2's OptionalLStrip: `-` strips all whitespace before the tag; otherwise lstrip_blocks
    // strips the whitespace between the last newline and a block or comment tag.
    std::string strip_before_tag(std::string text, char sign, bool is_variable) const {
        if (sign == '-') return rstrip(text);
        if (sign == '+' || is_variable) return text;
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting_) {
            // jinja2 3.1 strips when the rest of the line is whitespace (regex \s, so unicode
            // spaces count too).
            bool all_space = true;
            for (char32_t c : utf8_decode(std::string_view(text).substr(l_pos))) all_space = all_space && is_space(c);
            if (all_space) text.resize(l_pos);
        }
        return text;
    }

    void push_data(std::string text, size_t at) {
        if (!text.empty()) push(Tok::Data, std::move(text), at);
    }

    // Matches `{%(-|+|)\s*raw\s*(-%}\s*|%})` at `at`; returns the end position or npos.
    size_t match_raw_begin(size_t at, char& sign) const {
        if (!starts_with(at, "{%")) return std::string::npos;
        size_t p = at + 2;
        sign = 0;
        if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
        p = skip_spaces(p);
        if (!starts_with(p, "raw")) return std::string::npos;
        p = skip_spaces(p + 3);
        if (starts_with(p, "-%}")) return skip_spaces(p + 3);
        if (starts_with(p, "%}")) return p + 2;
        return std::string::npos;
    }

    void lex_root() {
        size_t p = src_.find('{', pos_);
        while (p != std::string::npos && p + 1 < src_.size()) {
            char c = src_[p + 1];
            if (c == '%' || c == '{' || c == '#') break;
            p = src_.find('{', p + 1);
        }
        if (p == std::string::npos || p + 1 >= src_.size()) {
            push_data(src_.substr(pos_), pos_);
            pos_ = src_.size();
            return;
        }
        std::string text = src_.substr(pos_, p - pos_);
        char kind = src_[p + 1];
        char raw_sign = 0;
        size_t raw_end = kind == '%' ? match_raw_begin(p, raw_sign) : std::string::npos;
        if (raw_end != std::string::npos) {
            push_data(strip_before_tag(std::move(text), raw_sign, false), pos_);
            line_starting_ = src_[raw_end - 1] == '\n';
            lex_raw(raw_end);
            return;
        }
        char sign = 0;
        size_t after = p + 2;
        if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];
        push_data(strip_before_tag(std::move(text), sign, kind == '{'), pos_);
        line_starting_ = false;
        if (kind == '#') {
            lex_comment(p, after);
        } else {
            lex_tag(p, after, kind == '%');
        }
    }

    void lex_comment(size_t begin, size_t p) {
        while (p < src_.size()) {
            if (starts_with(p, "+#}")) {
                pos_ = p + 3;
                line_starting_ = false;
                return;
            }
            if (starts_with(p, "-#}")) {
                pos_ = skip_spaces(p + 3);
                line_starting_ = src_[pos_ - 1] == '\n';
                return;
            }
            if (starts_with(p, "#}")) {
                pos_ = p + 2;
                if (pos_ < src_.size() && src_[pos_] == '\n') ++pos_;  // trim_blocks
                line_starting_ = src_[pos_ - 1] == '\n';
                return;
            }
            ++p;
        }
        error("Missing end of comment tag", begin);
    }

    void lex_raw(size_t p) {
        size_t content_begin = p;
        while (p < src_.size()) {
            if (starts_with(p, "{%")) {
                size_t q = p + 2;
                char sign = 0;
                if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
                q = skip_spaces(q);
                if (starts_with(q, "endraw")) {
                    q = skip_spaces(q + 6);
                    size_t end = std::string::npos;
                    if (starts_with(q, "+%}")) {
                        end = q + 3;
                    } else if (starts_with(q, "-%}")) {
                        end = skip_spaces(q + 3);
                    } else if (starts_with(q, "%}")) {
                        end = q + 2;
                        if (end < src_.size() && src_[end] == '\n') ++end;
                    }
                    if (end != std::string::npos) {
                        push_data(strip_before_tag(src_.substr(content_begin, p - content_begin), sign, false),
                                  content_begin);
                        pos_ = end;
                        line_starting_ = src_[end - 1] == '\n';
                        return;
                    }
                }
            }
            ++p;
        }
        error("Missing end of raw directive", content_begin);
    }

    void lex_tag(size_t begin, size_t p, bool is_block) {
        push(is_block ? Tok::BlockBegin : Tok::VariableBegin, is_block ? "{%" : "{{", begin);
        std::vector<char> balancing;
        while (true) {
            if (p >= src_.size()) {
                pos_ = p;
                return;  // the parser reports the missing end tag
            }
            if (balancing.empty()) {
                size_t end = std::string::npos;
                bool ends_newline = false;
                if (is_block) {
                    if (starts_with(p, "+%}")) {
                        end = p + 3;
                    } else if (starts_with(p, "-%}")) {
                        end = skip_spaces(p + 3);
                    } else if (starts_with(p, "%}")) {
                        end = p + 2;
                        if (end < src_.size() && src_[end] == '\n') ++end;  // trim_blocks
                    }
                } else {
                    if (starts_with(p, "-}}")) {
                        end = skip_spaces(p + 3);
                    } else if (starts_with(p, "}}")) {
                        end = p + 2;
                    }
                }
                if (end != std::string::npos) {
                    ends_newline = src_[end - 1] == '\n';
                    push(is_block ? Tok::BlockEnd : Tok::VariableEnd, "", p);
                    pos_ = end;
                    line_starting_ = ends_newline;
                    return;
                }
            }
            size_t ws = skip_spaces(p);
            if (ws != p) {
                p = ws;
                continue;
            }
            char c = src_[p];
            if (size_t n = match_float(p)) {
                std::string digits;
                for (size_t i = p; i < p + n; ++i)
                    if (src_[i] != '_') digits += src_[i];
                Token& t = push(Tok::Float, src_.substr(p, n), p);
                t.float_value = std::strtod(digits.c_str(), nullptr);
                p += n;
                continue;
            }
            if (size_t n = match_integer(p)) {
                Token& t = push(Tok::Integer, src_.substr(p, n), p);
                t.int_value = parse_integer(src_.substr(p, n), p);
                p += n;
                continue;
            }
            if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
                size_t q = p;
                while (q < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
                push(Tok::Name, src_.substr(p, q - p), p);
                p = q;
                continue;
            }
            if (c == '\'' || c == '"') {
                size_t q = p + 1;
                while (q < src_.size() && src_[q] != c) q += src_[q] == '\\' ? 2 : 1;
                if (q < src_.size()) {
                    push(Tok::String, unescape(src_.substr(p + 1, q - p - 1), p), p);
                    p = q + 1;
                    continue;
                }
                // An unterminated string falls through to the operator rule, which rejects it.
            }
            bool matched = false;
            for (const auto& op : kOperators) {
                if (!starts_with(p, op.text)) continue;
                if (op.type == Tok::LParen || op.type == Tok::LBracket || op.type == Tok::LBrace) {
                    balancing.push_back(op.type == Tok::LParen ? ')' : op.type == Tok::LBracket ? ']' : '}');
                } else if (op.type == Tok::RParen || op.type == Tok::RBracket || op.type == Tok::RBrace) {
                    if (balancing.empty()) error(fmt::format("unexpected '{}'", op.text), p);
                    char expected = balancing.back();
                    balancing.pop_back();
                    if (expected != op.text[0])
                        error(fmt::format("unexpected '{}', expected '{}'", op.text, expected), p);
                }
                push(op.type, std::string(op.text), p);
                p += op.text.size();
                matched = true;
                break;
            }
            if (!matched) error(fmt::format("unexpected char '{}'", c), p);
        }
    }

    size_t digits_run(size_t p, bool (*is_digit_char)(char)) const {
        // (\d+_)*\d+  — digits, possibly single-underscore separated; returns length or 0.
        size_t q = p;
        if (q >= src_.size() || !is_digit_char(src_[q])) return 0;
        while (true) {
            while (q < src_.size() && is_digit_char(src_[q])) ++q;
            if (q + 1 < src_.size() && src_[q] == '_' && is_digit_char(src_[q + 1])) {
                ++q;
                continue;
            }
            return q - p;
        }
    }

    static bool dec(char c) { return c >= '0' && c <= '9'; }

    size_t match_float(size_t p) const {
        if (p > 0 && src_[p - 1] == '.') return 0;  // (?<!\.)
        size_t int_len = digits_run(p, dec);
        if (!int_len) return 0;
        size_t q = p + int_len;
        size_t frac_end = q;
        bool has_frac = false;
        if (q < src_.size() && src_[q] == '.') {
            if (size_t n = digits_run(q + 1, dec)) {
                frac_end = q + 1 + n;
                has_frac = true;
            }
        }
        size_t e = frac_end;
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
            size_t s = e + 1;
            if (s < src_.size() && (src_[s] == '+' || src_[s] == '-')) ++s;
            if (size_t n = digits_run(s, dec)) return s + n - p;
        }
        return has_frac ? frac_end - p : 0;
    }

    size_t match_integer(size_t p) const {
        auto prefixed = [&](char letter, bool (*ok)(char)) -> size_t {
            if (p + 2 >= src_.size() || src_[p] != '0' || (src_[p + 1] | 0x20) != letter) return 0;
            size_t q = p + 2;
            size_t start = q;
            while (q < src_.size()) {
                if (src_[q] == '_' && q + 1 < src_.size() && ok(src_[q + 1])) {
                    q += 2;
                } else if (ok(src_[q])) {
                    ++q;
                } else {
                    break;
                }
            }
            return q > start ? q - p : 0;
        };
        if (size_t n = prefixed('b', [](char c) { return c == '0' || c == '1'; })) return n;
        if (size_t n = prefixed('o', [](char c) { return c >= '0' && c <= '7'; })) return n;
        if (size_t n = prefixed('x', [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }))
            return n;
        if (p >= src_.size() || !dec(src_[p])) return 0;
        if (src_[p] == '0') {
            // 0(_?0)*
            size_t q = p + 1;
            while (q < src_.size()) {
                if (src_[q] == '0') {
                    ++q;
                } else if (src_[q] == '_' && q + 1 < src_.size() && src_[q + 1] == '0') {
                    q += 2;
                } else {
                    break;
                }
            }
            return q - p;
        }
        return digits_run(p, dec);
    }

    int64_t parse_integer(const std::string& text, size_t at) {
        std::string digits;
        for (char c : text)
            if (c != '_') digits += c;
        int base = 10;
        if (digits.size() > 2 && digits[0] == '0' && std::isalpha(static_cast<unsigned char>(digits[1]))) {
            char b = digits[1] | 0x20;
            base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
            digits = digits.substr(2);
        }
        int64_t value = 0;
        auto res = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
        if (res.ec != std::errc()) error("integer literal is too large", at);
        return value;
    }

    // Python's unicode-escape decoding of a string literal's body, as jinja2 applies it.
    std::string unescape(const std::string& body, size_t at) {
        std::string out;
        size_t i = 0;
        auto hex_value = [&](size_t from, size_t count, const char* what) -> char32_t {
            if (from + count > body.size()) error(fmt::format("truncated {} escape", what), at);
            char32_t v = 0;
            for (size_t k = 0; k < count; ++k) {
                char h = body[from + k];
                if (!std::isxdigit(static_cast<unsigned char>(h))) error(fmt::format("truncated {} escape", what), at);
                v = v * 16 + char32_t(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
            }
            return v;
        };
        while (i < body.size()) {
            char c = body[i];
            if (c != '\\' || i + 1 >= body.size()) {
                out += c;
                ++i;
                continue;
            }
            char e = body[i + 1];
            i += 2;
            switch (e) {
                case '\n': break;
                case '\\': out += '\\'; break;
                case '\'': out += '\''; break;
                case '"': out += '"'; break;
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'v': out += '\v'; break;
                case 'x': utf8_append(out, hex_value(i, 2, "\\xXX")); i += 2; break;
                case 'u': utf8_append(out, hex_value(i, 4, "\\uXXXX")); i += 4; break;
                case 'U': {
                    char32_t v = hex_value(i, 8, "\\UXXXXXXXX");
                    if (v > 0x10FFFF) error("illegal Unicode character", at);
                    utf8_append(out, v);
                    i += 8;
                    break;
                }
                case 'N': error("\\N{...} escapes are not supported in chat templates", at);
                default:
                    if (e >= '0' && e <= '7') {
                        char32_t v = char32_t(e - '0');
                        for (int k = 0; k < 2 && i < body.size() && body[i] >= '0' && body[i] <= '7'; ++k)
                            v = v * 8 + char32_t(body[i++] - '0');
                        utf8_append(out, v);
                    } else if (static_cast<unsigned char>(e) >= 0x80) {
                        // Python backslash-replaces non-ASCII before decoding, so "\é" becomes
                        // the six characters "\xe9".
                        size_t len = 1;
                        while (i - 1 + len < body.size() && (static_cast<unsigned char>(body[i - 1 + len]) & 0xC0) == 0x80) ++len;
                        std::u32string u = utf8_decode(std::string_view(body).substr(i - 1, len));
                        char buf[16];
                        char32_t cp = u.empty() ? 0 : u[0];
                        if (cp >= 0xDC80 && cp <= 0xDCFF) cp -= 0xDC00;
                        if (cp <= 0xFF) {
                            std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(cp));
                        } else if (cp <= 0xFFFF) {
                            std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(cp));
                        } else {
                            std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(cp));
                        }
                        out += buf;
                        i = i - 1 + (u.size() == 1 ? len : 1);
                    } else {
                        out += '\\';
                        out += e;
                    }
            }
        }
        return out;
    }

    std::string src_;
    size_t pos_ = 0;
    bool line_starting_ = true;
    std::vector<Token> tokens_;
    size_t line_pos_ = 0;
    int line_ = 1;
    int col_ = 1;
};

}  // namespace

std::string describe(const Token& t) {
    switch (t.type) {
        case Tok::Name: return "'" + t.text + "'";
        case Tok::String: return "string";
        case Tok::Integer: return "integer";
        case Tok::Float: return "float";
        case Tok::Data: return "template data";
        case Tok::VariableBegin: return "begin of print statement";
        case Tok::VariableEnd: return "end of print statement";
        case Tok::BlockBegin: return "begin of statement block";
        case Tok::BlockEnd: return "end of statement block";
        case Tok::Eof: return "end of template";
        default: return "'" + t.text + "'";
    }
}

std::string describe(Tok type) {
    Token t;
    t.type = type;
    for (const auto& op : kOperators)
        if (op.type == type) t.text = op.text;
    if (type == Tok::Name) return "name";
    return describe(t);
}

std::vector<Token> lex_template(const std::string& source) {
    Lexer lexer(source);
    return lexer.run();
}

}  // namespace swiftkv::jinja
