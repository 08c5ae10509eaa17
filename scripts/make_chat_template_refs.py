#!/usr/bin/env python3
"""Renders chat templates with Python's jinja2, configured exactly as Hugging Face transformers
configures it for chat templates, and writes the outputs as references for the C++ interpreter
(tests/chat_template/data/chat_template_refs.json).

transformers (src/transformers/utils/chat_template_utils.py, _compile_jinja_template) uses
    ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[AssistantTracker, jinja2.ext.loopcontrols])
with the `tojson` filter replaced (json.dumps with ensure_ascii=False and exposed indent /
separators / sort_keys) and the globals `raise_exception` and `strftime_now`. This script copies
that behaviour; AssistantTracker's {% generation %} tag renders its body unchanged.

Cases are the real-model templates in tests/chat_template/data/templates/*.jinja rendered over a
set of conversations, plus synthetic templates (stored inline in the output) that exercise one
feature or one error path each. A case whose rendering raises records {"error": "..."}; the C++
test then only checks that swiftkv::Error is thrown.

Context dicts are key-sorted before rendering: the C++ API takes nlohmann::json, whose objects
keep keys sorted, so this is the order the C++ side sees.

Usage: python3 scripts/make_chat_template_refs.py   (needs jinja2; `pip install jinja2`)
"""

import copy
import datetime
import json
import os
import sys
import warnings

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "chat_template", "data")
TEMPLATE_DIR = os.path.join(DATA_DIR, "templates")
OUT_PATH = os.path.join(DATA_DIR, "chat_template_refs.json")
GGUF_PATH = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


# --- jinja2 exactly as transformers sets it up -------------------------------------------------

class AssistantTracker(Extension):
    # transformers' extension: {% generation %}...{% endgeneration %} renders its body and, when
    # active, records which output characters it produced. Only the rendering matters here.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.datetime.now().strftime(format)


def make_environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# --- conversations -----------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                    "days": {"type": "integer", "description": "Forecast days"},
                    "hourly": {"type": ["boolean", "integer"], "description": "Hourly data"},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]

TOOL_CALL = {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}}

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ],
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Second answer"},
    ],
    "unicode": [
        {"role": "user", "content": "Héllo wörld — 你好 🌍 مرحبا\u200b\ttab «quotes» \"double\" 'single' \\backslash"},
        {"role": "assistant", "content": "Ответ: ✓ ΣΊΣΥΦΟΣ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"},
        {"role": "user", "content": "日本語のテキスト\n二行目"},
    ],
    "jinja_looking_content": [
        {"role": "system", "content": "{% raw %}not a tag{% endraw %}"},
        {"role": "user", "content": "Render {{ x }} and {% if true %}yes{% endif %} {# comment #} literally"},
    ],
    "whitespace_content": [
        {"role": "system", "content": "  padded system  \n"},
        {"role": "user", "content": "\n\n  line1\nline2\n\t "},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": ""},
    ],
    "empty_messages": [],
    "tool_use": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "22 degrees and sunny"},
        {"role": "assistant", "content": "It is 22°C and sunny in Paris."},
    ],
    "multimodal_content": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Describe this image.  "}]},
    ],
    "assistant_with_think": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>hidden reasoning</think>Because."},
        {"role": "user", "content": "OK"},
    ],
    "bad_roles": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}

SPECIAL_TOKENS = {
    "default": {"bos_token": "<s>", "eos_token": "</s>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "deepseek": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "chatml": {"bos_token": "", "eos_token": "<|im_end|>"},
}

# template file -> (special tokens, extra variables for every context, which conversations get tools)
REAL_TEMPLATES = {
    "smollm2": ("chatml", {}, []),
    "llama3": ("llama3", {}, []),
    "llama3_1": ("llama3", {"date_string": "26 Jul 2024"}, ["tool_use", "user_only"]),
    "llama3_2": ("llama3", {"date_string": "01 Jan 2025"}, ["tool_use", "user_only"]),
    "mistral_v1": ("default", {}, []),
    "mistral_v3_tools": ("default", {}, ["tool_use", "no_system_multi_turn"]),
    "qwen2_5": ("chatml", {}, ["tool_use", "user_only"]),
    "gemma": ("gemma", {}, []),
    "gemma3": ("gemma", {}, []),
    "phi3": ("default", {}, []),
    "deepseek_r1": ("deepseek", {}, []),
    "zephyr": ("default", {}, []),
    "hermes2_pro_tools": ("chatml", {"tools": TOOLS}, []),
    "chatml_indented": ("chatml", {}, []),
}

# Extra real-template cases with special variables.
REAL_EXTRA_CASES = [
    ("llama3_1", "builtin_tools", {
        "builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"],
        "date_string": "26 Jul 2024",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Search the news"},
            {"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "latest news"}}}]},
            {"role": "ipython", "content": {"results": ["a", "b"]}},
        ],
        "add_generation_prompt": True,
    }),
    ("llama3_1", "tools_in_system", {
        "tools": TOOLS, "tools_in_user_message": False, "date_string": "26 Jul 2024",
        "messages": CONVERSATIONS["system_user"], "add_generation_prompt": True,
    }),
    ("llama3_1", "two_tool_calls", {
        "tools": TOOLS, "date_string": "26 Jul 2024",
        "messages": [{"role": "user", "content": "x"},
                     {"role": "assistant", "tool_calls": [TOOL_CALL, TOOL_CALL]}],
    }),
    ("llama3_1", "custom_tools", {
        "custom_tools": TOOLS[:1], "date_string": "26 Jul 2024",
        "messages": CONVERSATIONS["user_only"], "add_generation_prompt": True,
    }),
    ("llama3_2", "tools_no_user_message", {
        "tools": TOOLS, "date_string": "26 Jul 2024", "messages": [{"role": "system", "content": "s"}],
    }),
    ("mistral_v3_tools", "tool_results_dict", {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call12345", "content": {"content": "sunny"}},
            {"role": "assistant", "content": "Sunny."},
        ],
    }),
    ("mistral_v3_tools", "bad_tool_call_id", {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [dict(TOOL_CALL, id="short")]},
        ],
    }),
    ("mistral_v1", "system_role", {"messages": CONVERSATIONS["system_user"]}),
    ("gemma3", "system_list_content", {
        "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                     {"role": "user", "content": "Hi"}],
        "add_generation_prompt": True,
    }),
    ("gemma3", "invalid_content_type", {"messages": [{"role": "user", "content": 42}]}),
    ("qwen2_5", "parallel_tool_responses", {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [TOOL_CALL, {
                "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
            {"role": "tool", "content": "22 degrees"},
            {"role": "tool", "content": "12:00"},
        ],
        "add_generation_prompt": True,
    }),
    ("deepseek_r1", "string_arguments", {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}},
                {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "content": "22"},
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "Done."},
        ],
        "add_generation_prompt": True,
    }),
    ("hermes2_pro_tools", "nested_types", {
        "tools": [{"type": "function", "function": {
            "name": "f", "description": "Nested types.",
            "parameters": {"type": "object", "properties": {
                "tags": {"type": "array", "items": {"type": "string"}, "description": "  tags "},
                "meta": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "meta"},
                "any": {"description": "anything"}}},
            "return": {"type": "string", "description": "result"}}}],
        "messages": CONVERSATIONS["tool_use"], "add_generation_prompt": True,
    }),
]


# --- synthetic templates: one feature or error path each -------------------------------------

BASE_CONTEXT = {
    "d": {"a": 1, "b": "two", "nested": {"x": "nx"}},
    "l": [1, 2, 3],
    "s": "hello",
    "none_value": None,
    "empty": [],
    "users": [
        {"name": "ann", "age": 31, "active": True, "role": "admin"},
        {"name": "bob", "age": 25, "active": False, "role": "user"},
        {"name": "cy", "age": 40, "active": True, "role": "user"},
        {"name": "dee", "age": 25, "active": True, "role": "user"},
    ],
    "tree": [{"name": "a", "children": [{"name": "b", "children": []},
                                        {"name": "c", "children": [{"name": "d", "children": []}]}]}],
    "messages": CONVERSATIONS["multi_turn"],
    "unicode": "Héllo wörld 你好 🌍",
}

SYNTHETIC = [
    # whitespace control: trim_blocks, lstrip_blocks, -, +
    ("ws_trim_blocks", "{% if true %}\nA\n{% endif %}\nB\n"),
    ("ws_lstrip_blocks", "  {% if true %}\n  x\n  {% endif %}\n  y"),
    ("ws_minus_both", "a  {%- if true -%}  b  {%- endif -%}  c"),
    ("ws_minus_newlines", "a\n\n  {%- if true %}\n\n b{% endif -%}\n\n c"),
    ("ws_plus_disables_lstrip", "  {%+ if true %}x{% endif %}|\n  {%+ if true +%}\ny{% endif %}"),
    ("ws_plus_disables_trim", "{% if true +%}\nkeep newline{% endif %}"),
    ("ws_variable_minus", "a \n {{- 'b' -}} \n c {{ 'd' }}\n e"),
    ("ws_variable_not_lstripped", "  {{ 'x' }}\n  {% if true %}y{% endif %}"),
    ("ws_comment", "a\n  {# comment #}\nb\n{#- stripped -#}  d\n{# c +#}\ne"),
    ("ws_comment_first_line", "  {# c #}\nx"),
    ("ws_raw", "{% raw %}{{ not evaluated }} {% if %}{% endraw %}\n x"),
    ("ws_raw_minus", " x {%- raw -%} a {{ b }} {%- endraw -%} y"),
    ("ws_raw_lstrip", "line\n    {% raw %}r{% endraw %}\nafter"),
    ("ws_trailing_newline", "hello\n"),
    ("ws_two_trailing_newlines", "hello\n\n"),
    ("ws_crlf", "a\r\nb{% if true %}\r\nc{% endif %}\r\nd\r\n"),
    ("ws_cr", "a\rb\r"),
    ("ws_tabs", "\t{% if true %}\n\tx\n\t{% endif %}\n"),
    ("ws_text_before_tag", "text {% if true %}\n  yes\n{% endif %} end"),
    ("ws_unicode_space_minus", "a\u3000\u00a0{{- 'b' -}}\u2003c"),
    ("ws_for_minus", "{% for i in [1, 2] -%}\n\n  {{ i }}\n{%- endfor %}"),
    ("ws_nested_indent", "<ul>\n{% for u in users %}\n    {% if u.active %}\n    <li>{{ u.name }}</li>\n    {% endif %}\n{% endfor %}\n</ul>"),
    ("ws_block_after_var", "{{ 'v' }}\n{% if true %}\nz\n{% endif %}"),
    ("ws_only_tags", "{% if true %}{% endif %}\n{% if true %}\n{% endif %}\n"),
    ("ws_string_newline_in_tag", "{{ 'a\nb' }}|{{ \"c\r\nd\" }}"),
    ("ws_lstrip_unicode_space", "\u3000{% if true %}x{% endif %}|\n\u00a0 {% if true %}y{% endif %}|\n\u3000{{ 'v' }}|\n \u2003{# c #}z"),
    ("ws_multiline_tag", "{%\n  if true\n%}\nx\n{%\n  endif\n-%}\n  y"),
    # literals
    ("lit_numbers", "{{ 1 }}|{{ -1 }}|{{ 1.0 }}|{{ 1.5e3 }}|{{ 1_000 }}|{{ 0x1F }}|{{ 0o17 }}|{{ 0b101 }}|{{ 1e-5 }}|{{ 3.14159 }}|{{ 1e100 }}|{{ 1E5 }}|{{ 2.5e-3 }}|{{ 123456789012345678 }}|{{ 0.000123 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 12345678.9 }}"),
    ("lit_float_math", "{{ 0.1 + 0.2 }}|{{ 1 / 3 }}|{{ 2 / 3 * 3 }}|{{ 10 / 4 }}|{{ 4 / 2 }}|{{ 2 ** 0.5 }}|{{ 1e308 * 10 }}|{{ -1e308 * 10 }}|{{ 100.0 }}|{{ -0.0 }}"),
    ("lit_int_math", "{{ 2 ** 62 }}|{{ 10 // 3 }}|{{ -10 // 3 }}|{{ -10 % 3 }}|{{ 10 % -3 }}|{{ 7.0 // 2 }}|{{ -7.5 % 2 }}|{{ 2 ** -2 }}|{{ 7 % 7 }}|{{ true + true }}|{{ 3 - 5 }}|{{ 6 * 7 }}|{{ -7 // 2 }}|{{ 7.5 // -2 }}"),
    ("lit_strings", "{{ 'a\\nb' }}|{{ \"q\\\"q\" }}|{{ 'tab\\tx' }}|{{ '\\x41\\u00e9\\U0001F600' }}|{{ '\\101' }}|{{ 'back\\\\slash' }}|{{ '\\d\\w' }}|{{ 'it''s' }}|{{ \"a\" 'b' \"c\" }}|{{ '\\'' }}|{{ 'x\\\ny' }}|{{ '\\a\\b\\f\\v' }}"),
    ("lit_string_backslash_unicode", "{{ '\\é' }}|{{ 'é' }}|{{ '\\\\é' }}"),
    ("lit_constants", "{{ true }}|{{ True }}|{{ false }}|{{ False }}|{{ none }}|{{ None }}"),
    ("lit_containers", "{{ [true, none, 'a', 1.0, 2] }}|{{ {'a': none, 'b': [1, (2,)]} }}|{{ (1,) }}|{{ () }}|{{ (1, 'b') }}|{{ [] }}|{{ {} }}|{{ [[]] }}|{{ {'k': {'n': {}}} }}|{{ [1, 2,] }}|{{ {'a': 1,} }}"),
    ("lit_repr_strings", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'nl\\n', 'é', '\\x00\\x1f\\x7f', '\\\\', '\\t\\r', '\\u00a0\\u00ad\\u200b\\u2028', '😀', '\\u0085'] }}"),
    ("lit_tuple_print", "{{ 1, 2 }}|{{ ('a',) }}"),
    ("lit_dict_duplicate_keys", "{{ {'a': 1, 'a': 2} }}|{{ {1: 'x', true: 'y', 1.0: 'z'} }}"),
    # operators
    ("op_concat", "{{ 'a' ~ 1 ~ none ~ true ~ [1] ~ undefined_var ~ 1.5 ~ {'k': 'v'} }}"),
    ("op_string_repeat", "{{ 'ab' * 3 }}|{{ 3 * 'x' }}|{{ [1, 2] * 2 }}|{{ 'a' * 0 }}|{{ 'a' * -1 }}|{{ [0] * 3 }}|{{ (1,) * 2 }}"),
    ("op_plus", "{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ (1,) + (2,) }}|{{ 1 + 2.5 }}|{{ true + 1 }}"),
    ("op_compare", "{{ 1 == 1.0 }}|{{ 1 == True }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 'a' != 'a' }}|{{ none == none }}|{{ 2 >= 2 }}|{{ (1, 2) == [1, 2] }}|{{ {'a': 1} == {'a': 1} }}|{{ 'B' < 'a' }}|{{ 'é' > 'z' }}|{{ [1] == [1.0] }}|{{ 0 == false }}|{{ '1' == 1 }}|{{ 2 <= 1 }}|{{ [1, 2] <= [1, 2] }}|{{ (1, 2) < (1, 2, 0) }}"),
    ("op_in", "{{ 'a' in 'abc' }}|{{ 'z' not in 'abc' }}|{{ 1 in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ 1 in (1,) }}|{{ 'x' in undefined_var }}|{{ '' in 'abc' }}|{{ 1.0 in [1] }}|{{ [1] in [[1]] }}|{{ none in [none] }}|{{ 'a' not in d }}"),
    ("op_and_or", "{{ 0 or 'default' }}|{{ 'x' and 'y' }}|{{ '' and 'y' }}|{{ none or none }}|{{ [] or {} }}|{{ not 0 }}|{{ not 'a' }}|{{ 1 and 0 or 5 }}|{{ undefined_var or 'fb' }}|{{ (undefined_var and 1) is defined }}|{{ l and l[0] }}|{{ 0.0 or 'f' }}"),
    ("op_ternary", "{{ 'yes' if true else 'no' }}|{{ 'yes' if 0 else 'no' }}|{{ 'a' if false }}|{{ 1 if none else 2 if true else 3 }}|{{ ('a' if false) is defined }}|{{ 'x' ~ ('y' if true else 'z') }}"),
    ("op_precedence", "{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ not 1 == 2 }}|{{ -1 | abs }}|{{ 10 - 2 - 3 }}|{{ 2 * 3 % 4 }}|{{ not true or true }}|{{ not (true or true) }}|{{ 1 if 2 > 1 and 3 > 2 else 0 }}"),
    ("op_filter_binds_tighter", "{{ 'x' ~ 'abc' | upper }}|{{ [1, 2] | length + 1 }}|{{ 'a' + 'b' | upper }}"),
    ("op_concat_binds_tighter_than_plus", "{{ 'a' ~ 1 + 2 }}"),
    ("op_plus_binds_looser_than_concat", "{{ 1 + 2 ~ 'a' }}"),
    ("op_filter_on_number_plus_string", "{{ 1 + 2 | string }}"),
    ("op_unary", "{{ -(-3) }}|{{ +3 }}|{{ - 2.5 }}|{{ -true }}|{{ +true }}|{{ not none }}"),
    # attribute and item access, slicing
    ("access_basic", "{{ d.a }}|{{ d['a'] }}|{{ d.missing }}|{{ d.missing is defined }}|{{ l[0] }}|{{ l.0 }}|{{ d.nested.x }}|{{ d['nested']['x'] }}|{{ l[10] is defined }}|{{ l[-1] }}|{{ d['b'][0] }}|{{ s[1] }}|{{ s.1 }}|{{ none_value.x }}|{{ none_value['x'] }}|{{ l['x'] }}|{{ l[1.0] }}|{{ 5.x }}|{{ d[none] }}"),
    ("access_methods_vs_keys", "{{ {'items': 2}['items'] }}|{{ {'items': 2}.items is defined }}|{{ {'get': 1}.get('get') }}|{{ {'content': 'c'}.content }}|{{ d['keys'] is defined }}"),
    ("access_dunder", "{{ s.__class__ }}|{{ d.__len__ }}|{{ d._private }}|{{ {'_k': 1}._k }}"),
    ("slice_lists", "{{ [1, 2, 3][1:] }}|{{ [1, 2, 3][::-1] }}|{{ [1, 2, 3][-2:] }}|{{ [1, 2, 3][5:] }}|{{ (1, 2, 3)[:2] }}|{{ [1, 2, 3, 4, 5][4:1:-2] }}|{{ l[:] }}|{{ l[-10:10] }}|{{ l[::2] }}|{{ l[1:-1] }}|{{ l[:-5] }}|{{ [1, 2, 3][None:2] }}"),
    ("slice_strings", "{{ 'hello'[1:4] }}|{{ 'hello'[::2] }}|{{ unicode[-5:] }}|{{ unicode[::-1] }}|{{ 'héllo'[1] }}|{{ 'abc'[-1] }}|{{ 'abc'[5] is defined }}|{{ unicode[6:11] }}|{{ s[:-1] }}"),
    ("slice_string_index_error", "{{ l['a':] }}"),
    ("slice_float_index_error", "{{ l[1.5:] }}"),
    ("slice_dict_error", "{{ d[1:2] }}"),
    ("slice_none_error", "{{ none_value[1:] }}"),
    ("slice_undefined_error", "{{ undefined_var[1:] }}"),
    ("slice_step_zero", "{{ l[::0] }}"),
    ("slice_constant_folded", "[{{ 0.1[:2] }}]|[{{ true[1:] }}]|[{{ {'k': 1}[::-1] }}]|{{ (1.0[:2] is defined) }}|{% set y = (1.0[:2] is defined) %}{{ y }}|{{ (5[1:] ~ 'x') }}"),
    ("slice_constant_assigned_error", "{% set y = 1.0[:2] %}{{ y }}"),
    ("slice_constant_compared_with_variable_error", "{{ 1.0[:2] == s }}"),
    # Undefined: harmless uses
    ("undefined_benign", "[{{ undefined_var }}]|{{ undefined_var is defined }}|{{ undefined_var is undefined }}|{{ undefined_var is none }}|{{ undefined_var | default('dflt') }}|{{ undefined_var | length }}|{{ undefined_var | list }}|{{ undefined_var | string }}|{{ undefined_var ~ 'x' }}|{{ undefined_var == undefined_var }}|{{ undefined_var != 1 }}|{{ 'a' in undefined_var }}|{{ not undefined_var }}|{% for x in undefined_var %}x{% else %}empty{% endfor %}|{{ undefined_var | trim }}|{{ undefined_var | upper }}|{{ undefined_var | join(',') }}|{{ undefined_var | first is defined }}|{{ undefined_var is iterable }}|{{ undefined_var is string }}|{{ undefined_var is sequence }}|{{ undefined_var is mapping }}|{{ undefined_var in [1] }}|{{ undefined_var is callable }}|{{ undefined_var | items | list }}|{{ undefined_var | reverse | list }}|{{ [undefined_var] | length }}|{{ d.x.__class__ }}"),
    ("undefined_if", "{% if undefined_var %}yes{% else %}no{% endif %}{% if undefined_var.__len__ %}1{% endif %}"),
    # Undefined: errors
    ("undefined_attr_error", "{{ undefined_var.x }}"),
    ("undefined_item_error", "{{ undefined_var['x'] }}"),
    ("undefined_nested_attr_error", "{{ d.missing.x }}"),
    ("undefined_add_error", "{{ undefined_var + 1 }}"),
    ("undefined_radd_error", "{{ 1 + undefined_var }}"),
    ("undefined_neg_error", "{{ -undefined_var }}"),
    ("undefined_lt_error", "{{ undefined_var < 1 }}"),
    ("undefined_call_error", "{{ undefined_var() }}"),
    ("undefined_tojson_error", "{{ undefined_var | tojson }}"),
    ("undefined_int_error", "{{ undefined_var | int }}"),
    ("undefined_round_error", "{{ undefined_var | round }}"),
    ("undefined_missing_list_item_attr_error", "{{ l[10].x }}"),
    ("undefined_in_string_op_error", "{{ 'abc' + undefined_var }}"),
    ("undefined_mul_error", "{{ undefined_var * 2 }}"),
    # type errors
    ("type_div_zero", "{{ 1 / 0 }}"),
    ("type_floordiv_zero", "{{ 1 // 0 }}"),
    ("type_mod_zero", "{{ 1 % 0 }}"),
    ("type_str_plus_int", "{{ 'a' + 1 }}"),
    ("type_int_plus_str", "{{ 1 + 'a' }}"),
    ("type_list_plus_tuple", "{{ [1] + (2,) }}"),
    ("type_str_minus", "{{ 'a' - 'b' }}"),
    ("type_neg_str", "{{ -'a' }}"),
    ("type_compare", "{{ 1 < 'a' }}"),
    ("type_compare_none", "{{ none < 1 }}"),
    ("type_in_string", "{{ 1 in 'abc' }}"),
    ("type_in_int", "{{ 'a' in 1 }}"),
    ("type_in_none", "{{ 'a' in none }}"),
    ("type_length_int", "{{ 5 | length }}"),
    ("type_length_none", "{{ none | length }}"),
    ("type_iterate_none", "{% for x in none %}{% endfor %}"),
    ("type_iterate_int", "{% for x in 42 %}{% endfor %}"),
    ("type_call_string", "{{ 'abc'() }}"),
    ("type_unhashable_key", "{{ {[1]: 2} }}"),
    ("type_round_string", "{{ 'a' | round }}"),
    ("type_abs_string", "{{ 'a' | abs }}"),
    ("type_join_non_str", "{{ ', '.join([1, 2]) }}"),
    ("type_items_non_mapping", "{{ [1] | items | list }}"),
    # tests
    ("tests_numbers", "{{ 1 is odd }}|{{ 2 is even }}|{{ 10 is divisibleby 5 }}|{{ 10 is divisibleby(3) }}|{{ 1 is number }}|{{ 1.5 is number }}|{{ 1 is integer }}|{{ 1.0 is integer }}|{{ 1.0 is float }}|{{ true is number }}|{{ true is integer }}|{{ 3.0 is odd }}|{{ -3 is odd }}"),
    ("tests_types", "{{ 'a' is string }}|{{ true is boolean }}|{{ 1 is boolean }}|{{ true is true }}|{{ 1 is true }}|{{ false is false }}|{{ none is none }}|{{ {} is mapping }}|{{ [] is mapping }}|{{ [] is iterable }}|{{ 'a' is iterable }}|{{ 1 is iterable }}|{{ [] is sequence }}|{{ {} is sequence }}|{{ 1 is sequence }}|{{ 'a' is sequence }}|{{ d is mapping }}|{{ namespace() is mapping }}|{{ (1,) is sequence }}"),
    ("tests_compare", "{{ 'a' is eq 'a' }}|{{ 1 is equalto 1 }}|{{ 2 is gt 1 }}|{{ 2 is lt 1 }}|{{ 2 is ge 2 }}|{{ 2 is le 1 }}|{{ 2 is ne 2 }}|{{ 2 is greaterthan 1 }}|{{ 1 is lessthan 2 }}|{{ 'a' is in 'abc' }}|{{ 2 is in [1, 2] }}|{{ 1 is sameas 1 }}|{{ none is sameas none }}|{{ true is sameas true }}"),
    ("tests_case", "{{ 'Ab' is lower }}|{{ 'ab' is lower }}|{{ 'AB' is upper }}|{{ 'A1' is upper }}|{{ '12' is upper }}|{{ 'é' is lower }}"),
    ("tests_misc", "{{ 'upper' is filter }}|{{ 'odd' is test }}|{{ 'nope' is filter }}|{{ range is callable }}|{{ 1 is callable }}|{{ d.get is callable }}|{{ 'x' is not string }}|{{ 1 is not none }}|{{ 'a' is escaped }}|{{ not 1 is none }}|{{ (1 is none) or true }}"),
    ("tests_with_args_after_is_not", "{{ 10 is not divisibleby 3 }}|{{ 3 is not in [1, 2] }}"),
    ("test_unknown", "{{ 1 is frobnicated }}"),
    ("test_unknown_in_if_is_runtime_error", "{% if false %}{{ 1 is frobnicated }}{% endif %}ok"),
    ("test_unknown_in_if_runs_error", "{% if true %}{{ 1 is frobnicated }}{% endif %}ok"),
    ("test_unknown_in_if_loop_error", "{% if false %}{% for x in l %}{{ x is frobnicated }}{% endfor %}{% endif %}"),
    ("test_unknown_in_condexpr", "{{ 1 if true else (2 is frobnicated) }}|{{ 'x' | frobnicate if false else 'y' }}"),
    ("test_unknown_in_loop_body_error", "{% for x in [] %}{{ x is frobnicated }}{% endfor %}"),
    ("test_unknown_in_macro_in_if_error", "{% if false %}{% macro m() %}{{ 1 | frobnicate }}{% endmacro %}{% endif %}"),
    ("test_unknown_in_if_set", "{% if false %}{% set x = 1 | frobnicate %}{% elif false %}{{ 2 is frobnicated }}{% else %}else{% endif %}"),
    ("test_chained_is", "{{ 1 is number is number }}"),
    ("test_odd_on_string", "{{ 'a' is odd }}"),
    # filters
    ("filter_unknown", "{{ 1 | frobnicate }}"),
    ("filter_unknown_in_if_is_runtime_error", "{% if false %}{{ 1 | frobnicate }}{% endif %}ok"),
    ("filter_unknown_in_if_test", "{% if false and (1 | frobnicate) %}x{% endif %}ok"),
    ("filter_unknown_in_for_iter_inside_if", "{% if false %}{% for x in l | frobnicate %}{% endfor %}{% endif %}ok"),
    ("filter_trim", "[{{ '  a  ' | trim }}]|[{{ 'xxaxx' | trim('x') }}]|[{{ '\\n\\t a \\u3000\\u00a0' | trim }}]|[{{ 5 | trim }}]|[{{ 'abcba' | trim('ab') }}]|[{{ none | trim }}]"),
    ("filter_length", "{{ 'héllo' | length }}|{{ [1, 2] | length }}|{{ {'a': 1} | length }}|{{ [1, 2] | count }}|{{ '' | length }}|{{ unicode | length }}|{{ (1, 2, 3) | length }}"),
    ("filter_case", "{{ 'hello wORLD' | upper }}|{{ 'HeLLo' | lower }}|{{ 'hello world-foo bar_baz (paren) [x] {y} <z>' | title }}|{{ 'hELLO wORLD' | capitalize }}|{{ 'éclair ÀÉÎ straße ÿ' | upper }}|{{ 'ÀÉÎ ΣΑΣ ΣΊΣΥΦΟΣ' | lower }}|{{ 'привет мир' | title }}|{{ \"they're 1st\" | title }}|{{ 123 | upper }}|{{ 'ǅ ĳ ŉ' | lower }}"),
    ("filter_default", "{{ undefined_var | default('a') }}|{{ '' | default('b') }}|{{ '' | default('c', true) }}|{{ none | default('d') }}|{{ none | d('e', boolean=true) }}|{{ 0 | default('f', true) }}|{{ 'x' | d }}|[{{ undefined_var | d }}]|{{ d.missing | default('m') }}|{{ [] | default('empty', true) }}"),
    ("filter_join", "{{ [1, 2, 3] | join(', ') }}|{{ ['a', 'b'] | join }}|{{ 'abc' | join('-') }}|{{ [{'n': 'x'}, {'n': 'y'}] | join(',', attribute='n') }}|{{ [none, true, 1.5] | join('|') }}|{{ {'a': 1, 'b': 2} | join(',') }}|{{ [[1, 2], [3]] | join(';') }}|{{ users | join(',', attribute='age') }}"),
    ("filter_replace", "{{ 'aaa' | replace('a', 'b') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | replace('', '-') }}|{{ 'héllo' | replace('', '.') }}|{{ 123 | replace(2, 9) }}|{{ 'a.b.c' | replace('.', '') }}|{{ 'aaa' | replace('a', 'bb', 0) }}"),
    ("filter_string_int_float", "{{ 1 | string }}|{{ [1, 'a'] | string }}|{{ '42' | int }}|{{ '42.7' | int }}|{{ 'x' | int }}|{{ 'x' | int(7) }}|{{ 3.9 | int }}|{{ -3.9 | int }}|{{ '0x1A' | int(base=16) }}|{{ ' 12 ' | int }}|{{ '1_000' | int }}|{{ true | int }}|{{ none | int }}|{{ '3.5' | float }}|{{ 'x' | float }}|{{ 2 | float }}|{{ '1e3' | float }}|{{ ' inf ' | float }}|{{ '-0' | float }}|{{ '1e3' | int }}|{{ '-12' | int }}|{{ '+7' | int }}|{{ '1__0' | int }}|{{ '12' | int(base=8) }}|{{ [1] | int }}|{{ none | float(1.5) }}|{{ '  -2.50  ' | float }}|{{ '0b11' | int(base=0) }}|{{ 'z' | int(base=36) }}"),
    ("filter_float_nan", "{{ 'nan' | float }}|{{ '-inf' | float }}"),
    ("filter_int_of_inf_string", "{{ 'inf' | int }}|{{ 'nan' | int(5) }}|{{ '1e400' | int }}"),
    ("filter_int_of_inf_float_error", "{{ (inf_string | float) | int }}"),
    ("filter_first_last", "{{ [1, 2, 3] | first }}|{{ [1, 2, 3] | last }}|{{ 'abc' | first }}|{{ 'abc' | last }}|{{ [] | first is defined }}|{{ {'a': 1, 'b': 2} | first }}|{{ {'a': 1, 'b': 2} | last }}|{{ unicode | last }}|{{ (4, 5) | last }}"),
    ("filter_items_keys_values", "{% for k, v in {'b': 1, 'a': 2} | items %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d.items() %}{{ k }}{{ v }},{% endfor %}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d | list }}|{{ d.get('a') }}|{{ d.get('zz', 'dflt') }}|{{ d.get('zz') }}|{{ d.items() | list | length }}|{{ d | items | list }}"),
    ("filter_list_sort_unique", "{{ 'abc' | list }}|{{ [3, 1, 2] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}|{{ ['b', 'A', 'c'] | sort }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}|{{ [{'n': 2}, {'n': 1}] | sort(attribute='n') | map(attribute='n') | list }}|{{ [1, 2, 1, 3] | unique | list }}|{{ ['a', 'A', 'b'] | unique | list }}|{{ ['a', 'A', 'b'] | unique(case_sensitive=true) | list }}|{{ [1, 2, 3] | reverse | list }}|{{ 'abc' | reverse }}|{{ [[1, 'b'], [1, 'a'], [0, 'z']] | sort }}|{{ users | sort(attribute='age,name') | map(attribute='name') | join(',') }}|{{ users | sort(attribute='age', reverse=true) | map(attribute='name') | join(',') }}|{{ users | unique(attribute='age') | map(attribute='name') | join(',') }}|{{ [2.5, 1, true] | sort }}|{{ unicode | reverse }}|{{ (3, 1) | sort }}"),
    ("filter_sort_mixed_types_error", "{{ [1, 'a'] | sort }}"),
    ("filter_map_select", "{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3, 4] | reject('odd') | list }}|{{ [0, 1, '', 'a', none] | select | list }}|{{ users | selectattr('active') | map(attribute='name') | list }}|{{ users | rejectattr('active') | map(attribute='name') | list }}|{{ users | selectattr('age', 'gt', 30) | map(attribute='name') | list }}|{{ users | selectattr('role', 'equalto', 'admin') | list | length }}|{{ ['a', 'B'] | map('upper') | list }}|{{ [1, 2] | map('string') | join('+') }}|{{ users | map(attribute='missing', default='?') | list }}|{{ [[1, 2], [3, 4]] | map(attribute='1') | list }}|{{ [1, 2, 3] | select('gt', 1) | list }}|{{ [1, 2, 3] | select('in', [1, 3]) | list }}|{{ users | selectattr('missing', 'undefined') | list | length }}|{{ users | selectattr('name', 'in', ['bob', 'cy']) | map(attribute='age') | sum }}|{{ ['a', ' b '] | map('trim') | join }}|{{ [1.5, 2.5] | map('round') | list }}|{{ ['x', 'y'] | map('replace', 'x', 'z') | list }}|{{ empty | map('upper') | list }}|{{ users | map(attribute='name') | map('upper') | first }}"),
    ("filter_generators_truthy_single_pass", "{% set g = empty | select('odd') %}{{ 'truthy' if g else 'falsy' }}|{% set g = l | map('string') %}{{ g | join(',') }}|{{ g | join(',') }}|{% set r = l | reverse %}{{ r | list }}{{ r | list }}|{{ 2 in (l | select('even')) }}|{% set g = l | select %}{{ g | first }}{{ g | first }}{{ g | list }}|{% set g = l | select %}{{ 1 in g }}{{ g | list }}|{{ (l | unique) is iterable }}{{ (l | unique) is sequence }}|{% for x in l | select('odd') %}{{ loop.length }}{% endfor %}"),
    ("filter_generator_length_error", "{{ l | select('odd') | length }}"),
    ("filter_generator_last_error", "{{ l | map('string') | last }}"),
    ("filter_generator_tojson_error", "{{ l | unique | tojson }}"),
    ("filter_generator_lazy_errors", "{% set g = 5 | map('string') %}ok|{{ (true | selectattr('x')) is defined }}|{{ (s | items) is defined }}"),
    ("filter_generator_lazy_error_when_consumed", "{% set g = 5 | map('string') %}{{ g | list }}"),
    ("filter_map_unknown_filter_error", "{{ [1] | map('frobnicate') | list }}"),
    ("filter_select_unknown_test_error", "{{ [1] | select('frobnicated') | list }}"),
    ("filter_tojson", "{{ {'a': [1, 2.5, none, true, 'é\"\\n'], 'b': {}} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {'k': [1, {'x': []}]} | tojson(indent=2) }}|{{ 'x' | tojson }}|{{ 1.0 | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ '😀' | tojson(ensure_ascii=true) }}|{{ {'a': 1} | tojson(indent='\\t') }}|{{ {1: 2, none: 3, true: 4, 2.5: 5} | tojson }}|{{ (1, 2) | tojson }}|{{ '\\x01\\x7f\\u2028<>&\\'' | tojson }}|{{ d | tojson(indent=0) }}|{{ 1e100 | tojson }}|{{ -0.0 | tojson }}|{{ users[0] | tojson(indent=1, separators=(', ', ' = ')) }}|{{ messages | tojson }}"),
    ("filter_tojson_namespace_error", "{{ namespace(a=1) | tojson }}"),
    ("filter_round_abs", "{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 2.675 | round(2) }}|{{ 5 | round }}|{{ 2.1 | round(method='ceil') }}|{{ 2.9 | round(method='floor') }}|{{ -1.5 | round }}|{{ 1234.5678 | round(-2) }}|{{ -5 | abs }}|{{ -2.5 | abs }}|{{ 0.125 | round(2) }}|{{ 1.23456 | round(3) }}|{{ 7 | round(method='ceil') }}|{{ 1.5 | round(0, 'floor') }}|{{ true | abs }}"),
    ("filter_round_bad_method", "{{ 1.5 | round(method='up') }}"),
    ("filter_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ 'x\\ny' | indent('>>') }}|{{ 'line\\r\\nnext' | indent(1) }}|{{ '' | indent(first=true) }}|{{ 'one' | indent(3, first=true) }}|{{ 'a\\n' | indent }}"),
    ("filter_text_misc", "{{ 'hello big world' | wordcount }}|{{ 'ab' | center(6) }}|{{ 'abc' | center(6) }}|{{ 'foo bar baz qux' | truncate(9) }}|{{ 'foo bar baz qux' | truncate(9, true) }}|{{ 'hello' | truncate(3, end='') }}|{{ '%s=%d' | format('x', 5) }}|{{ '%(a)s' | format(a=1) }}|{{ \"héllo wörld, it's 2 words_here\" | wordcount }}|{{ 'a' | center(4) }}|{{ 'long text here ok' | truncate(10, leeway=0) }}|{{ '%5.2f|%-4s|%03d|%x|%r' | format(3.14159, 'ab', 7, 255, 'q') }}"),
    ("filter_collections_misc", "{{ [1, 2, 3, 4, 5] | batch(2) | list }}|{{ [1, 2, 3] | batch(2, 'x') | list }}|{{ [1, 2, 3, 4, 5] | slice(2) | list }}|{{ [1, 2, 3] | slice(2, 0) | list }}|{{ [1, 2, 3] | sum }}|{{ users | sum(attribute='age') }}|{{ [1.5, 2] | sum(start=10) }}|{{ [3, 1, 2] | min }}|{{ [3, 1, 2] | max }}|{{ ['b', 'A'] | min }}|{{ ['b', 'A'] | max(case_sensitive=true) }}|{{ (users | max(attribute='age')).name }}|{{ (users | min(attribute='age')).name }}|{{ {'b': 1, 'a': 2} | dictsort }}|{{ {'b': 1, 'a': 2} | dictsort(by='value', reverse=true) }}|{{ [] | max is defined }}|{{ {'B': 1, 'a': 2} | dictsort }}|{{ {'B': 1, 'a': 2} | dictsort(true) }}"),
    ("filter_escape_safe", "{{ '<a href=\"x\">&\\'</a>' | e }}|{{ '<b>' | safe }}|{{ [1] | safe }}|{{ 5 | escape }}|{{ '<i>' | forceescape }}"),
    ("filter_attr", "{{ namespace(x=5) | attr('x') }}|{{ d | attr('a') is defined }}|{{ 'abc' | attr('upper') is defined }}"),
    ("filter_chain", "{{ '  Hello World  ' | trim | lower | replace('world', 'there') | title | center(15) }}"),
    ("filter_with_kwargs_error", "{{ 'a' | trim(bogus=1) }}"),
    ("filter_too_many_args_error", "{{ 'a' | upper(1) }}"),
    # string methods
    ("str_methods", "[{{ '  a b  '.strip() }}]|{{ 'xxhixx'.strip('x') }}|[{{ '  a'.lstrip() }}]|[{{ 'a  '.rstrip() }}]|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'abc'.upper() }}|{{ 'ABC'.lower() }}|{{ 'hello world'.title() }}|{{ 'hello'.capitalize() }}|{{ 'a-b'.replace('-', '+') }}|{{ 'hello'.find('l') }}|{{ 'héllo'.find('l') }}|{{ 'hello'.rfind('l') }}|{{ 'hello'.count('l') }}|{{ ', '.join(['a', 'b']) }}|{{ 'a\\nb\\r\\nc\\n'.splitlines() }}|{{ 'abc'.isalpha() }}|{{ '123'.isdigit() }}|{{ 'a b'.isspace() }}|{{ 'k=v=w'.partition('=') }}|{{ 'k=v=w'.rpartition('=') }}|{{ 'Hello'.swapcase() }}|{{ '5'.zfill(3) }}|{{ '-5'.zfill(3) }}|{{ 'ab'.ljust(4, '*') }}|{{ 'ab'.rjust(4) }}|{{ 'ab'.center(5, '.') }}|{{ 'prefix_x'.removeprefix('prefix_') }}|{{ 'x.txt'.removesuffix('.txt') }}|{{ 'hello'.index('e') }}|{{ 'abc'.nonexistent is defined }}|{{ '  x  '.strip(' x') }}|{{ 'a\\tb  c\\n'.split() }}|{{ 'aXbXc'.split('X', -1) }}|{{ '  a b  '.split(none, 1) }}|{{ '  a b  '.rsplit(none, 1) }}|{{ 'hello'.startswith('l', 2) }}|{{ 'hello'.find('l', 3) }}|{{ 'ABC'.casefold() }}|{{ ''.split(',') }}|{{ ''.split() }}|{{ 'abc'.isupper() }}|{{ 'a1'.isalnum() }}|{{ 'abc'.isascii() }}"),
    ("str_format_method", "{{ '{} and {}'.format(1, 'two') }}|{{ '{0}{name}{0}'.format('x', name='y') }}|{{ '{:>5}|{:<4}|{:^5}|{:05d}|{:.2f}|{:,}|{:+d}|{:x}|{:#x}|{:08.3f}|{:e}|{:%}|{:*^9}'.format('a', 'b', 'c', 42, 3.14159, 1234567, 5, 255, 255, -3.14159, 12345.678, 0.25, 'mid') }}|{{ '{{literal}} {}'.format('x') }}|{{ '{0!r} {0!s}'.format('q') }}|{{ '{}'.format(none) }}|{{ '{}'.format([1, 'a']) }}|{{ '{}{}'.format(1.0, true) }}|{{ '{0[0]} {0[1]}'.format(['p', 'q']) }}|{{ '{d[a]}'.format(d={'a': 1}) }}|{{ '{:.3}'.format('abcdef') }}|{{ '{:g}'.format(0.0001) }}|{{ '{:10.4g}|'.format(3.14159) }}|{{ '{}'.format(1e20) }}|{{ '{:.1f}'.format(2.25) }}|{{ '{:d}'.format(true) }}"),
    ("str_percent_operator", "{{ '' % undefined_var }}|{{ '%s' % [1] }}|{{ 'x' % d }}|{{ '%(a)s-%(b)s' % d }}|{{ '%s %s' % ('a', 1) }}|{{ '%d%%' % 50 }}|{{ '%5.1f|%-3d|%+d|%x|%o|%e|%c' % (2.25, 7, 3, 255, 8, 12345.678, 65) }}|{{ '%s' % none }}|{{ '%r' % 'q' }}|{{ '%.2s' % 'abc' }}"),
    ("str_percent_too_few_error", "{{ '%s %s' % 'a' }}"),
    ("str_percent_too_many_error", "{{ '%s' % (1, 2) }}"),
    ("str_title_final_sigma", "{{ 'ΣΑΣ ΟΔΟΣ'.title() }}|{{ 'ΣΑΣ ΟΔΟΣ' | title }}|{{ 'ΣΑΣ' | capitalize }}"),
    ("str_unicode_special_casing", "{{ 'straße ﬁ ǅemal ŉ'.upper() }}|{{ 'ǆemal ﬁx straße'.title() }}|{{ 'ǆemal ﬁx' | title }}|{{ 'ΣΑΣ straße ǅ'.swapcase() }}|{{ 'Straße ΣΑΣ ﬃ'.casefold() }}|{{ '١٢٣' | int }}|{{ '۱.۵' | float }}|{{ 'ﬁ' is lower }}|{{ 'ǅ' is upper }}|{{ 'ǅ' is lower }}|{{ '²₃'.isdigit() }}|{{ 'İ'.lower() | length }}|{{ 'ß'.capitalize() }}"),
    ("str_method_index_missing_error", "{{ 'abc'.index('z') }}"),
    ("str_method_unknown_call_error", "{{ 'abc'.nonexistent() }}"),
    ("str_method_bad_arg_error", "{{ 'abc'.startswith(1) }}"),
    # list / dict methods and the sandbox
    ("list_methods", "{{ [1, 2, 1].count(1) }}|{{ [1, 2, 3].index(2) }}|[{{ l.append }}]|{{ l.append is defined }}|{{ l.copy() }}|{{ d.copy() == d }}|{{ (1, 2).count(2) }}"),
    ("sandbox_list_append_error", "{% set ns = namespace(items=[]) %}{% set _ = ns.items.append(1) %}{{ ns.items }}"),
    ("sandbox_dict_update_error", "{{ d.update({'a': 1}) }}"),
    ("sandbox_dict_pop_error", "{{ d.pop('a') }}"),
    ("sandbox_list_pop_error", "{{ l.pop() }}"),
    # statements: for
    ("for_loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.depth }}{{ loop.depth0 }}{{ loop.cycle('odd', 'even') }};{% endfor %}"),
    ("for_loop_prev_next_defined", "{% for x in [1, 2] %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }}{% endfor %}"),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1] %}{{ x }}{% else %}empty{% endfor %}|{% for x in [1, 2] if x > 5 %}{{ x }}{% else %}filtered-empty{% endfor %}"),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}:{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}|{% for m in messages if m.role != 'system' %}{{ m.role[0] }}{% endfor %}"),
    ("for_unpacking", "{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}|{% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}|{% for (a, b) in [[1, 2]] %}{{ a }}{{ b }}{% endfor %}|{% for a, b in ['xy'] %}{{ b }}{{ a }}{% endfor %}|{% for a, (b, c) in [(1, (2, 3))] %}{{ a }}{{ b }}{{ c }}{% endfor %}"),
    ("for_unpack_too_few_error", "{% for a, b in [1, 2] %}{% endfor %}"),
    ("for_unpack_too_many_error", "{% for a, b in [(1, 2, 3)] %}{% endfor %}"),
    ("for_over_dict_and_string", "{% for k in d %}{{ k }},{% endfor %}|{% for c in 'hé' %}[{{ c }}]{% endfor %}|{% for x in (1, 2) %}{{ x }}{% endfor %}"),
    ("for_else_after_break", "{% for x in [1, 2] %}{% break %}{% else %}else-ran{% endfor %}|{% for x in [1, 2] %}{% if x == 2 %}{% break %}{% endif %}{% else %}not-ran{% endfor %}|{% for x in [1] %}{% continue %}{% else %}else-after-continue{% endfor %}|{% for x in [1, 2] %}{% if x == 1 %}{% continue %}{% endif %}{% else %}not-ran{% endfor %}"),
    ("for_else_break_applies_to_outer_loop", "{% for i in [1, 2, 3] %}{{ i }}{% for j in [] %}{% else %}{% if i == 2 %}{% break %}{% endif %}{% endfor %}{% endfor %}"),
    ("for_continue_inside_filter_block", "{% for x in [1, 2, 3] %}{% filter upper %}a{{ x }}{% if x == 2 %}{% continue %}{% endif %}b{% endfilter %}|{% endfor %}"),
    ("for_break_inside_set_block", "{% for x in [1, 2, 3] %}{% set v %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% endset %}[{{ v }}]{% endfor %}"),
    ("for_break_inside_with", "{% for x in [1, 2, 3] %}{% with y = x %}{{ y }}{% if y == 2 %}{% break %}{% endif %}{% endwith %}{% endfor %}"),
    ("for_nested_loop_shadowing", "{% for i in [1, 2] %}{% set outer = loop %}{% for j in 'ab' %}{{ outer.index }}{{ loop.index }}{{ j }} {% endfor %}{% endfor %}"),
    ("for_break_continue", "{% for i in range(10) %}{% if i == 5 %}{% break %}{% endif %}{% if i is even %}{% continue %}{% endif %}{{ i }}{% endfor %}|{% for i in [1, 2] %}{% for j in [1, 2] %}{% if j == 2 %}{% break %}{% endif %}{{ i }}{{ j }}{% endfor %}{% endfor %}"),
    ("for_recursive", "{% for node in tree recursive %}{{ node.name }}{% if node.children %}({{ loop(node.children) }}){% endif %}[{{ loop.depth }}]{% endfor %}"),
    ("for_loop_changed", "{% for x in [1, 1, 2, 2, 1] %}{% if loop.changed(x) %}{{ x }}{% endif %}{% endfor %}"),
    ("for_loop_outside", "[{{ loop }}]{{ loop is defined }}"),
    ("for_loop_print", "{% for x in [1, 2] %}{{ loop }}{% endfor %}"),
    ("for_loop_var_after_loop", "{% for x in [1, 2] %}{% endfor %}{{ x is defined }}"),
    ("for_iterate_modified_var", "{% set items = [1, 2] %}{% for x in items %}{% set items = items + [9] %}{{ items | length }}{% endfor %}{{ items | length }}"),
    ("for_non_recursive_loop_call_error", "{% for x in [1] %}{{ loop([1]) }}{% endfor %}"),
    # statements: set / scoping / namespace
    ("scope_for_does_not_leak", "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}"),
    ("scope_for_iteration_fresh", "{% for i in [1, 2] %}{% if i == 1 %}{% set y = 'a' %}{% endif %}[{{ y }}]{% endfor %}"),
    ("scope_if_leaks", "{% if true %}{% set z = 3 %}{% endif %}{{ z }}"),
    ("scope_set_shadows_context", "{{ s }}{% set s = 'changed' %}{{ s }}"),
    ("scope_set_before_use_in_loop", "{% for i in [1, 2] %}{{ v is defined }}{% set v = i %}{{ v }}{% endfor %}"),
    ("namespace_basic", "{% set ns = namespace(count=0, items=[]) %}{% for i in range(3) %}{% set ns.count = ns.count + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.count }} {{ ns.items }} {{ ns.missing is defined }} {{ ns['count'] }}"),
    ("namespace_from_dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{% set ns.a = 'x' %}{{ ns.a }}"),
    ("namespace_print", "{{ namespace(a=1) }}"),
    ("namespace_set_on_dict_error", "{% set d.x = 1 %}"),
    ("namespace_set_on_undefined_error", "{% set nope.x = 1 %}"),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}{% set (e, f) = 'xy' %}{{ e }}{{ f }}"),
    ("set_block", "{% set x %}  hello {{ 1 + 1 }}  {% endset %}[{{ x }}]{% set y | upper | trim %} abc {% endset %}[{{ y }}]"),
    ("set_block_scope", "{% set x %}{% set inner = 1 %}{{ inner }}{% endset %}{{ x }}{{ inner is defined }}"),
    ("filter_block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}|{% filter trim | replace('a', 'b') %}  aaa  {% endfilter %}"),
    ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a is defined }}|{% set q = 5 %}{% with q = q + 1, r = q %}{{ q }}{{ r }}{% endwith %}{{ q }}"),
    ("print_statement", "{% print 'a' ~ 'b' %}|{% print 1, 2 %}"),
    ("comments", "a{# comment {{ x }} {% if %} #}b{#\nmulti\nline\n#}c"),
    # macros
    ("macro_basic", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Bob') }}|{{ greet('Al', greeting='Hi') }}|{{ greet(name='Z') }}|[{{ greet() }}]"),
    ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}|{{ m(1) }}"),
    ("macro_too_many_args_error", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}"),
    ("macro_unknown_kwarg_error", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(b=2) }}"),
    ("macro_recursive", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}{% endmacro %}{{ fact(10) }}"),
    ("macro_infinite_recursion_error", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    ("macro_sees_outer_variables", "{% set greeting = 'Hey' %}{% macro m() %}{{ greeting }} {{ s }}{% endmacro %}{{ m() }}"),
    ("macro_default_uses_earlier_param", "{% macro m(a, b=a * 2) %}{{ a }},{{ b }}{% endmacro %}{{ m(3) }}"),
    ("macro_set_inside_does_not_leak", "{% macro m() %}{% set leaked = 1 %}{{ leaked }}{% endmacro %}{{ m() }}{{ leaked is defined }}"),
    ("macro_in_loop", "{% macro item(x) %}<{{ x }}>{% endmacro %}{% for u in users %}{{ item(u.name) }}{% endfor %}"),
    ("macro_call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 }}{% endcall %}"),
    ("macro_call_block_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}"),
    ("macro_returns_string", "{% macro n() %}42{% endmacro %}{{ n() | int + 1 }}|{{ n() is string }}"),
    # generation (transformers extension), raise_exception, globals
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% set g = 1 %}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}{{ g is defined }}"),
    ("raise_exception_error", "{{ raise_exception('custom failure') }}"),
    ("raise_exception_not_reached", "{% if false %}{{ raise_exception('x') }}{% endif %}ok"),
    ("raise_exception_in_loop_error", "{% for m in messages %}{% if m.role == 'assistant' %}{{ raise_exception('no assistants: ' ~ loop.index) }}{% endif %}{% endfor %}"),
    ("range_function", "{{ range(3) | list }}|{{ range(1, 10, 3) | list }}|{{ range(5, 0, -2) | list }}|{{ range(0) | list }}|{{ range(-2) | list }}|{{ range(3) | length }}|{% for i in range(2) %}{{ i }}{% endfor %}|{{ range(100000) | length }}"),
    ("range_too_big_error", "{% for i in range(1000000) %}{% endfor %}"),
    ("range_float_error", "{{ range(1.5) | list }}"),
    ("range_zero_step_error", "{{ range(1, 2, 0) | list }}"),
    ("dict_function", "{{ dict(a=1, b='x') }}|{{ dict(a=1).a }}|{{ dict() }}|{{ dict([('k', 'v')]) }}"),
    ("strftime_now_defined", "{{ strftime_now is defined }}|{{ strftime_now is callable }}"),
    ("joiner_global", "{% set pipe = joiner(' | ') %}{% for x in [1, 2, 3] %}{{ pipe() }}{{ x }}{% endfor %}"),
    ("context_types", "{{ int_value }}|{{ float_value }}|{{ whole_float }}|{{ big_int }}|{{ bool_value }}|{{ null_value }}|{{ nested }}|{{ float_value * 2 }}|{{ whole_float | int }}|{{ neg_float }}"),
    # syntax errors
    ("syntax_missing_operand", "{{ 1 + }}"),
    ("syntax_if_no_condition", "{% if %}{% endif %}"),
    ("syntax_unclosed_if", "{% if true %}x"),
    ("syntax_unclosed_for", "{% for x in l %}x"),
    ("syntax_for_missing_iter", "{% for x in %}{% endfor %}"),
    ("syntax_stray_endif", "{% endif %}"),
    ("syntax_unclosed_string", "{{ 'unclosed }}"),
    ("syntax_unknown_tag", "{% frobnicate %}"),
    ("syntax_unclosed_variable", "{{ x"),
    ("syntax_unclosed_block", "{% if true"),
    ("syntax_unclosed_comment", "{# unclosed comment"),
    ("syntax_for_bad", "{% for x y %}{% endfor %}"),
    ("syntax_stray_paren", "{{ ) }}"),
    ("syntax_unclosed_list", "{{ [1, 2 }}"),
    ("syntax_mismatched_brackets", "{{ (1, 2] }}"),
    ("syntax_set_no_target", "{% set = 1 %}"),
    ("syntax_set_literal_target", "{% set 1 = 2 %}"),
    ("syntax_set_true_target", "{% set true = 2 %}"),
    ("syntax_macro_default_order", "{% macro m(a=1, b) %}{% endmacro %}"),
    ("syntax_two_values", "{{ a b }}"),
    ("syntax_unclosed_raw", "{% raw %}unterminated"),
    ("syntax_is_is", "{{ 1 is is defined }}"),
    ("syntax_empty_filter", "{{ x | }}"),
    ("syntax_double_else", "{% if true %}{% else %}{% else %}{% endif %}"),
    ("syntax_wrong_end_tag", "{% for x in l %}{% endif %}"),
    ("syntax_empty_variable", "{{ }}"),
    ("syntax_empty_block", "{% %}"),
    ("syntax_bad_char", "{{ @ }}"),
    ("syntax_assign_in_expression", "{{ 1 = 2 }}"),
    ("syntax_do_not_enabled", "{% do l.append(1) %}"),
    ("syntax_positional_after_keyword", "{{ range(stop=1, 2) }}"),
    ("syntax_bad_hex_escape", "{{ '\\xZZ' }}"),
    ("syntax_break_outside_loop", "{% break %}"),
    ("syntax_continue_in_macro_outside_loop", "{% for x in l %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}"),
    ("syntax_endfor_with_garbage", "{% for x in l %}{% endfor x %}"),
    ("syntax_elif_after_else", "{% if true %}{% else %}{% elif true %}{% endif %}"),
    ("syntax_dot_dot", "{{ d..a }}"),
    ("syntax_leading_dot_float", "{{ .5 }}"),
    ("syntax_colon_after_if_ok", "{% if true: %}colon-ok{% endif %}"),
    ("syntax_deep_parens", "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}"),
    ("syntax_deep_lists", "{{ " + "[" * 2000 + "]" * 2000 + " }}"),
    ("syntax_deep_not", "{{ " + "not " * 5000 + "true }}"),
    ("syntax_deep_filters_ok", "{{ 'x'" + " | upper" * 300 + " }}"),
    ("syntax_long_elif_chain_ok", "{% if x == 0 %}0" + "".join("{%% elif x == %d %%}%d" % (i, i) for i in range(1, 300)) + "{% else %}none{% endif %}"),
    ("syntax_many_concats_ok", "{{ 'a'" + " ~ 'b'" * 500 + " }}"),
]

SYNTHETIC_CONTEXT_OVERRIDES = {
    "filter_int_of_inf_float_error": {"inf_string": "inf"},
    "syntax_long_elif_chain_ok": {"x": 250},
    "context_types": {"int_value": 7, "float_value": 2.5, "whole_float": 3.0, "big_int": 9007199254740993,
                      "bool_value": True, "null_value": None, "neg_float": -1e-7,
                      "nested": {"k": [1, 2.0, "s", None, False, {"z": []}]}},
}


# --- rendering ---------------------------------------------------------------------------------

def sorted_copy(value):
    """Key-sorts every dict (the C++ side receives nlohmann::json, whose objects are sorted)."""
    return json.loads(json.dumps(value, sort_keys=True, ensure_ascii=False))


def render(env, source, context):
    try:
        template = env.from_string(source)
        return {"expected": template.render(**copy.deepcopy(context))}
    except RecursionError as e:
        return {"error": "RecursionError: " + str(e)[:200]}
    except Exception as e:  # every jinja2 failure is an error the C++ side must report too
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def read_template(name):
    with open(os.path.join(TEMPLATE_DIR, name + ".jinja"), "rb") as f:
        return f.read().decode("utf-8")


def check_smollm2_fixture():
    """The SmolLM2 fixture must be the exact template stored in the model's GGUF."""
    if not os.path.exists(GGUF_PATH):
        return
    try:
        import gguf
    except ImportError:
        print("note: `pip install gguf` to check smollm2.jinja against the GGUF", file=sys.stderr)
        return
    field = gguf.GGUFReader(GGUF_PATH).fields["tokenizer.chat_template"]
    stored = bytes(field.parts[field.data[0]]).decode("utf-8")
    if stored != read_template("smollm2"):
        sys.exit("tests/chat_template/data/templates/smollm2.jinja differs from the GGUF's tokenizer.chat_template")


def main():
    # Python warns when jinja2's generated code subscripts a literal (the slice_constant cases).
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    check_smollm2_fixture()
    env = make_environment()
    templates = {}
    cases = []

    for name, (tokens, extra, tool_conversations) in REAL_TEMPLATES.items():
        templates[name] = {"file": f"templates/{name}.jinja"}
        source = read_template(name)
        for conv_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                context = dict(SPECIAL_TOKENS[tokens], **extra)
                context["messages"] = messages
                context["add_generation_prompt"] = add_generation_prompt
                if conv_name in tool_conversations:
                    context["tools"] = TOOLS
                context = sorted_copy(context)
                suffix = "gen" if add_generation_prompt else "nogen"
                case = {"name": f"{name}/{conv_name}/{suffix}", "template": name, "context": context}
                case.update(render(env, source, context))
                cases.append(case)
    for name, case_name, extra in REAL_EXTRA_CASES:
        context = sorted_copy(dict(SPECIAL_TOKENS[REAL_TEMPLATES[name][0]], **extra))
        case = {"name": f"{name}/{case_name}", "template": name, "context": context}
        case.update(render(env, read_template(name), context))
        cases.append(case)

    seen = set()
    for name, source in SYNTHETIC:
        assert name not in seen, name
        seen.add(name)
        templates[name] = {"source": source}
        context = sorted_copy(dict(BASE_CONTEXT, **SYNTHETIC_CONTEXT_OVERRIDES.get(name, {})))
        case = {"name": f"synthetic/{name}", "template": name, "context": context}
        case.update(render(env, source, context))
        cases.append(case)

    refs = {
        "generator": "scripts/make_chat_template_refs.py",
        "jinja2_version": jinja2.__version__,
        "python_version": sys.version.split()[0],
        "environment": "ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                       "extensions=[AssistantTracker, loopcontrols]) + transformers' tojson, "
                       "raise_exception, strftime_now",
        "templates": templates,
        "cases": cases,
    }
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        json.dump(refs, f, ensure_ascii=False, indent=1, sort_keys=False)
        f.write("\n")
    errors = sum(1 for c in cases if "error" in c)
    print(f"wrote {len(cases)} cases ({errors} expected errors) to {os.path.relpath(OUT_PATH, ROOT)}")


if __name__ == "__main__":
    main()
