// jinja_value.cpp — Python semantics on interpreter values: formatting, comparison, arithmetic,
// json.dumps, % formatting and the code-point string helpers (see jinja_value.h).
#include "tokenizer/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include <pthread.h>

#include "core/error.h"

namespace swiftkv::jinja {

[[noreturn]] void fail(const std::string& message) { SKV_THROW("chat template error: {}", message); }

[[noreturn]] void fail_undefined(const Value& undefined) {
    const std::string& hint = undefined.undefined_hint();
    fail(hint.empty() ? std::string("value is undefined") : hint);
}

int container_depth(const ValueList& values) {
    int depth = 0;
    for (const Value& v : values) depth = std::max(depth, v.nesting());
    if (depth + 1 > kMaxValueDepth) fail("a value is nested too deeply (more than 256 levels)");
    return depth + 1;
}

int Value::nesting() const {
    switch (type()) {
        case Type::List: return std::get<ListBox>(data_).depth;
        case Type::Tuple: return std::get<TupleBox>(data_).depth;
        case Type::Dict: return as_dict().depth;
        case Type::Function: return as_function().depth;
        case Type::Loop: return as_loop()->depth;
        case Type::Iterator: return as_iterator().depth;
        default: return 0;
    }
}

StackGuard::StackGuard() {
    // Keep this much stack unused: enough for the deepest non-recursive call chain below a check
    // (formatting, sorting, libstdc++), with room for sanitizer builds' larger frames.
    constexpr uintptr_t kReserve = 128 * 1024;
    auto here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    uintptr_t lowest = 0;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void* addr = nullptr;
        size_t size = 0;
        if (pthread_attr_getstack(&attr, &addr, &size) == 0) lowest = reinterpret_cast<uintptr_t>(addr);
        pthread_attr_destroy(&attr);
    }
    if (lowest == 0 || lowest >= here) lowest = here > (512u << 10) ? here - (512u << 10) : 0;  // unknown: assume 512 KB
    limit_ = here - lowest > 2 * kReserve ? lowest + kReserve : here - (here - lowest) / 2;
}

void StackGuard::fail_deep() { fail("the template recurses too deeply for the available stack"); }

Value Value::list(ValueList items) {
    if (items.size() > kMaxListItems) fail("list is too large");
    int depth = container_depth(items);
    return Value(Storage(ListBox{std::make_shared<const ValueList>(std::move(items)), depth}));
}

Value Value::tuple(ValueList items) {
    if (items.size() > kMaxListItems) fail("tuple is too large");
    int depth = container_depth(items);
    return Value(Storage(TupleBox{std::make_shared<const ValueList>(std::move(items)), depth}));
}

Value Value::dict(DictData d) {
    int depth = 0;
    for (const auto& [k, v] : d.entries) depth = std::max({depth, k.nesting(), v.nesting()});
    if (depth + 1 > kMaxValueDepth) fail("a value is nested too deeply (more than 256 levels)");
    d.depth = depth + 1;
    return Value(Storage(std::shared_ptr<const DictData>(std::make_shared<DictData>(std::move(d)))));
}

Value Value::loop(std::shared_ptr<LoopState> s) {
    s->depth = container_depth(*s->items);
    return Value(Storage(std::move(s)));
}
Value Value::iterator(std::string kind, ValueList items) {
    auto state = std::make_shared<IteratorState>();
    state->kind = std::move(kind);
    state->depth = container_depth(items);
    state->items = std::move(items);
    return Value(Storage(std::move(state)));
}

Value Value::generator(std::function<ValueList()> producer, int captured_depth) {
    if (captured_depth + 1 > kMaxValueDepth) fail("a value is nested too deeply (more than 256 levels)");
    auto state = std::make_shared<IteratorState>();
    state->kind = "generator";
    state->depth = captured_depth + 1;
    state->pending = std::move(producer);
    return Value(Storage(std::move(state)));
}

Value Value::function(std::string name, std::function<Value(CallArgs&)> fn, int captured_depth) {
    if (captured_depth + 1 > kMaxValueDepth) fail("a value is nested too deeply (more than 256 levels)");
    auto f = std::make_shared<Function>();
    f->name = std::move(name);
    f->call = std::move(fn);
    f->depth = captured_depth + 1;
    return Value(Storage(std::move(f)));
}

const ValueList& Value::items() const { return *items_ptr(); }

const std::shared_ptr<const ValueList>& Value::items_ptr() const {
    if (is_list()) return std::get<ListBox>(data_).items;
    return std::get<TupleBox>(data_).items;
}

std::string Value::type_name() const {
    switch (type()) {
        case Type::Undefined: return "Undefined";
        case Type::None: return "NoneType";
        case Type::Bool: return "bool";
        case Type::Int: return "int";
        case Type::Float: return "float";
        case Type::String: return "str";
        case Type::List: return "list";
        case Type::Tuple: return "tuple";
        case Type::Dict: return "dict";
        case Type::Namespace: return "Namespace";
        case Type::Function: return "function";
        case Type::Loop: return "LoopContext";
        case Type::Iterator: return as_iterator().kind;
    }
    return "object";
}

const Value* DictData::find(const Value& key) const {
    if (key.is_string()) return find(std::string_view(key.as_string()));
    if (key.is_list() || key.is_dict()) return nullptr;  // unhashable: never a key
    for (const auto& [k, v] : entries)
        if (equals(k, key)) return &v;
    return nullptr;
}

const Value* DictData::find(std::string_view key) const {
    for (const auto& [k, v] : entries)
        if (k.is_string() && k.as_string() == key) return &v;
    return nullptr;
}

void DictData::set(Value key, Value value) {
    for (auto& [k, v] : entries) {
        if (equals(k, key)) {
            v = std::move(value);
            return;
        }
    }
    entries.emplace_back(std::move(key), std::move(value));
}

// ---------------------------------------------------------------------------------------------
// UTF-8

std::u32string utf8_decode(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        auto b0 = static_cast<unsigned char>(s[i]);
        if (b0 < 0x80) {
            out.push_back(b0);
            ++i;
            continue;
        }
        int len = b0 >= 0xF0 && b0 < 0xF5 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC2 && b0 < 0xE0 ? 2 : 0;
        if (b0 >= 0xF5) len = 0;
        char32_t c = len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
        bool ok = len > 0 && i + len <= s.size();
        for (int k = 1; ok && k < len; ++k) {
            auto b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xC0) != 0x80) ok = false;
            c = (c << 6) | (b & 0x3F);
        }
        if (ok && ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
                   (c >= 0xD800 && c <= 0xDFFF)))
            ok = false;
        if (!ok) {
            out.push_back(0xDC00 + b0);  // surrogateescape
            ++i;
            continue;
        }
        out.push_back(c);
        i += len;
    }
    return out;
}

void utf8_append(std::string& out, char32_t c) {
    if (c < 0x80) {
        out.push_back(char(c));
    } else if (c < 0x800) {
        out.push_back(char(0xC0 | (c >> 6)));
        out.push_back(char(0x80 | (c & 0x3F)));
    } else if (c >= 0xDC80 && c <= 0xDCFF) {
        out.push_back(char(c - 0xDC00));  // a byte that was not valid UTF-8
    } else if (c < 0x10000) {
        out.push_back(char(0xE0 | (c >> 12)));
        out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(char(0x80 | (c & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (c >> 18)));
        out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(char(0x80 | (c & 0x3F)));
    }
}

std::string utf8_encode(std::u32string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char32_t c : s) utf8_append(out, c);
    return out;
}

bool is_ascii(std::string_view s) {
    for (char c : s)
        if (static_cast<unsigned char>(c) >= 0x80) return false;
    return true;
}

size_t utf8_length(std::string_view s) {
    if (is_ascii(s)) return s.size();
    return utf8_decode(s).size();
}

bool is_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

namespace {

// The regular parts of Latin Extended-B: digraphs (DŽ/Dž/dž, ...) and runs of upper/lower pairs.
char32_t latin_extended_b(char32_t c, bool upper) {
    for (char32_t base : {0x1C4u, 0x1C7u, 0x1CAu, 0x1F1u}) {
        if (c >= base && c <= base + 2) return upper ? base : base + 2;
    }
    auto pair = [&](char32_t first, char32_t last, bool upper_is_even) -> std::optional<char32_t> {
        if (c < first || c > last) return std::nullopt;
        bool is_upper = ((c & 1) == 0) == upper_is_even;
        if (upper) return is_upper ? c : (upper_is_even ? c - 1 : c - 1);
        return is_upper ? c + 1 : c;
    };
    if (auto r = pair(0x1CD, 0x1DC, false)) return *r;
    if (auto r = pair(0x1DE, 0x1EF, true)) return *r;
    if (auto r = pair(0x1F8, 0x21F, true)) return *r;
    if (auto r = pair(0x222, 0x233, true)) return *r;
    if (auto r = pair(0x246, 0x24F, true)) return *r;
    return c;
}

}  // namespace

// Simple case mappings for the scripts chat content commonly uses (Latin, Greek, Cyrillic,
// Armenian, fullwidth). Python knows all of Unicode; this covers what templates meet in practice.
char32_t to_upper(char32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
    if (c == 0xB5) return 0x39C;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
    if (c == 0xFF) return 0x178;
    if (c >= 0x100 && c <= 0x17F) {
        if (c == 0x131) return 'I';
        if (c == 0x17F) return 'S';
        if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c - 1 : c;
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
        return c;
    }
    if (c >= 0x180 && c <= 0x24F) return latin_extended_b(c, true);
    if (c >= 0x3B1 && c <= 0x3C9) return c == 0x3C2 ? 0x3A3 : c - 32;
    if (c == 0x3AC) return 0x386;
    if (c >= 0x3AD && c <= 0x3AF) return c - 37;
    if (c == 0x3CC) return 0x38C;
    if (c == 0x3CD || c == 0x3CE) return c - 63;
    if (c >= 0x430 && c <= 0x44F) return c - 32;
    if (c >= 0x450 && c <= 0x45F) return c - 80;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF)) return (c & 1) ? c - 1 : c;
    if (c >= 0x561 && c <= 0x586) return c - 48;
    if ((c >= 0x1E00 && c <= 0x1E95) || (c >= 0x1EA0 && c <= 0x1EFF)) return (c & 1) ? c - 1 : c;
    if (c >= 0xFF41 && c <= 0xFF5A) return c - 32;
    return c;
}

char32_t to_lower(char32_t c) {
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
    if (c >= 0x100 && c <= 0x17F) {
        if (c == 0x130) return 'i';
        if (c == 0x178) return 0xFF;
        if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c : c + 1;
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
        return c;
    }
    if (c >= 0x180 && c <= 0x24F) return latin_extended_b(c, false);
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF)) return (c & 1) ? c : c + 1;
    if (c >= 0x531 && c <= 0x556) return c + 48;
    if ((c >= 0x1E00 && c <= 0x1E95) || (c >= 0x1EA0 && c <= 0x1EFF)) return (c & 1) ? c : c + 1;
    if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
    return c;
}

namespace {

// Titlecase letters (Dž, Lj, Nj, Dz) are cased but neither upper nor lower case.
bool is_titlecase_letter(char32_t c) { return c == 0x1C5 || c == 0x1C8 || c == 0x1CB || c == 0x1F2; }

// Python's full case mappings where one character becomes several (SpecialCasing.txt).
const char* special_upper(char32_t c) {
    switch (c) {
        case 0xDF: return "SS";
        case 0x149: return "\xCA\xBCN";
        case 0x1F0: return "J\xCC\x8C";
        case 0xFB00: return "FF";
        case 0xFB01: return "FI";
        case 0xFB02: return "FL";
        case 0xFB03: return "FFI";
        case 0xFB04: return "FFL";
        case 0xFB05:
        case 0xFB06: return "ST";
        default: return nullptr;
    }
}

const char* special_title(char32_t c) {
    switch (c) {
        case 0xDF: return "Ss";
        case 0x149: return "\xCA\xBCN";
        case 0x1F0: return "J\xCC\x8C";
        case 0xFB00: return "Ff";
        case 0xFB01: return "Fi";
        case 0xFB02: return "Fl";
        case 0xFB03: return "Ffi";
        case 0xFB04: return "Ffl";
        case 0xFB05:
        case 0xFB06: return "St";
        default: return nullptr;
    }
}

char32_t to_title(char32_t c) {
    for (char32_t base : {0x1C4u, 0x1C7u, 0x1CAu, 0x1F1u})
        if (c >= base && c <= base + 2) return base + 1;
    return to_upper(c);
}

void append_upper(std::string& out, char32_t c) {
    if (const char* special = special_upper(c)) {
        out += special;
    } else {
        utf8_append(out, to_upper(c));
    }
}

void append_title(std::string& out, char32_t c) {
    if (const char* special = special_title(c)) {
        out += special;
    } else {
        utf8_append(out, to_title(c));
    }
}

// Lowercases u[i] with its context: a capital sigma ending a word becomes final sigma ς.
void append_lower(std::string& out, const std::u32string& u, size_t i) {
    char32_t c = u[i];
    if (c == 0x3A3) {
        bool after_cased = i > 0 && is_cased(u[i - 1]);
        bool before_cased = i + 1 < u.size() && is_cased(u[i + 1]);
        utf8_append(out, after_cased && !before_cased ? 0x3C2 : 0x3C3);
    } else if (c == 0x130) {
        out += "i\xCC\x87";
    } else {
        utf8_append(out, to_lower(c));
    }
}

}  // namespace

bool is_cased(char32_t c) {
    return to_upper(c) != c || to_lower(c) != c || c == 0xDF || c == 0x138 || c == 0x149 || c == 0x3C2 ||
           (c >= 0xFB00 && c <= 0xFB06) || is_titlecase_letter(c);
}

int decimal_value(char32_t c) {
    if (c >= '0' && c <= '9') return int(c - '0');
    // Unicode decimal digits (category Nd) come in runs of ten; these are the common scripts.
    static constexpr char32_t kZeros[] = {0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6,
                                          0xD66, 0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0xFF10};
    for (char32_t zero : kZeros)
        if (c >= zero && c < zero + 10) return int(c - zero);
    return -1;
}

bool is_digit(char32_t c) {
    // str.isdigit(): decimal digits plus superscripts and subscripts.
    return decimal_value(c) >= 0 || c == 0xB2 || c == 0xB3 || c == 0xB9 || c == 0x2070 || (c >= 0x2074 && c <= 0x2079) ||
           (c >= 0x2080 && c <= 0x2089);
}

bool is_alpha(char32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (is_cased(c)) return true;
    return c == 0xAA || c == 0xBA || (c >= 0x5D0 && c <= 0x5EA) || (c >= 0x620 && c <= 0x64A) ||
           (c >= 0x904 && c <= 0x939) || (c >= 0xE01 && c <= 0xE30) || (c >= 0x3041 && c <= 0x3096) ||
           (c >= 0x30A1 && c <= 0x30FA) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) ||
           (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x3134F);
}

bool is_word_char(char32_t c) { return c == '_' || is_alpha(c) || is_digit(c); }

namespace {

std::u32string chars_of(const std::optional<std::string>& chars) {
    return chars ? utf8_decode(*chars) : std::u32string();
}

bool in_strip_set(char32_t c, const std::optional<std::string>& chars, const std::u32string& set) {
    if (!chars) return is_space(c);
    return set.find(c) != std::u32string::npos;
}

}  // namespace

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
    std::u32string set = chars_of(chars);
    if (is_ascii(s) && (!chars || is_ascii(*chars))) {
        size_t b = 0, e = s.size();
        if (left)
            while (b < e && in_strip_set(static_cast<unsigned char>(s[b]), chars, set)) ++b;
        if (right)
            while (e > b && in_strip_set(static_cast<unsigned char>(s[e - 1]), chars, set)) --e;
        return std::string(s.substr(b, e - b));
    }
    std::u32string u = utf8_decode(s);
    size_t b = 0, e = u.size();
    if (left)
        while (b < e && in_strip_set(u[b], chars, set)) ++b;
    if (right)
        while (e > b && in_strip_set(u[e - 1], chars, set)) --e;
    return utf8_encode(std::u32string_view(u).substr(b, e - b));
}

std::string py_upper(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char32_t c : utf8_decode(s)) append_upper(out, c);
    return out;
}

std::string py_lower(std::string_view s) {
    std::u32string u = utf8_decode(s);
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < u.size(); ++i) append_lower(out, u, i);
    return out;
}

std::string py_title(std::string_view s) {
    std::u32string u = utf8_decode(s);
    std::string out;
    out.reserve(s.size());
    bool previous_cased = false;
    for (size_t i = 0; i < u.size(); ++i) {
        if (previous_cased) {
            append_lower(out, u, i);
        } else {
            append_title(out, u[i]);
        }
        previous_cased = is_cased(u[i]);
    }
    return out;
}

std::string py_capitalize(std::string_view s) {
    std::u32string u = utf8_decode(s);
    std::string out;
    for (size_t i = 0; i < u.size(); ++i) {
        if (i == 0) {
            append_title(out, u[0]);
        } else {
            append_lower(out, u, i);
        }
    }
    return out;
}

// str.islower() / str.isupper(): at least one cased character, and none of the other case.
bool py_islower(std::string_view s) {
    bool cased = false;
    for (char32_t c : utf8_decode(s)) {
        if (to_lower(c) != c || is_titlecase_letter(c)) return false;
        cased = cased || is_cased(c);
    }
    return cased;
}

bool py_isupper(std::string_view s) {
    bool cased = false;
    for (char32_t c : utf8_decode(s)) {
        if (to_upper(c) != c || special_upper(c) || is_titlecase_letter(c)) return false;
        cased = cased || is_cased(c);
    }
    return cased;
}

std::string py_swapcase(std::string_view s) {
    std::u32string u = utf8_decode(s);
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < u.size(); ++i) {
        char32_t c = u[i];
        if (is_titlecase_letter(c)) {
            utf8_append(out, c);
        } else if (to_lower(c) != c) {
            append_lower(out, u, i);
        } else if (to_upper(c) != c || special_upper(c)) {
            append_upper(out, c);
        } else {
            utf8_append(out, c);
        }
    }
    return out;
}

std::string py_casefold(std::string_view s) {
    std::string out;
    for (char32_t c : utf8_decode(py_lower(s))) {
        switch (c) {
            case 0xDF: out += "ss"; break;
            case 0x3C2: out += "\xCF\x83"; break;
            case 0x149: out += "\xCA\xBCn"; break;
            case 0xFB00: out += "ff"; break;
            case 0xFB01: out += "fi"; break;
            case 0xFB02: out += "fl"; break;
            case 0xFB03: out += "ffi"; break;
            case 0xFB04: out += "ffl"; break;
            case 0xFB05:
            case 0xFB06: out += "st"; break;
            default: utf8_append(out, c);
        }
    }
    return out;
}

std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
    std::vector<std::string> parts;
    if (maxsplit < 0) maxsplit = std::numeric_limits<int64_t>::max();
    if (!sep) {
        std::u32string u = utf8_decode(s);
        size_t i = 0, n = u.size();
        while (true) {
            while (i < n && is_space(u[i])) ++i;
            if (i >= n) break;
            if (int64_t(parts.size()) >= maxsplit) {
                parts.push_back(utf8_encode(std::u32string_view(u).substr(i)));
                break;
            }
            size_t j = i;
            while (j < n && !is_space(u[j])) ++j;
            parts.push_back(utf8_encode(std::u32string_view(u).substr(i, j - i)));
            i = j;
        }
        return parts;
    }
    if (sep->empty()) fail("empty separator");
    size_t start = 0;
    while (int64_t(parts.size()) < maxsplit) {
        size_t pos = s.find(*sep, start);
        if (pos == std::string_view::npos) break;
        parts.emplace_back(s.substr(start, pos - start));
        start = pos + sep->size();
    }
    parts.emplace_back(s.substr(start));
    return parts;
}

std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
    std::vector<std::string> parts;
    if (maxsplit < 0) return py_split(s, sep, maxsplit);
    if (!sep) {
        std::u32string u = utf8_decode(s);
        size_t n = u.size();
        while (true) {
            while (n > 0 && is_space(u[n - 1])) --n;
            if (n == 0) break;
            if (int64_t(parts.size()) >= maxsplit) {
                parts.push_back(utf8_encode(std::u32string_view(u).substr(0, n)));
                break;
            }
            size_t j = n;
            while (j > 0 && !is_space(u[j - 1])) --j;
            parts.push_back(utf8_encode(std::u32string_view(u).substr(j, n - j)));
            n = j;
        }
        std::reverse(parts.begin(), parts.end());
        return parts;
    }
    if (sep->empty()) fail("empty separator");
    size_t end = s.size();
    while (int64_t(parts.size()) < maxsplit) {
        if (end < sep->size()) break;
        size_t pos = s.rfind(*sep, end - sep->size());
        if (pos == std::string_view::npos) break;
        parts.emplace_back(s.substr(pos + sep->size(), end - pos - sep->size()));
        end = pos;
    }
    parts.emplace_back(s.substr(0, end));
    std::reverse(parts.begin(), parts.end());
    return parts;
}

std::vector<std::string> py_splitlines(std::string_view s, bool keepends) {
    std::u32string u = utf8_decode(s);
    std::vector<std::string> lines;
    size_t start = 0, i = 0;
    while (i < u.size()) {
        char32_t c = u[i];
        bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
                   c == 0x85 || c == 0x2028 || c == 0x2029;
        if (!brk) {
            ++i;
            continue;
        }
        size_t eol = i + 1;
        if (c == '\r' && eol < u.size() && u[eol] == '\n') ++eol;
        lines.push_back(utf8_encode(std::u32string_view(u).substr(start, (keepends ? eol : i) - start)));
        start = i = eol;
    }
    if (start < u.size()) lines.push_back(utf8_encode(std::u32string_view(u).substr(start)));
    return lines;
}

std::string py_replace(std::string_view s, std::string_view old_text, std::string_view new_text, int64_t count) {
    if (count < 0) count = std::numeric_limits<int64_t>::max();
    std::string out;
    if (old_text.empty()) {
        std::u32string u = utf8_decode(s);
        for (size_t i = 0; i <= u.size(); ++i) {
            if (count > 0) {
                out += new_text;
                --count;
            }
            if (i < u.size()) utf8_append(out, u[i]);
            if (out.size() > kMaxStringBytes) fail("string is too large");
        }
        return out;
    }
    size_t start = 0;
    while (count > 0) {
        size_t pos = s.find(old_text, start);
        if (pos == std::string_view::npos) break;
        out.append(s.substr(start, pos - start));
        out.append(new_text);
        if (out.size() > kMaxStringBytes) fail("string is too large");
        start = pos + old_text.size();
        --count;
    }
    out.append(s.substr(start));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Formatting

std::string format_float(double f) {
    if (std::isnan(f)) return "nan";
    if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
    std::string sci(buf, res.ptr);  // e.g. "-1.2345e+02", shortest round-trip digits
    bool negative = sci[0] == '-';
    if (negative) sci.erase(0, 1);
    size_t e_pos = sci.find('e');
    std::string digits = sci.substr(0, e_pos);
    int exponent = std::stoi(sci.substr(e_pos + 1));
    digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
    std::string out = negative ? "-" : "";
    if (exponent >= -4 && exponent < 16) {
        if (exponent >= 0) {
            std::string int_part, frac_part;
            if (int(digits.size()) <= exponent + 1) {
                int_part = digits + std::string(exponent + 1 - digits.size(), '0');
                frac_part = "0";
            } else {
                int_part = digits.substr(0, exponent + 1);
                frac_part = digits.substr(exponent + 1);
            }
            out += int_part + "." + frac_part;
        } else {
            out += "0." + std::string(-exponent - 1, '0') + digits;
        }
    } else {
        out += digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        char exp_buf[16];
        std::snprintf(exp_buf, sizeof exp_buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
        out += exp_buf;
    }
    return out;
}

namespace {

bool is_printable(char32_t c) {
    if (c < 0x20 || c == 0x7F) return false;
    if (c < 0x7F) return true;
    if (c <= 0xA0 || c == 0xAD) return false;
    if (c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
        (c >= 0x205F && c <= 0x2064) || (c >= 0x2066 && c <= 0x206F) || c == 0x3000 || c == 0xFEFF ||
        (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF) ||
        c >= 0xF0000)
        return false;
    return true;
}

}  // namespace

std::string repr_string(std::string_view s) {
    char quote = '\'';
    if (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos) quote = '"';
    std::string out(1, quote);
    for (char32_t c : utf8_decode(s)) {
        if (c == char32_t(quote) || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (!is_printable(c)) {
            char buf[16];
            if (c <= 0xFF) {
                std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
            } else if (c <= 0xFFFF) {
                std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
            } else {
                std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(c));
            }
            out += buf;
        } else {
            utf8_append(out, c);
        }
    }
    out += quote;
    return out;
}

namespace {

void append_str(std::string& out, const Value& v, bool as_repr, int depth = 0);

void append_items(std::string& out, const ValueList& items, int depth) {
    for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        append_str(out, items[i], true, depth);
        if (out.size() > kMaxStringBytes) fail("string is too large");
    }
}

void append_dict(std::string& out, const DictData& d, int depth) {
    out += '{';
    for (size_t i = 0; i < d.entries.size(); ++i) {
        if (i) out += ", ";
        append_str(out, d.entries[i].first, true, depth);
        out += ": ";
        append_str(out, d.entries[i].second, true, depth);
        if (out.size() > kMaxStringBytes) fail("string is too large");
    }
    out += '}';
}

void append_str(std::string& out, const Value& v, bool as_repr, int depth) {
    // Namespaces can refer to each other (even to themselves); Python would print "..." for a
    // cycle, here it is an error rather than endless recursion.
    if (++depth > 2 * kMaxValueDepth) fail("a value is nested too deeply to print");
    switch (v.type()) {
        case Value::Type::Undefined: out += as_repr ? "Undefined" : ""; break;
        case Value::Type::None: out += "None"; break;
        case Value::Type::Bool: out += v.as_bool() ? "True" : "False"; break;
        case Value::Type::Int: out += std::to_string(v.as_int()); break;
        case Value::Type::Float: out += format_float(v.as_double()); break;
        case Value::Type::String: out += as_repr ? repr_string(v.as_string()) : v.as_string(); break;
        case Value::Type::List:
            out += '[';
            append_items(out, v.items(), depth);
            out += ']';
            break;
        case Value::Type::Tuple:
            out += '(';
            append_items(out, v.items(), depth);
            if (v.items().size() == 1) out += ',';
            out += ')';
            break;
        case Value::Type::Dict: append_dict(out, v.as_dict(), depth); break;
        case Value::Type::Namespace:
            out += "<Namespace ";
            append_dict(out, v.as_namespace()->attributes, depth);
            out += '>';
            break;
        case Value::Type::Function: out += "<built-in method " + v.as_function().name + ">"; break;
        case Value::Type::Iterator: out += "<" + v.as_iterator().kind + " object>"; break;
        case Value::Type::Loop: {
            const LoopState& s = *v.as_loop();
            out += "<LoopContext " + std::to_string(s.index0 + 1) + "/" + std::to_string(s.items->size()) + ">";
            break;
        }
    }
}

}  // namespace

std::string to_str(const Value& value) {
    if (value.is_string()) return value.as_string();
    std::string out;
    append_str(out, value, false);
    return out;
}

std::string repr(const Value& value) {
    std::string out;
    append_str(out, value, true);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Truthiness, comparison, containment

bool truthy(const Value& v) {
    switch (v.type()) {
        case Value::Type::Undefined:
        case Value::Type::None: return false;
        case Value::Type::Bool: return v.as_bool();
        case Value::Type::Int: return v.as_int() != 0;
        case Value::Type::Float: return v.as_double() != 0.0;
        case Value::Type::String: return !v.as_string().empty();
        case Value::Type::List:
        case Value::Type::Tuple: return !v.items().empty();
        case Value::Type::Dict: return !v.as_dict().entries.empty();
        default: return true;
    }
}

namespace {

// Exact int/float comparison as Python does it: -1, 0, 1.
int compare_numbers(const Value& a, const Value& b) {
    if (a.is_integral() && b.is_integral()) {
        int64_t x = a.as_int(), y = b.as_int();
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.is_float() && b.is_float()) {
        double x = a.as_double(), y = b.as_double();
        return x < y ? -1 : x > y ? 1 : 0;
    }
    // One int, one float: compare in long double, exact for |int| < 2^64.
    long double x = a.is_float() ? (long double)a.as_double() : (long double)a.as_int();
    long double y = b.is_float() ? (long double)b.as_double() : (long double)b.as_int();
    return x < y ? -1 : x > y ? 1 : 0;
}

bool has_nan(const Value& a, const Value& b) {
    return (a.is_float() && std::isnan(a.as_double())) || (b.is_float() && std::isnan(b.as_double()));
}

}  // namespace

bool equals(const Value& a, const Value& b) {
    if (a.is_number() && b.is_number()) return !has_nan(a, b) && compare_numbers(a, b) == 0;
    if (a.type() != b.type()) return false;
    switch (a.type()) {
        case Value::Type::Undefined:
        case Value::Type::None: return true;
        case Value::Type::String: return a.as_string() == b.as_string();
        case Value::Type::List:
        case Value::Type::Tuple: {
            const ValueList &x = a.items(), &y = b.items();
            if (x.size() != y.size()) return false;
            for (size_t i = 0; i < x.size(); ++i)
                if (!equals(x[i], y[i])) return false;
            return true;
        }
        case Value::Type::Dict: {
            const DictData &x = a.as_dict(), &y = b.as_dict();
            if (x.entries.size() != y.entries.size()) return false;
            for (const auto& [k, v] : x.entries) {
                const Value* other = y.find(k);
                if (!other || !equals(v, *other)) return false;
            }
            return true;
        }
        case Value::Type::Namespace: return a.as_namespace() == b.as_namespace();
        case Value::Type::Function: return &a.as_function() == &b.as_function();
        case Value::Type::Loop: return a.as_loop() == b.as_loop();
        case Value::Type::Iterator: return &a.as_iterator() == &b.as_iterator();
        default: return false;
    }
}

bool less_than(const Value& a, const Value& b) {
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    if (a.is_number() && b.is_number()) return !has_nan(a, b) && compare_numbers(a, b) < 0;
    if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
    if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
        const ValueList &x = a.items(), &y = b.items();
        for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
            if (!equals(x[i], y[i])) return less_than(x[i], y[i]);
        }
        return x.size() < y.size();
    }
    fail("'<' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'");
}

bool contains(const Value& haystack, const Value& needle) {
    switch (haystack.type()) {
        case Value::Type::Undefined: return false;
        case Value::Type::String:
            if (!needle.is_string())
                fail("'in <string>' requires string as left operand, not " + needle.type_name());
            return haystack.as_string().find(needle.as_string()) != std::string::npos;
        case Value::Type::List:
        case Value::Type::Tuple:
            for (const Value& item : haystack.items())
                if (equals(item, needle)) return true;
            return false;
        case Value::Type::Dict:
            if (needle.is_list() || needle.is_dict()) fail("unhashable type: '" + needle.type_name() + "'");
            return haystack.as_dict().find(needle) != nullptr;
        case Value::Type::Iterator: {
            // Python's `in` consumes an iterator up to and including the match.
            IteratorState& it = haystack.as_iterator();
            it.materialize();
            while (it.position < it.items.size())
                if (equals(it.items[it.position++], needle)) return true;
            return false;
        }
        default: fail("argument of type '" + haystack.type_name() + "' is not iterable");
    }
}

int64_t length(const Value& v) {
    switch (v.type()) {
        case Value::Type::Undefined: return 0;
        case Value::Type::String: return int64_t(utf8_length(v.as_string()));
        case Value::Type::List:
        case Value::Type::Tuple: return int64_t(v.items().size());
        case Value::Type::Dict: return int64_t(v.as_dict().entries.size());
        case Value::Type::Loop: return int64_t(v.as_loop()->items->size());
        default: fail("object of type '" + v.type_name() + "' has no len()");
    }
}

ValueList iterate(const Value& v) {
    switch (v.type()) {
        case Value::Type::Undefined: return {};
        case Value::Type::String: {
            ValueList out;
            const std::string& s = v.as_string();
            if (is_ascii(s)) {
                out.reserve(s.size());
                for (char c : s) out.emplace_back(std::string(1, c));
            } else {
                for (char32_t c : utf8_decode(s)) {
                    std::string one;
                    utf8_append(one, c);
                    out.emplace_back(std::move(one));
                }
            }
            return out;
        }
        case Value::Type::List:
        case Value::Type::Tuple: return v.items();
        case Value::Type::Dict: {
            ValueList out;
            out.reserve(v.as_dict().entries.size());
            for (const auto& [k, _] : v.as_dict().entries) out.push_back(k);
            return out;
        }
        case Value::Type::Iterator: {
            IteratorState& it = v.as_iterator();
            it.materialize();
            ValueList out(it.items.begin() + ptrdiff_t(it.position), it.items.end());
            it.position = it.items.size();
            return out;
        }
        default: fail("'" + v.type_name() + "' object is not iterable");
    }
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

namespace {

const char* op_symbol(BinaryOp op) {
    switch (op) {
        case BinaryOp::Add: return "+";
        case BinaryOp::Sub: return "-";
        case BinaryOp::Mul: return "*";
        case BinaryOp::Div: return "/";
        case BinaryOp::FloorDiv: return "//";
        case BinaryOp::Mod: return "%";
        case BinaryOp::Pow: return "**";
    }
    return "?";
}

[[noreturn]] void fail_operands(BinaryOp op, const Value& a, const Value& b) {
    if (op == BinaryOp::Add && a.is_string())
        fail("can only concatenate str (not \"" + b.type_name() + "\") to str");
    if (op == BinaryOp::Add && a.is_list())
        fail("can only concatenate list (not \"" + b.type_name() + "\") to list");
    fail(std::string("unsupported operand type(s) for ") + op_symbol(op) + ": '" + a.type_name() + "' and '" +
         b.type_name() + "'");
}

[[noreturn]] void fail_overflow() {
    fail("integer result is too large (Python integers are unbounded; this interpreter uses 64 bits)");
}

Value repeat_sequence(const Value& seq, int64_t times) {
    if (times <= 0) return seq.is_string() ? Value(std::string()) : seq.is_list() ? Value::list({}) : Value::tuple({});
    if (seq.is_string()) {
        const std::string& s = seq.as_string();
        if (!s.empty() && (uint64_t(times) > kMaxStringBytes / s.size())) fail("string is too large");
        std::string out;
        out.reserve(s.size() * times);
        for (int64_t i = 0; i < times; ++i) out += s;
        return Value(std::move(out));
    }
    const ValueList& items = seq.items();
    if (!items.empty() && uint64_t(times) > kMaxListItems / items.size()) fail("list is too large");
    ValueList out;
    for (int64_t i = 0; i < times; ++i) out.insert(out.end(), items.begin(), items.end());
    return seq.is_list() ? Value::list(std::move(out)) : Value::tuple(std::move(out));
}

// CPython's float floor division and modulo, sign rules included.
std::pair<double, double> float_divmod(double vx, double wx) {
    double mod = std::fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod != 0.0) {
        if ((wx < 0) != (mod < 0)) {
            mod += wx;
            div -= 1.0;
        }
    } else {
        mod = std::copysign(0.0, wx);
    }
    double floordiv;
    if (div != 0.0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
        floordiv = std::copysign(0.0, vx / wx);
    }
    return {floordiv, mod};
}

}  // namespace

Value binary_op(BinaryOp op, const Value& a, const Value& b) {
    // str % x is str.__mod__, which accepts anything — even Undefined, as a "mapping".
    if (op == BinaryOp::Mod && a.is_string()) return Value(percent_format(a.as_string(), b));
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    bool ints = a.is_integral() && b.is_integral();
    bool nums = a.is_number() && b.is_number();
    switch (op) {
        case BinaryOp::Add:
            if (ints) {
                int64_t r;
                if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) fail_overflow();
                return Value(r);
            }
            if (nums) return Value(a.as_double() + b.as_double());
            if (a.is_string() && b.is_string()) {
                if (a.as_string().size() + b.as_string().size() > kMaxStringBytes) fail("string is too large");
                return Value(a.as_string() + b.as_string());
            }
            if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
                ValueList out = a.items();
                out.insert(out.end(), b.items().begin(), b.items().end());
                return a.is_list() ? Value::list(std::move(out)) : Value::tuple(std::move(out));
            }
            break;
        case BinaryOp::Sub:
            if (ints) {
                int64_t r;
                if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) fail_overflow();
                return Value(r);
            }
            if (nums) return Value(a.as_double() - b.as_double());
            break;
        case BinaryOp::Mul:
            if (ints) {
                int64_t r;
                if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) fail_overflow();
                return Value(r);
            }
            if (nums) return Value(a.as_double() * b.as_double());
            if ((a.is_string() || a.is_sequence_like()) && b.is_integral()) return repeat_sequence(a, b.as_int());
            if (a.is_integral() && (b.is_string() || b.is_sequence_like())) return repeat_sequence(b, a.as_int());
            break;
        case BinaryOp::Div:
            if (nums) {
                if (b.as_double() == 0.0) fail("division by zero");
                if (ints) return Value(double(a.as_int()) / double(b.as_int()));
                return Value(a.as_double() / b.as_double());
            }
            break;
        case BinaryOp::FloorDiv:
        case BinaryOp::Mod:
            if (ints) {
                int64_t x = a.as_int(), y = b.as_int();
                if (y == 0) fail("integer division or modulo by zero");
                if (x == std::numeric_limits<int64_t>::min() && y == -1) {
                    if (op == BinaryOp::Mod) return Value(int64_t(0));
                    fail_overflow();
                }
                int64_t q = x / y, r = x % y;
                if (r != 0 && ((r < 0) != (y < 0))) {
                    q -= 1;
                    r += y;
                }
                return Value(op == BinaryOp::FloorDiv ? q : r);
            }
            if (nums) {
                if (b.as_double() == 0.0) fail(op == BinaryOp::Mod ? "float modulo" : "float floor division by zero");
                auto [q, r] = float_divmod(a.as_double(), b.as_double());
                return Value(op == BinaryOp::FloorDiv ? q : r);
            }
            break;
        case BinaryOp::Pow:
            if (ints && b.as_int() >= 0) {
                int64_t base = a.as_int(), exp = b.as_int(), result = 1;
                while (exp > 0) {
                    if (exp & 1)
                        if (__builtin_mul_overflow(result, base, &result)) fail_overflow();
                    exp >>= 1;
                    if (exp > 0 && __builtin_mul_overflow(base, base, &base)) fail_overflow();
                }
                return Value(result);
            }
            if (nums) {
                double x = a.as_double(), y = b.as_double();
                if (x == 0.0 && y < 0) fail("0.0 cannot be raised to a negative power");
                if (x < 0 && y != std::floor(y)) fail("negative number raised to a fractional power");
                return Value(std::pow(x, y));
            }
            break;
    }
    fail_operands(op, a, b);
}

Value negate(const Value& v) {
    if (v.is_undefined()) fail_undefined(v);
    if (v.is_integral()) {
        if (v.as_int() == std::numeric_limits<int64_t>::min()) fail_overflow();
        return Value(-v.as_int());
    }
    if (v.is_float()) return Value(-v.as_double());
    fail("bad operand type for unary -: '" + v.type_name() + "'");
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {

template <typename Json>
Value from_json_impl(const Json& j, int depth = 0) {
    if (depth > kMaxValueDepth) fail("the context is nested too deeply (more than 256 levels)");
    switch (j.type()) {
        case nlohmann::json::value_t::null: return Value::none();
        case nlohmann::json::value_t::boolean: return Value(j.template get<bool>());
        case nlohmann::json::value_t::number_integer: return Value(j.template get<int64_t>());
        case nlohmann::json::value_t::number_unsigned: {
            uint64_t u = j.template get<uint64_t>();
            if (u <= uint64_t(std::numeric_limits<int64_t>::max())) return Value(int64_t(u));
            return Value(double(u));
        }
        case nlohmann::json::value_t::number_float: return Value(j.template get<double>());
        case nlohmann::json::value_t::string: return Value(j.template get<std::string>());
        case nlohmann::json::value_t::array: {
            ValueList items;
            items.reserve(j.size());
            for (const auto& item : j) items.push_back(from_json_impl(item, depth + 1));
            return Value::list(std::move(items));
        }
        case nlohmann::json::value_t::object: {
            DictData d;
            d.entries.reserve(j.size());
            for (auto it = j.begin(); it != j.end(); ++it)
                d.entries.emplace_back(Value(it.key()), from_json_impl(it.value(), depth + 1));
            return Value::dict(std::move(d));
        }
        default: return Value::none();
    }
}

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
    out += '"';
    auto hex4 = [&out](unsigned v) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "\\u%04x", v);
        out += buf;
    };
    // The characters json.dumps writes with a two-character escape.
    auto escape_short = [&out](uint32_t c) {
        switch (c) {
            case '"': out += "\\\""; return true;
            case '\\': out += "\\\\"; return true;
            case '\n': out += "\\n"; return true;
            case '\r': out += "\\r"; return true;
            case '\t': out += "\\t"; return true;
            case '\b': out += "\\b"; return true;
            case '\f': out += "\\f"; return true;
            default: return false;
        }
    };
    if (!ensure_ascii) {
        for (char ch : s) {
            auto c = static_cast<unsigned char>(ch);
            if (escape_short(c)) continue;
            if (c < 0x20) {
                hex4(c);
            } else {
                out += ch;
            }
        }
    } else {
        for (char32_t c : utf8_decode(s)) {
            if (escape_short(c)) continue;
            if (c >= 0x20 && c < 0x7F) {
                out += char(c);
            } else if (c < 0x10000) {
                hex4(unsigned(c));
            } else {
                char32_t v = c - 0x10000;
                hex4(0xD800 | unsigned(v >> 10));
                hex4(0xDC00 | unsigned(v & 0x3FF));
            }
        }
    }
    out += '"';
}

std::string json_float(double f) {
    if (std::isnan(f)) return "NaN";
    if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
    return format_float(f);
}

void json_value(std::string& out, const Value& v, const JsonOptions& opt, int level) {
    if (out.size() > kMaxStringBytes) fail("string is too large");
    if (level > 2 * kMaxValueDepth) fail("tojson: value is nested too deeply");
    switch (v.type()) {
        case Value::Type::None: out += "null"; return;
        case Value::Type::Bool: out += v.as_bool() ? "true" : "false"; return;
        case Value::Type::Int: out += std::to_string(v.as_int()); return;
        case Value::Type::Float: out += json_float(v.as_double()); return;
        case Value::Type::String: json_string(out, v.as_string(), opt.ensure_ascii); return;
        default: break;
    }
    auto open = [&](char bracket, int& lvl) {
        out += bracket;
        if (opt.indent) {
            ++lvl;
            out += '\n';
            for (int i = 0; i < lvl; ++i) out += *opt.indent;
        }
    };
    auto separator = [&](int lvl) {
        out += opt.item_separator;
        if (opt.indent) {
            out += '\n';
            for (int i = 0; i < lvl; ++i) out += *opt.indent;
        }
    };
    auto close = [&](char bracket, int lvl) {
        if (opt.indent) {
            out += '\n';
            for (int i = 0; i < lvl - 1; ++i) out += *opt.indent;
        }
        out += bracket;
    };
    if (v.is_sequence_like()) {
        const ValueList& items = v.items();
        if (items.empty()) {
            out += "[]";
            return;
        }
        int lvl = level;
        open('[', lvl);
        for (size_t i = 0; i < items.size(); ++i) {
            if (i) separator(lvl);
            json_value(out, items[i], opt, lvl);
        }
        close(']', lvl);
        return;
    }
    if (v.is_dict()) {
        const DictData& d = v.as_dict();
        if (d.entries.empty()) {
            out += "{}";
            return;
        }
        std::vector<const std::pair<Value, Value>*> entries;
        for (const auto& e : d.entries) entries.push_back(&e);
        if (opt.sort_keys) {
            std::stable_sort(entries.begin(), entries.end(),
                             [](auto* x, auto* y) { return less_than(x->first, y->first); });
        }
        int lvl = level;
        open('{', lvl);
        for (size_t i = 0; i < entries.size(); ++i) {
            if (i) separator(lvl);
            const Value& key = entries[i]->first;
            switch (key.type()) {
                case Value::Type::String: json_string(out, key.as_string(), opt.ensure_ascii); break;
                case Value::Type::Int: out += "\"" + std::to_string(key.as_int()) + "\""; break;
                case Value::Type::Bool: out += key.as_bool() ? "\"true\"" : "\"false\""; break;
                case Value::Type::None: out += "\"null\""; break;
                case Value::Type::Float: out += "\"" + json_float(key.as_double()) + "\""; break;
                default: fail("keys must be str, int, float, bool or None, not " + key.type_name());
            }
            out += opt.key_separator;
            json_value(out, entries[i]->second, opt, lvl);
        }
        close('}', lvl);
        return;
    }
    fail("Object of type " + v.type_name() + " is not JSON serializable");
}

}  // namespace

Value from_json(const nlohmann::json& j) { return from_json_impl(j); }
Value from_json(const nlohmann::ordered_json& j) { return from_json_impl(j); }

std::string to_json_text(const Value& value, const JsonOptions& options) {
    std::string out;
    json_value(out, value, options, 0);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Python % formatting

namespace {

std::string pad_field(std::string body, size_t width, bool left_align, char fill = ' ') {
    size_t len = utf8_length(body);
    if (len >= width) return body;
    std::string padding(width - len, fill);
    return left_align ? body + padding : padding + body;
}

}  // namespace

std::string percent_format(const std::string& format, const Value& args) {
    ValueList positional;
    const DictData* mapping = nullptr;
    // Python treats any non-tuple, non-str argument with __getitem__ (dict, list, Undefined) as
    // a mapping: no "not all arguments converted" error, and %(key)s looks keys up in it.
    bool mapping_like = args.is_dict() || args.is_list() || args.is_undefined();
    if (args.is_tuple()) {
        positional = args.items();
    } else {
        if (args.is_dict()) mapping = &args.as_dict();
        positional.push_back(args);
    }
    size_t next_arg = 0;
    bool used_mapping = false;
    auto take = [&]() -> const Value& {
        if (next_arg >= positional.size()) fail("not enough arguments for format string");
        return positional[next_arg++];
    };
    std::string out;
    size_t i = 0;
    while (i < format.size()) {
        char c = format[i];
        if (c != '%') {
            out += c;
            ++i;
            continue;
        }
        ++i;
        if (i >= format.size()) fail("incomplete format");
        const Value* arg = nullptr;
        if (format[i] == '(') {
            size_t close = format.find(')', i);
            if (close == std::string::npos) fail("incomplete format key");
            if (!mapping) fail("format requires a mapping");
            const Value* v = mapping->find(std::string_view(format).substr(i + 1, close - i - 1));
            if (!v) fail("KeyError: " + repr_string(format.substr(i + 1, close - i - 1)));
            arg = v;
            used_mapping = true;
            i = close + 1;
        }
        std::string flags;
        while (i < format.size() && std::string_view("-+ #0").find(format[i]) != std::string_view::npos) flags += format[i++];
        int64_t width = 0;
        if (i < format.size() && format[i] == '*') {
            width = take().as_int();
            ++i;
        }
        while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i]))) width = width * 10 + (format[i++] - '0');
        int64_t precision = -1;
        if (i < format.size() && format[i] == '.') {
            ++i;
            precision = 0;
            if (i < format.size() && format[i] == '*') {
                precision = take().as_int();
                ++i;
            }
            while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i])))
                precision = precision * 10 + (format[i++] - '0');
        }
        while (i < format.size() && (format[i] == 'l' || format[i] == 'h' || format[i] == 'L')) ++i;
        if (i >= format.size()) fail("incomplete format");
        char type = format[i++];
        if (type == '%') {
            out += '%';
            continue;
        }
        const Value& v = arg ? *arg : take();
        bool left = flags.find('-') != std::string::npos;
        bool zero = flags.find('0') != std::string::npos && !left;
        std::string body;
        switch (type) {
            case 's':
            case 'r':
            case 'a': {
                body = type == 's' ? to_str(v) : repr(v);
                if (precision >= 0) {
                    std::u32string u = utf8_decode(body);
                    if (int64_t(u.size()) > precision) body = utf8_encode(std::u32string_view(u).substr(0, precision));
                }
                out += pad_field(body, size_t(width), left);
                continue;
            }
            case 'c':
                if (v.is_string() && utf8_length(v.as_string()) == 1) {
                    body = v.as_string();
                } else if (v.is_integral()) {
                    utf8_append(body, char32_t(v.as_int()));
                } else {
                    fail("%c requires int or char");
                }
                out += pad_field(body, size_t(width), left);
                continue;
            case 'd':
            case 'i':
            case 'u':
            case 'x':
            case 'X':
            case 'o': {
                if (!v.is_number())
                    fail(std::string("%") + type + " format: a real number is required, not " + v.type_name());
                if ((type == 'x' || type == 'X' || type == 'o') && v.is_float())
                    fail(std::string("%") + type + " format: an integer is required, not float");
                int64_t n = v.is_float() ? int64_t(std::trunc(v.as_double())) : v.as_int();
                uint64_t mag = n < 0 ? uint64_t(0) - uint64_t(n) : uint64_t(n);
                char buf[64];
                const char* fmt_spec = type == 'x' ? "%llx" : type == 'X' ? "%llX" : type == 'o' ? "%llo" : "%llu";
                std::snprintf(buf, sizeof buf, fmt_spec, (unsigned long long)mag);
                std::string digits = buf;
                if (precision >= 0 && int64_t(digits.size()) < precision) digits = std::string(precision - digits.size(), '0') + digits;
                std::string prefix = n < 0 ? "-" : flags.find('+') != std::string::npos ? "+" : flags.find(' ') != std::string::npos ? " " : "";
                if (flags.find('#') != std::string::npos && (type == 'x' || type == 'X' || type == 'o'))
                    prefix += type == 'o' ? "0o" : type == 'x' ? "0x" : "0X";
                if (zero && int64_t(prefix.size() + digits.size()) < width)
                    digits = std::string(width - prefix.size() - digits.size(), '0') + digits;
                out += pad_field(prefix + digits, size_t(width), left);
                continue;
            }
            case 'f':
            case 'F':
            case 'e':
            case 'E':
            case 'g':
            case 'G': {
                if (!v.is_number())
                    fail(std::string("must be real number, not ") + v.type_name());
                std::string spec = "%" + flags + (width > 0 ? std::to_string(width) : "") +
                                   "." + std::to_string(precision >= 0 ? precision : 6) + type;
                char buf[512];
                std::snprintf(buf, sizeof buf, spec.c_str(), v.as_double());
                out += buf;
                continue;
            }
            default: fail(std::string("unsupported format character '") + type + "'");
        }
    }
    if (!used_mapping && !mapping_like && next_arg < positional.size())
        fail("not all arguments converted during string formatting");
    return out;
}

}  // namespace swiftkv::jinja
