// jinja_builtins.cpp — filters, tests, methods and globals available to chat templates, each
// written after its jinja2 (filters.py, tests.py, sandbox.py) or CPython counterpart.
#include "tokenizer/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <unordered_map>

#include <fmt/format.h>

namespace swiftkv::jinja {
namespace {

// ---------------------------------------------------------------------------------------------
// Argument binding

// Binds positional and keyword arguments to parameter names, like a Python signature without
// *args/**kwargs, and rejects what Python would reject.
class ArgReader {
public:
    ArgReader(CallArgs& args, std::string_view function, std::vector<std::string_view> names)
        : args_(args), function_(function), names_(std::move(names)) {
        if (args_.positional.size() > names_.size())
            fail(fmt::format("{}() takes at most {} argument(s) ({} given)", function_, names_.size(),
                             args_.positional.size()));
        for (const auto& [key, _] : args_.keyword) {
            auto it = std::find(names_.begin(), names_.end(), key);
            if (it == names_.end()) fail(fmt::format("{}() got an unexpected keyword argument '{}'", function_, key));
            if (size_t(it - names_.begin()) < args_.positional.size())
                fail(fmt::format("{}() got multiple values for argument '{}'", function_, key));
        }
    }

    const Value* get(size_t i) const {
        if (i < args_.positional.size()) return &args_.positional[i];
        for (const auto& [key, value] : args_.keyword)
            if (key == names_[i]) return &value;
        return nullptr;
    }
    bool has(size_t i) const { return get(i) != nullptr; }
    Value get_or(size_t i, Value fallback) const {
        const Value* v = get(i);
        return v ? *v : std::move(fallback);
    }
    const Value& require(size_t i) const {
        const Value* v = get(i);
        if (!v) fail(fmt::format("{}() missing required argument '{}'", function_, names_[i]));
        return *v;
    }

private:
    CallArgs& args_;
    std::string_view function_;
    std::vector<std::string_view> names_;
};

void no_keywords(const CallArgs& args, std::string_view function) {
    if (!args.keyword.empty()) fail(fmt::format("{}() takes no keyword arguments", function));
}

int64_t int_arg(const Value& v, std::string_view what) {
    if (v.is_undefined()) fail_undefined(v);
    if (!v.is_integral()) fail(fmt::format("'{}' object cannot be interpreted as an integer ({})", v.type_name(), what));
    return v.as_int();
}

const std::string& str_arg(const Value& v, std::string_view what) {
    if (v.is_undefined()) fail_undefined(v);
    if (!v.is_string()) fail(fmt::format("{} must be str, not {}", what, v.type_name()));
    return v.as_string();
}

std::optional<std::string> optional_str_arg(const Value* v, std::string_view what) {
    if (!v || v->is_none()) return std::nullopt;
    return str_arg(*v, what);
}

Value string_list(const std::vector<std::string>& parts) {
    ValueList items;
    items.reserve(parts.size());
    for (const auto& p : parts) items.emplace_back(p);
    return Value::list(std::move(items));
}

std::string object_type_repr(const Value& v) {
    if (v.is_none()) return "None";
    return v.type_name() + " object";
}

Value missing_attribute(const Value& obj, const std::string& name) {
    if (obj.is_none()) return Value::undefined("'None' has no attribute '" + name + "'");
    return Value::undefined("'" + object_type_repr(obj) + "' has no attribute '" + name + "'");
}

Value unsafe_attribute(const Value& obj, const std::string& name) {
    return Value::undefined("access to attribute '" + name + "' of '" + obj.type_name() + "' object is unsafe.");
}

// ---------------------------------------------------------------------------------------------
// Code-point indexing helpers

// Python's slice.indices(): clamps start/stop for a sequence of `length` items.
struct SliceRange {
    int64_t start, stop, step;
};

SliceRange adjust_slice(int64_t length, const Value& start_v, const Value& stop_v, const Value& step_v) {
    int64_t step = step_v.is_none() ? 1 : step_v.as_int();
    if (step == 0) fail("slice step cannot be zero");
    int64_t lower = step > 0 ? 0 : -1;
    int64_t upper = step > 0 ? length : length - 1;
    auto clamp = [&](const Value& v, int64_t fallback) {
        if (v.is_none()) return fallback;
        int64_t i = v.as_int();
        if (i < 0) {
            i += length;
            if (i < lower) i = lower;
        } else if (i > upper) {
            i = upper;
        }
        return i;
    };
    int64_t start = clamp(start_v, step > 0 ? lower : upper);
    int64_t stop = clamp(stop_v, step > 0 ? upper : lower);
    return {start, stop, step};
}

template <typename Seq, typename Out>
void apply_slice(const Seq& seq, const SliceRange& r, Out&& emit) {
    if (r.step > 0) {
        for (int64_t i = r.start; i < r.stop; i += r.step) emit(seq[size_t(i)]);
    } else {
        for (int64_t i = r.start; i > r.stop; i += r.step) emit(seq[size_t(i)]);
    }
}

// Byte offset range of code points [start, end) (Python-clamped, negatives from the end).
std::pair<size_t, size_t> codepoint_range(const std::string& s, const Value* start, const Value* end) {
    bool ascii = is_ascii(s);
    std::u32string u;
    if (!ascii) u = utf8_decode(s);
    int64_t len = ascii ? int64_t(s.size()) : int64_t(u.size());
    auto norm = [&](const Value* v, int64_t fallback) {
        if (!v || v->is_none()) return fallback;
        int64_t i = int_arg(*v, "slice index");
        if (i < 0) i = std::max<int64_t>(0, i + len);
        return std::min(i, len);
    };
    int64_t a = norm(start, 0), b = norm(end, len);
    if (b < a) b = a;
    if (ascii) return {size_t(a), size_t(b)};
    auto bytes_before = [&](int64_t cp) {
        return utf8_encode(std::u32string_view(u).substr(0, size_t(cp))).size();
    };
    return {bytes_before(a), bytes_before(b)};
}

int64_t codepoints_before(const std::string& s, size_t byte_offset) {
    int64_t n = 0;
    for (size_t i = 0; i < byte_offset; ++i)
        if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) ++n;
    return n;
}

// ---------------------------------------------------------------------------------------------
// str.format

std::string apply_format_spec(const Value& v, const std::string& spec);

std::string format_with_braces(const std::string& format, const CallArgs& args) {
    std::string out;
    size_t auto_index = 0;
    size_t i = 0;
    while (i < format.size()) {
        char c = format[i];
        if (c == '}') {
            if (i + 1 < format.size() && format[i + 1] == '}') {
                out += '}';
                i += 2;
                continue;
            }
            fail("Single '}' encountered in format string");
        }
        if (c != '{') {
            out += c;
            ++i;
            continue;
        }
        if (i + 1 < format.size() && format[i + 1] == '{') {
            out += '{';
            i += 2;
            continue;
        }
        size_t close = format.find('}', i);
        if (close == std::string::npos) fail("Single '{' encountered in format string");
        std::string field = format.substr(i + 1, close - i - 1);
        i = close + 1;
        std::string spec;
        char conversion = 0;
        size_t colon = field.find(':');
        if (colon != std::string::npos) {
            spec = field.substr(colon + 1);
            field.resize(colon);
        }
        size_t bang = field.find('!');
        if (bang != std::string::npos) {
            if (bang + 2 != field.size()) fail("expected ':' after conversion specifier");
            conversion = field[bang + 1];
            field.resize(bang);
        }
        // field: name or index, then .attr / [key] parts
        size_t part_end = field.find_first_of(".[");
        std::string head = field.substr(0, part_end);
        Value value;
        if (head.empty()) {
            if (auto_index >= args.positional.size()) fail("Replacement index out of range for positional args tuple");
            value = args.positional[auto_index++];
        } else if (std::all_of(head.begin(), head.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            size_t index = std::stoul(head);
            if (index >= args.positional.size()) fail("Replacement index out of range for positional args tuple");
            value = args.positional[index];
        } else {
            auto it = std::find_if(args.keyword.begin(), args.keyword.end(), [&](auto& kv) { return kv.first == head; });
            if (it == args.keyword.end()) fail("KeyError: " + repr_string(head));
            value = it->second;
        }
        size_t p = part_end;
        while (p != std::string::npos && p < field.size()) {
            if (field[p] == '.') {
                size_t q = field.find_first_of(".[", p + 1);
                value = get_attribute(value, field.substr(p + 1, q == std::string::npos ? std::string::npos : q - p - 1));
                p = q;
            } else {
                size_t q = field.find(']', p);
                if (q == std::string::npos) fail("Missing ']' in format string");
                std::string key = field.substr(p + 1, q - p - 1);
                bool numeric = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
                value = get_item(value, numeric ? Value(int64_t(std::stoll(key))) : Value(key));
                p = q + 1;
            }
        }
        if (conversion == 'r' || conversion == 'a') {
            value = Value(repr(value));
        } else if (conversion == 's') {
            value = Value(to_str(value));
        } else if (conversion != 0) {
            fail(std::string("Unknown conversion specifier ") + conversion);
        }
        out += apply_format_spec(value, spec);
        if (out.size() > kMaxStringBytes) fail("string is too large");
    }
    return out;
}

std::string group_thousands(const std::string& digits, char sep) {
    std::string out;
    int n = 0;
    for (size_t i = digits.size(); i-- > 0;) {
        if (n && n % 3 == 0) out += sep;
        out += digits[i];
        ++n;
    }
    std::reverse(out.begin(), out.end());
    return out;
}

// The format-spec mini-language: [[fill]align][sign][#][0][width][,_][.precision][type].
std::string apply_format_spec(const Value& v, const std::string& spec) {
    if (v.is_undefined() && !spec.empty()) fail_undefined(v);
    if (spec.empty()) return to_str(v);
    std::u32string s = utf8_decode(spec);
    size_t i = 0;
    char32_t fill = ' ';
    char align = 0;
    auto is_align = [](char32_t c) { return c == '<' || c == '>' || c == '^' || c == '='; };
    if (s.size() >= 2 && is_align(s[1])) {
        fill = s[0];
        align = char(s[1]);
        i = 2;
    } else if (!s.empty() && is_align(s[0])) {
        align = char(s[0]);
        i = 1;
    }
    char sign = '-';
    if (i < s.size() && (s[i] == '+' || s[i] == '-' || s[i] == ' ')) sign = char(s[i++]);
    bool alternate = false;
    if (i < s.size() && s[i] == '#') {
        alternate = true;
        ++i;
    }
    if (i < s.size() && s[i] == '0') {
        if (!align) {
            fill = '0';
            align = '=';
        }
        ++i;
    }
    size_t width = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') width = width * 10 + (s[i++] - '0');
    char grouping = 0;
    if (i < s.size() && (s[i] == ',' || s[i] == '_')) grouping = char(s[i++]);
    int precision = -1;
    if (i < s.size() && s[i] == '.') {
        ++i;
        precision = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') precision = precision * 10 + int(s[i++] - '0');
    }
    char type = 0;
    if (i < s.size()) type = char(s[i++]);
    if (i != s.size()) fail("Invalid format specifier");

    std::string body;
    std::string prefix;
    bool numeric = false;
    if (v.is_string() || (!v.is_number() && !v.is_none())) {
        if (!v.is_string()) fail("unsupported format string passed to " + v.type_name() + ".__format__");
        if (type && type != 's') fail(std::string("Unknown format code '") + type + "' for object of type 'str'");
        body = v.as_string();
        if (precision >= 0) {
            std::u32string u = utf8_decode(body);
            if (int(u.size()) > precision) body = utf8_encode(std::u32string_view(u).substr(0, size_t(precision)));
        }
        if (!align) align = '<';
    } else if (v.is_none()) {
        fail("unsupported format string passed to NoneType.__format__");
    } else {
        numeric = true;
        bool as_int = v.is_integral() && (type == 0 || std::string_view("dbcoxXn").find(type) != std::string_view::npos);
        if (v.is_bool() && type == 0) {
            body = v.as_bool() ? "True" : "False";
            numeric = false;
            if (!align) align = '<';
        } else if (as_int) {
            int64_t n = v.as_int();
            uint64_t mag = n < 0 ? uint64_t(0) - uint64_t(n) : uint64_t(n);
            char buf[80];
            switch (type) {
                case 'b': {
                    std::string bits;
                    do {
                        bits += char('0' + (mag & 1));
                        mag >>= 1;
                    } while (mag);
                    std::reverse(bits.begin(), bits.end());
                    body = bits;
                    if (alternate) prefix = "0b";
                    break;
                }
                case 'o': std::snprintf(buf, sizeof buf, "%llo", (unsigned long long)mag); body = buf; if (alternate) prefix = "0o"; break;
                case 'x': std::snprintf(buf, sizeof buf, "%llx", (unsigned long long)mag); body = buf; if (alternate) prefix = "0x"; break;
                case 'X': std::snprintf(buf, sizeof buf, "%llX", (unsigned long long)mag); body = buf; if (alternate) prefix = "0X"; break;
                case 'c': body.clear(); utf8_append(body, char32_t(n)); numeric = false; break;
                default: std::snprintf(buf, sizeof buf, "%llu", (unsigned long long)mag); body = buf; break;
            }
            if (grouping && numeric) body = group_thousands(body, grouping);
            if (numeric) prefix = (n < 0 ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "") + prefix;
        } else {
            if (!v.is_number()) fail("unsupported format");
            double d = v.as_double();
            if (type && std::string_view("eEfFgG%").find(type) == std::string_view::npos)
                fail(std::string("Unknown format code '") + type + "' for object of type 'float'");
            double mag = std::fabs(d);
            bool negative = std::signbit(d) && !std::isnan(d);
            if (type == 0 && precision < 0) {
                body = format_float(mag);
            } else {
                char t = type == 0 ? 'g' : type == '%' ? 'f' : type;
                if (type == '%') mag *= 100;
                char fmtbuf[16];
                std::snprintf(fmtbuf, sizeof fmtbuf, "%%%s.%d%c", alternate ? "#" : "", precision < 0 ? 6 : precision, t);
                char buf[512];
                std::snprintf(buf, sizeof buf, fmtbuf, mag);
                body = buf;
                if (type == 0 && body.find_first_of(".einf") == std::string::npos) body += ".0";
                if (type == '%') body += '%';
            }
            if (grouping) {
                size_t dot = body.find_first_of(".e%");
                std::string int_part = body.substr(0, dot);
                if (std::all_of(int_part.begin(), int_part.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
                    body = group_thousands(int_part, grouping) + (dot == std::string::npos ? "" : body.substr(dot));
            }
            prefix = negative ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "";
        }
        if (!align) align = numeric ? '>' : '<';
    }
    size_t len = utf8_length(prefix) + utf8_length(body);
    if (len >= width) return prefix + body;
    size_t pad = width - len;
    std::string fill_str;
    utf8_append(fill_str, fill);
    auto repeat = [&](size_t n) {
        std::string r;
        for (size_t k = 0; k < n; ++k) r += fill_str;
        return r;
    };
    switch (align) {
        case '<': return prefix + body + repeat(pad);
        case '^': return repeat(pad / 2) + prefix + body + repeat(pad - pad / 2);
        case '=': return prefix + repeat(pad) + body;
        default: return repeat(pad) + prefix + body;
    }
}

// ---------------------------------------------------------------------------------------------
// Python int() / float() of strings

// Python's int() and float() accept any Unicode decimal digits ("١٢٣" is 123).
std::string ascii_digits(const std::string& text) {
    if (is_ascii(text)) return text;
    std::string out;
    for (char32_t c : utf8_decode(text)) {
        int d = decimal_value(c);
        if (d >= 0) {
            out += char('0' + d);
        } else {
            utf8_append(out, c);
        }
    }
    return out;
}

std::optional<int64_t> parse_python_int(const std::string& text, int base) {
    std::string s = ascii_digits(py_strip(text, std::nullopt, true, true));
    size_t i = 0;
    bool negative = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (base == 0 || base == 2 || base == 8 || base == 16) {
        if (i + 1 < s.size() && s[i] == '0') {
            char p = char(s[i + 1] | 0x20);
            int prefixed = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
            if (prefixed && (base == 0 || base == prefixed)) {
                base = prefixed;
                i += 2;
                if (i < s.size() && s[i] == '_') ++i;
            }
        }
        if (base == 0) base = 10;
    }
    if (base < 2 || base > 36) fail("int() base must be >= 2 and <= 36, or 0");
    if (i >= s.size()) return std::nullopt;
    uint64_t value = 0;
    bool last_digit = false;
    for (; i < s.size(); ++i) {
        char c = s[i];
        if (c == '_') {
            if (!last_digit || i + 1 >= s.size()) return std::nullopt;
            last_digit = false;
            continue;
        }
        int d = c >= '0' && c <= '9' ? c - '0' : std::isalpha(static_cast<unsigned char>(c)) ? (c | 0x20) - 'a' + 10 : 99;
        if (d >= base) return std::nullopt;
        if (value > (uint64_t(std::numeric_limits<int64_t>::max()) + 1 - d) / base)
            fail("integer is too large for this interpreter (64-bit)");
        value = value * base + d;
        last_digit = true;
    }
    if (!last_digit) return std::nullopt;
    if (!negative && value > uint64_t(std::numeric_limits<int64_t>::max()))
        fail("integer is too large for this interpreter (64-bit)");
    return negative ? int64_t(0 - value) : int64_t(value);
}

std::optional<double> parse_python_float(const std::string& text) {
    std::string s = ascii_digits(py_strip(text, std::nullopt, true, true));
    std::string lower = py_lower(s);
    std::string body = lower;
    double sign = 1;
    if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
        sign = body[0] == '-' ? -1 : 1;
        body = body.substr(1);
    }
    if (body == "inf" || body == "infinity") return sign * std::numeric_limits<double>::infinity();
    if (body == "nan") return std::numeric_limits<double>::quiet_NaN();
    // digits with single underscores between digits, optional fraction and exponent
    std::string clean;
    bool digits = false;
    for (size_t i = 0; i < body.size(); ++i) {
        char c = body[i];
        if (c == '_') {
            if (i == 0 || i + 1 >= body.size() || !std::isdigit(static_cast<unsigned char>(body[i - 1])) ||
                !std::isdigit(static_cast<unsigned char>(body[i + 1])))
                return std::nullopt;
            continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
            digits = true;
        } else if (c != '.' && c != 'e' && c != '+' && c != '-') {
            return std::nullopt;
        }
        clean += c;
    }
    if (!digits) return std::nullopt;
    char* end = nullptr;
    double v = std::strtod(clean.c_str(), &end);
    if (end != clean.c_str() + clean.size()) return std::nullopt;
    return sign * v;
}

// ---------------------------------------------------------------------------------------------
// Attribute getters used by map/select/sort/unique/...

Value ignore_case(const Value& v) { return v.is_string() ? Value(py_lower(v.as_string())) : v; }

std::vector<Value> attribute_parts(const Value& attribute) {
    std::vector<Value> parts;
    if (attribute.is_none() || attribute.is_undefined()) return parts;
    if (attribute.is_integral()) {
        parts.emplace_back(attribute.as_int());
        return parts;
    }
    if (!attribute.is_string()) {
        parts.push_back(attribute);
        return parts;
    }
    for (const std::string& p : py_split(attribute.as_string(), std::string("."), -1)) {
        bool numeric = !p.empty() && std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (numeric) {
            parts.emplace_back(int64_t(std::stoll(p)));
        } else {
            parts.emplace_back(p);
        }
    }
    return parts;
}

Value get_by_parts(Value item, const std::vector<Value>& parts, const Value* fallback = nullptr) {
    for (const Value& part : parts) {
        item = get_item(item, part);
        if (fallback && !fallback->is_none() && item.is_undefined()) item = *fallback;
    }
    return item;
}

bool value_less(const Value& a, const Value& b) { return less_than(a, b); }

// Sort key for sort/dictsort/min/max: optional attribute lookup, optional case folding.
Value sort_key(const Value& item, const std::vector<Value>& parts, bool case_sensitive) {
    Value key = get_by_parts(item, parts);
    return case_sensitive ? key : ignore_case(key);
}

ValueList to_list(const Value& v) { return iterate(v); }

// ---------------------------------------------------------------------------------------------
// Tests

using TestFn = bool (*)(const Value&, CallArgs&);

const Value& test_arg(CallArgs& args, std::string_view test) {
    if (args.positional.empty()) fail(fmt::format("test '{}' needs an argument", test));
    return args.positional[0];
}

Value python_mod(const Value& a, const Value& b) {
    if (a.is_undefined()) fail_undefined(a);
    return binary_op(BinaryOp::Mod, a, b);
}

const std::unordered_map<std::string_view, TestFn>& test_table() {
    static const std::unordered_map<std::string_view, TestFn> table = {
        {"defined", [](const Value& v, CallArgs&) { return !v.is_undefined(); }},
        {"undefined", [](const Value& v, CallArgs&) { return v.is_undefined(); }},
        {"none", [](const Value& v, CallArgs&) { return v.is_none(); }},
        {"boolean", [](const Value& v, CallArgs&) { return v.is_bool(); }},
        {"false", [](const Value& v, CallArgs&) { return v.is_bool() && !v.as_bool(); }},
        {"true", [](const Value& v, CallArgs&) { return v.is_bool() && v.as_bool(); }},
        {"integer", [](const Value& v, CallArgs&) { return v.is_int(); }},
        {"float", [](const Value& v, CallArgs&) { return v.is_float(); }},
        {"number", [](const Value& v, CallArgs&) { return v.is_number(); }},
        {"string", [](const Value& v, CallArgs&) { return v.is_string(); }},
        {"mapping", [](const Value& v, CallArgs&) { return v.is_dict(); }},
        {"iterable",
         [](const Value& v, CallArgs&) {
             return v.is_undefined() || v.is_string() || v.is_sequence_like() || v.is_dict() || v.is_loop() ||
                    v.is_iterator();
         }},
        {"sequence",
         [](const Value& v, CallArgs&) { return v.is_undefined() || v.is_string() || v.is_sequence_like() || v.is_dict(); }},
        {"callable", [](const Value& v, CallArgs&) { return v.is_function() || v.is_undefined() || v.is_loop(); }},
        {"escaped", [](const Value&, CallArgs&) { return false; }},
        {"odd", [](const Value& v, CallArgs&) { return equals(python_mod(v, Value(int64_t(2))), Value(int64_t(1))); }},
        {"even", [](const Value& v, CallArgs&) { return equals(python_mod(v, Value(int64_t(2))), Value(int64_t(0))); }},
        {"divisibleby",
         [](const Value& v, CallArgs& a) { return equals(python_mod(v, test_arg(a, "divisibleby")), Value(int64_t(0))); }},
        {"lower", [](const Value& v, CallArgs&) { return py_islower(to_str(v)); }},
        {"upper", [](const Value& v, CallArgs&) { return py_isupper(to_str(v)); }},
        {"eq", [](const Value& v, CallArgs& a) { return equals(v, test_arg(a, "eq")); }},
        {"equalto", [](const Value& v, CallArgs& a) { return equals(v, test_arg(a, "equalto")); }},
        {"ne", [](const Value& v, CallArgs& a) { return !equals(v, test_arg(a, "ne")); }},
        {"lt", [](const Value& v, CallArgs& a) { return less_than(v, test_arg(a, "lt")); }},
        {"lessthan", [](const Value& v, CallArgs& a) { return less_than(v, test_arg(a, "lessthan")); }},
        {"gt", [](const Value& v, CallArgs& a) { return less_than(test_arg(a, "gt"), v); }},
        {"greaterthan", [](const Value& v, CallArgs& a) { return less_than(test_arg(a, "greaterthan"), v); }},
        {"le",
         [](const Value& v, CallArgs& a) {
             const Value& o = test_arg(a, "le");
             return less_than(v, o) || equals(v, o);
         }},
        {"ge",
         [](const Value& v, CallArgs& a) {
             const Value& o = test_arg(a, "ge");
             return less_than(o, v) || equals(v, o);
         }},
        {"in", [](const Value& v, CallArgs& a) { return contains(test_arg(a, "in"), v); }},
        {"sameas",
         [](const Value& v, CallArgs& a) {
             const Value& o = test_arg(a, "sameas");
             if (v.type() != o.type()) return false;
             if (v.is_int()) return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;
             if (v.is_list() || v.is_tuple()) return v.items_ptr() == o.items_ptr();
             if (v.is_dict()) return &v.as_dict() == &o.as_dict();
             return equals(v, o);
         }},
        {"filter", [](const Value& v, CallArgs&) { return v.is_string() && is_filter(v.as_string()); }},
        {"test", [](const Value& v, CallArgs&) { return v.is_string() && is_test(v.as_string()); }},
    };
    return table;
}

// ---------------------------------------------------------------------------------------------
// Filters

using FilterFn = Value (*)(const Value&, CallArgs&);

Value select_or_reject(const Value& value, CallArgs& args, bool select, bool lookup_attribute) {
    std::string_view name = select ? (lookup_attribute ? "selectattr" : "select") : (lookup_attribute ? "rejectattr" : "reject");
    ValueList out;
    if (!truthy(value)) return Value::iterator("generator", {});
    size_t off = 0;
    std::vector<Value> parts;
    if (lookup_attribute) {
        if (args.positional.empty()) fail("Missing parameter for attribute name");
        parts = attribute_parts(args.positional[0]);
        off = 1;
    }
    std::optional<std::string> test_name;
    CallArgs test_args;
    if (args.positional.size() > off) {
        test_name = str_arg(args.positional[off], std::string(name) + " test name");
        if (!is_test(*test_name)) fail("No test named '" + *test_name + "'.");
        test_args.positional.assign(args.positional.begin() + off + 1, args.positional.end());
        test_args.keyword = args.keyword;
    }
    for (const Value& item : iterate(value)) {
        Value subject = lookup_attribute ? get_by_parts(item, parts) : item;
        bool result;
        if (test_name) {
            CallArgs call = test_args;
            result = apply_test(*test_name, subject, call);
        } else {
            result = truthy(subject);
        }
        if (result == select) out.push_back(item);
    }
    return Value::iterator("generator", std::move(out));
}

Value filter_map(const Value& value, CallArgs& args) {
    if (!truthy(value)) return Value::iterator("generator", {});
    ValueList out;
    if (args.positional.empty()) {
        const Value* attribute = nullptr;
        const Value* fallback = nullptr;
        for (const auto& [k, v] : args.keyword) {
            if (k == "attribute") {
                attribute = &v;
            } else if (k == "default") {
                fallback = &v;
            } else {
                fail("Unexpected keyword argument '" + k + "'");
            }
        }
        if (!attribute) fail("map requires a filter argument");
        auto parts = attribute_parts(*attribute);
        for (const Value& item : iterate(value)) out.push_back(get_by_parts(item, parts, fallback));
        return Value::iterator("generator", std::move(out));
    }
    std::string name = str_arg(args.positional[0], "map filter name");
    if (!is_filter(name)) fail("No filter named '" + name + "'.");
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    for (const Value& item : iterate(value)) {
        CallArgs call = rest;
        out.push_back(apply_filter(name, item, call));
    }
    return Value::iterator("generator", std::move(out));
}

Value min_or_max(const Value& value, CallArgs& args, bool want_max) {
    ArgReader a(args, want_max ? "max" : "min", {"case_sensitive", "attribute"});
    ValueList items = iterate(value);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    bool case_sensitive = truthy(a.get_or(0, Value(false)));
    auto parts = attribute_parts(a.get_or(1, Value::none()));
    size_t best = 0;
    Value best_key = sort_key(items[0], parts, case_sensitive);
    for (size_t i = 1; i < items.size(); ++i) {
        Value key = sort_key(items[i], parts, case_sensitive);
        if (want_max ? less_than(best_key, key) : less_than(key, best_key)) {
            best = i;
            best_key = std::move(key);
        }
    }
    return items[best];
}

std::string html_escape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&#34;"; break;
            case '\'': out += "&#39;"; break;
            default: out += c;
        }
    }
    return out;
}

double round_half_even_digits(double x, int64_t digits) {
    // Python's round(x, n) rounds the exact binary value correctly; printf does the same.
    if (digits > 300) return x;
    if (digits < -308) return 0.0 * x;
    if (digits < 0) {
        double scale = std::pow(10.0, double(-digits));
        double y = x / scale;
        double r = std::nearbyint(y);
        return r * scale;
    }
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", int(digits), x);
    return std::strtod(buf, nullptr);
}

Value filter_round(const Value& value, CallArgs& args) {
    ArgReader a(args, "round", {"precision", "method"});
    int64_t precision = int_arg(a.get_or(0, Value(int64_t(0))), "precision");
    std::string method = to_str(a.get_or(1, Value("common")));
    if (method != "common" && method != "ceil" && method != "floor")
        fail("method must be common, ceil or floor");
    if (value.is_undefined()) fail_undefined(value);
    if (!value.is_number()) fail("type " + value.type_name() + " doesn't define __round__ method");
    if (method == "common") {
        if (value.is_integral()) {
            if (precision >= 0) return Value(value.as_int());
            double r = round_half_even_digits(double(value.as_int()), precision);
            return Value(int64_t(r));
        }
        double x = value.as_double();
        if (std::isnan(x) || std::isinf(x)) return value;
        return Value(round_half_even_digits(x, precision));
    }
    double scale = std::pow(10.0, double(precision));
    double scaled = value.as_double() * scale;
    double r = method == "ceil" ? std::ceil(scaled) : std::floor(scaled);
    return Value(r / scale);
}

Value filter_indent(const Value& value, CallArgs& args) {
    ArgReader a(args, "indent", {"width", "first", "blank"});
    Value width = a.get_or(0, Value(int64_t(4)));
    std::string indention;
    if (width.is_string()) {
        indention = width.as_string();
    } else {
        int64_t n = int_arg(width, "width");
        if (n > 0) indention.assign(size_t(std::min<int64_t>(n, 4096)), ' ');
    }
    bool first = truthy(a.get_or(1, Value(false)));
    bool blank = truthy(a.get_or(2, Value(false)));
    if (value.is_undefined()) fail_undefined(value);
    if (!value.is_string()) fail("unsupported operand type(s) for +=: '" + value.type_name() + "' and 'str'");
    std::string s = value.as_string() + "\n";
    std::vector<std::string> lines = py_splitlines(s, false);
    std::string rv;
    if (blank) {
        for (size_t i = 0; i < lines.size(); ++i) {
            if (i) rv += "\n" + indention;
            rv += lines[i];
        }
    } else {
        rv = lines.empty() ? "" : lines[0];
        if (lines.size() > 1) {
            rv += "\n";
            for (size_t i = 1; i < lines.size(); ++i) {
                if (i > 1) rv += "\n";
                if (!lines[i].empty()) rv += indention;
                rv += lines[i];
            }
        }
    }
    if (first) rv = indention + rv;
    if (rv.size() > kMaxStringBytes) fail("string is too large");
    return Value(std::move(rv));
}

Value filter_tojson(const Value& value, CallArgs& args) {
    ArgReader a(args, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
    JsonOptions options;
    options.ensure_ascii = truthy(a.get_or(0, Value(false)));
    Value indent = a.get_or(1, Value::none());
    if (indent.is_string()) {
        options.indent = indent.as_string();
    } else if (indent.is_integral()) {
        options.indent = std::string(size_t(std::clamp<int64_t>(indent.as_int(), 0, 4096)), ' ');
    } else if (!indent.is_none()) {
        fail("tojson indent must be an integer or a string");
    }
    if (options.indent) options.item_separator = ",";
    Value separators = a.get_or(2, Value::none());
    if (!separators.is_none()) {
        if (!separators.is_sequence_like() || separators.items().size() != 2)
            fail("tojson separators must be an (item_separator, key_separator) pair");
        options.item_separator = str_arg(separators.items()[0], "item separator");
        options.key_separator = str_arg(separators.items()[1], "key separator");
    }
    options.sort_keys = truthy(a.get_or(3, Value(false)));
    return Value(to_json_text(value, options));
}

Value filter_truncate(const Value& value, CallArgs& args) {
    ArgReader a(args, "truncate", {"length", "killwords", "end", "leeway"});
    if (!value.is_string()) {
        // jinja2 takes len() of the value as it is; only strings can be cut.
        int64_t n = length(value);
        int64_t limit = int_arg(a.get_or(0, Value(int64_t(255))), "length") + int_arg(a.get_or(3, Value(int64_t(5))), "leeway");
        if (n <= limit) return value;
        fail("truncate needs a string, got " + value.type_name());
    }
    std::string s = value.as_string();
    int64_t length = int_arg(a.get_or(0, Value(int64_t(255))), "length");
    bool killwords = truthy(a.get_or(1, Value(false)));
    std::string end = to_str(a.get_or(2, Value("...")));
    int64_t leeway = int_arg(a.get_or(3, Value(int64_t(5))), "leeway");
    std::u32string u = utf8_decode(s);
    int64_t end_len = int64_t(utf8_length(end));
    if (length < end_len) fail(fmt::format("expected length >= {}, got {}", end_len, length));
    if (leeway < 0) fail(fmt::format("expected leeway >= 0, got {}", leeway));
    if (int64_t(u.size()) <= length + leeway) return Value(s);
    std::string head = utf8_encode(std::u32string_view(u).substr(0, size_t(length - end_len)));
    if (killwords) return Value(head + end);
    auto parts = py_rsplit(head, std::string(" "), 1);
    return Value(parts[0] + end);
}

Value filter_center(const Value& value, CallArgs& args) {
    ArgReader a(args, "center", {"width"});
    std::string s = to_str(value);
    int64_t width = std::min<int64_t>(int_arg(a.get_or(0, Value(int64_t(80))), "width"), int64_t(kMaxStringBytes));
    int64_t len = int64_t(utf8_length(s));
    if (width <= len) return Value(s);
    int64_t marg = width - len;
    int64_t left = marg / 2 + (marg & width & 1);
    return Value(std::string(size_t(left), ' ') + s + std::string(size_t(marg - left), ' '));
}

Value filter_int(const Value& value, CallArgs& args) {
    ArgReader a(args, "int", {"default", "base"});
    Value fallback = a.get_or(0, Value(int64_t(0)));
    int64_t base = int_arg(a.get_or(1, Value(int64_t(10))), "base");
    if (value.is_undefined()) fail_undefined(value);
    // jinja2: int(value), then int(float(value)) for "42.5"; the fallback also swallows NaN and
    // (for strings) infinity, but int(inf) on a float value raises OverflowError.
    auto from_double = [&](double d) -> Value {
        if (std::isnan(d) || std::isinf(d)) return fallback;
        if (std::fabs(d) >= 9.2e18) fail("integer is too large for this interpreter (64-bit)");
        return Value(int64_t(std::trunc(d)));
    };
    if (value.is_integral()) return Value(value.as_int());
    if (value.is_float()) {
        if (std::isinf(value.as_double())) fail("cannot convert float infinity to integer");
        return from_double(value.as_double());
    }
    if (value.is_string()) {
        if (auto i = parse_python_int(value.as_string(), int(base))) return Value(*i);
        if (auto f = parse_python_float(value.as_string())) return from_double(*f);
    }
    return fallback;
}

Value filter_float(const Value& value, CallArgs& args) {
    ArgReader a(args, "float", {"default"});
    Value fallback = a.get_or(0, Value(0.0));
    if (value.is_undefined()) fail_undefined(value);
    if (value.is_number()) return Value(value.as_double());
    if (value.is_string())
        if (auto f = parse_python_float(value.as_string())) return Value(*f);
    return fallback;
}

Value filter_sort(const Value& value, CallArgs& args) {
    ArgReader a(args, "sort", {"reverse", "case_sensitive", "attribute"});
    bool reverse = truthy(a.get_or(0, Value(false)));
    bool case_sensitive = truthy(a.get_or(1, Value(false)));
    Value attribute = a.get_or(2, Value::none());
    ValueList items = iterate(value);
    // make_multi_attrgetter: "a,b" sorts by a, then b.
    std::vector<std::vector<Value>> attribute_sets;
    if (attribute.is_string()) {
        for (const auto& p : py_split(attribute.as_string(), std::string(","), -1))
            attribute_sets.push_back(attribute_parts(Value(p)));
    } else {
        attribute_sets.push_back(attribute_parts(attribute));
    }
    std::vector<std::pair<Value, size_t>> keyed;
    keyed.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
        ValueList keys;
        for (const auto& parts : attribute_sets) keys.push_back(sort_key(items[i], parts, case_sensitive));
        keyed.emplace_back(Value::list(std::move(keys)), i);
    }
    std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& x, const auto& y) {
        return reverse ? value_less(y.first, x.first) : value_less(x.first, y.first);
    });
    ValueList out;
    out.reserve(items.size());
    for (const auto& [_, i] : keyed) out.push_back(items[i]);
    return Value::list(std::move(out));
}

Value filter_dictsort(const Value& value, CallArgs& args) {
    ArgReader a(args, "dictsort", {"case_sensitive", "by", "reverse"});
    bool case_sensitive = truthy(a.get_or(0, Value(false)));
    std::string by = to_str(a.get_or(1, Value("key")));
    bool reverse = truthy(a.get_or(2, Value(false)));
    if (by != "key" && by != "value") fail("You can only sort by either \"key\" or \"value\"");
    if (value.is_undefined()) fail_undefined(value);
    if (!value.is_dict()) fail("'" + value.type_name() + "' object has no attribute 'items'");
    std::vector<std::pair<Value, Value>> entries = value.as_dict().entries;
    size_t pos = by == "key" ? 0 : 1;
    auto key_of = [&](const std::pair<Value, Value>& e) {
        const Value& k = pos == 0 ? e.first : e.second;
        return case_sensitive ? k : ignore_case(k);
    };
    std::stable_sort(entries.begin(), entries.end(), [&](const auto& x, const auto& y) {
        return reverse ? less_than(key_of(y), key_of(x)) : less_than(key_of(x), key_of(y));
    });
    ValueList out;
    for (auto& [k, v] : entries) out.push_back(Value::tuple({k, v}));
    return Value::list(std::move(out));
}

Value filter_unique(const Value& value, CallArgs& args) {
    ArgReader a(args, "unique", {"case_sensitive", "attribute"});
    bool case_sensitive = truthy(a.get_or(0, Value(false)));
    auto parts = attribute_parts(a.get_or(1, Value::none()));
    ValueList seen, out;
    for (const Value& item : iterate(value)) {
        Value key = sort_key(item, parts, case_sensitive);
        if (key.is_list() || key.is_dict()) fail("unhashable type: '" + key.type_name() + "'");
        bool found = false;
        for (const Value& s : seen)
            if (equals(s, key)) {
                found = true;
                break;
            }
        if (!found) {
            seen.push_back(key);
            out.push_back(item);
        }
    }
    return Value::iterator("generator", std::move(out));
}

Value filter_join(const Value& value, CallArgs& args) {
    ArgReader a(args, "join", {"d", "attribute"});
    std::string sep = to_str(a.get_or(0, Value("")));
    auto parts = attribute_parts(a.get_or(1, Value::none()));
    std::string out;
    bool first = true;
    for (const Value& item : iterate(value)) {
        if (!first) out += sep;
        first = false;
        out += to_str(parts.empty() ? item : get_by_parts(item, parts));
        if (out.size() > kMaxStringBytes) fail("string is too large");
    }
    return Value(std::move(out));
}

Value filter_replace(const Value& value, CallArgs& args) {
    ArgReader a(args, "replace", {"old", "new", "count"});
    Value count = a.get_or(2, Value::none());
    return Value(py_replace(to_str(value), to_str(a.require(0)), to_str(a.require(1)),
                            count.is_none() ? -1 : int_arg(count, "count")));
}

Value filter_first(const Value& value, CallArgs& args) {
    ArgReader a(args, "first", {});
    if (value.is_iterator()) {
        IteratorState& it = value.as_iterator();
        it.materialize();
        if (it.position >= it.items.size()) return Value::undefined("No first item, sequence was empty.");
        return it.items[it.position++];
    }
    if (value.is_sequence_like()) {
        if (value.items().empty()) return Value::undefined("No first item, sequence was empty.");
        return value.items().front();
    }
    ValueList items = iterate(value);
    if (items.empty()) return Value::undefined("No first item, sequence was empty.");
    return items.front();
}

Value filter_last(const Value& value, CallArgs& args) {
    ArgReader a(args, "last", {});
    if (value.is_iterator()) fail("'" + value.type_name() + "' object is not reversible");
    if (value.is_sequence_like()) {
        if (value.items().empty()) return Value::undefined("No last item, sequence was empty.");
        return value.items().back();
    }
    ValueList items = iterate(value);
    if (items.empty()) return Value::undefined("No last item, sequence was empty.");
    return items.back();
}

Value filter_reverse(const Value& value, CallArgs& args) {
    ArgReader a(args, "reverse", {});
    if (value.is_string()) {
        std::u32string u = utf8_decode(value.as_string());
        std::reverse(u.begin(), u.end());
        return Value(utf8_encode(u));
    }
    // reversed(): an iterator over lists, tuples and dicts; a list for anything else iterable.
    const char* kind = value.is_list() ? "list_reverseiterator" : value.is_dict() ? "dict_reversekeyiterator"
                     : value.is_tuple() || value.is_undefined() ? "reversed" : nullptr;
    ValueList items = iterate(value);
    std::reverse(items.begin(), items.end());
    if (kind) return Value::iterator(kind, std::move(items));
    return Value::list(std::move(items));
}

Value filter_sum(const Value& value, CallArgs& args) {
    ArgReader a(args, "sum", {"attribute", "start"});
    auto parts = attribute_parts(a.get_or(0, Value::none()));
    Value total = a.get_or(1, Value(int64_t(0)));
    if (total.is_string()) fail("sum() can't sum strings [use ''.join(seq) instead]");
    for (const Value& item : iterate(value)) total = binary_op(BinaryOp::Add, total, parts.empty() ? item : get_by_parts(item, parts));
    return total;
}

Value filter_batch(const Value& value, CallArgs& args) {
    ArgReader a(args, "batch", {"linecount", "fill_with"});
    int64_t linecount = int_arg(a.require(0), "linecount");
    Value fill = a.get_or(1, Value::none());
    if (linecount <= 0) fail("batch linecount must be positive");
    ValueList out, tmp;
    for (const Value& item : iterate(value)) {
        if (int64_t(tmp.size()) == linecount) {
            out.push_back(Value::list(std::move(tmp)));
            tmp.clear();
        }
        tmp.push_back(item);
    }
    if (!tmp.empty()) {
        if (!fill.is_none())
            while (int64_t(tmp.size()) < linecount) tmp.push_back(fill);
        out.push_back(Value::list(std::move(tmp)));
    }
    return Value::iterator("generator", std::move(out));
}

Value filter_slice(const Value& value, CallArgs& args) {
    ArgReader a(args, "slice", {"slices", "fill_with"});
    int64_t slices = int_arg(a.require(0), "slices");
    Value fill = a.get_or(1, Value::none());
    if (slices <= 0) fail("integer division or modulo by zero");
    if (slices > int64_t(kMaxListItems)) fail("list is too large");
    ValueList seq = iterate(value);
    int64_t length = int64_t(seq.size());
    int64_t per = length / slices, extra = length % slices, offset = 0;
    ValueList out;
    for (int64_t n = 0; n < slices; ++n) {
        int64_t start = offset + n * per;
        if (n < extra) ++offset;
        int64_t end = offset + (n + 1) * per;
        ValueList tmp(seq.begin() + start, seq.begin() + end);
        if (!fill.is_none() && n >= extra) tmp.push_back(fill);
        out.push_back(Value::list(std::move(tmp)));
    }
    return Value::iterator("generator", std::move(out));
}

Value filter_wordcount(const Value& value, CallArgs& args) {
    ArgReader a(args, "wordcount", {});
    int64_t count = 0;
    bool in_word = false;
    for (char32_t c : utf8_decode(to_str(value))) {
        bool w = is_word_char(c);
        if (w && !in_word) ++count;
        in_word = w;
    }
    return Value(count);
}

Value filter_title(const Value& value, CallArgs& args) {
    ArgReader a(args, "title", {});
    // jinja2's do_title: split on runs of [-\s({\[<], upper-case each piece's first character.
    std::u32string u = utf8_decode(to_str(value));
    auto is_delim = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_space(c); };
    std::string out;
    size_t i = 0;
    while (i < u.size()) {
        size_t j = i;
        bool delim = is_delim(u[i]);
        while (j < u.size() && is_delim(u[j]) == delim) ++j;
        if (delim) {
            out += utf8_encode(std::u32string_view(u).substr(i, j - i));
        } else {
            std::string piece = utf8_encode(std::u32string_view(u).substr(i, 1));
            out += py_upper(piece);
            out += py_lower(utf8_encode(std::u32string_view(u).substr(i + 1, j - i - 1)));
        }
        i = j;
    }
    return Value(std::move(out));
}

Value filter_default(const Value& value, CallArgs& args) {
    ArgReader a(args, "default", {"default_value", "boolean"});
    Value fallback = a.get_or(0, Value(""));
    bool boolean = truthy(a.get_or(1, Value(false)));
    if (value.is_undefined() || (boolean && !truthy(value))) return fallback;
    return value;
}

Value filter_items(const Value& value, CallArgs& args) {
    ArgReader a(args, "items", {});
    if (value.is_undefined()) return Value::iterator("generator", {});
    if (!value.is_dict()) fail("Can only get item pairs from a mapping.");
    ValueList out;
    for (const auto& [k, v] : value.as_dict().entries) out.push_back(Value::tuple({k, v}));
    return Value::iterator("generator", std::move(out));
}

bool is_dict_method(std::string_view name) {
    static const std::string_view names[] = {"clear", "copy", "fromkeys", "get", "items", "keys",
                                             "pop", "popitem", "setdefault", "update", "values"};
    return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

Value filter_attr(const Value& value, CallArgs& args) {
    ArgReader a(args, "attr", {"name"});
    std::string name = to_str(a.require(0));
    // Only Python attributes, never items: a dict key is not an attribute.
    if (value.is_dict() && !is_dict_method(name)) return missing_attribute(value, name);
    return get_attribute(value, name);
}

Value filter_format(const Value& value, CallArgs& args) {
    std::string s = to_str(value);
    if (!args.keyword.empty()) {
        DictData d;
        for (const auto& [k, v] : args.keyword) d.set(Value(k), v);
        return Value(percent_format(s, Value::dict(std::move(d))));
    }
    return Value(percent_format(s, Value::tuple(args.positional)));
}

Value unsupported_filter(const Value&, CallArgs&) { fail("this jinja2 filter is not supported in chat templates"); }

// jinja2's generator filters run their body only when the result is consumed.
template <FilterFn F>
Value lazy(const Value& value, CallArgs& args) {
    int depth = value.nesting();
    for (const Value& v : args.positional) depth = std::max(depth, v.nesting());
    for (const auto& [_, v] : args.keyword) depth = std::max(depth, v.nesting());
    return Value::generator([value, args]() mutable { return iterate(F(value, args)); }, depth);
}

Value filter_select(const Value& v, CallArgs& a) { return select_or_reject(v, a, true, false); }
Value filter_reject(const Value& v, CallArgs& a) { return select_or_reject(v, a, false, false); }
Value filter_selectattr(const Value& v, CallArgs& a) { return select_or_reject(v, a, true, true); }
Value filter_rejectattr(const Value& v, CallArgs& a) { return select_or_reject(v, a, false, true); }

const std::unordered_map<std::string_view, FilterFn>& filter_table() {
    static const std::unordered_map<std::string_view, FilterFn> table = {
        {"abs",
         [](const Value& v, CallArgs& a) -> Value {
             ArgReader r(a, "abs", {});
             if (v.is_undefined()) fail_undefined(v);
             if (v.is_integral()) {
                 if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow");
                 return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
             }
             if (v.is_float()) return Value(std::fabs(v.as_double()));
             fail("bad operand type for abs(): '" + v.type_name() + "'");
         }},
        {"attr", filter_attr},
        {"batch", lazy<filter_batch>},
        {"capitalize",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "capitalize", {});
             return Value(py_capitalize(to_str(v)));
         }},
        {"center", filter_center},
        {"count",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "count", {});
             return Value(length(v));
         }},
        {"length",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "length", {});
             return Value(length(v));
         }},
        {"d", filter_default},
        {"default", filter_default},
        {"dictsort", filter_dictsort},
        {"e",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "escape", {});
             return Value(html_escape(to_str(v)));
         }},
        {"escape",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "escape", {});
             return Value(html_escape(to_str(v)));
         }},
        {"forceescape",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "forceescape", {});
             return Value(html_escape(to_str(v)));
         }},
        {"filesizeformat", unsupported_filter},
        {"first", filter_first},
        {"float", filter_float},
        {"format", filter_format},
        {"groupby", unsupported_filter},
        {"indent", filter_indent},
        {"int", filter_int},
        {"items", lazy<filter_items>},
        {"join", filter_join},
        {"last", filter_last},
        {"list",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "list", {});
             return Value::list(to_list(v));
         }},
        {"lower",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "lower", {});
             return Value(py_lower(to_str(v)));
         }},
        {"upper",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "upper", {});
             return Value(py_upper(to_str(v)));
         }},
        {"map", lazy<filter_map>},
        {"max", [](const Value& v, CallArgs& a) { return min_or_max(v, a, true); }},
        {"min", [](const Value& v, CallArgs& a) { return min_or_max(v, a, false); }},
        {"pprint", unsupported_filter},
        {"random", unsupported_filter},
        {"reject", lazy<filter_reject>},
        {"rejectattr", lazy<filter_rejectattr>},
        {"select", lazy<filter_select>},
        {"selectattr", lazy<filter_selectattr>},
        {"replace", filter_replace},
        {"reverse", filter_reverse},
        {"round", filter_round},
        {"safe",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "safe", {});
             return Value(to_str(v));
         }},
        {"slice", lazy<filter_slice>},
        {"sort", filter_sort},
        {"string",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "string", {});
             return Value(to_str(v));
         }},
        {"striptags", unsupported_filter},
        {"sum", filter_sum},
        {"title", filter_title},
        {"tojson", filter_tojson},
        {"trim",
         [](const Value& v, CallArgs& a) {
             ArgReader r(a, "trim", {"chars"});
             return Value(py_strip(to_str(v), optional_str_arg(r.get(0), "trim chars"), true, true));
         }},
        {"truncate", filter_truncate},
        {"unique", lazy<filter_unique>},
        {"urlencode", unsupported_filter},
        {"urlize", unsupported_filter},
        {"wordcount", filter_wordcount},
        {"wordwrap", unsupported_filter},
        {"xmlattr", unsupported_filter},
    };
    return table;
}

// ---------------------------------------------------------------------------------------------
// Methods of str, dict, list (through attribute access)

Value bind_method(const Value& self, std::string name, Value (*method)(const Value&, CallArgs&)) {
    return Value::function(std::move(name), [self, method](CallArgs& args) { return method(self, args); },
                           self.nesting());
}

using MethodFn = Value (*)(const Value&, CallArgs&);

Value str_startswith_impl(const Value& self, CallArgs& args, bool ends) {
    const char* fn = ends ? "endswith" : "startswith";
    no_keywords(args, fn);
    if (args.positional.empty() || args.positional.size() > 3) fail(fmt::format("{}() takes 1 to 3 arguments", fn));
    const std::string& s = self.as_string();
    auto [b, e] = codepoint_range(s, args.positional.size() > 1 ? &args.positional[1] : nullptr,
                                  args.positional.size() > 2 ? &args.positional[2] : nullptr);
    std::string_view view = std::string_view(s).substr(b, e - b);
    auto check = [&](const Value& p) {
        const std::string& prefix = str_arg(p, fmt::format("{} first arg", fn));
        if (prefix.size() > view.size()) return false;
        return ends ? view.substr(view.size() - prefix.size()) == prefix : view.substr(0, prefix.size()) == prefix;
    };
    const Value& arg = args.positional[0];
    if (arg.is_tuple()) {
        for (const Value& p : arg.items())
            if (check(p)) return Value(true);
        return Value(false);
    }
    if (!arg.is_string())
        fail(fmt::format("{} first arg must be str or a tuple of str, not {}", fn, arg.type_name()));
    return Value(check(arg));
}

Value str_find_impl(const Value& self, CallArgs& args, bool reverse, bool raise) {
    no_keywords(args, "find");
    if (args.positional.empty() || args.positional.size() > 3) fail("find() takes 1 to 3 arguments");
    const std::string& s = self.as_string();
    const std::string& sub = str_arg(args.positional[0], "substring");
    auto [b, e] = codepoint_range(s, args.positional.size() > 1 ? &args.positional[1] : nullptr,
                                  args.positional.size() > 2 ? &args.positional[2] : nullptr);
    std::string_view view = std::string_view(s).substr(b, e - b);
    size_t pos = reverse ? view.rfind(sub) : view.find(sub);
    if (pos == std::string_view::npos) {
        if (raise) fail("substring not found");
        return Value(int64_t(-1));
    }
    return Value(codepoints_before(s, b + pos));
}

Value str_strip_impl(const Value& self, CallArgs& args, bool left, bool right) {
    no_keywords(args, "strip");
    if (args.positional.size() > 1) fail("strip() takes at most 1 argument");
    return Value(py_strip(self.as_string(), optional_str_arg(args.positional.empty() ? nullptr : &args.positional[0], "strip arg"),
                          left, right));
}

Value str_split_impl(const Value& self, CallArgs& args, bool reverse) {
    ArgReader a(args, reverse ? "rsplit" : "split", {"sep", "maxsplit"});
    auto sep = optional_str_arg(a.get(0), "sep");
    int64_t maxsplit = int_arg(a.get_or(1, Value(int64_t(-1))), "maxsplit");
    return string_list(reverse ? py_rsplit(self.as_string(), sep, maxsplit) : py_split(self.as_string(), sep, maxsplit));
}

Value str_pad_impl(const Value& self, CallArgs& args, char align) {
    no_keywords(args, "ljust");
    if (args.positional.empty() || args.positional.size() > 2) fail("ljust() takes 1 or 2 arguments");
    int64_t width = std::min<int64_t>(int_arg(args.positional[0], "width"), int64_t(kMaxStringBytes));
    std::string fill = args.positional.size() > 1 ? str_arg(args.positional[1], "fill character") : " ";
    if (utf8_length(fill) != 1) fail("The fill character must be exactly one character long");
    const std::string& s = self.as_string();
    int64_t len = int64_t(utf8_length(s));
    if (width <= len) return self;
    int64_t pad = width - len;
    int64_t left = align == '<' ? 0 : align == '>' ? pad : pad / 2 + (pad & width & 1);
    std::string out;
    for (int64_t i = 0; i < left; ++i) out += fill;
    out += s;
    for (int64_t i = 0; i < pad - left; ++i) out += fill;
    return Value(std::move(out));
}

Value str_partition_impl(const Value& self, CallArgs& args, bool reverse) {
    no_keywords(args, "partition");
    if (args.positional.size() != 1) fail("partition() takes exactly one argument");
    const std::string& s = self.as_string();
    const std::string& sep = str_arg(args.positional[0], "separator");
    if (sep.empty()) fail("empty separator");
    size_t pos = reverse ? s.rfind(sep) : s.find(sep);
    if (pos == std::string::npos)
        return reverse ? Value::tuple({Value(""), Value(""), self}) : Value::tuple({self, Value(""), Value("")});
    return Value::tuple({Value(s.substr(0, pos)), Value(sep), Value(s.substr(pos + sep.size()))});
}

template <bool (*Pred)(char32_t)>
Value str_is_all(const Value& self, CallArgs& args) {
    no_keywords(args, "is");
    std::u32string u = utf8_decode(self.as_string());
    if (u.empty()) return Value(false);
    for (char32_t c : u)
        if (!Pred(c)) return Value(false);
    return Value(true);
}

bool is_alnum(char32_t c) { return is_alpha(c) || is_digit(c); }

const std::unordered_map<std::string_view, MethodFn>& str_methods() {
    static const std::unordered_map<std::string_view, MethodFn> table = {
        {"strip", [](const Value& s, CallArgs& a) { return str_strip_impl(s, a, true, true); }},
        {"lstrip", [](const Value& s, CallArgs& a) { return str_strip_impl(s, a, true, false); }},
        {"rstrip", [](const Value& s, CallArgs& a) { return str_strip_impl(s, a, false, true); }},
        {"split", [](const Value& s, CallArgs& a) { return str_split_impl(s, a, false); }},
        {"rsplit", [](const Value& s, CallArgs& a) { return str_split_impl(s, a, true); }},
        {"splitlines",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "splitlines", {"keepends"});
             return string_list(py_splitlines(s.as_string(), truthy(r.get_or(0, Value(false)))));
         }},
        {"startswith", [](const Value& s, CallArgs& a) { return str_startswith_impl(s, a, false); }},
        {"endswith", [](const Value& s, CallArgs& a) { return str_startswith_impl(s, a, true); }},
        {"upper",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "upper", {});
             return Value(py_upper(s.as_string()));
         }},
        {"lower",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "lower", {});
             return Value(py_lower(s.as_string()));
         }},
        {"casefold",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "casefold", {});
             return Value(py_casefold(s.as_string()));
         }},
        {"title",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "title", {});
             return Value(py_title(s.as_string()));
         }},
        {"capitalize",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "capitalize", {});
             return Value(py_capitalize(s.as_string()));
         }},
        {"swapcase",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "swapcase", {});
             return Value(py_swapcase(s.as_string()));
         }},
        {"replace",
         [](const Value& s, CallArgs& a) {
             ArgReader r(a, "replace", {"old", "new", "count"});
             return Value(py_replace(s.as_string(), str_arg(r.require(0), "replace old"), str_arg(r.require(1), "replace new"),
                                     int_arg(r.get_or(2, Value(int64_t(-1))), "count")));
         }},
        {"find", [](const Value& s, CallArgs& a) { return str_find_impl(s, a, false, false); }},
        {"rfind", [](const Value& s, CallArgs& a) { return str_find_impl(s, a, true, false); }},
        {"index", [](const Value& s, CallArgs& a) { return str_find_impl(s, a, false, true); }},
        {"rindex", [](const Value& s, CallArgs& a) { return str_find_impl(s, a, true, true); }},
        {"count",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "count");
             if (a.positional.empty() || a.positional.size() > 3) fail("count() takes 1 to 3 arguments");
             const std::string& str = s.as_string();
             const std::string& sub = str_arg(a.positional[0], "substring");
             auto [b, e] = codepoint_range(str, a.positional.size() > 1 ? &a.positional[1] : nullptr,
                                           a.positional.size() > 2 ? &a.positional[2] : nullptr);
             std::string_view view = std::string_view(str).substr(b, e - b);
             if (sub.empty()) return Value(int64_t(utf8_length(view)) + 1);
             int64_t n = 0;
             for (size_t pos = view.find(sub); pos != std::string_view::npos; pos = view.find(sub, pos + sub.size())) ++n;
             return Value(n);
         }},
        {"join",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "join");
             if (a.positional.size() != 1) fail("join() takes exactly one argument");
             std::string out;
             size_t i = 0;
             for (const Value& item : iterate(a.positional[0])) {
                 if (!item.is_string())
                     fail(fmt::format("sequence item {}: expected str instance, {} found", i, item.type_name()));
                 if (i++) out += s.as_string();
                 out += item.as_string();
                 if (out.size() > kMaxStringBytes) fail("string is too large");
             }
             return Value(std::move(out));
         }},
        {"format", [](const Value& s, CallArgs& a) { return Value(format_with_braces(s.as_string(), a)); }},
        {"center", [](const Value& s, CallArgs& a) { return str_pad_impl(s, a, '^'); }},
        {"ljust", [](const Value& s, CallArgs& a) { return str_pad_impl(s, a, '<'); }},
        {"rjust", [](const Value& s, CallArgs& a) { return str_pad_impl(s, a, '>'); }},
        {"zfill",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "zfill");
             if (a.positional.size() != 1) fail("zfill() takes exactly one argument");
             int64_t width = std::min<int64_t>(int_arg(a.positional[0], "width"), int64_t(kMaxStringBytes));
             const std::string& str = s.as_string();
             int64_t len = int64_t(utf8_length(str));
             if (width <= len) return s;
             std::string zeros(size_t(width - len), '0');
             if (!str.empty() && (str[0] == '+' || str[0] == '-')) return Value(str.substr(0, 1) + zeros + str.substr(1));
             return Value(zeros + str);
         }},
        {"partition", [](const Value& s, CallArgs& a) { return str_partition_impl(s, a, false); }},
        {"rpartition", [](const Value& s, CallArgs& a) { return str_partition_impl(s, a, true); }},
        {"removeprefix",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "removeprefix");
             if (a.positional.size() != 1) fail("removeprefix() takes exactly one argument");
             const std::string& p = str_arg(a.positional[0], "prefix");
             const std::string& str = s.as_string();
             return str.compare(0, p.size(), p) == 0 ? Value(str.substr(p.size())) : s;
         }},
        {"removesuffix",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "removesuffix");
             if (a.positional.size() != 1) fail("removesuffix() takes exactly one argument");
             const std::string& p = str_arg(a.positional[0], "suffix");
             const std::string& str = s.as_string();
             if (!p.empty() && str.size() >= p.size() && str.compare(str.size() - p.size(), p.size(), p) == 0)
                 return Value(str.substr(0, str.size() - p.size()));
             return s;
         }},
        {"isdigit", str_is_all<is_digit>},
        {"isdecimal", str_is_all<is_digit>},
        {"isnumeric", str_is_all<is_digit>},
        {"isalpha", str_is_all<is_alpha>},
        {"isalnum", str_is_all<is_alnum>},
        {"isspace", str_is_all<is_space>},
        {"isascii",
         [](const Value& s, CallArgs& a) {
             no_keywords(a, "isascii");
             return Value(is_ascii(s.as_string()));
         }},
        {"islower",
         [](const Value& s, CallArgs& a) {
             CallArgs none;
             return Value(apply_test("lower", s, none));
         }},
        {"isupper",
         [](const Value& s, CallArgs& a) {
             CallArgs none;
             return Value(apply_test("upper", s, none));
         }},
    };
    return table;
}

// Python str attributes that exist but are not supported by this interpreter (they raise an error naming the attribute).
bool is_other_str_attribute(std::string_view name) {
    static const std::string_view names[] = {"encode", "expandtabs", "format_map", "isidentifier", "isprintable",
                                             "istitle", "maketrans", "translate"};
    return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

Value dict_get(const Value& self, CallArgs& args) {
    no_keywords(args, "get");
    if (args.positional.empty() || args.positional.size() > 2) fail("get expected 1 or 2 arguments");
    const Value& key = args.positional[0];
    if (key.is_list() || key.is_dict()) fail("unhashable type: '" + key.type_name() + "'");
    const Value* v = self.as_dict().find(key);
    if (v) return *v;
    return args.positional.size() > 1 ? args.positional[1] : Value::none();
}

Value dict_items(const Value& self, CallArgs& args) {
    ArgReader a(args, "items", {});
    ValueList out;
    for (const auto& [k, v] : self.as_dict().entries) out.push_back(Value::tuple({k, v}));
    return Value::list(std::move(out));
}

Value dict_keys(const Value& self, CallArgs& args) {
    ArgReader a(args, "keys", {});
    return Value::list(iterate(self));
}

Value dict_values(const Value& self, CallArgs& args) {
    ArgReader a(args, "values", {});
    ValueList out;
    for (const auto& [_, v] : self.as_dict().entries) out.push_back(v);
    return Value::list(std::move(out));
}

Value seq_count(const Value& self, CallArgs& args) {
    no_keywords(args, "count");
    if (args.positional.size() != 1) fail("count() takes exactly one argument");
    int64_t n = 0;
    for (const Value& item : self.items())
        if (equals(item, args.positional[0])) ++n;
    return Value(n);
}

Value seq_index(const Value& self, CallArgs& args) {
    no_keywords(args, "index");
    if (args.positional.empty()) fail("index expected at least 1 argument");
    const ValueList& items = self.items();
    for (size_t i = 0; i < items.size(); ++i)
        if (equals(items[i], args.positional[0])) return Value(int64_t(i));
    fail(repr(args.positional[0]) + " is not in list");
}

Value loop_attribute(const Value& loop, const std::string& name) {
    const std::shared_ptr<LoopState>& s = loop.as_loop();
    int64_t length = int64_t(s->items->size());
    if (name == "index") return Value(s->index0 + 1);
    if (name == "index0") return Value(s->index0);
    if (name == "revindex") return Value(length - s->index0);
    if (name == "revindex0") return Value(length - s->index0 - 1);
    if (name == "first") return Value(s->index0 == 0);
    if (name == "last") return Value(s->index0 + 1 == length);
    if (name == "length") return Value(length);
    if (name == "depth") return Value(s->depth0 + 1);
    if (name == "depth0") return Value(s->depth0);
    if (name == "previtem") {
        if (s->index0 == 0) return Value::undefined("there is no previous item");
        return (*s->items)[size_t(s->index0 - 1)];
    }
    if (name == "nextitem") {
        if (s->index0 + 1 >= length) return Value::undefined("there is no next item");
        return (*s->items)[size_t(s->index0 + 1)];
    }
    if (name == "cycle") {
        std::weak_ptr<LoopState> weak = s;
        return Value::function("cycle", [weak](CallArgs& args) {
            auto state = weak.lock();
            if (!state) fail("loop.cycle() called outside its loop");
            no_keywords(args, "cycle");
            if (args.positional.empty()) fail("no items for cycling given");
            return args.positional[size_t(state->index0) % args.positional.size()];
        });
    }
    if (name == "changed") {
        std::weak_ptr<LoopState> weak = s;
        return Value::function("changed", [weak](CallArgs& args) {
            auto state = weak.lock();
            if (!state) fail("loop.changed() called outside its loop");
            Value current = Value::list(args.positional);
            if (!state->last_changed || !equals(*state->last_changed, current)) {
                state->last_changed = current;
                return Value(true);
            }
            return Value(false);
        });
    }
    return missing_attribute(loop, name);
}

// ---------------------------------------------------------------------------------------------
// Globals

Value global_range(CallArgs& args) {
    no_keywords(args, "range");
    const ValueList& p = args.positional;
    if (p.empty() || p.size() > 3) fail(fmt::format("range expected 1 to 3 arguments, got {}", p.size()));
    int64_t start = 0, stop, step = 1;
    if (p.size() == 1) {
        stop = int_arg(p[0], "range");
    } else {
        start = int_arg(p[0], "range");
        stop = int_arg(p[1], "range");
        if (p.size() == 3) step = int_arg(p[2], "range");
    }
    if (step == 0) fail("range() arg 3 must not be zero");
    long double count = step > 0 ? (stop > start ? ((long double)stop - start + step - 1) / step : 0)
                                 : (start > stop ? ((long double)start - stop - step - 1) / -step : 0);
    constexpr int64_t kMaxRange = 100000;  // jinja2.sandbox.MAX_RANGE
    if (count > kMaxRange) fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    ValueList out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
    return Value::list(std::move(out));
}

DictData dict_from_args(CallArgs& args, std::string_view function) {
    if (args.positional.size() > 1) fail(fmt::format("{} expected at most 1 argument, got {}", function, args.positional.size()));
    DictData d;
    if (!args.positional.empty()) {
        const Value& src = args.positional[0];
        if (src.is_dict()) {
            d = src.as_dict();
        } else if (src.is_namespace()) {
            fail(fmt::format("'{}' object is not iterable", src.type_name()));
        } else {
            for (const Value& pair : iterate(src)) {
                ValueList kv = iterate(pair);
                if (kv.size() != 2) fail("dictionary update sequence element has wrong length; 2 is required");
                d.set(kv[0], kv[1]);
            }
        }
    }
    for (const auto& [k, v] : args.keyword) d.set(Value(k), v);
    return d;
}

std::unordered_map<std::string, Value> make_globals() {
    std::unordered_map<std::string, Value> g;
    g["range"] = Value::function("range", global_range);
    g["dict"] = Value::function("dict", [](CallArgs& args) { return Value::dict(dict_from_args(args, "dict")); });
    g["namespace"] = Value::function("namespace", [](CallArgs& args) {
        auto ns = std::make_shared<NamespaceData>();
        ns->attributes = dict_from_args(args, "namespace");
        return Value::namespace_(std::move(ns));
    });
    g["raise_exception"] = Value::function("raise_exception", [](CallArgs& args) -> Value {
        std::string message = args.positional.empty() ? std::string() : to_str(args.positional[0]);
        fail("the template raised an exception: " + message);
    });
    g["strftime_now"] = Value::function("strftime_now", [](CallArgs& args) {
        no_keywords(args, "strftime_now");
        if (args.positional.size() != 1) fail("strftime_now() takes exactly one argument (the format)");
        const std::string& format = str_arg(args.positional[0], "strftime_now format");
        std::time_t now = std::time(nullptr);
        std::tm local{};
        localtime_r(&now, &local);
        std::string buf(256 + format.size() * 8, '\0');
        size_t n = format.empty() ? 0 : std::strftime(buf.data(), buf.size(), format.c_str(), &local);
        buf.resize(n);
        return Value(std::move(buf));
    });
    g["joiner"] = Value::function("joiner", [](CallArgs& args) {
        ArgReader a(args, "joiner", {"sep"});
        std::string sep = to_str(a.get_or(0, Value(", ")));
        auto used = std::make_shared<bool>(false);
        return Value::function("joiner", [sep, used](CallArgs&) {
            if (!*used) {
                *used = true;
                return Value("");
            }
            return Value(sep);
        });
    });
    return g;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points

bool is_filter(std::string_view name) { return filter_table().count(name) != 0; }
bool is_test(std::string_view name) { return test_table().count(name) != 0; }

Value apply_filter(const std::string& name, const Value& subject, CallArgs& args) {
    auto it = filter_table().find(name);
    if (it == filter_table().end()) fail("No filter named '" + name + "'.");
    return it->second(subject, args);
}

bool apply_test(const std::string& name, const Value& subject, CallArgs& args) {
    auto it = test_table().find(name);
    if (it == test_table().end()) fail("No test named '" + name + "'.");
    return it->second(subject, args);
}

Value get_attribute(const Value& obj, const std::string& name) {
    if (name.size() >= 2 && name[0] == '_' && name[1] == '_') return unsafe_attribute(obj, name);
    switch (obj.type()) {
        case Value::Type::Undefined: fail_undefined(obj);
        case Value::Type::String: {
            auto it = str_methods().find(name);
            if (it != str_methods().end()) return bind_method(obj, name, it->second);
            if (is_other_str_attribute(name))
                return Value::function(name, [name](CallArgs&) -> Value { fail("str." + name + "() is not supported in chat templates"); });
            return missing_attribute(obj, name);
        }
        case Value::Type::Dict: {
            if (name == "get") return bind_method(obj, name, dict_get);
            if (name == "items") return bind_method(obj, name, dict_items);
            if (name == "keys") return bind_method(obj, name, dict_keys);
            if (name == "values") return bind_method(obj, name, dict_values);
            if (name == "copy") return bind_method(obj, name, [](const Value& self, CallArgs&) { return self; });
            if (name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" || name == "update")
                return unsafe_attribute(obj, name);
            if (const Value* v = obj.as_dict().find(std::string_view(name))) return *v;
            return missing_attribute(obj, name);
        }
        case Value::Type::List:
        case Value::Type::Tuple:
            if (name == "count") return bind_method(obj, name, seq_count);
            if (name == "index") return bind_method(obj, name, seq_index);
            if (obj.is_list()) {
                if (name == "copy") return bind_method(obj, name, [](const Value& self, CallArgs&) { return self; });
                if (name == "append" || name == "clear" || name == "extend" || name == "insert" || name == "pop" ||
                    name == "remove" || name == "reverse" || name == "sort")
                    return unsafe_attribute(obj, name);
            }
            return missing_attribute(obj, name);
        case Value::Type::Namespace: {
            if (const Value* v = obj.as_namespace()->attributes.find(std::string_view(name))) return *v;
            return missing_attribute(obj, name);
        }
        case Value::Type::Loop: return loop_attribute(obj, name);
        default: return missing_attribute(obj, name);
    }
}

Value get_item(const Value& obj, const Value& key) {
    if (obj.is_undefined()) fail_undefined(obj);
    if (key.is_undefined() && !obj.is_dict()) {
        // list[undefined] is a TypeError in Python, which jinja2 turns into Undefined.
        return Value::undefined("'" + object_type_repr(obj) + "' has no element Undefined");
    }
    switch (obj.type()) {
        case Value::Type::Dict:
            if (const Value* v = obj.as_dict().find(key)) return *v;
            break;
        case Value::Type::List:
        case Value::Type::Tuple:
            if (key.is_integral()) {
                int64_t i = key.as_int();
                int64_t n = int64_t(obj.items().size());
                if (i < 0) i += n;
                if (i >= 0 && i < n) return obj.items()[size_t(i)];
                return Value::undefined("'" + object_type_repr(obj) + "' has no element " + repr(key));
            }
            break;
        case Value::Type::String:
            if (key.is_integral()) {
                const std::string& s = obj.as_string();
                int64_t i = key.as_int();
                if (is_ascii(s)) {
                    int64_t n = int64_t(s.size());
                    if (i < 0) i += n;
                    if (i >= 0 && i < n) return Value(std::string(1, s[size_t(i)]));
                } else {
                    std::u32string u = utf8_decode(s);
                    int64_t n = int64_t(u.size());
                    if (i < 0) i += n;
                    if (i >= 0 && i < n) return Value(utf8_encode(std::u32string_view(u).substr(size_t(i), 1)));
                }
                return Value::undefined("'str object' has no element " + repr(key));
            }
            break;
        default: break;
    }
    if (key.is_string()) {
        // jinja2's sandbox falls back to getattr for string keys: d["items"] is the method when
        // the dict has no such key, ns["x"] is the attribute.
        if (obj.is_dict()) {
            const std::string& name = key.as_string();
            if (is_dict_method(name)) return get_attribute(obj, name);
            return missing_attribute(obj, name);
        }
        return get_attribute(obj, key.as_string());
    }
    return Value::undefined("'" + object_type_repr(obj) + "' has no element " + repr(key));
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, bool lenient) {
    if (obj.is_undefined()) fail_undefined(obj);
    auto type_error = [&](const std::string& message) -> Value {
        if (lenient) return Value::undefined(message);
        fail(message);
    };
    if (!obj.is_string() && !obj.is_sequence_like()) {
        if (obj.is_dict()) return type_error("unhashable type: 'slice'");
        return type_error("'" + obj.type_name() + "' object is not subscriptable");
    }
    for (const Value* part : {&start, &stop, &step})
        if (!part->is_none() && !part->is_integral())
            return type_error("slice indices must be integers or None or have an __index__ method");
    if (obj.is_string()) {
        const std::string& s = obj.as_string();
        std::string out;
        if (is_ascii(s)) {
            SliceRange r = adjust_slice(int64_t(s.size()), start, stop, step);
            apply_slice(s, r, [&](char c) { out += c; });
        } else {
            std::u32string u = utf8_decode(s);
            SliceRange r = adjust_slice(int64_t(u.size()), start, stop, step);
            apply_slice(u, r, [&](char32_t c) { utf8_append(out, c); });
        }
        return Value(std::move(out));
    }
    const ValueList& items = obj.items();
    SliceRange r = adjust_slice(int64_t(items.size()), start, stop, step);
    ValueList out;
    apply_slice(items, r, [&](const Value& v) { out.push_back(v); });
    return obj.is_list() ? Value::list(std::move(out)) : Value::tuple(std::move(out));
}

Value call_value(const Value& callee, CallArgs& args) {
    if (callee.is_undefined()) fail_undefined(callee);
    if (callee.is_function()) return callee.as_function().call(args);
    if (callee.is_loop()) {
        const auto& state = callee.as_loop();
        if (!state->recurse) fail("Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.");
        return state->recurse(args);
    }
    fail("'" + callee.type_name() + "' object is not callable");
}

const Value* find_global(const std::string& name) {
    static const std::unordered_map<std::string, Value> globals = make_globals();
    auto it = globals.find(name);
    return it == globals.end() ? nullptr : &it->second;
}

}  // namespace swiftkv::jinja
