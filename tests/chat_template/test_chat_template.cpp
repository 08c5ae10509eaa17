// Tests for ChatTemplate. The main test renders every case of data/chat_template_refs.json —
// real model templates and synthetic feature/error templates rendered by Python's jinja2 as
// transformers configures it (scripts/make_chat_template_refs.py) — and requires byte-identical
// output, or a swiftkv::Error where jinja2 raised. The rest are hand-written checks of what the
// references cannot cover: error messages, resource limits, thread safety, the clock.
#include <gtest/gtest.h>

#include <pthread.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"

using namespace swiftkv;
using nlohmann::json;

namespace {

const std::string kDataDir = std::string(SWIFTKV_SOURCE_DIR) + "/tests/chat_template/data/";

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Printable form of a string for failure messages.
std::string escaped(const std::string& s, size_t max = 400) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; ++i) {
        char c = s[i];
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\r') {
            out += "\\r";
        } else {
            out += c;
        }
    }
    if (s.size() > max) out += "...";
    return out;
}

std::string describe_mismatch(const std::string& expected, const std::string& actual) {
    size_t i = 0;
    while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
    size_t from = i > 40 ? i - 40 : 0;
    return "first difference at byte " + std::to_string(i) + "\n  expected: ..." +
           escaped(expected.substr(from, 120)) + "\n  actual:   ..." + escaped(actual.substr(from, 120)) +
           "\n  full expected: " + escaped(expected) + "\n  full actual:   " + escaped(actual);
}

std::string render(const std::string& source, const json& context = json::object()) {
    return ChatTemplate(source).render(context);
}

std::string error_of(const std::string& source, const json& context = json::object()) {
    try {
        render(source, context);
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

}  // namespace

TEST(ChatTemplate, MatchesJinja2References) {
    json refs = json::parse(read_file(kDataDir + "chat_template_refs.json"));
    std::map<std::string, std::string> sources;
    for (const auto& [name, spec] : refs.at("templates").items())
        sources[name] = spec.contains("file") ? read_file(kDataDir + spec.at("file").get<std::string>())
                                              : spec.at("source").get<std::string>();
    int passed = 0, failed = 0;
    for (const json& c : refs.at("cases")) {
        const std::string name = c.at("name");
        const bool expect_error = c.contains("error");
        std::string failure;
        try {
            ChatTemplate tmpl(sources.at(c.at("template")));
            std::string out = tmpl.render(c.at("context"));
            if (expect_error) {
                failure = "expected an error (jinja2: " + c.at("error").get<std::string>() + ") but rendered: " +
                          escaped(out);
            } else if (out != c.at("expected").get<std::string>()) {
                failure = describe_mismatch(c.at("expected"), out);
            }
        } catch (const Error& e) {
            if (!expect_error) failure = std::string("unexpected error: ") + e.what();
        } catch (const std::exception& e) {
            failure = std::string("threw a non-swiftkv exception: ") + e.what();
        }
        if (failure.empty()) {
            ++passed;
        } else {
            ++failed;
            ADD_FAILURE() << name << ": " << failure;
        }
    }
    std::printf("chat template references (jinja2 %s): %d passed, %d failed\n",
                refs.at("jinja2_version").get<std::string>().c_str(), passed, failed);
    EXPECT_GT(passed, 500);
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
    std::string message = error_of("hello\n{% if true %}\n  {{ 1 + }}\n{% endif %}");
    EXPECT_NE(message.find("line 3"), std::string::npos) << message;
    EXPECT_NE(message.find("column"), std::string::npos) << message;
    message = error_of("{% for x in y %}");
    EXPECT_NE(message.find("endfor"), std::string::npos) << message;
    message = error_of("{{ x | no_such_filter }}");
    EXPECT_NE(message.find("no_such_filter"), std::string::npos) << message;
}

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
    std::string message = error_of("\n{{ raise_exception('roles must alternate') }}");
    EXPECT_NE(message.find("roles must alternate"), std::string::npos) << message;
    EXPECT_NE(message.find("line 2"), std::string::npos) << message;
}

TEST(ChatTemplate, UndefinedErrorsNameTheVariable) {
    EXPECT_NE(error_of("{{ missing.attr }}").find("'missing' is undefined"), std::string::npos);
    EXPECT_NE(error_of("{{ m.nope.x }}", {{"m", json::object()}}).find("has no attribute 'nope'"), std::string::npos);
}

TEST(ChatTemplate, RendersMessagesAndSpecialTokens) {
    ChatTemplate tmpl(
        "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}");
    json ctx = {{"bos_token", "<s>"},
                {"eos_token", "</s>"},
                {"add_generation_prompt", true},
                {"messages", json::array({{{"role", "user"}, {"content", " hi "}}})}};
    EXPECT_EQ(tmpl.render(ctx), "<s><|user|>hi</s>\n<|assistant|>");
    // A template is parsed once and may be rendered any number of times.
    EXPECT_EQ(tmpl.render(ctx), "<s><|user|>hi</s>\n<|assistant|>");
    ChatTemplate moved = std::move(tmpl);
    EXPECT_EQ(moved.render(ctx), "<s><|user|>hi</s>\n<|assistant|>");
}

TEST(ChatTemplate, NullContextIsEmpty) {
    EXPECT_EQ(ChatTemplate("[{{ x }}]").render(json()), "[]");
    EXPECT_THROW(ChatTemplate("x").render(json::array()), Error);
}

TEST(ChatTemplate, StrftimeNowFormatsTheLocalTime) {
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char year[8];
    std::strftime(year, sizeof year, "%Y", &local);
    EXPECT_EQ(render("{{ strftime_now('%Y') }}"), year);
    // Llama 3.2's template falls back to strftime_now when no date_string is given.
    std::string out = render("{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}"
                             "{% endif %}{{ date_string }}");
    EXPECT_EQ(out.size(), 11u) << out;
}

TEST(ChatTemplate, OutputIsCappedAt10MB) {
    std::string message = error_of("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
    EXPECT_NE(message.find("10 MB"), std::string::npos) << message;
}

TEST(ChatTemplate, RunawayLoopsStop) {
    auto start = std::chrono::steady_clock::now();
    std::string message =
        error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    EXPECT_NE(message.find("too long"), std::string::npos) << message;
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(ChatTemplate, DeepNestingFailsCleanly) {
    std::string deep = "{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}";
    EXPECT_THROW(ChatTemplate{deep}, Error);
    std::string nested_ifs;
    for (int i = 0; i < 5000; ++i) nested_ifs += "{% if true %}";
    EXPECT_THROW(ChatTemplate{nested_ifs}, Error);
    EXPECT_THROW(render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), Error);
    EXPECT_THROW(render("{% for x in [[1]] recursive %}{{ loop([[1]]) }}{% endfor %}"), Error);
}

TEST(ChatTemplate, DeepValuesAndNamespaceGraphsFailCleanly) {
    // Values built up in a loop nest without bound in Python; here they stop at 256 levels.
    EXPECT_THROW(render("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}"
                        "{% endfor %}"),
                 Error);
    EXPECT_THROW(render("{% set ns = namespace(g=[1]) %}{% for i in range(100000) %}{% set ns.g = ns.g | select %}"
                        "{% endfor %}{{ ns.g | list }}"),
                 Error);
    // A long chain of namespaces is legal and must be torn down without deep recursion.
    EXPECT_EQ(render("{% set ns = namespace(p=none) %}{% for i in range(50000) %}{% set ns.p = namespace(p=ns.p) %}"
                     "{% endfor %}done"),
              "done");
    // A namespace that contains itself cannot be printed (Python prints "..."), but is freed.
    EXPECT_THROW(render("{% set a = namespace() %}{% set a.me = a %}{{ a }}"), Error);
    EXPECT_EQ(render("{% set a = namespace() %}{% set a.me = a %}{{ a.me.me is defined }}"), "True");
}

// Renders on a thread with a small stack: recursion limits must follow the real stack size.
std::string render_on_small_stack(const std::string& source, size_t stack_bytes) {
    struct Job {
        std::string source, result;
    } job{source, ""};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack_bytes);
    pthread_t thread;
    auto run = [](void* arg) -> void* {
        auto* j = static_cast<Job*>(arg);
        try {
            j->result = ChatTemplate(j->source).render(json::object());
        } catch (const Error& e) {
            j->result = std::string("error: ") + e.what();
        }
        return nullptr;
    };
    EXPECT_EQ(pthread_create(&thread, &attr, run, &job), 0);
    pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
    return job.result;
}

TEST(ChatTemplate, RecursionStopsBeforeTheStackEnds) {
    std::string nested_ifs;
    for (int i = 0; i < 20; ++i) nested_ifs += "{% if true %}";
    std::string close;
    for (int i = 0; i < 20; ++i) close += "{% endif %}";
    std::string deep_macro = "{% macro f(n) %}{% if n < 99 %}" + nested_ifs + "{{ f(n + 1) }}" + close +
                             "{% endif %}{% endmacro %}{{ f(0) }}";
    // 100 macro calls, each 20 statements deep: renders ("") where the stack allows, fails
    // cleanly where it does not — never overflows.
    for (size_t stack : {size_t(256) << 10, size_t(1) << 20, size_t(8) << 20}) {
        std::string result = render_on_small_stack(deep_macro, stack);
        EXPECT_TRUE(result.empty() || result.rfind("error: ", 0) == 0) << result;
        std::string parens = "{{ " + std::string(120, '(') + "1" + std::string(120, ')') + " }}";
        result = render_on_small_stack(parens, stack);
        EXPECT_TRUE(result == "1" || result.rfind("error: ", 0) == 0) << result;
    }
    // An ordinary template still renders on a small stack.
    EXPECT_EQ(render_on_small_stack("{% for i in range(3) %}{{ i }}{% endfor %}", size_t(256) << 10), "012");
}

TEST(ChatTemplate, HostileInputNeverCrashes) {
    // Truncations of a real template at every byte: each must parse or throw swiftkv::Error.
    std::string source = read_file(kDataDir + "templates/llama3_1.jinja");
    json ctx = {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}, {"bos_token", "<s>"}};
    for (size_t n = 0; n <= source.size(); n += 7) {
        try {
            ChatTemplate(source.substr(0, n)).render(ctx);
        } catch (const Error&) {
        }
    }
    // Invalid UTF-8 in content passes through untouched.
    std::string bad = "a\xff\xfe" "b";
    EXPECT_EQ(render("{{ s }}|{{ s | length }}|{{ s | upper }}", {{"s", bad}}), bad + "|4|A\xff\xfe" "B");
}

TEST(ChatTemplate, ConcurrentRendersShareOneTemplate) {
    ChatTemplate tmpl(read_file(kDataDir + "templates/qwen2_5.jinja"));
    json ctx = {{"add_generation_prompt", true}, {"messages", json::array()}};
    for (int i = 0; i < 50; ++i)
        ctx["messages"].push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "message " + std::to_string(i)}});
    const std::string expected = tmpl.render(ctx);
    std::vector<std::thread> threads;
    std::vector<int> mismatches(4, 0);
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 50; ++i)
                if (tmpl.render(ctx) != expected) ++mismatches[t];
        });
    }
    for (auto& th : threads) th.join();
    for (int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(ChatTemplate, LongConversationRendersQuickly) {
    ChatTemplate tmpl(read_file(kDataDir + "templates/llama3_1.jinja"));
    json ctx = {{"bos_token", "<|begin_of_text|>"}, {"add_generation_prompt", true}, {"messages", json::array()}};
    for (int i = 0; i < 5000; ++i)
        ctx["messages"].push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", std::string(200, 'x')}});
    auto start = std::chrono::steady_clock::now();
    std::string out = tmpl.render(ctx);
    auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_GT(out.size(), 5000u * 200u);
    EXPECT_LT(elapsed, std::chrono::seconds(2));
}
