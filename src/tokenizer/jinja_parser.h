// jinja_parser.h — turns chat-template source into a syntax tree, with jinja2's lexing rules as
// transformers configures them (trim_blocks, lstrip_blocks, keep_trailing_newline off, the
// loopcontrols extension and transformers' {% generation %} tag).
#pragma once

#include <string>

#include "tokenizer/jinja_ast.h"

namespace swiftkv::jinja {

// Throws swiftkv::Error "... at line L, column C" on a syntax error, an unknown tag, filter or
// test, or a break/continue outside a loop — the errors jinja2 raises when compiling.
StmtList parse_template(const std::string& source);

}  // namespace swiftkv::jinja
