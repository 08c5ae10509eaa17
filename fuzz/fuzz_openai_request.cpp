// libFuzzer target for the OpenAI request layer (server/openai_protocol.h): the input is an HTTP request
// body. It goes through parse_json_body and then every request parser the server has
// (parse_completion_request, parse_chat_completion_request, parse_tokenize_request,
// parse_detokenize_request); a request that parses is turned into the engine's sampling parameters, and
// its chat messages (chat completions, and /tokenize with "messages") are rendered through real chat
// templates with the project's Jinja engine, in the context ChatFormat::render builds: SmolLM2's ChatML
// (the default model), Llama 3 and 3.1, and Mistral v3 with tools (raise_exception on bad role order).
//
// Expected outcomes: ProtocolError (a 400 for the client) and swiftkv::Error from the template engine
// (a template's raise_exception, its size limits). Anything else is a bug: a crash, a sanitizer report,
// another exception type (libFuzzer reports it as a deadly signal), a leak, a timeout, an out-of-memory,
// or a parsed request that breaks the documented invariants (checked below; a violation traps).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "server/openai_protocol.h"
#include "tokenizer/chat_template.h"

namespace {

using nlohmann::json;
using namespace swiftkv;
using namespace swiftkv::server;

struct Template {
    const char* file;  // under tests/chat_template/data/templates (the stored real-model templates)
    const char* bos;   // the BOS / EOS text ChatFormat passes (the model's tokenizer's tokens)
    const char* eos;
    std::unique_ptr<ChatTemplate> parsed;
};

std::vector<Template>& templates() {
    static std::vector<Template> t = [] {
        std::vector<Template> list;
        list.push_back({"smollm2.jinja", "<|im_start|>", "<|im_end|>", nullptr});
        list.push_back({"llama3.jinja", "<|begin_of_text|>", "<|eot_id|>", nullptr});
        list.push_back({"llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>", nullptr});
        list.push_back({"mistral_v3_tools.jinja", "<s>", "</s>", nullptr});
        for (Template& tmpl : list) {
            const std::string path = std::string(SWIFTKV_CHAT_TEMPLATE_DIR) + "/" + tmpl.file;
            std::ifstream in(path, std::ios::binary);
            if (!in) {
                std::fprintf(stderr, "fuzz_openai_request: cannot read the chat template %s\n", path.c_str());
                std::abort();
            }
            std::ostringstream text;
            text << in.rdbuf();
            tmpl.parsed = std::make_unique<ChatTemplate>(text.str());
        }
        return list;
    }();
    return t;
}

void check(bool ok) {
    if (!ok) __builtin_trap();
}

// What the server does with a request's messages: normalized messages in, prompt text out.
void render_messages(const json& messages, bool add_generation_prompt) {
    // parse_chat_messages' promise: [{"role": one of four, "content": string, "name"?: string}, ...].
    check(messages.is_array() && !messages.empty());
    for (const json& m : messages) {
        check(m.is_object() && m.size() <= 3 && m.at("role").is_string() && m.at("content").is_string());
        const std::string role = m["role"];
        check(role == "system" || role == "user" || role == "assistant" || role == "tool");
        check(!m.contains("name") || m["name"].is_string());
    }
    for (const Template& t : templates()) {
        // The context ChatFormat::render (engine/engine.cpp) builds.
        const json context = {{"messages", messages},
                              {"add_generation_prompt", add_generation_prompt},
                              {"bos_token", t.bos},
                              {"eos_token", t.eos}};
        try {
            (void)t.parsed->render(context);
        } catch (const Error&) {
        }
    }
}

// Runs one parser; a ProtocolError must be a well-formed 400 that serializes.
template <typename F>
void expect_protocol_errors(F&& f) {
    try {
        f();
    } catch (const ProtocolError& e) {
        check(e.status == 400 && e.type == "invalid_request_error" && !e.message.empty());
        (void)dump_json(e.to_json());
    }
}

const json& generation_defaults() {
    static const json d = {{"temperature", 0.2}, {"top_p", 0.9}, {"top_k", 50}, {"repetition_penalty", 1.1}};
    return d;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)templates();  // parse the templates once, before the first input
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    json body;
    try {
        body = parse_json_body(std::string_view(reinterpret_cast<const char*>(data), size));
    } catch (const ProtocolError& e) {
        check(e.status == 400);
        return 0;
    }
    check(body.is_object());

    expect_protocol_errors([&] {
        const CompletionRequest r = parse_completion_request(body);
        check(r.prompt_is_tokens ? !r.prompt_tokens.empty() : !r.prompt_text.empty());
        check(r.max_tokens >= 0 && r.n >= 1 && r.n <= 16 && r.stop.size() <= 16);
        std::vector<int32_t> prompt = r.prompt_tokens;
        if (prompt.empty()) prompt = {1, 2, 3};
        (void)r.to_generation_request(std::move(prompt), r.max_tokens, generation_defaults());
    });
    expect_protocol_errors([&] {
        const ChatCompletionRequest r = parse_chat_completion_request(body);
        check(!r.max_tokens || *r.max_tokens >= 0);
        check(r.top_logprobs == 0 || r.logprobs);
        (void)r.to_sampling_params(generation_defaults());
        render_messages(r.messages, r.add_generation_prompt);
    });
    expect_protocol_errors([&] {
        const TokenizeRequest r = parse_tokenize_request(body);
        check(r.prompt.has_value() != r.messages.has_value());
        if (r.messages) render_messages(*r.messages, r.add_generation_prompt);
    });
    expect_protocol_errors([&] { (void)parse_detokenize_request(body); });
    return 0;
}
