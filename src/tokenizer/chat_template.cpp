// chat_template.cpp — ChatTemplate: parses a model's Jinja chat template once (folding constant
// expressions as jinja2's compiler does) and renders it per request with a tree-walking
// interpreter that follows jinja2's runtime rules: scoping (a for iteration, macro, {% with %} or
// block-capturing {% set %} gets its own scope; if does not), namespace objects as the only
// mutable state, Python and/or returning operands, and Undefined that is harmless to print or test
// but an error to compute with. Limits on output size, steps, call depth, value nesting and stack
// use make a hostile template fail with swiftkv::Error instead of hanging or crashing.
#include "tokenizer/chat_template.h"

#include <optional>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_parser.h"
#include "tokenizer/jinja_value.h"

namespace swiftkv {
namespace {

using namespace jinja;

constexpr size_t kMaxOutputBytes = 10u << 20;
constexpr int64_t kMaxSteps = 10'000'000;  // statements run + loop iterations
constexpr int kMaxCallDepth = 100;         // nested macro calls / recursive loops
constexpr size_t kMaxNamespaces = 100'000;

struct Scope {
    std::shared_ptr<Scope> parent;
    std::vector<std::pair<std::string, Value>> vars;

    Value* find_local(std::string_view name) {
        for (auto& [k, v] : vars)
            if (k == name) return &v;
        return nullptr;
    }
    void set(const std::string& name, Value value) {
        if (Value* v = find_local(name)) {
            *v = std::move(value);
        } else {
            vars.emplace_back(name, std::move(value));
        }
    }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_of(const ScopePtr& parent) {
    auto s = std::make_shared<Scope>();
    s->parent = parent;
    return s;
}

bool references_name(const Expr* e, std::string_view name);

bool references_name(const StmtList& body, std::string_view name) {
    for (const auto& s : body) {
        if (references_name(s->expr.get(), name) || references_name(s->target.get(), name) ||
            references_name(s->condition.get(), name) || references_name(s->filter.get(), name) ||
            references_name(s->body, name) || references_name(s->else_body, name))
            return true;
        for (const auto& [test, branch] : s->branches)
            if (references_name(test.get(), name) || references_name(branch, name)) return true;
        for (const auto& d : s->defaults)
            if (references_name(d.get(), name)) return true;
        for (const auto& [t, v] : s->assignments)
            if (references_name(t.get(), name) || references_name(v.get(), name)) return true;
    }
    return false;
}

bool references_name(const Expr* e, std::string_view name) {
    if (!e) return false;
    if (e->kind == ExprKind::Name && e->name == name) return true;
    for (const auto& o : e->operands)
        if (references_name(o.get(), name)) return true;
    for (const auto& [_, v] : e->keywords)
        if (references_name(v.get(), name)) return true;
    return references_name(e->star_args.get(), name) || references_name(e->star_kwargs.get(), name);
}

// Thrown while folding constants when an expression needs the template context (jinja2's
// nodes.Impossible).
struct NotConstant {};

class Renderer {
public:
    // FoldConstants evaluates expressions as jinja2's compile-time constant folding does: any
    // variable or call is NotConstant, and slices go through the sandbox's lenient getitem.
    enum class Mode { Render, FoldConstants };

    explicit Renderer(const Value& context, Mode mode = Mode::Render)
        : mode_(mode), root_(std::make_shared<Scope>()) {
        if (context.is_dict()) {
            for (const auto& [k, v] : context.as_dict().entries)
                if (k.is_string()) root_->set(k.as_string(), v);
        }
    }

    // Namespaces are the one mutable value: they can form cycles and chains of any length. All of
    // them stay alive until the render ends; then their attributes are moved out first, so that
    // destroying them never recurses through a chain (and cycles are freed too).
    ~Renderer() {
        std::vector<Value> released;
        for (auto& ns : namespaces_) {
            for (auto& [key, value] : ns->attributes.entries) released.push_back(std::move(value));
            ns->attributes.entries.clear();
        }
        root_->vars.clear();
    }

    Value evaluate_constant(const Expr& e) { return eval(e, root_); }

    std::string render(const StmtList& body) {
        std::string out;
        try {
            exec_list(body, root_, out);
        } catch (const Error& e) {
            throw Error(fmt::format("{} (template line {})", e.what(), current_line_), __FILE__, __LINE__);
        }
        return out;
    }

private:
    enum class Flow { Normal, Break, Continue };

    void step() {
        if (++steps_ > kMaxSteps) fail("the template runs too long (more than 10 million steps)");
    }

    void emit(std::string& out, std::string_view text) {
        if (out.size() + text.size() > kMaxOutputBytes) fail("the template output exceeds 10 MB");
        out.append(text);
    }

    // --- statements

    Flow exec_list(const StmtList& body, const ScopePtr& scope, std::string& out) {
        for (const auto& stmt : body) {
            Flow f = exec(*stmt, scope, out);
            if (f != Flow::Normal) return f;
        }
        return Flow::Normal;
    }

    Flow exec(const Stmt& s, const ScopePtr& scope, std::string& out) {
        step();
        stack_.check();
        current_line_ = s.line;
        switch (s.kind) {
            case StmtKind::Output: emit(out, s.text); return Flow::Normal;
            case StmtKind::Print: {
                Value v = eval(*s.expr, scope);
                if (v.is_string()) {
                    emit(out, v.as_string());
                } else {
                    emit(out, to_str(v));
                }
                return Flow::Normal;
            }
            case StmtKind::If:
                for (const auto& [test, branch] : s.branches) {
                    current_line_ = test->line;
                    if (truthy(eval(*test, scope))) return exec_list(branch, scope, out);
                }
                return exec_list(s.else_body, scope, out);
            case StmtKind::For: return exec_for(s, eval(*s.expr, scope), scope, out, 0);
            case StmtKind::Set: assign(*s.target, eval(*s.expr, scope), scope); return Flow::Normal;
            case StmtKind::SetBlock: {
                // A break/continue inside the block leaves it (jinja2 inlines the block in the
                // loop's Python code): nothing is assigned.
                std::string captured;
                if (Flow f = exec_list(s.body, child_of(scope), captured); f != Flow::Normal) return f;
                Value v(std::move(captured));
                if (s.filter) v = eval_filter_chain(*s.filter, v, scope);
                assign(*s.target, std::move(v), scope);
                return Flow::Normal;
            }
            case StmtKind::Macro: scope->set(s.name, make_macro(s, scope)); return Flow::Normal;
            case StmtKind::CallBlock: {
                Value caller = make_macro(s, scope);
                Value v = eval_call(*s.expr, scope, &caller);
                emit(out, to_str(v));
                return Flow::Normal;
            }
            case StmtKind::FilterBlock: {
                std::string captured;
                if (Flow f = exec_list(s.body, child_of(scope), captured); f != Flow::Normal) return f;
                emit(out, to_str(eval_filter_chain(*s.filter, Value(std::move(captured)), scope)));
                return Flow::Normal;
            }
            case StmtKind::With: {
                std::vector<Value> values;
                for (const auto& [_, value] : s.assignments) values.push_back(eval(*value, scope));
                ScopePtr inner = child_of(scope);
                for (size_t i = 0; i < values.size(); ++i) assign(*s.assignments[i].first, values[i], inner);
                return exec_list(s.body, inner, out);
            }
            case StmtKind::Scope: exec_list(s.body, child_of(scope), out); return Flow::Normal;
            case StmtKind::Break: return Flow::Break;
            case StmtKind::Continue: return Flow::Continue;
        }
        return Flow::Normal;
    }

    Flow exec_for(const Stmt& s, const Value& iterable, const ScopePtr& scope, std::string& out, int64_t depth0) {
        ValueList items = iterate(iterable);
        if (s.condition) {
            ValueList kept;
            for (Value& item : items) {
                step();
                ScopePtr probe = child_of(scope);
                assign(*s.target, item, probe);
                if (truthy(eval(*s.condition, probe))) kept.push_back(std::move(item));
            }
            items = std::move(kept);
        }
        if (items.empty()) return exec_list(s.else_body, child_of(scope), out);
        auto state = std::make_shared<LoopState>();
        state->items = std::make_shared<const ValueList>(std::move(items));
        state->depth0 = depth0;
        if (s.recursive) {
            std::weak_ptr<Scope> weak_scope = scope;
            state->recurse = [this, &s, weak_scope, depth0](CallArgs& args) -> Value {
                if (args.positional.size() != 1 || !args.keyword.empty()) fail("loop() takes exactly one argument");
                ScopePtr scope = weak_scope.lock();
                if (!scope) fail("loop() called after its loop ended");
                CallDepthGuard guard(*this);
                std::string nested;
                exec_for(s, args.positional[0], scope, nested, depth0 + 1);
                return Value(std::move(nested));
            };
        }
        Value loop = Value::loop(state);
        const ValueList& list = *state->items;
        ScopePtr iteration;
        // jinja2 marks the loop as having run only when an iteration reaches the end of the
        // body, so the else branch also runs when every iteration ended in break or continue.
        bool completed_iteration = false;
        for (size_t i = 0; i < list.size(); ++i) {
            step();
            state->index0 = int64_t(i);
            // Each iteration starts from an empty scope. Nothing keeps a strong reference to a
            // finished iteration's scope (closures hold weak ones), so the object is reused.
            if (iteration && iteration.use_count() == 1) {
                iteration->vars.clear();
            } else {
                iteration = child_of(scope);
            }
            assign(*s.target, list[i], iteration);
            iteration->set("loop", loop);
            Flow f = exec_list(s.body, iteration, out);
            if (f == Flow::Break) break;
            if (f == Flow::Normal) completed_iteration = true;
        }
        // The else branch belongs to the enclosing loop: its break/continue apply there.
        if (!completed_iteration && !s.else_body.empty()) return exec_list(s.else_body, child_of(scope), out);
        return Flow::Normal;
    }

    void assign(const Expr& target, const Value& value, const ScopePtr& scope) {
        switch (target.kind) {
            case ExprKind::Name: scope->set(target.name, value); return;
            case ExprKind::Tuple: {
                ValueList items = iterate(value);
                size_t n = target.operands.size();
                if (items.size() < n)
                    fail(fmt::format("not enough values to unpack (expected {}, got {})", n, items.size()));
                if (items.size() > n) fail(fmt::format("too many values to unpack (expected {})", n));
                for (size_t i = 0; i < n; ++i) assign(*target.operands[i], items[i], scope);
                return;
            }
            case ExprKind::NsRef: {
                Value ns = lookup(target.name, scope);
                if (!ns.is_namespace()) fail("cannot assign attribute on non-namespace object");
                ns.as_namespace()->attributes.set(Value(target.attribute), value);
                return;
            }
            default: fail("can't assign to this expression");
        }
    }

    // --- macros

    struct CallDepthGuard {
        explicit CallDepthGuard(Renderer& r) : renderer(r) {
            if (++renderer.call_depth_ > kMaxCallDepth) fail("maximum recursion depth exceeded in the template");
        }
        ~CallDepthGuard() { --renderer.call_depth_; }
        Renderer& renderer;
    };

    Value make_macro(const Stmt& s, const ScopePtr& scope) {
        bool catch_varargs = references_name(s.body, "varargs");
        bool catch_kwargs = references_name(s.body, "kwargs");
        std::string name = s.kind == StmtKind::Macro ? s.name : "caller";
        std::weak_ptr<Scope> weak_scope = scope;
        return Value::function(name, [this, &s, weak_scope, catch_varargs, catch_kwargs, name](CallArgs& args) -> Value {
            ScopePtr defining = weak_scope.lock();
            if (!defining) fail("macro '" + name + "' called after its scope ended");
            CallDepthGuard guard(*this);
            ScopePtr frame = child_of(defining);
            size_t n = s.params.size();
            if (args.positional.size() > n && !catch_varargs)
                fail(fmt::format("macro '{}' takes not more than {} argument(s)", name, n));
            std::vector<bool> bound(n, false);
            for (size_t i = 0; i < n && i < args.positional.size(); ++i) {
                frame->set(s.params[i], args.positional[i]);
                bound[i] = true;
            }
            DictData extra_kwargs;
            Value caller;
            bool has_caller = false;
            for (const auto& [key, value] : args.keyword) {
                auto it = std::find(s.params.begin(), s.params.end(), key);
                if (it != s.params.end()) {
                    size_t i = size_t(it - s.params.begin());
                    if (bound[i]) fail(fmt::format("macro '{}' got multiple values for argument '{}'", name, key));
                    frame->set(key, value);
                    bound[i] = true;
                } else if (key == "caller") {
                    caller = value;
                    has_caller = true;
                } else if (catch_kwargs) {
                    extra_kwargs.set(Value(key), value);
                } else {
                    fail(fmt::format("macro '{}' takes no keyword argument '{}'", name, key));
                }
            }
            size_t first_default = n - s.defaults.size();
            for (size_t i = 0; i < n; ++i) {
                if (bound[i]) continue;
                if (i >= first_default) {
                    frame->set(s.params[i], eval(*s.defaults[i - first_default], frame));
                } else {
                    frame->set(s.params[i], Value::undefined("parameter '" + s.params[i] + "' was not provided"));
                }
            }
            if (catch_varargs) {
                ValueList rest;
                for (size_t i = n; i < args.positional.size(); ++i) rest.push_back(args.positional[i]);
                frame->set("varargs", Value::tuple(std::move(rest)));
            }
            if (catch_kwargs) frame->set("kwargs", Value::dict(std::move(extra_kwargs)));
            if (has_caller) frame->set("caller", caller);
            std::string out;
            int saved_line = current_line_;
            exec_list(s.body, frame, out);
            current_line_ = saved_line;
            return Value(std::move(out));
        });
    }

    // --- expressions

    Value lookup(const std::string& name, const ScopePtr& scope) {
        if (mode_ == Mode::FoldConstants) throw NotConstant{};
        for (Scope* s = scope.get(); s; s = s->parent.get())
            if (Value* v = s->find_local(name)) return *v;
        if (const Value* g = find_global(name)) return *g;
        return Value::undefined("'" + name + "' is undefined");
    }

    void collect_args(const Expr& e, size_t first, const ScopePtr& scope, CallArgs& args) {
        for (size_t i = first; i < e.operands.size(); ++i) args.positional.push_back(eval(*e.operands[i], scope));
        for (const auto& [key, value] : e.keywords) args.keyword.emplace_back(key, eval(*value, scope));
        if (e.star_args) {
            for (Value& v : iterate(eval(*e.star_args, scope))) args.positional.push_back(std::move(v));
        }
        if (e.star_kwargs) {
            Value kw = eval(*e.star_kwargs, scope);
            if (!kw.is_dict()) fail("argument after ** must be a mapping, not " + kw.type_name());
            for (const auto& [k, v] : kw.as_dict().entries) {
                if (!k.is_string()) fail("keywords must be strings");
                args.keyword.emplace_back(k.as_string(), v);
            }
        }
    }

    Value eval_call(const Expr& e, const ScopePtr& scope, const Value* caller) {
        if (mode_ == Mode::FoldConstants) throw NotConstant{};
        Value callee = eval(*e.operands[0], scope);
        CallArgs args;
        collect_args(e, 1, scope, args);
        if (caller) args.keyword.emplace_back("caller", *caller);
        Value result = call_value(callee, args);
        if (result.is_namespace() && known_namespaces_.insert(result.as_namespace().get()).second) {
            if (namespaces_.size() >= kMaxNamespaces) fail("the template creates too many namespaces");
            namespaces_.push_back(result.as_namespace());
        }
        return result;
    }

    // A filter chain from {% filter f|g %} or {% set x | f %}: the innermost subject is `input`.
    Value eval_filter_chain(const Expr& e, const Value& input, const ScopePtr& scope) {
        Value subject = e.operands[0] ? eval_filter_chain(*e.operands[0], input, scope) : input;
        CallArgs args;
        collect_args(e, 1, scope, args);
        return apply_filter(e.name, subject, args);
    }

    bool compare(CompareOp op, const Value& a, const Value& b) {
        switch (op) {
            case CompareOp::Eq: return equals(a, b);
            case CompareOp::Ne: return !equals(a, b);
            case CompareOp::Lt: return less_than(a, b);
            case CompareOp::Le: return less_than(a, b) || equals(a, b);
            case CompareOp::Gt: return less_than(b, a);
            case CompareOp::Ge: return less_than(b, a) || equals(a, b);
            case CompareOp::In: return contains(b, a);
            case CompareOp::NotIn: return !contains(b, a);
        }
        return false;
    }

    Value eval(const Expr& e, const ScopePtr& scope) {
        stack_.check();
        switch (e.kind) {
            case ExprKind::Const: return e.value;
            case ExprKind::Name: return lookup(e.name, scope);
            case ExprKind::List:
            case ExprKind::Tuple: {
                ValueList items;
                items.reserve(e.operands.size());
                for (const auto& o : e.operands) items.push_back(eval(*o, scope));
                return e.kind == ExprKind::List ? Value::list(std::move(items)) : Value::tuple(std::move(items));
            }
            case ExprKind::Dict: {
                DictData d;
                for (size_t i = 0; i + 1 < e.operands.size(); i += 2) {
                    Value key = eval(*e.operands[i], scope);
                    if (key.is_list() || key.is_dict()) fail("unhashable type: '" + key.type_name() + "'");
                    d.set(std::move(key), eval(*e.operands[i + 1], scope));
                }
                return Value::dict(std::move(d));
            }
            case ExprKind::Getattr: return get_attribute(eval(*e.operands[0], scope), e.name);
            case ExprKind::Getitem: {
                Value obj = eval(*e.operands[0], scope);
                const Expr& index = *e.operands[1];
                if (index.kind == ExprKind::Slice) {
                    auto part = [&](size_t i) {
                        return index.operands[i] ? eval(*index.operands[i], scope) : Value::none();
                    };
                    Value start = part(0), stop = part(1), stride = part(2);
                    return get_slice(obj, start, stop, stride, mode_ == Mode::FoldConstants);
                }
                return get_item(obj, eval(index, scope));
            }
            case ExprKind::Slice: fail("a slice is only allowed inside []");
            case ExprKind::Call: return eval_call(e, scope, nullptr);
            case ExprKind::Filter: {
                // jinja2 cannot fold filters that take the template context.
                if (mode_ == Mode::FoldConstants &&
                    (e.name == "map" || e.name == "select" || e.name == "reject" || e.name == "selectattr" ||
                     e.name == "rejectattr"))
                    throw NotConstant{};
                Value subject = eval(*e.operands[0], scope);
                CallArgs args;
                collect_args(e, 1, scope, args);
                return apply_filter(e.name, subject, args);
            }
            case ExprKind::Test: {
                Value subject = eval(*e.operands[0], scope);
                CallArgs args;
                collect_args(e, 1, scope, args);
                return Value(apply_test(e.name, subject, args));
            }
            case ExprKind::Neg: return negate(eval(*e.operands[0], scope));
            case ExprKind::Pos: {
                Value v = eval(*e.operands[0], scope);
                if (v.is_undefined()) fail_undefined(v);
                if (v.is_bool()) return Value(v.as_int());
                if (!v.is_number()) fail("bad operand type for unary +: '" + v.type_name() + "'");
                return v;
            }
            case ExprKind::Not: return Value(!truthy(eval(*e.operands[0], scope)));
            case ExprKind::Binary:
                return binary_op(e.op, eval(*e.operands[0], scope), eval(*e.operands[1], scope));
            case ExprKind::And: {
                Value a = eval(*e.operands[0], scope);
                return truthy(a) ? eval(*e.operands[1], scope) : a;
            }
            case ExprKind::Or: {
                Value a = eval(*e.operands[0], scope);
                return truthy(a) ? a : eval(*e.operands[1], scope);
            }
            case ExprKind::Compare: {
                Value left = eval(*e.operands[0], scope);
                for (size_t i = 0; i < e.compare_ops.size(); ++i) {
                    Value right = eval(*e.operands[i + 1], scope);
                    if (!compare(e.compare_ops[i], left, right)) return Value(false);
                    left = std::move(right);
                }
                return Value(true);
            }
            case ExprKind::Concat: {
                std::string s;
                for (const auto& o : e.operands) {
                    Value v = eval(*o, scope);
                    s += v.is_string() ? v.as_string() : to_str(v);
                    if (s.size() > kMaxStringBytes) fail("string is too large");
                }
                return Value(std::move(s));
            }
            case ExprKind::Cond: {
                if (truthy(eval(*e.operands[1], scope))) return eval(*e.operands[0], scope);
                if (e.operands[2]) return eval(*e.operands[2], scope);
                if (mode_ == Mode::FoldConstants) throw NotConstant{};
                return Value::undefined(fmt::format(
                    "the inline if-expression on line {} evaluated to false and no else section was defined.", e.line));
            }
            case ExprKind::NsRef: fail("a namespace attribute reference is only allowed as a set target");
        }
        fail("internal error: unknown expression");
    }

    Mode mode_;
    StackGuard stack_;
    ScopePtr root_;
    std::vector<std::shared_ptr<NamespaceData>> namespaces_;
    std::unordered_set<const NamespaceData*> known_namespaces_;
    int64_t steps_ = 0;
    int call_depth_ = 0;
    int current_line_ = 1;
};

// Python's repr() of the value can be evaluated back: jinja2 only keeps a folded constant then.
bool has_safe_repr(const Value& v) {
    switch (v.type()) {
        case Value::Type::None:
        case Value::Type::Bool:
        case Value::Type::Int:
        case Value::Type::Float:
        case Value::Type::String: return true;
        case Value::Type::List:
        case Value::Type::Tuple:
            for (const Value& item : v.items())
                if (!has_safe_repr(item)) return false;
            return true;
        case Value::Type::Dict:
            for (const auto& [key, value] : v.as_dict().entries)
                if (!has_safe_repr(key) || !has_safe_repr(value)) return false;
            return true;
        default: return false;
    }
}

// jinja2's compiler folds constant subexpressions bottom-up (jinja2/optimizer.py) and prints a
// constant {{ }} expression at compile time. This is observable: folding evaluates x[a:b]
// through the sandbox's getitem, so `{{ 1.0[:2] }}` prints "" where `{% set y = 1.0[:2] %}`
// fails. Folding the same way keeps those outputs and errors identical.
class ConstantFolder {
public:
    void fold(StmtList& body) {
        for (auto& s : body) {
            fold_expr(s->expr);
            fold_expr(s->condition);
            if (s->filter) fold_filter_arguments(*s->filter);
            for (auto& [test, branch] : s->branches) {
                fold_expr(test);
                fold(branch);
            }
            for (auto& d : s->defaults) fold_expr(d);
            for (auto& [target, value] : s->assignments) fold_expr(value);
            fold(s->body);
            fold(s->else_body);
            if (s->kind == StmtKind::Print) {
                // A constant {{ }} prints whatever it evaluates to, Undefined included.
                std::optional<Value> v = evaluate(*s->expr);
                if (v) {
                    s->kind = StmtKind::Output;
                    s->text = to_str(*v);
                    s->expr.reset();
                }
            }
        }
    }

private:
    std::optional<Value> evaluate(const Expr& e) {
        if (e.kind == ExprKind::Const) return e.value;
        try {
            return folder_.evaluate_constant(e);
        } catch (const NotConstant&) {
        } catch (const Error&) {
            // jinja2 leaves a failing expression to fail (or not) at render time.
        }
        return std::nullopt;
    }

    void fold_expr(ExprPtr& e) {
        if (!e) return;
        for (auto& o : e->operands) fold_expr(o);
        for (auto& [_, v] : e->keywords) fold_expr(v);
        fold_expr(e->star_args);
        fold_expr(e->star_kwargs);
        if (e->kind == ExprKind::Const || e->kind == ExprKind::Slice || e->kind == ExprKind::Name ||
            e->kind == ExprKind::Call || e->kind == ExprKind::NsRef)
            return;
        std::optional<Value> v = evaluate(*e);
        if (!v || !has_safe_repr(*v)) return;
        auto constant = std::make_unique<Expr>();
        constant->kind = ExprKind::Const;
        constant->line = e->line;
        constant->value = std::move(*v);
        e = std::move(constant);
    }

    // {% filter f(args) %} / {% set x | f(args) %}: the chain has no subject; fold its arguments.
    void fold_filter_arguments(Expr& chain) {
        for (size_t i = 1; i < chain.operands.size(); ++i) fold_expr(chain.operands[i]);
        for (auto& [_, v] : chain.keywords) fold_expr(v);
        if (chain.operands[0]) fold_filter_arguments(*chain.operands[0]);
    }

    Renderer folder_{Value::none(), Renderer::Mode::FoldConstants};
};

}  // namespace

struct ChatTemplate::Impl {
    StmtList body;
};

ChatTemplate::ChatTemplate(const std::string& source) : impl_(std::make_unique<Impl>()) {
    impl_->body = jinja::parse_template(source);
    ConstantFolder().fold(impl_->body);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::json& context) const {
    if (!context.is_object() && !context.is_null())
        SKV_THROW("chat template context must be a JSON object of variables, got {}", context.type_name());
    Renderer renderer(jinja::from_json(context));
    return renderer.render(impl_->body);
}

std::string ChatFormat::render(const nlohmann::json& messages, bool add_generation_prompt) const {
    SKV_CHECK(tmpl != nullptr, "{} has no chat template", model_path);
    nlohmann::json ctx = {{"messages", messages},
                          {"add_generation_prompt", add_generation_prompt},
                          {"bos_token", bos_text},
                          {"eos_token", eos_text}};
    return tmpl->render(ctx);
}

}  // namespace swiftkv
