#!/usr/bin/env python3
"""Differential fuzzing of swiftkv's chat-template interpreter against Python's jinja2.

Generates random templates, renders each with jinja2 configured as transformers does (the
environment of scripts/make_chat_template_refs.py) and with chat_template_render_driver, and
prints every case where the outputs differ or only one side fails. Kinds of input:
  expr   random expressions over literals, variables, operators, filters, tests, methods
  ws     text and tags with every whitespace-control combination (trim/lstrip/-/+/raw)
  stmt   statements: loops with break/continue/else, set, with, macros, call blocks, namespaces
  real   random conversations through the real-model templates in data/templates
  str    string methods and filters on non-ASCII text
  soup   token soup: only checks that the driver answers every input (no crash, no hang)

Build the driver first:  cmake --build <build dir> --target chat_template_render_driver
Usage: tests/chat_template/fuzz_against_jinja2.py <build dir> [kind ...] [--seed N] [--count N]

Known differences are skipped: jinja2 prints generator objects and bound methods with memory
addresses (unmatchable), dict views as dict_items([...]) and escaped strings as Markup('...')
(swiftkv has plain lists and strings there).
"""

import argparse
import copy
import json
import os
import random
import re
import subprocess
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_chat_template_refs as refs  # noqa: E402

UNMATCHABLE = re.compile(r"generator|built-in|0x[0-9a-f]{8}|dict_items|dict_keys|dict_values|range\(|"
                         r"list_reverseiterator|Markup|\d{19,}|inf|nan")


def gen_expr(r):
    atoms = ["0", "1", "2", "-1", "7", "300", "0.5", "1.0", "2.25", "-1.5", "1e3", "''", "'a'", "'Ab c'", "' x '",
             "'héllo'", "'1'", "'2.5'", "'a,b'", "'ΣΑΣ'", "true", "false", "none", "l", "d", "s", "none_value", "u",
             "users", "empty", "unicode", "d.a", "[1, 2]", "['b', 'a']", "(1, 'x')", "{'k': 1}", "users[0]", "l[1]"]
    binops = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in", "and", "or"]
    filters = ["trim", "length", "upper", "lower", "title", "capitalize", "string", "int", "float", "first", "last",
               "list", "reverse", "sort", "unique", "join(',')", "default('D', true)", "abs", "round(1)", "tojson",
               "tojson(indent=2)", "items", "sum", "min", "max", "wordcount", "replace('a', 'X')", "center(7)",
               "indent(2)", "batch(2)", "dictsort", "e", "select('odd')", "map('string')", "map(attribute='name')",
               "selectattr('active')", "truncate(5)", "sort(attribute='age')", "join(attribute='name')"]
    tests = ["defined", "none", "string", "number", "integer", "mapping", "iterable", "sequence", "odd", "eq 1",
             "in [1, 'a']", "lower"]
    methods = ["strip()", "split()", "split(',')", "upper()", "title()", "startswith('a')", "replace('a', 'b')",
               "find('l')", "items()", "keys()", "get('a')", "get('zz', 0)", "format(1)", "rsplit(' ', 1)",
               "index(1)", "zfill(4)"]

    def expr(depth):
        x = r.random()
        if depth <= 0 or x < 0.25:
            return r.choice(atoms)
        if x < 0.45:
            return f"({expr(depth - 1)} {r.choice(binops)} {expr(depth - 1)})"
        if x < 0.6:
            return f"({expr(depth - 1)} | {r.choice(filters)})"
        if x < 0.68:
            return f"({expr(depth - 1)} is {r.choice(['', 'not '])}{r.choice(tests)})"
        if x < 0.73:
            return f"({r.choice(['not ', '-'])}{expr(depth - 1)})"
        if x < 0.78:
            return f"({expr(depth - 1)} if {expr(depth - 1)} else {expr(depth - 1)})"
        if x < 0.83:
            return f"[{expr(depth - 1)}, {expr(depth - 1)}]"
        if x < 0.88:
            return f"{expr(depth - 1)}.{r.choice(methods)}"
        if x < 0.94:
            index = r.choice(["0", "-1", "1:", "::-1", "'a'", "5"])
            return f"{expr(depth - 1)}[{index}]"
        return f"{expr(depth - 1)}.{r.choice(['a', 'name', 'x'])}"

    return "{{ " + expr(r.randint(1, 4)) + " }}", refs.BASE_CONTEXT


def gen_ws(r):
    text = ["a", " ", "  ", "\n", "\t", " \n ", "\n\n", "x y", "\r\n", "\n  ", "\u3000", " \t\n"]

    def tag(body):
        return ("{%" + r.choice(["", "", "-", "+"]) + r.choice([" ", "", "\n"]) + body + r.choice([" ", "", "\n"]) +
                r.choice(["", "", "-", "+"]) + "%}")

    def block(depth):
        out = []
        for _ in range(r.randint(0, 5)):
            x = r.random()
            if x < 0.35:
                out.append(r.choice(text))
            elif x < 0.5:
                out.append("{{" + r.choice(["", "-", "+"]) + " " + r.choice(["'v'", "i", "x"]) + " " +
                           r.choice(["", "-"]) + "}}")
            elif x < 0.58:
                out.append("{#" + r.choice(["", "-", "+"]) + r.choice([" c ", "\n"]) + r.choice(["", "-", "+"]) + "#}")
            elif x < 0.72 and depth:
                out.append(tag("if " + r.choice(["true", "false", "i"])) + block(depth - 1) +
                           (tag("else") + block(depth - 1) if r.random() < 0.4 else "") + tag("endif"))
            elif x < 0.84 and depth:
                out.append(tag("for i in " + r.choice(["[1, 2]", "[]", "'ab'"])) + block(depth - 1) + tag("endfor"))
            elif x < 0.92:
                out.append(tag("set x = " + r.choice(["1", "'q'"])))
            else:
                out.append("{%" + r.choice(["", "-", "+"]) + " raw " + r.choice(["", "-"]) + "%}" + r.choice(text) +
                           "{{ r }}" + "{%" + r.choice(["", "-", "+"]) + " endraw " + r.choice(["", "-", "+"]) + "%}")
        return "".join(out)

    return block(3) + r.choice(["", "\n", "\n\n"]), refs.BASE_CONTEXT


def gen_stmt(r):
    exprs = ["x", "y", "i", "ns.a", "1", "'q'", "x ~ i", "(i is defined)", "loop.index0", "loop.last", "l | length",
             "(y or 'dflt')", "m(i)", "[x, y]", "loop.cycle('o', 'e')", "caller is defined"]

    def stmts(depth, in_loop):
        out = []
        for _ in range(r.randint(1, 4)):
            x = r.random()
            if x < 0.25:
                out.append("{{ " + r.choice(exprs) + " }}")
            elif x < 0.4:
                out.append("{% set " + r.choice(["x", "y", "ns.a", "i"]) + " = " + r.choice(exprs) + " %}")
            elif x < 0.5 and depth:
                out.append("{% if " + r.choice(exprs) + " %}" + stmts(depth - 1, in_loop) +
                           ("{% else %}" + stmts(depth - 1, in_loop) if r.random() < 0.4 else "") + "{% endif %}")
            elif x < 0.62 and depth:
                target = r.choice(["i", "x"])
                out.append("{% for " + target + " in " + r.choice(["[1, 2, 3]", "[]", "'ab'", "users"]) +
                           r.choice(["", " if " + target + " != 2"]) + " %}" + stmts(depth - 1, True) +
                           ("{% else %}" + stmts(depth - 1, in_loop) if r.random() < 0.3 else "") + "{% endfor %}")
            elif x < 0.7 and in_loop:
                out.append(r.choice(["{% if i == 2 %}{% break %}{% endif %}",
                                     "{% if loop.first %}{% continue %}{% endif %}"]))
            elif x < 0.78 and depth:
                out.append("{% with y = " + r.choice(exprs) + " %}" + stmts(depth - 1, in_loop) + "{% endwith %}")
            elif x < 0.85 and depth:
                out.append("{% set blk %}" + stmts(depth - 1, in_loop) + "{% endset %}[{{ blk }}]")
            elif x < 0.9 and depth:
                out.append("{% filter upper %}" + stmts(depth - 1, in_loop) + "{% endfilter %}")
            elif x < 0.95 and depth:
                out.append("{% call(a) wrap(x) %}<{{ a }}>" + stmts(depth - 1, False) + "{% endcall %}")
            else:
                out.append("{{ m(" + r.choice(exprs) + ") }}")
        return "|".join(out)

    prelude = ("{% set ns = namespace(a=0) %}{% macro m(p, q=2) %}(m:{{ p }}{{ q }}{{ x }}{{ ns.a }}){% endmacro %}"
               "{% macro wrap(t) %}W{{ caller(t) }}W{% endmacro %}")
    return prelude + stmts(3, False) + "|{{ x }}{{ ns.a }}", refs.BASE_CONTEXT


def gen_real(r):
    contents = ["", " ", "hi", "  padded  ", "multi\nline\n", "ünïcödé 😀 中文", "{{ x }}", "</think>after", "\n\n"]
    name = r.choice(list(refs.REAL_TEMPLATES))
    messages = []
    for i in range(r.randint(0, 6)):
        role = r.choice(["system", "user", "assistant", "tool", "ipython"]) if r.random() < 0.3 else \
            ("user" if i % 2 == 0 else "assistant")
        x = r.random()
        content = r.choice(contents) if x < 0.8 else None if x < 0.85 else [{"type": "text", "text": "t"}]
        message = {"role": role, "content": content}
        if role == "assistant" and r.random() < 0.3:
            message["tool_calls"] = [copy.deepcopy(refs.TOOL_CALL)]
        messages.append(message)
    context = dict(refs.SPECIAL_TOKENS[refs.REAL_TEMPLATES[name][0]], messages=messages,
                   add_generation_prompt=r.random() < 0.5, date_string="02 Feb 2025")
    if r.random() < 0.4:
        context["tools"] = refs.TOOLS
    return refs.read_template(name), context


def gen_str(r):
    strings = ["", "a", "héllo wörld", "  x  y  ", "ΣΑΣ ΟΔΟΣ", "straße", "ǅemal", "İstanbul", "a\u2028b\x1cc",
               "日本語 テキスト", "x\ty\nz\r\nw", "A1_b2", "\u3000wide\u3000", "😀 e 😀", "they're 1st", "١٢٣", "ﬁ"]
    methods = ["upper()", "lower()", "title()", "capitalize()", "swapcase()", "casefold()", "strip()", "split()",
               "splitlines()", "find('ö')", "center(9)", "isalpha()", "isdigit()", "islower()", "isupper()"]
    filters = ["upper", "lower", "title", "capitalize", "trim", "length", "wordcount", "reverse", "first", "last",
               "center(9)", "truncate(4)", "indent(2)", "tojson", "tojson(ensure_ascii=true)", "int", "float"]
    s = repr(r.choice(strings))
    if r.random() < 0.5:
        return "{{ " + s + "." + r.choice(methods) + " }}", {}
    return "{{ " + s + " | " + r.choice(filters) + " }}", {}


def gen_soup(r):
    tokens = ["{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "if", "for", "in", "endif", "endfor", "else", "set",
              "=", "x", "(", ")", "[", "]", "{", "}", ",", ":", "|", "upper", "is", "not", "'s'", '"t', "1", "-",
              "*", "~", ".", "raw", "endraw", "macro", "endmacro", "loop", "\n", " ", "\\", "é", "\x00", "break"]
    return "".join(r.choice(tokens) + r.choice(["", " "]) for _ in range(r.randint(1, 40))), {"x": "v"}


GENERATORS = {"expr": gen_expr, "ws": gen_ws, "stmt": gen_stmt, "real": gen_real, "str": gen_str, "soup": gen_soup}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("build_dir")
    parser.add_argument("kinds", nargs="*", help="kinds of input (default: all): " + ", ".join(GENERATORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    for kind in args.kinds:
        if kind not in GENERATORS:
            parser.error(f"unknown kind {kind!r}")
    args.kinds = args.kinds or list(GENERATORS)
    driver = os.path.join(args.build_dir, "tests", "chat_template", "chat_template_render_driver")
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    env = refs.make_environment()
    rng = random.Random(args.seed)
    total_mismatches = 0
    for kind in args.kinds:
        cases = []
        for _ in range(args.count):
            source, context = GENERATORS[kind](rng)
            context = refs.sorted_copy(context)
            expected = refs.render(env, source, context) if kind != "soup" else {}
            if "expected" in expected and UNMATCHABLE.search(expected["expected"]):
                continue
            cases.append((source, context, expected))
        run = subprocess.run([driver], input="".join(json.dumps({"template": s, "context": c}) + "\n"
                                                     for s, c, _ in cases),
                             capture_output=True, text=True, timeout=600)
        answers = [json.loads(line) for line in run.stdout.split("\n") if line]
        mismatches = 0
        if len(answers) != len(cases):
            print(f"{kind}: the driver stopped after {len(answers)} of {len(cases)} inputs "
                  f"(exit {run.returncode}); next input: {cases[len(answers)][0]!r}")
            mismatches += 1
        for (source, context, expected), got in zip(cases, answers):
            if "crash" in got:
                ok = False
            elif kind == "soup":
                ok = True
            elif "expected" in expected:
                ok = got.get("ok") == expected["expected"]
            else:
                ok = "error" in got
            if not ok:
                mismatches += 1
                if mismatches <= 10:
                    print(f"{kind}: {source!r}\n  jinja2:  {expected}\n  swiftkv: {got}")
        print(f"{kind}: {len(cases)} cases, {mismatches} mismatches")
        total_mismatches += mismatches
    sys.exit(1 if total_mismatches else 0)


if __name__ == "__main__":
    main()
