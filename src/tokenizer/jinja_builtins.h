// jinja_builtins.h — what a chat template can call: jinja2's built-in filters and tests (with
// transformers' tojson), the methods Python's str/dict/list expose through attribute access, and
// the global functions (range, namespace, dict, raise_exception, strftime_now). Attribute and item
// access follow jinja2's ImmutableSandboxedEnvironment: mutating methods such as list.append are
// "unsafe" and raise when called, as they do under transformers.
#pragma once

#include <string>
#include <string_view>

#include "tokenizer/jinja_value.h"

namespace swiftkv::jinja {

bool is_filter(std::string_view name);
bool is_test(std::string_view name);

Value apply_filter(const std::string& name, const Value& subject, CallArgs& args);
bool apply_test(const std::string& name, const Value& subject, CallArgs& args);

// obj.name: Python attribute first (methods), then obj["name"], else Undefined.
Value get_attribute(const Value& obj, const std::string& name);
// obj[key]: item first, then (for string keys) a Python attribute, else Undefined.
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on a list, tuple or string; absent parts are None. `lenient`: evaluated
// by constant folding, which goes through the sandbox's getitem and turns type errors into
// Undefined; at run time jinja2 compiles a slice to a plain Python subscript, which raises.
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, bool lenient);

// Calls a function value; raises the error jinja2 would for Undefined or non-callable values.
Value call_value(const Value& callee, CallArgs& args);

// The template globals, or nullptr when `name` is not one.
const Value* find_global(const std::string& name);

}  // namespace swiftkv::jinja
