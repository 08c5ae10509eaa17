// jinja_value.h — the values of the chat-template interpreter and the Python semantics templates
// observe on them. jinja2 runs on Python objects, so matching its output byte for byte means
// matching Python: str()/repr() formatting (1.0 prints "1.0", True prints "True", lists print
// with repr'd items), truthiness, == and < across types, integer vs float arithmetic, code-point
// string indexing, and json.dumps as transformers' tojson filter calls it. jinja2's Undefined is a
// value here too: it prints as "" and iterates as empty, but raises on arithmetic and on attribute
// access, which is what the `hint` carries into the error message.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace swiftkv::jinja {

class Value;
using ValueList = std::vector<Value>;
struct DictData;
struct NamespaceData;
struct Function;
struct LoopState;
struct IteratorState;

// Size limits that keep a hostile or buggy template from exhausting memory or time. Python would
// happily build a 1 GB string; a chat template never needs to.
inline constexpr size_t kMaxStringBytes = 10u << 20;
inline constexpr size_t kMaxListItems = 1u << 20;
// Values that contain values (lists, dicts, iterators, bound methods) may nest at most this deep,
// so that printing, comparing and destroying them cannot overflow the stack. Namespaces count as
// leaves: the renderer keeps them alive until it ends and then dismantles them iteratively.
inline constexpr int kMaxValueDepth = 256;

struct Undefined {
    std::string hint;  // the message jinja2's UndefinedError would carry when this value is misused
};
struct NoneValue {};
struct ListBox {
    std::shared_ptr<const ValueList> items;
    int depth;
};
struct TupleBox {
    std::shared_ptr<const ValueList> items;
    int depth;
};

class Value {
public:
    enum class Type : uint8_t {
        Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Function, Loop, Iterator
    };

    Value() : data_(Undefined{}) {}
    static Value undefined(std::string hint) { return Value(Storage(Undefined{std::move(hint)})); }
    static Value none() { return Value(Storage(NoneValue{})); }
    Value(bool b) : data_(b) {}
    Value(int64_t i) : data_(i) {}
    Value(int i) : data_(int64_t(i)) {}
    Value(double f) : data_(f) {}
    Value(std::string s) : data_(std::move(s)) {}
    Value(const char* s) : data_(std::string(s)) {}
    static Value list(ValueList items);
    static Value tuple(ValueList items);
    static Value dict(DictData d);
    static Value namespace_(std::shared_ptr<NamespaceData> ns) { return Value(Storage(std::move(ns))); }
    // `captured_depth`: nesting of the values the function holds (a bound method's self).
    static Value function(std::string name, std::function<Value(struct CallArgs&)> fn, int captured_depth = 0);
    static Value loop(std::shared_ptr<LoopState> s);
    // A single-pass Python iterator (what map/select/unique/... return): truthy even when empty,
    // no len(), and iterating it consumes it. `kind` is its Python type name ("generator").
    static Value iterator(std::string kind, ValueList items);
    // A generator whose items are computed when it is first consumed, as Python generators run
    // their body lazily (an error in it only surfaces if something iterates). `captured_depth`:
    // nesting of the values the producer holds.
    static Value generator(std::function<ValueList()> producer, int captured_depth);

    Type type() const { return static_cast<Type>(data_.index()); }
    bool is_undefined() const { return type() == Type::Undefined; }
    bool is_none() const { return type() == Type::None; }
    bool is_bool() const { return type() == Type::Bool; }
    bool is_int() const { return type() == Type::Int; }
    bool is_float() const { return type() == Type::Float; }
    bool is_string() const { return type() == Type::String; }
    bool is_list() const { return type() == Type::List; }
    bool is_tuple() const { return type() == Type::Tuple; }
    bool is_dict() const { return type() == Type::Dict; }
    bool is_namespace() const { return type() == Type::Namespace; }
    bool is_function() const { return type() == Type::Function; }
    bool is_loop() const { return type() == Type::Loop; }
    bool is_iterator() const { return type() == Type::Iterator; }
    // Python's int includes bool; numbers include both and float.
    bool is_integral() const { return is_int() || is_bool(); }
    bool is_number() const { return is_int() || is_bool() || is_float(); }
    bool is_sequence_like() const { return is_list() || is_tuple(); }

    bool as_bool() const { return std::get<bool>(data_); }
    int64_t as_int() const { return is_bool() ? int64_t(as_bool()) : std::get<int64_t>(data_); }
    double as_double() const { return is_float() ? std::get<double>(data_) : double(as_int()); }
    const std::string& as_string() const { return std::get<std::string>(data_); }
    const ValueList& items() const;  // list or tuple
    const std::shared_ptr<const ValueList>& items_ptr() const;
    const DictData& as_dict() const { return *std::get<std::shared_ptr<const DictData>>(data_); }
    const std::shared_ptr<NamespaceData>& as_namespace() const { return std::get<std::shared_ptr<NamespaceData>>(data_); }
    const Function& as_function() const { return *std::get<std::shared_ptr<Function>>(data_); }
    const std::shared_ptr<LoopState>& as_loop() const { return std::get<std::shared_ptr<LoopState>>(data_); }
    IteratorState& as_iterator() const { return *std::get<std::shared_ptr<IteratorState>>(data_); }
    const std::string& undefined_hint() const { return std::get<Undefined>(data_).hint; }

    // Python's type name as used in TypeError messages: 'str', 'int', 'NoneType', ...
    std::string type_name() const;
    // How deeply this value nests other values (0 for scalars and namespaces).
    int nesting() const;

private:
    using Storage = std::variant<Undefined, NoneValue, bool, int64_t, double, std::string, ListBox, TupleBox,
                                 std::shared_ptr<const DictData>, std::shared_ptr<NamespaceData>,
                                 std::shared_ptr<Function>, std::shared_ptr<LoopState>, std::shared_ptr<IteratorState>>;
    explicit Value(Storage s) : data_(std::move(s)) {}
    Storage data_;
};

// An insertion-ordered dict, like Python's. Lookups are linear: chat-template dicts (messages, tool
// schemas) have a handful of keys.
struct DictData {
    std::vector<std::pair<Value, Value>> entries;
    int depth = 1;  // set by Value::dict
    const Value* find(const Value& key) const;
    const Value* find(std::string_view key) const;
    void set(Value key, Value value);
};

struct NamespaceData {
    DictData attributes;
};

struct CallArgs {
    ValueList positional;
    std::vector<std::pair<std::string, Value>> keyword;
};

struct Function {
    std::string name;
    std::function<Value(CallArgs&)> call;
    int depth = 1;
};

// jinja2's LoopContext: the `loop` variable inside a for body.
struct LoopState {
    std::shared_ptr<const ValueList> items;
    int64_t index0 = 0;
    int64_t depth0 = 0;
    std::optional<Value> last_changed;
    std::function<Value(CallArgs&)> recurse;  // set for `recursive` loops: loop(children)
    int depth = 1;
};

struct IteratorState {
    std::string kind;
    ValueList items;
    size_t position = 0;                  // items before this were consumed
    std::function<ValueList()> pending;  // set until a lazy generator first runs
    int depth = 1;

    void materialize() {
        if (!pending) return;
        auto producer = std::move(pending);
        pending = nullptr;
        items = producer();
    }
};

// 1 + the deepest nesting among `values`; throws when that exceeds kMaxValueDepth.
int container_depth(const ValueList& values);

// Stops runaway recursion before it overflows the stack of whatever thread renders: records the
// thread's real stack bounds and throws swiftkv::Error once less than a safety margin is left.
class StackGuard {
public:
    StackGuard();
    void check() const {
        if (reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) < limit_) fail_deep();
    }

private:
    [[noreturn]] static void fail_deep();
    uintptr_t limit_ = 0;
};

// Throws swiftkv::Error; used for everything jinja2 would raise at render time.
[[noreturn]] void fail(const std::string& message);
// The error a misused Undefined raises (jinja2's UndefinedError).
[[noreturn]] void fail_undefined(const Value& undefined);

// Python str(value): what {{ value }} prints.
std::string to_str(const Value& value);
// Python repr(value): how values print inside lists and dicts.
std::string repr(const Value& value);
std::string repr_string(std::string_view s);
std::string format_float(double f);  // Python's float repr: 1.0, 1e+16, 1.5e-05, inf, nan

bool truthy(const Value& value);
bool equals(const Value& a, const Value& b);
// Python a < b; throws the TypeError jinja2 would for unorderable types.
bool less_than(const Value& a, const Value& b);
// Python `needle in haystack`.
bool contains(const Value& haystack, const Value& needle);
// len(); throws for values without a length.
int64_t length(const Value& value);
// list(iter(value)): items of a list/tuple, keys of a dict, characters of a string, what is left
// of an iterator (consuming it); empty for Undefined; throws for values that are not iterable.
ValueList iterate(const Value& value);

enum class BinaryOp : uint8_t { Add, Sub, Mul, Div, FloorDiv, Mod, Pow };
Value binary_op(BinaryOp op, const Value& a, const Value& b);
Value negate(const Value& value);

Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

struct JsonOptions {
    std::optional<std::string> indent;  // nullopt: single line
    std::string item_separator = ", ";
    std::string key_separator = ": ";
    bool sort_keys = false;
    bool ensure_ascii = false;
};
// json.dumps(value, ...) exactly as Python writes it.
std::string to_json_text(const Value& value, const JsonOptions& options);

// Python % formatting: "%s-%d" % args.
std::string percent_format(const std::string& format, const Value& args);

// --- UTF-8 helpers. Python strings are sequences of code points; ours are UTF-8 bytes. Invalid
// bytes decode to U+DC80+byte (Python's surrogateescape) so they re-encode unchanged.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t c);
size_t utf8_length(std::string_view s);
bool is_ascii(std::string_view s);
bool is_space(char32_t c);  // str.isspace()
char32_t to_upper(char32_t c);
char32_t to_lower(char32_t c);
bool is_cased(char32_t c);
bool is_alpha(char32_t c);
bool is_digit(char32_t c);      // str.isdigit()
int decimal_value(char32_t c);  // value of a Unicode decimal digit, or -1
bool is_word_char(char32_t c);  // regex \w

// Python str.strip/lstrip/rstrip with optional chars (nullopt: whitespace).
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);       // str.title()
std::string py_capitalize(std::string_view s);  // str.capitalize()
std::string py_swapcase(std::string_view s);
bool py_islower(std::string_view s);
bool py_isupper(std::string_view s);
std::string py_casefold(std::string_view s);
std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> py_splitlines(std::string_view s, bool keepends);
std::string py_replace(std::string_view s, std::string_view old_text, std::string_view new_text, int64_t count);

}  // namespace swiftkv::jinja
