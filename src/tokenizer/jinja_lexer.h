// jinja_lexer.h — the chat-template lexer: source text to tokens, with jinja2's lexing rules as
// transformers configures them (trim_blocks, lstrip_blocks, keep_trailing_newline off). The parser
// (jinja_parser.cpp) reads these tokens; nothing else does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace swiftkv::jinja {

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

// The tokens of a template, ending with one Tok::Eof. Throws swiftkv::Error "chat template syntax
// error: ... (line L, column C)" on what jinja2's lexer rejects: an unclosed comment or raw block, an
// unbalanced bracket, an unexpected character, an integer literal too large, a bad string escape.
std::vector<Token> lex_template(const std::string& source);

// A token, or a kind of token, as jinja2's syntax errors name it ("'name'", "end of template", ...).
std::string describe(const Token& t);
std::string describe(Tok type);

}  // namespace swiftkv::jinja
