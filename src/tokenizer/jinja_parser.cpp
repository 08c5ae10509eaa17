// jinja_parser.cpp — recursive-descent parser for chat templates: the lexer's tokens (jinja_lexer.h)
// to the syntax tree of jinja_ast.h, and the compile-time check for unknown filters and tests. It
// follows jinja2's parser.py closely (same grammar), because operator precedence is where a
// re-implementation silently drifts.
#include "tokenizer/jinja_parser.h"

#include "core/error.h"
#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_lexer.h"

namespace swiftkv::jinja {
namespace {

// Python's recursion limit stops jinja2 at a similar depth; this keeps the C++ stack small.
constexpr int kMaxNesting = 512;
constexpr int kMaxStatementNesting = 100;

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
    Parser parser(lex_template(source));
    StmtList body = parser.parse();
    check_unknown_names(body, false);
    return body;
}

}  // namespace swiftkv::jinja
