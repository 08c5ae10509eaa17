// jinja_parser.cpp — lexer and recursive-descent parser for chat templates. Both follow jinja2's
// lexer.py and parser.py closely (same rule order, same whitespace handling, same grammar), because
// whitespace control and operator precedence are where a re-implementation silently drifts.
#include "tokenizer/jinja_parser.h"

#include <charconv>
#include <cmath>

#include "core/error.h"
#include "tokenizer/jinja_builtins.h"

namespace swiftkv::jinja {
namespace {

// Python's recursion limit stops jinja2 at a similar depth; this keeps the C++ stack small.
constexpr int kMaxNesting = 512;
constexpr int kMaxStatementNesting = 100;

enum class Tok : uint8_t {
    Data, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer, Float,
    Add, Sub, Div, FloorDiv, Mul, Mod, Pow, Tilde, LBracket, RBracket, LParen, RParen, LBrace, RBrace,
    Eq, Ne, Gt, GtEq, Lt, LtEq, Assign, Dot, Colon, Pipe, Comma, Semicolon, Eof,
};

struct Token {
    Tok type = Tok::Eof;
    std::string text;  // name, string value, data, operator spelling
    int64_t int_value = 0;
    double float_value = 0;
    int line = 1;
    int column = 1;
};

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

// ---------------------------------------------------------------------------------------------
// Lexer

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

// ---------------------------------------------------------------------------------------------
// Parser

class Parser {
public:
    explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

    StmtList parse() { return subparse({}); }

private:
    struct DepthGuard {
        explicit DepthGuard(Parser& p) : parser(p) {
            if (++parser.depth_ > kMaxNesting) parser.fail("template is nested too deeply");
            parser.stack_.check();
        }
        ~DepthGuard() { --parser.depth_; }
        Parser& parser;
    };

    // Left-associative chains (a + b + c, x|f|g, obj.a.b) nest one node deeper per link without
    // recursing in the parser; each link counts as a nesting level so the tree stays shallow
    // enough for the recursive evaluator and destructors.
    struct ChainGuard {
        explicit ChainGuard(Parser& p) : parser(p), saved(p.depth_) {}
        void link() {
            if (++parser.depth_ > kMaxNesting) parser.fail("template is nested too deeply");
        }
        ~ChainGuard() { parser.depth_ = saved; }
        Parser& parser;
        int saved;
    };

    const Token& current() const { return tokens_[index_]; }
    const Token& look() const { return tokens_[std::min(index_ + 1, tokens_.size() - 1)]; }
    const Token& next() {
        const Token& t = tokens_[index_];
        if (index_ + 1 < tokens_.size()) ++index_;
        return t;
    }
    bool at(Tok type) const { return current().type == type; }
    bool at_name(std::string_view value) const { return at(Tok::Name) && current().text == value; }
    bool skip_if(Tok type) {
        if (!at(type)) return false;
        next();
        return true;
    }
    bool skip_if_name(std::string_view value) {
        if (!at_name(value)) return false;
        next();
        return true;
    }

    [[noreturn]] void fail(const std::string& message) const { fail_at(message, current()); }
    [[noreturn]] void fail_at(const std::string& message, const Token& t) const {
        SKV_THROW("chat template syntax error: {} (line {}, column {})", message, t.line, t.column);
    }

    const Token& expect(Tok type) {
        if (!at(type)) {
            if (at(Tok::Eof)) fail(fmt::format("unexpected end of template, expected {}", describe(type)));
            fail(fmt::format("expected token {}, got {}", describe(type), describe(current())));
        }
        return next();
    }
    void expect_name(std::string_view value) {
        if (!at_name(value)) fail(fmt::format("expected token '{}', got {}", value, describe(current())));
        next();
    }

    ExprPtr make(ExprKind kind, int line) {
        auto e = std::make_unique<Expr>();
        e->kind = kind;
        e->line = line;
        return e;
    }

    // --- statements

    using EndTags = std::vector<std::string_view>;

    bool at_end_tag(const EndTags& end_tags) const {
        if (!at(Tok::Name)) return false;
        for (auto tag : end_tags)
            if (current().text == tag) return true;
        return false;
    }

    StmtList subparse(const EndTags& end_tags) {
        // Statements nest far less than expressions in real templates (jinja2's own compiler
        // refuses more than 20 nested loops); a tight limit keeps parse and render stacks small.
        if (++statement_depth_ > kMaxStatementNesting) fail("template statements are nested too deeply");
        struct Restore {
            int& depth;
            ~Restore() { --depth; }
        } restore{statement_depth_};
        StmtList body;
        while (!at(Tok::Eof)) {
            const Token& t = current();
            if (t.type == Tok::Data) {
                auto s = std::make_unique<Stmt>();
                s->kind = StmtKind::Output;
                s->line = t.line;
                s->text = t.text;
                body.push_back(std::move(s));
                next();
            } else if (t.type == Tok::VariableBegin) {
                next();
                auto s = std::make_unique<Stmt>();
                s->kind = StmtKind::Print;
                s->line = t.line;
                s->expr = parse_tuple(false, true, {}, false);
                expect(Tok::VariableEnd);
                body.push_back(std::move(s));
            } else if (t.type == Tok::BlockBegin) {
                next();
                if (!end_tags.empty() && at_end_tag(end_tags)) return body;
                body.push_back(parse_statement());
                expect(Tok::BlockEnd);
            } else {
                fail("internal parsing error");
            }
        }
        return body;
    }

    StmtList parse_statements(const EndTags& end_tags, bool drop_needle) {
        skip_if(Tok::Colon);
        expect(Tok::BlockEnd);
        StmtList body = subparse(end_tags);
        if (at(Tok::Eof)) {
            std::string expected;
            for (size_t i = 0; i < end_tags.size(); ++i)
                expected += (i ? " or '" : "'") + std::string(end_tags[i]) + "'";
            fail(fmt::format("unexpected end of template: looking for {}", expected));
        }
        if (drop_needle) next();
        return body;
    }

    StmtPtr new_stmt(StmtKind kind, int line) {
        auto s = std::make_unique<Stmt>();
        s->kind = kind;
        s->line = line;
        return s;
    }

    StmtPtr parse_statement() {
        const Token& t = current();
        if (t.type != Tok::Name) fail("tag name expected");
        const std::string& tag = t.text;
        if (tag == "if") return parse_if();
        if (tag == "for") return parse_for();
        if (tag == "set") return parse_set();
        if (tag == "macro") return parse_macro();
        if (tag == "call") return parse_call_block();
        if (tag == "filter") return parse_filter_block();
        if (tag == "with") return parse_with();
        if (tag == "print") return parse_print();
        if (tag == "break" || tag == "continue") {
            if (loop_depth_ == 0) fail(fmt::format("'{}' outside loop", tag));
            auto s = new_stmt(tag == "break" ? StmtKind::Break : StmtKind::Continue, t.line);
            next();
            return s;
        }
        if (tag == "generation") {
            // transformers implements it as a call block: the body is a function, outside any loop.
            auto s = new_stmt(StmtKind::Scope, t.line);
            next();
            int saved = loop_depth_;
            loop_depth_ = 0;
            s->body = parse_statements({"endgeneration"}, true);
            loop_depth_ = saved;
            return s;
        }
        if (tag == "block" || tag == "extends" || tag == "include" || tag == "import" || tag == "from" ||
            tag == "autoescape")
            fail(fmt::format("the '{}' tag is not supported in chat templates", tag));
        fail(fmt::format("Encountered unknown tag '{}'", tag));
    }

    StmtPtr parse_if() {
        auto s = new_stmt(StmtKind::If, current().line);
        next();
        while (true) {
            ExprPtr test = parse_tuple(false, false, {}, false);
            StmtList body = parse_statements({"elif", "else", "endif"}, false);
            s->branches.emplace_back(std::move(test), std::move(body));
            const std::string& tag = next().text;
            if (tag == "elif") continue;
            if (tag == "else") s->else_body = parse_statements({"endif"}, true);
            return s;
        }
    }

    StmtPtr parse_for() {
        auto s = new_stmt(StmtKind::For, current().line);
        next();
        s->target = parse_assign_target(true, false, {"in"}, false);
        expect_name("in");
        s->expr = parse_tuple(false, false, {"recursive"}, false);
        if (skip_if_name("if")) s->condition = parse_expression(true);
        s->recursive = skip_if_name("recursive");
        ++loop_depth_;
        s->body = parse_statements({"endfor", "else"}, false);
        --loop_depth_;
        if (next().text != "endfor") s->else_body = parse_statements({"endfor"}, true);
        return s;
    }

    StmtPtr parse_set() {
        int line = current().line;
        next();
        ExprPtr target = parse_assign_target(true, false, {}, true);
        if (skip_if(Tok::Assign)) {
            auto s = new_stmt(StmtKind::Set, line);
            s->target = std::move(target);
            s->expr = parse_tuple(false, true, {}, false);
            return s;
        }
        auto s = new_stmt(StmtKind::SetBlock, line);
        s->target = std::move(target);
        s->filter = parse_filter(nullptr, false);
        s->body = parse_statements({"endset"}, true);
        return s;
    }

    void parse_signature(Stmt& s) {
        expect(Tok::LParen);
        while (!at(Tok::RParen)) {
            if (!s.params.empty()) expect(Tok::Comma);
            const Token& name = expect(Tok::Name);
            if (skip_if(Tok::Assign)) {
                s.defaults.push_back(parse_expression(true));
            } else if (!s.defaults.empty()) {
                fail("non-default argument follows default argument");
            }
            s.params.push_back(name.text);
        }
        expect(Tok::RParen);
    }

    StmtPtr parse_macro() {
        auto s = new_stmt(StmtKind::Macro, current().line);
        next();
        s->name = expect(Tok::Name).text;
        parse_signature(*s);
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endmacro"}, true);
        loop_depth_ = saved;
        return s;
    }

    StmtPtr parse_call_block() {
        auto s = new_stmt(StmtKind::CallBlock, current().line);
        next();
        if (at(Tok::LParen)) parse_signature(*s);
        s->expr = parse_expression(true);
        if (s->expr->kind != ExprKind::Call) fail("expected call");
        int saved = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_statements({"endcall"}, true);
        loop_depth_ = saved;
        return s;
    }

    StmtPtr parse_filter_block() {
        auto s = new_stmt(StmtKind::FilterBlock, current().line);
        next();
        s->filter = parse_filter(nullptr, true);
        s->body = parse_statements({"endfilter"}, true);
        return s;
    }

    StmtPtr parse_with() {
        auto s = new_stmt(StmtKind::With, current().line);
        next();
        while (!at(Tok::BlockEnd)) {
            if (!s->assignments.empty()) expect(Tok::Comma);
            ExprPtr target = parse_assign_target(true, false, {}, false);
            expect(Tok::Assign);
            s->assignments.emplace_back(std::move(target), parse_expression(true));
        }
        s->body = parse_statements({"endwith"}, true);
        return s;
    }

    StmtPtr parse_print() {
        // {% print a, b %} prints each value in turn, like {{ a }}{{ b }}. A Scope holds the Print
        // statements (printing assigns nothing, so its own scope changes nothing).
        int line = current().line;
        next();
        auto s = new_stmt(StmtKind::Scope, line);
        while (!at(Tok::BlockEnd)) {
            if (!s->body.empty()) expect(Tok::Comma);
            auto p = new_stmt(StmtKind::Print, current().line);
            p->expr = parse_expression(true);
            s->body.push_back(std::move(p));
        }
        return s;
    }

    // --- expressions

    ExprPtr parse_assign_target(bool with_tuple, bool name_only, const EndTags& extra_end, bool with_namespace) {
        ExprPtr target;
        if (with_namespace && look().type == Tok::Dot) {
            const Token& ns = expect(Tok::Name);
            next();
            const Token& attr = expect(Tok::Name);
            target = make(ExprKind::NsRef, ns.line);
            target->name = ns.text;
            target->attribute = attr.text;
            return target;
        }
        if (name_only) {
            const Token& t = expect(Tok::Name);
            target = make(ExprKind::Name, t.line);
            target->name = t.text;
        } else if (with_tuple) {
            target = parse_tuple(true, true, extra_end, false);
        } else {
            target = parse_primary();
        }
        check_assignable(*target);
        return target;
    }

    void check_assignable(const Expr& e) {
        if (e.kind == ExprKind::Name) {
            if (e.name == "true" || e.name == "false" || e.name == "none" || e.name == "True" ||
                e.name == "False" || e.name == "None")
                fail(fmt::format("can't assign to '{}'", e.name));
            return;
        }
        if (e.kind == ExprKind::Tuple) {
            for (const auto& item : e.operands) check_assignable(*item);
            return;
        }
        fail("can't assign to this expression");
    }

    ExprPtr parse_expression(bool with_condexpr) {
        DepthGuard guard(*this);
        return with_condexpr ? parse_condexpr() : parse_or();
    }

    ExprPtr parse_condexpr() {
        DepthGuard guard(*this);
        int line = current().line;
        ExprPtr expr1 = parse_or();
        ChainGuard chain(*this);
        while (skip_if_name("if")) {
            chain.link();
            ExprPtr expr2 = parse_or();
            ExprPtr expr3;
            if (skip_if_name("else")) expr3 = parse_condexpr();
            auto cond = make(ExprKind::Cond, line);
            cond->operands.push_back(std::move(expr1));
            cond->operands.push_back(std::move(expr2));
            cond->operands.push_back(std::move(expr3));
            expr1 = std::move(cond);
        }
        return expr1;
    }

    ExprPtr binary(ExprKind kind, ExprPtr a, ExprPtr b, int line) {
        auto e = make(kind, line);
        e->operands.push_back(std::move(a));
        e->operands.push_back(std::move(b));
        return e;
    }

    ExprPtr parse_or() {
        int line = current().line;
        ExprPtr left = parse_and();
        ChainGuard chain(*this);
        while (skip_if_name("or")) {
            chain.link();
            left = binary(ExprKind::Or, std::move(left), parse_and(), line);
        }
        return left;
    }

    ExprPtr parse_and() {
        int line = current().line;
        ExprPtr left = parse_not();
        ChainGuard chain(*this);
        while (skip_if_name("and")) {
            chain.link();
            left = binary(ExprKind::And, std::move(left), parse_not(), line);
        }
        return left;
    }

    ExprPtr parse_not() {
        DepthGuard guard(*this);
        if (at_name("not")) {
            int line = next().line;
            auto e = make(ExprKind::Not, line);
            e->operands.push_back(parse_not());
            return e;
        }
        return parse_compare();
    }

    ExprPtr parse_compare() {
        int line = current().line;
        ExprPtr expr = parse_math1();
        std::vector<CompareOp> ops;
        std::vector<ExprPtr> operands;
        while (true) {
            Tok t = current().type;
            std::optional<CompareOp> op;
            switch (t) {
                case Tok::Eq: op = CompareOp::Eq; break;
                case Tok::Ne: op = CompareOp::Ne; break;
                case Tok::Lt: op = CompareOp::Lt; break;
                case Tok::LtEq: op = CompareOp::Le; break;
                case Tok::Gt: op = CompareOp::Gt; break;
                case Tok::GtEq: op = CompareOp::Ge; break;
                default: break;
            }
            if (op) {
                next();
            } else if (skip_if_name("in")) {
                op = CompareOp::In;
            } else if (at_name("not") && look().type == Tok::Name && look().text == "in") {
                next();
                next();
                op = CompareOp::NotIn;
            } else {
                break;
            }
            ops.push_back(*op);
            operands.push_back(parse_math1());
        }
        if (ops.empty()) return expr;
        auto e = make(ExprKind::Compare, line);
        e->operands.push_back(std::move(expr));
        for (auto& o : operands) e->operands.push_back(std::move(o));
        e->compare_ops = std::move(ops);
        return e;
    }

    ExprPtr arith(BinaryOp op, ExprPtr a, ExprPtr b, int line) {
        auto e = binary(ExprKind::Binary, std::move(a), std::move(b), line);
        e->op = op;
        return e;
    }

    ExprPtr parse_math1() {
        int line = current().line;
        ExprPtr left = parse_concat();
        ChainGuard chain(*this);
        while (at(Tok::Add) || at(Tok::Sub)) {
            chain.link();
            BinaryOp op = next().type == Tok::Add ? BinaryOp::Add : BinaryOp::Sub;
            left = arith(op, std::move(left), parse_concat(), line);
        }
        return left;
    }

    ExprPtr parse_concat() {
        int line = current().line;
        ExprPtr first = parse_math2();
        if (!at(Tok::Tilde)) return first;
        auto e = make(ExprKind::Concat, line);
        e->operands.push_back(std::move(first));
        while (skip_if(Tok::Tilde)) e->operands.push_back(parse_math2());
        return e;
    }

    ExprPtr parse_math2() {
        int line = current().line;
        ExprPtr left = parse_pow();
        ChainGuard chain(*this);
        while (at(Tok::Mul) || at(Tok::Div) || at(Tok::FloorDiv) || at(Tok::Mod)) {
            chain.link();
            Tok t = next().type;
            BinaryOp op = t == Tok::Mul ? BinaryOp::Mul : t == Tok::Div ? BinaryOp::Div
                        : t == Tok::FloorDiv ? BinaryOp::FloorDiv : BinaryOp::Mod;
            left = arith(op, std::move(left), parse_pow(), line);
        }
        return left;
    }

    ExprPtr parse_pow() {
        int line = current().line;
        ExprPtr left = parse_unary(true);
        ChainGuard chain(*this);
        while (skip_if(Tok::Pow)) {
            chain.link();
            left = arith(BinaryOp::Pow, std::move(left), parse_unary(true), line);
        }
        return left;
    }

    ExprPtr parse_unary(bool with_filter) {
        DepthGuard guard(*this);
        int line = current().line;
        ExprPtr node;
        if (skip_if(Tok::Sub)) {
            node = make(ExprKind::Neg, line);
            node->operands.push_back(parse_unary(false));
        } else if (skip_if(Tok::Add)) {
            node = make(ExprKind::Pos, line);
            node->operands.push_back(parse_unary(false));
        } else {
            node = parse_primary();
        }
        node = parse_postfix(std::move(node));
        if (with_filter) node = parse_filter_expr(std::move(node));
        return node;
    }

    ExprPtr parse_primary() {
        const Token& t = current();
        ExprPtr node;
        switch (t.type) {
            case Tok::Name:
                if (t.text == "true" || t.text == "false" || t.text == "True" || t.text == "False") {
                    node = make(ExprKind::Const, t.line);
                    node->value = Value(t.text == "true" || t.text == "True");
                } else if (t.text == "none" || t.text == "None") {
                    node = make(ExprKind::Const, t.line);
                    node->value = Value::none();
                } else {
                    node = make(ExprKind::Name, t.line);
                    node->name = t.text;
                }
                next();
                return node;
            case Tok::String: {
                node = make(ExprKind::Const, t.line);
                std::string s = next().text;
                while (at(Tok::String)) s += next().text;
                node->value = Value(std::move(s));
                return node;
            }
            case Tok::Integer:
                node = make(ExprKind::Const, t.line);
                node->value = Value(next().int_value);
                return node;
            case Tok::Float:
                node = make(ExprKind::Const, t.line);
                node->value = Value(next().float_value);
                return node;
            case Tok::LParen:
                next();
                node = parse_tuple(false, true, {}, true);
                expect(Tok::RParen);
                return node;
            case Tok::LBracket: return parse_list();
            case Tok::LBrace: return parse_dict();
            default:
                if (t.type == Tok::Eof) fail("unexpected end of template");
                fail(fmt::format("unexpected {}", describe(t)));
        }
    }

    bool is_tuple_end(const EndTags& extra_end) const {
        Tok t = current().type;
        if (t == Tok::VariableEnd || t == Tok::BlockEnd || t == Tok::RParen) return true;
        return !extra_end.empty() && at_end_tag(extra_end);
    }

    ExprPtr parse_tuple(bool simplified, bool with_condexpr, const EndTags& extra_end, bool explicit_parentheses) {
        int line = current().line;
        std::vector<ExprPtr> args;
        bool is_tuple = false;
        while (true) {
            if (!args.empty()) expect(Tok::Comma);
            if (is_tuple_end(extra_end)) break;
            if (simplified) {
                DepthGuard guard(*this);
                args.push_back(parse_primary());
            } else {
                args.push_back(parse_expression(with_condexpr));
            }
            if (at(Tok::Comma)) {
                is_tuple = true;
            } else {
                break;
            }
        }
        if (!is_tuple) {
            if (!args.empty()) return std::move(args[0]);
            if (!explicit_parentheses) fail(fmt::format("Expected an expression, got {}", describe(current())));
        }
        auto e = make(ExprKind::Tuple, line);
        e->operands = std::move(args);
        return e;
    }

    ExprPtr parse_list() {
        auto e = make(ExprKind::List, expect(Tok::LBracket).line);
        while (!at(Tok::RBracket)) {
            if (!e->operands.empty()) expect(Tok::Comma);
            if (at(Tok::RBracket)) break;
            e->operands.push_back(parse_expression(true));
        }
        expect(Tok::RBracket);
        return e;
    }

    ExprPtr parse_dict() {
        auto e = make(ExprKind::Dict, expect(Tok::LBrace).line);
        while (!at(Tok::RBrace)) {
            if (!e->operands.empty()) expect(Tok::Comma);
            if (at(Tok::RBrace)) break;
            e->operands.push_back(parse_expression(true));
            expect(Tok::Colon);
            e->operands.push_back(parse_expression(true));
        }
        expect(Tok::RBrace);
        return e;
    }

    ExprPtr parse_postfix(ExprPtr node) {
        ChainGuard chain(*this);
        while (true) {
            if (at(Tok::Dot) || at(Tok::LBracket)) {
                chain.link();
                node = parse_subscript(std::move(node));
            } else if (at(Tok::LParen)) {
                chain.link();
                node = parse_call(std::move(node));
            } else {
                return node;
            }
        }
    }

    ExprPtr parse_filter_expr(ExprPtr node) {
        ChainGuard chain(*this);
        while (true) {
            if (at(Tok::Pipe)) {
                chain.link();
                node = parse_filter(std::move(node), false);
            } else if (at_name("is")) {
                chain.link();
                node = parse_test(std::move(node));
            } else if (at(Tok::LParen)) {
                chain.link();
                node = parse_call(std::move(node));
            } else {
                return node;
            }
        }
    }

    ExprPtr parse_subscript(ExprPtr node) {
        const Token& t = next();
        if (t.type == Tok::Dot) {
            const Token& attr = current();
            next();
            if (attr.type == Tok::Name) {
                auto e = make(ExprKind::Getattr, t.line);
                e->operands.push_back(std::move(node));
                e->name = attr.text;
                return e;
            }
            if (attr.type != Tok::Integer) fail_at("expected name or number", attr);
            auto e = make(ExprKind::Getitem, t.line);
            e->operands.push_back(std::move(node));
            auto index = make(ExprKind::Const, attr.line);
            index->value = Value(attr.int_value);
            e->operands.push_back(std::move(index));
            return e;
        }
        // '['
        std::vector<ExprPtr> args;
        while (!at(Tok::RBracket)) {
            if (!args.empty()) expect(Tok::Comma);
            args.push_back(parse_subscribed());
        }
        expect(Tok::RBracket);
        auto e = make(ExprKind::Getitem, t.line);
        e->operands.push_back(std::move(node));
        if (args.size() == 1) {
            e->operands.push_back(std::move(args[0]));
        } else {
            auto tuple = make(ExprKind::Tuple, t.line);
            tuple->operands = std::move(args);
            e->operands.push_back(std::move(tuple));
        }
        return e;
    }

    ExprPtr parse_subscribed() {
        int line = current().line;
        std::vector<ExprPtr> args;
        if (at(Tok::Colon)) {
            next();
            args.push_back(nullptr);
        } else {
            ExprPtr node = parse_expression(true);
            if (!at(Tok::Colon)) return node;
            next();
            args.push_back(std::move(node));
        }
        if (at(Tok::Colon)) {
            args.push_back(nullptr);
        } else if (!at(Tok::RBracket) && !at(Tok::Comma)) {
            args.push_back(parse_expression(true));
        } else {
            args.push_back(nullptr);
        }
        if (skip_if(Tok::Colon)) {
            if (!at(Tok::RBracket) && !at(Tok::Comma)) {
                args.push_back(parse_expression(true));
            } else {
                args.push_back(nullptr);
            }
        } else {
            args.push_back(nullptr);
        }
        auto e = make(ExprKind::Slice, line);
        e->operands = std::move(args);
        return e;
    }

    // Fills operands (after the first), keywords and star args of a Call/Filter/Test node.
    void parse_call_args(Expr& e) {
        expect(Tok::LParen);
        bool require_comma = false;
        while (!at(Tok::RParen)) {
            if (require_comma) {
                expect(Tok::Comma);
                if (at(Tok::RParen)) break;
            }
            if (skip_if(Tok::Mul)) {
                if (e.star_args || e.star_kwargs) fail("invalid syntax for function call expression");
                e.star_args = parse_expression(true);
            } else if (skip_if(Tok::Pow)) {
                if (e.star_kwargs) fail("invalid syntax for function call expression");
                e.star_kwargs = parse_expression(true);
            } else if (at(Tok::Name) && look().type == Tok::Assign) {
                if (e.star_kwargs) fail("invalid syntax for function call expression");
                std::string key = next().text;
                next();
                e.keywords.emplace_back(std::move(key), parse_expression(true));
            } else {
                if (e.star_args || e.star_kwargs || !e.keywords.empty())
                    fail("invalid syntax for function call expression");
                e.operands.push_back(parse_expression(true));
            }
            require_comma = true;
        }
        expect(Tok::RParen);
    }

    ExprPtr parse_call(ExprPtr node) {
        auto e = make(ExprKind::Call, current().line);
        e->operands.push_back(std::move(node));
        parse_call_args(*e);
        return e;
    }

    std::string parse_dotted_name() {
        std::string name = expect(Tok::Name).text;
        while (skip_if(Tok::Dot)) name += "." + expect(Tok::Name).text;
        return name;
    }

    ExprPtr parse_filter(ExprPtr node, bool start_inline) {
        ChainGuard chain(*this);
        while (at(Tok::Pipe) || start_inline) {
            chain.link();
            if (!start_inline) next();
            const Token& name_token = current();
            std::string name = parse_dotted_name();
            auto e = make(ExprKind::Filter, name_token.line);
            e->unknown = !is_filter(name);
            e->name = std::move(name);
            e->operands.push_back(std::move(node));
            if (at(Tok::LParen)) parse_call_args(*e);
            node = std::move(e);
            start_inline = false;
        }
        return node;
    }

    ExprPtr parse_test(ExprPtr node) {
        int line = next().line;  // 'is'
        bool negated = skip_if_name("not");
        const Token& name_token = current();
        std::string name = parse_dotted_name();
        auto e = make(ExprKind::Test, name_token.line);
        e->unknown = !is_test(name);
        e->name = std::move(name);
        e->operands.push_back(std::move(node));
        Tok t = current().type;
        if (t == Tok::LParen) {
            parse_call_args(*e);
        } else if ((t == Tok::Name || t == Tok::String || t == Tok::Integer || t == Tok::Float ||
                    t == Tok::LBracket || t == Tok::LBrace) &&
                   !(at_name("else") || at_name("or") || at_name("and"))) {
            if (at_name("is")) fail("You cannot chain multiple tests with is");
            ExprPtr arg = parse_postfix(parse_primary());
            e->operands.push_back(std::move(arg));
        }
        if (!negated) return e;
        auto n = make(ExprKind::Not, line);
        n->operands.push_back(std::move(e));
        return n;
    }

    std::vector<Token> tokens_;
    size_t index_ = 0;
    StackGuard stack_;
    int depth_ = 0;
    int statement_depth_ = 0;
    int loop_depth_ = 0;
};

// jinja2 looks filters and tests up when compiling, except inside "soft" frames — an if
// statement (test and branches) or an inline if — where a missing one fails only when reached.
// Loop, macro and block bodies open new frames, which are never soft.
void check_unknown_names(const Expr* e, bool soft);

void check_unknown_names(const StmtList& body, bool soft) {
    for (const auto& s : body) {
        switch (s->kind) {
            case StmtKind::If:
                for (const auto& [test, branch] : s->branches) {
                    check_unknown_names(test.get(), true);
                    check_unknown_names(branch, true);
                }
                check_unknown_names(s->else_body, true);
                break;
            case StmtKind::For:
                check_unknown_names(s->expr.get(), soft);
                check_unknown_names(s->condition.get(), false);
                check_unknown_names(s->body, false);
                check_unknown_names(s->else_body, false);
                break;
            case StmtKind::SetBlock:
                check_unknown_names(s->filter.get(), false);
                check_unknown_names(s->body, false);
                break;
            default:
                check_unknown_names(s->expr.get(), soft);
                check_unknown_names(s->filter.get(), soft);
                for (const auto& [target, value] : s->assignments) check_unknown_names(value.get(), soft);
                for (const auto& d : s->defaults) check_unknown_names(d.get(), false);
                check_unknown_names(s->body, false);
                check_unknown_names(s->else_body, false);
        }
    }
}

void check_unknown_names(const Expr* e, bool soft) {
    if (!e) return;
    if (e->kind == ExprKind::Cond) soft = true;
    if (e->unknown && !soft) {
        SKV_THROW("chat template syntax error: No {} named '{}'. (line {})",
                  e->kind == ExprKind::Filter ? "filter" : "test", e->name, e->line);
    }
    for (const auto& o : e->operands) check_unknown_names(o.get(), soft);
    for (const auto& [_, v] : e->keywords) check_unknown_names(v.get(), soft);
    check_unknown_names(e->star_args.get(), soft);
    check_unknown_names(e->star_kwargs.get(), soft);
}

}  // namespace

StmtList parse_template(const std::string& source) {
    Lexer lexer(source);
    Parser parser(lexer.run());
    StmtList body = parser.parse();
    check_unknown_names(body, false);
    return body;
}

}  // namespace swiftkv::jinja
