// jinja_parser.h — turns chat-template source into a syntax tree (jinja_ast.h): the lexer
// (jinja_lexer.h) with jinja2's lexing rules as transformers configures them (trim_blocks,
// lstrip_blocks, keep_trailing_newline off), then jinja2's grammar with the loopcontrols extension
// and transformers' {% generation %} tag.
#pragma once

#include <string>

#include "tokenizer/jinja_ast.h"

namespace swiftkv::jinja {

// Throws swiftkv::Error "... (line L, column C)" on a syntax error, an unknown tag, a
// break/continue outside a loop, or an unknown filter or test — the errors jinja2 raises when
// compiling. Like jinja2, an unknown filter or test inside an if statement or an inline if is
// only an error when it is evaluated.
StmtList parse_template(const std::string& source);

}  // namespace swiftkv::jinja
