// jinja_ast.h — the syntax tree of a parsed chat template. Node kinds mirror jinja2's own nodes
// (jinja2/nodes.py) so the interpreter can follow jinja2's evaluation rules one node at a time.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace swiftkv::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using StmtList = std::vector<StmtPtr>;

enum class ExprKind : uint8_t {
    Const,    // value
    Name,     // name
    List,     // operands: items
    Tuple,    // operands: items
    Dict,     // operands: key0, value0, key1, value1, ...
    Getattr,  // operands: object; name: attribute
    Getitem,  // operands: object, index (a Slice node for obj[a:b:c])
    Slice,    // operands: start, stop, step (each may be null)
    Call,     // operands: callee, positional args...; keywords; star_args/star_kwargs
    Filter,   // operands: subject (null inside {% filter %} / {% set x | f %}), args...; name; keywords
    Test,     // operands: subject, args...; name; keywords
    Neg,      // operands: x
    Pos,      // operands: x
    Not,      // operands: x
    Binary,   // operands: a, b; op
    And,      // operands: a, b
    Or,       // operands: a, b
    Compare,  // operands: first, then one per compare_ops entry
    Concat,   // operands: parts joined with ~
    Cond,     // operands: value, test, else_value (null: no else)
    NsRef,    // `ns.attr` as an assignment target: name, attribute
};

enum class CompareOp : uint8_t { Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct Expr {
    ExprKind kind = ExprKind::Const;
    int line = 1;
    Value value;
    std::string name;
    std::string attribute;
    bool unknown = false;  // Filter/Test whose name is not a known filter/test (see parse_template)
    BinaryOp op = BinaryOp::Add;
    std::vector<CompareOp> compare_ops;
    std::vector<ExprPtr> operands;
    std::vector<std::pair<std::string, ExprPtr>> keywords;
    ExprPtr star_args;
    ExprPtr star_kwargs;
};

enum class StmtKind : uint8_t {
    Output,       // text
    Print,        // expr
    If,           // branches: (test, body) for if and each elif; else_body
    For,          // target in expr [if condition]; body; else_body; recursive
    Set,          // target = expr
    SetBlock,     // target = rendered body, through filter (an optional Filter chain)
    Macro,        // name(params = defaults); body
    CallBlock,    // expr: the call; params/defaults: caller's signature; body: caller()
    FilterBlock,  // filter applied to the rendered body
    With,         // assignments; body
    Break,
    Continue,
    Scope,        // body rendered in its own scope ({% generation %})
};

struct Stmt {
    StmtKind kind = StmtKind::Output;
    int line = 1;
    std::string text;
    ExprPtr expr;
    ExprPtr target;
    ExprPtr condition;
    ExprPtr filter;
    bool recursive = false;
    StmtList body;
    StmtList else_body;
    std::vector<std::pair<ExprPtr, StmtList>> branches;
    std::string name;
    std::vector<std::string> params;
    std::vector<ExprPtr> defaults;  // defaults for the last defaults.size() params
    std::vector<std::pair<ExprPtr, ExprPtr>> assignments;
};

}  // namespace swiftkv::jinja
