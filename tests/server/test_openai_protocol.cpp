// OpenAI protocol layer: request parsing and validation, error bodies, response and chunk shapes,
// SSE framing and UTF-8 safety. Pure JSON in, JSON out; no engine or model needed.
#include "server/openai_protocol.h"

#include <gtest/gtest.h>

#include <string>

using nlohmann::json;
using namespace swiftkv;
using namespace swiftkv::server;

namespace {

json completion_body(json extra = json::object()) {
    json b = {{"model", "m"}, {"prompt", "Hello"}};
    for (auto& [k, v] : extra.items()) b[k] = v;
    return b;
}

json chat_body(json extra = json::object()) {
    json b = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})}};
    for (auto& [k, v] : extra.items()) b[k] = v;
    return b;
}

// Expects a 400 ProtocolError naming `param`.
template <typename F>
void expect_400(F&& f, const std::string& param, const std::string& message_part = {}) {
    try {
        f();
        ADD_FAILURE() << "expected a ProtocolError for param " << param;
    } catch (const ProtocolError& e) {
        EXPECT_EQ(e.status, 400);
        EXPECT_EQ(e.param, param) << e.message;
        EXPECT_EQ(e.type, "invalid_request_error");
        if (!message_part.empty()) {
            EXPECT_NE(e.message.find(message_part), std::string::npos) << e.message;
        }
    }
}

void completion_400(json extra, const std::string& param, const std::string& msg = {}) {
    expect_400([&] { parse_completion_request(completion_body(extra)); }, param, msg);
}

void chat_400(json extra, const std::string& param, const std::string& msg = {}) {
    expect_400([&] { parse_chat_completion_request(chat_body(extra)); }, param, msg);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Completions requests

TEST(CompletionRequest, Defaults) {
    const CompletionRequest r = parse_completion_request(completion_body());
    EXPECT_EQ(r.model, "m");
    EXPECT_EQ(r.prompt_text, "Hello");
    EXPECT_FALSE(r.prompt_is_tokens);
    EXPECT_EQ(r.max_tokens, 16);
    EXPECT_EQ(r.n, 1);
    EXPECT_FALSE(r.stream);
    EXPECT_FALSE(r.include_usage);
    EXPECT_FALSE(r.echo);
    EXPECT_FALSE(r.logprobs.has_value());
    EXPECT_FALSE(r.temperature.has_value());
    EXPECT_TRUE(r.stop.empty());
    const SamplingParams p = r.to_sampling_params();
    EXPECT_FLOAT_EQ(p.temperature, 1.0f);  // OpenAI's default
    EXPECT_FLOAT_EQ(p.top_p, 1.0f);
    EXPECT_FALSE(p.seed.has_value());
}

TEST(CompletionRequest, ModelOptionalAndUnknownFieldsIgnored) {
    const CompletionRequest r = parse_completion_request({{"prompt", "x"}, {"foo", 1}, {"user", "u1"}, {"metadata", {{"a", 1}}}});
    EXPECT_EQ(r.model, "");
    EXPECT_EQ(r.prompt_text, "x");
    completion_400({{"model", 5}}, "model");
    completion_400({{"user", 5}}, "user");
}

TEST(CompletionRequest, PromptForms) {
    auto r = parse_completion_request(completion_body({{"prompt", json::array({"abc"})}}));
    EXPECT_EQ(r.prompt_text, "abc");
    r = parse_completion_request(completion_body({{"prompt", json::array({1, 2, 3})}}));
    EXPECT_TRUE(r.prompt_is_tokens);
    EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
    r = parse_completion_request(completion_body({{"prompt", json::array({json::array({4, 5})})}}));
    EXPECT_TRUE(r.prompt_is_tokens);
    EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{4, 5}));
}

TEST(CompletionRequest, PromptErrors) {
    expect_400([] { parse_completion_request({{"model", "m"}}); }, "prompt", "required");
    expect_400([] { parse_completion_request({{"prompt", nullptr}}); }, "prompt", "required");
    completion_400({{"prompt", ""}}, "prompt", "empty");
    completion_400({{"prompt", json::array()}}, "prompt", "empty");
    completion_400({{"prompt", json::array({""})}}, "prompt", "empty");
    completion_400({{"prompt", json::array({json::array()})}}, "prompt", "empty");
    completion_400({{"prompt", json::array({"a", "b"})}}, "prompt", "batched");
    completion_400({{"prompt", json::array({json::array({1}), json::array({2})})}}, "prompt", "batched");
    completion_400({{"prompt", 5}}, "prompt");
    completion_400({{"prompt", {{"a", 1}}}}, "prompt");
    completion_400({{"prompt", json::array({1, "x"})}}, "prompt");
    completion_400({{"prompt", json::array({1, -2})}}, "prompt");
    completion_400({{"prompt", json::array({1.5})}}, "prompt");
    completion_400({{"prompt", json::array({true})}}, "prompt");
    completion_400({{"prompt", json::array({json::array({1, "a"})})}}, "prompt");
    completion_400({{"prompt", json::array({int64_t(1) << 40})}}, "prompt");
}

TEST(CompletionRequest, MaxTokens) {
    EXPECT_EQ(parse_completion_request(completion_body({{"max_tokens", 0}})).max_tokens, 0);
    EXPECT_EQ(parse_completion_request(completion_body({{"max_tokens", 100}})).max_tokens, 100);
    EXPECT_EQ(parse_completion_request(completion_body({{"max_tokens", 7.0}})).max_tokens, 7);
    EXPECT_EQ(parse_completion_request(completion_body({{"max_tokens", nullptr}})).max_tokens, 16);
    EXPECT_EQ(parse_completion_request(completion_body({{"max_tokens", 1 << 24}})).max_tokens, 1 << 24);
    completion_400({{"max_tokens", -1}}, "max_tokens");
    completion_400({{"max_tokens", (1 << 24) + 1}}, "max_tokens");
    completion_400({{"max_tokens", 7.5}}, "max_tokens");
    completion_400({{"max_tokens", "10"}}, "max_tokens", "integer");
    completion_400({{"max_tokens", true}}, "max_tokens");
    completion_400({{"max_tokens", uint64_t(18446744073709551615ull)}}, "max_tokens");
}

TEST(CompletionRequest, SamplingFieldsHappy) {
    const auto r = parse_completion_request(completion_body({{"temperature", 0.7},
                                                             {"top_p", 0.9},
                                                             {"top_k", 40},
                                                             {"min_p", 0.05},
                                                             {"presence_penalty", 0.5},
                                                             {"frequency_penalty", -0.5},
                                                             {"repetition_penalty", 1.1},
                                                             {"seed", 1234}}));
    const SamplingParams p = r.to_sampling_params();
    EXPECT_FLOAT_EQ(p.temperature, 0.7f);
    EXPECT_FLOAT_EQ(p.top_p, 0.9f);
    EXPECT_EQ(p.top_k, 40);
    EXPECT_FLOAT_EQ(p.min_p, 0.05f);
    EXPECT_FLOAT_EQ(p.presence_penalty, 0.5f);
    EXPECT_FLOAT_EQ(p.frequency_penalty, -0.5f);
    EXPECT_FLOAT_EQ(p.repetition_penalty, 1.1f);
    ASSERT_TRUE(p.seed.has_value());
    EXPECT_EQ(*p.seed, 1234u);
    // Edges.
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"temperature", 0}, {"top_p", 1}, {"top_k", -1}, {"min_p", 1}})));
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"temperature", 2}, {"top_k", 0}, {"min_p", 0}})));
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"presence_penalty", -2}, {"frequency_penalty", 2}})));
    const auto neg = parse_completion_request(completion_body({{"seed", -1}}));
    EXPECT_EQ(*neg.seed, -1);
    EXPECT_NO_THROW(neg.to_sampling_params());
}

TEST(CompletionRequest, SamplingFieldsErrors) {
    completion_400({{"temperature", -0.1}}, "temperature");
    completion_400({{"temperature", 2.01}}, "temperature");
    completion_400({{"temperature", "hot"}}, "temperature", "number");
    completion_400({{"top_p", 0}}, "top_p");
    completion_400({{"top_p", 1.5}}, "top_p");
    completion_400({{"top_k", -2}}, "top_k");
    completion_400({{"top_k", 1.5}}, "top_k");
    completion_400({{"min_p", -0.1}}, "min_p");
    completion_400({{"min_p", 1.1}}, "min_p");
    completion_400({{"presence_penalty", 2.5}}, "presence_penalty");
    completion_400({{"presence_penalty", -2.5}}, "presence_penalty");
    completion_400({{"frequency_penalty", 3}}, "frequency_penalty");
    completion_400({{"repetition_penalty", 0}}, "repetition_penalty");
    completion_400({{"repetition_penalty", -1}}, "repetition_penalty");
    completion_400({{"seed", "1"}}, "seed");
    completion_400({{"seed", 1.5}}, "seed");
}

TEST(CompletionRequest, GenerationDefaultsApplyWhenUnset) {
    const json defaults = {{"temperature", 0.6}, {"top_p", 0.9}, {"top_k", 20}, {"repetition_penalty", 1.05}};
    auto p = parse_completion_request(completion_body()).to_sampling_params(defaults);
    EXPECT_FLOAT_EQ(p.temperature, 0.6f);
    EXPECT_FLOAT_EQ(p.top_p, 0.9f);
    EXPECT_EQ(p.top_k, 20);
    EXPECT_FLOAT_EQ(p.repetition_penalty, 1.05f);
    p = parse_completion_request(completion_body({{"temperature", 0}, {"top_k", -1}})).to_sampling_params(defaults);
    EXPECT_FLOAT_EQ(p.temperature, 0.0f);
    EXPECT_EQ(p.top_k, -1);
    // A bad default from the model is still caught as a 400 by validate().
    EXPECT_THROW(parse_completion_request(completion_body()).to_sampling_params({{"top_p", 5.0}}), ProtocolError);
}

TEST(CompletionRequest, ToGenerationRequest) {
    const auto r = parse_completion_request(completion_body(
        {{"stop", json::array({"\n", "END"})}, {"stop_token_ids", json::array({7, 8})}, {"ignore_eos", true}, {"temperature", 0}}));
    const GenerationRequest g = r.to_generation_request({1, 2, 3}, 42);
    EXPECT_EQ(g.prompt, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(g.max_tokens, 42);
    EXPECT_EQ(g.stop, (std::vector<std::string>{"\n", "END"}));
    EXPECT_EQ(g.stop_token_ids, (std::vector<int32_t>{7, 8}));
    EXPECT_TRUE(g.ignore_eos);
    EXPECT_FLOAT_EQ(g.sampling.temperature, 0.0f);
}

TEST(CompletionRequest, Stop) {
    EXPECT_EQ(parse_completion_request(completion_body({{"stop", "x"}})).stop, (std::vector<std::string>{"x"}));
    EXPECT_TRUE(parse_completion_request(completion_body({{"stop", nullptr}})).stop.empty());
    EXPECT_TRUE(parse_completion_request(completion_body({{"stop", json::array()}})).stop.empty());
    json sixteen = json::array();
    for (int i = 0; i < 16; ++i) sixteen.push_back(std::to_string(100 + i));
    EXPECT_EQ(parse_completion_request(completion_body({{"stop", sixteen}})).stop.size(), 16u);
    sixteen.push_back("s16");
    completion_400({{"stop", sixteen}}, "stop", "16");
    completion_400({{"stop", 5}}, "stop");
    completion_400({{"stop", json::array({"a", 1})}}, "stop");
    completion_400({{"stop", ""}}, "stop", "empty");
    completion_400({{"stop_token_ids", 5}}, "stop_token_ids");
    completion_400({{"stop_token_ids", json::array({"a"})}}, "stop_token_ids");
    completion_400({{"stop_token_ids", json::array({-1})}}, "stop_token_ids");
    completion_400({{"ignore_eos", 1}}, "ignore_eos", "boolean");
}

TEST(CompletionRequest, NBestOfLogprobsEcho) {
    auto r = parse_completion_request(completion_body({{"n", 3}, {"best_of", 3}, {"logprobs", 5}, {"echo", true}}));
    EXPECT_EQ(r.n, 3);
    EXPECT_EQ(*r.logprobs, 5);
    EXPECT_TRUE(r.echo);
    EXPECT_EQ(*parse_completion_request(completion_body({{"logprobs", 0}})).logprobs, 0);
    EXPECT_EQ(*parse_completion_request(completion_body({{"logprobs", 20}})).logprobs, 20);
    EXPECT_EQ(parse_completion_request(completion_body({{"n", 16}})).n, 16);
    completion_400({{"n", 0}}, "n");
    completion_400({{"n", 17}}, "n");
    completion_400({{"n", "2"}}, "n");
    completion_400({{"best_of", 2}}, "best_of", "best_of");
    completion_400({{"n", 2}, {"best_of", 3}}, "best_of");
    completion_400({{"logprobs", 21}}, "logprobs");
    completion_400({{"logprobs", -1}}, "logprobs");
    completion_400({{"logprobs", true}}, "logprobs", "integer");
    completion_400({{"echo", "yes"}}, "echo");
}

TEST(CompletionRequest, StreamAndStreamOptions) {
    auto r = parse_completion_request(completion_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}}));
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.include_usage);
    r = parse_completion_request(completion_body({{"stream", true}, {"stream_options", json::object()}}));
    EXPECT_FALSE(r.include_usage);
    r = parse_completion_request(completion_body({{"stream", false}, {"stream_options", nullptr}}));
    EXPECT_FALSE(r.stream);
    completion_400({{"stream", "true"}}, "stream");
    completion_400({{"stream_options", {{"include_usage", true}}}}, "stream_options", "stream");
    completion_400({{"stream", true}, {"stream_options", 1}}, "stream_options");
    completion_400({{"stream", true}, {"stream_options", {{"include_usage", 1}}}}, "stream_options.include_usage");
}

TEST(CompletionRequest, UnsupportedFields) {
    completion_400({{"suffix", "tail"}}, "suffix", "not supported");
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"suffix", nullptr}})));
    completion_400({{"logit_bias", {{"50256", -100}}}}, "logit_bias", "not supported");
    completion_400({{"logit_bias", json::array({1})}}, "logit_bias");
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"logit_bias", json::object()}})));
    EXPECT_NO_THROW(parse_completion_request(completion_body({{"logit_bias", nullptr}})));
}

TEST(CompletionRequest, NonObjectBody) {
    EXPECT_THROW(parse_completion_request(json::array()), ProtocolError);
    EXPECT_THROW(parse_completion_request(json("x")), ProtocolError);
}

// ------------------------------------------------------------------------------------------------
// Chat requests

TEST(ChatRequest, Defaults) {
    const ChatCompletionRequest r = parse_chat_completion_request(chat_body());
    ASSERT_EQ(r.messages.size(), 1u);
    EXPECT_EQ(r.messages[0]["role"], "user");
    EXPECT_EQ(r.messages[0]["content"], "Hi");
    EXPECT_FALSE(r.max_tokens.has_value());
    EXPECT_FALSE(r.logprobs);
    EXPECT_EQ(r.top_logprobs, 0);
    EXPECT_TRUE(r.add_generation_prompt);
    EXPECT_TRUE(r.chat_template_kwargs.is_object());
    EXPECT_TRUE(r.chat_template_kwargs.empty());
    EXPECT_EQ(r.n, 1);
}

TEST(ChatRequest, MessagesNormalized) {
    const json msgs = json::array({
        {{"role", "developer"}, {"content", "Be brief."}},
        {{"role", "system"}, {"content", "S"}},
        {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "Hello, "}}, {{"type", "text"}, {"text", "world"}}})}, {"name", "bob"}},
        {{"role", "assistant"}, {"content", nullptr}},
        {{"role", "tool"}, {"content", "42"}, {"tool_call_id", "x"}},
    });
    const auto r = parse_chat_completion_request(chat_body({{"messages", msgs}}));
    ASSERT_EQ(r.messages.size(), 5u);
    EXPECT_EQ(r.messages[0]["role"], "system");
    EXPECT_EQ(r.messages[1]["role"], "system");
    EXPECT_EQ(r.messages[2]["content"], "Hello, world");
    EXPECT_EQ(r.messages[2]["name"], "bob");
    EXPECT_EQ(r.messages[3]["role"], "assistant");
    EXPECT_EQ(r.messages[3]["content"], "");
    EXPECT_EQ(r.messages[4]["role"], "tool");
    EXPECT_FALSE(r.messages[0].contains("name"));
}

TEST(ChatRequest, MessagesErrors) {
    expect_400([] { parse_chat_completion_request({{"model", "m"}}); }, "messages", "required");
    chat_400({{"messages", json::array()}}, "messages", "empty");
    chat_400({{"messages", "hi"}}, "messages");
    chat_400({{"messages", json::array({"hi"})}}, "messages[0]");
    chat_400({{"messages", json::array({{{"content", "x"}}})}}, "messages[0].role");
    chat_400({{"messages", json::array({{{"role", "robot"}, {"content", "x"}}})}}, "messages[0].role");
    chat_400({{"messages", json::array({{{"role", 1}, {"content", "x"}}})}}, "messages[0].role");
    chat_400({{"messages", json::array({{{"role", "user"}}})}}, "messages[0].content");
    chat_400({{"messages", json::array({{{"role", "user"}, {"content", 5}}})}}, "messages[0].content");
    chat_400({{"messages", json::array({{{"role", "user"}, {"content", "a"}, {"name", 3}}})}}, "messages[0].name");
    const json image = json::array({{{"role", "user"},
                                     {"content", json::array({{{"type", "text"}, {"text", "what is this"}},
                                                              {{"type", "image_url"}, {"image_url", {{"url", "http://x"}}}}})}}});
    chat_400({{"messages", image}}, "messages[0].content", "image content is not supported");
    const json audio = json::array({{{"role", "user"}, {"content", json::array({{{"type", "input_audio"}}})}}});
    chat_400({{"messages", audio}}, "messages[0].content", "not supported");
    const json unknown = json::array({{{"role", "user"}, {"content", json::array({{{"type", "weird"}}})}}});
    chat_400({{"messages", unknown}}, "messages[0].content", "weird");
    const json no_text = json::array({{{"role", "user"}, {"content", json::array({{{"type", "text"}}})}}});
    chat_400({{"messages", no_text}}, "messages[0].content");
    const json second = json::array({{{"role", "user"}, {"content", "ok"}}, {{"role", "user"}, {"content", json::array({1})}}});
    chat_400({{"messages", second}}, "messages[1].content");
}

TEST(ChatRequest, MaxTokensForms) {
    EXPECT_EQ(*parse_chat_completion_request(chat_body({{"max_tokens", 10}})).max_tokens, 10);
    EXPECT_EQ(*parse_chat_completion_request(chat_body({{"max_completion_tokens", 12}})).max_tokens, 12);
    EXPECT_EQ(*parse_chat_completion_request(chat_body({{"max_tokens", 10}, {"max_completion_tokens", 12}})).max_tokens, 12);
    chat_400({{"max_tokens", -1}}, "max_tokens");
    chat_400({{"max_completion_tokens", (1 << 24) + 1}}, "max_completion_tokens");
    chat_400({{"max_completion_tokens", "5"}}, "max_completion_tokens");
}

TEST(ChatRequest, Logprobs) {
    auto r = parse_chat_completion_request(chat_body({{"logprobs", true}, {"top_logprobs", 5}}));
    EXPECT_TRUE(r.logprobs);
    EXPECT_EQ(r.top_logprobs, 5);
    r = parse_chat_completion_request(chat_body({{"logprobs", true}, {"top_logprobs", 20}}));
    EXPECT_EQ(r.top_logprobs, 20);
    chat_400({{"logprobs", 3}}, "logprobs", "boolean");
    chat_400({{"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs");
    chat_400({{"logprobs", true}, {"top_logprobs", -1}}, "top_logprobs");
    chat_400({{"top_logprobs", 2}}, "top_logprobs", "logprobs");
}

TEST(ChatRequest, SamplingAndStreamFields) {
    const auto r = parse_chat_completion_request(chat_body({{"temperature", 0.2},
                                                            {"n", 2},
                                                            {"seed", 7},
                                                            {"stop", "###"},
                                                            {"stream", true},
                                                            {"stream_options", {{"include_usage", true}}}}));
    EXPECT_FLOAT_EQ(*r.temperature, 0.2f);
    EXPECT_EQ(r.n, 2);
    EXPECT_EQ(*r.seed, 7);
    EXPECT_EQ(r.stop, (std::vector<std::string>{"###"}));
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.include_usage);
    chat_400({{"n", 0}}, "n");
    chat_400({{"n", 17}}, "n");
    chat_400({{"temperature", 3}}, "temperature");
    chat_400({{"top_p", 0}}, "top_p");
    chat_400({{"stream", 1}}, "stream");
}

TEST(ChatRequest, ResponseFormatToolsAndTemplateOptions) {
    EXPECT_NO_THROW(parse_chat_completion_request(chat_body({{"response_format", {{"type", "text"}}}})));
    chat_400({{"response_format", {{"type", "json_object"}}}}, "response_format", "json_object");
    chat_400({{"response_format", {{"type", "json_schema"}, {"json_schema", json::object()}}}}, "response_format");
    chat_400({{"response_format", "text"}}, "response_format");
    chat_400({{"response_format", json::object()}}, "response_format");

    const json tool = {{"type", "function"}, {"function", {{"name", "f"}, {"parameters", json::object()}}}};
    chat_400({{"tools", json::array({tool})}}, "tools", "not supported");
    chat_400({{"tools", "x"}}, "tools");
    EXPECT_NO_THROW(parse_chat_completion_request(chat_body({{"tools", json::array()}})));
    EXPECT_NO_THROW(parse_chat_completion_request(chat_body({{"tool_choice", "none"}})));
    EXPECT_NO_THROW(parse_chat_completion_request(chat_body({{"tool_choice", "auto"}, {"parallel_tool_calls", true}})));
    chat_400({{"tool_choice", "required"}}, "tool_choice");
    chat_400({{"tool_choice", {{"type", "function"}, {"function", {{"name", "f"}}}}}}, "tool_choice");
    chat_400({{"functions", json::array({{{"name", "f"}}})}}, "functions");

    const auto r = parse_chat_completion_request(
        chat_body({{"add_generation_prompt", false}, {"chat_template_kwargs", {{"enable_thinking", false}}}}));
    EXPECT_FALSE(r.add_generation_prompt);
    EXPECT_EQ(r.chat_template_kwargs["enable_thinking"], false);
    chat_400({{"add_generation_prompt", "no"}}, "add_generation_prompt");
    chat_400({{"chat_template_kwargs", json::array()}}, "chat_template_kwargs");
    chat_400({{"logit_bias", {{"1", 1}}}}, "logit_bias");
}

// ------------------------------------------------------------------------------------------------
// Tokenize / detokenize

TEST(Tokenize, Requests) {
    auto t = parse_tokenize_request({{"prompt", "abc"}});
    ASSERT_TRUE(t.prompt.has_value());
    EXPECT_EQ(*t.prompt, "abc");
    EXPECT_TRUE(t.add_special_tokens);
    t = parse_tokenize_request({{"prompt", "abc"}, {"add_special_tokens", false}});
    EXPECT_FALSE(t.add_special_tokens);
    t = parse_tokenize_request({{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
    ASSERT_TRUE(t.messages.has_value());
    EXPECT_EQ((*t.messages)[0]["content"], "hi");
    EXPECT_FALSE(t.add_special_tokens);
    EXPECT_TRUE(t.add_generation_prompt);
    // "prompt": "" is allowed for /tokenize (it gives the special tokens only).
    EXPECT_NO_THROW(parse_tokenize_request({{"prompt", ""}}));
    expect_400([] { parse_tokenize_request(json::object()); }, "prompt");
    expect_400([] { parse_tokenize_request({{"prompt", 1}}); }, "prompt");
    expect_400([] { parse_tokenize_request({{"prompt", "a"}, {"messages", json::array()}}); }, "prompt");
    expect_400([] { parse_tokenize_request({{"messages", json::array()}}); }, "messages");
    expect_400([] { parse_tokenize_request({{"prompt", "a"}, {"add_special_tokens", "yes"}}); }, "add_special_tokens");

    const json resp = tokenize_response({1, 2, 3}, 4096);
    EXPECT_EQ(resp["tokens"], json::array({1, 2, 3}));
    EXPECT_EQ(resp["count"], 3);
    EXPECT_EQ(resp["max_model_len"], 4096);
}

TEST(Detokenize, Requests) {
    const auto d = parse_detokenize_request({{"tokens", json::array({5, 6})}});
    EXPECT_EQ(d.tokens, (std::vector<int32_t>{5, 6}));
    EXPECT_NO_THROW(parse_detokenize_request({{"tokens", json::array()}}));
    expect_400([] { parse_detokenize_request(json::object()); }, "tokens", "required");
    expect_400([] { parse_detokenize_request({{"tokens", "1 2"}}); }, "tokens");
    expect_400([] { parse_detokenize_request({{"tokens", json::array({"a"})}}); }, "tokens");
    expect_400([] { parse_detokenize_request({{"tokens", json::array({-3})}}); }, "tokens");
    EXPECT_EQ(detokenize_response("hi")["prompt"], "hi");
    // Invalid UTF-8 in the detokenized text still serializes.
    EXPECT_NO_THROW(dump_json(detokenize_response(std::string("a\xff", 2))));
}

// ------------------------------------------------------------------------------------------------
// Errors

TEST(Errors, TypePerStatus) {
    EXPECT_EQ(error_type_for_status(400), "invalid_request_error");
    EXPECT_EQ(error_type_for_status(401), "authentication_error");
    EXPECT_EQ(error_type_for_status(403), "permission_error");
    EXPECT_EQ(error_type_for_status(404), "not_found_error");
    EXPECT_EQ(error_type_for_status(405), "method_not_allowed_error");
    EXPECT_EQ(error_type_for_status(413), "invalid_request_error");
    EXPECT_EQ(error_type_for_status(429), "rate_limit_error");
    EXPECT_EQ(error_type_for_status(500), "server_error");
    EXPECT_EQ(error_type_for_status(503), "service_unavailable_error");
}

TEST(Errors, JsonShape) {
    for (int status : {400, 401, 404, 405, 413, 429, 500, 503}) {
        const json e = error_json(status, "boom");
        ASSERT_TRUE(e.contains("error")) << status;
        ASSERT_EQ(e.size(), 1u);
        const json& b = e["error"];
        EXPECT_EQ(b.size(), 4u);
        EXPECT_EQ(b["message"], "boom");
        EXPECT_EQ(b["type"], error_type_for_status(status));
        EXPECT_TRUE(b["param"].is_null());
        EXPECT_TRUE(b["code"].is_null());
    }
    const json e = error_json(400, "bad n", "n", "invalid_value");
    EXPECT_EQ(e["error"]["param"], "n");
    EXPECT_EQ(e["error"]["code"], "invalid_value");

    try {
        parse_completion_request(completion_body({{"n", 99}}));
        FAIL();
    } catch (const ProtocolError& err) {
        const json j = err.to_json();
        EXPECT_EQ(j["error"]["type"], "invalid_request_error");
        EXPECT_EQ(j["error"]["param"], "n");
        EXPECT_TRUE(j["error"]["code"].is_null());
        EXPECT_TRUE(j["error"]["message"].is_string());
        EXPECT_STREQ(err.what(), err.message.c_str());
    }
}

TEST(Errors, ParseJsonBody) {
    EXPECT_EQ(parse_json_body(R"({"a": 1})")["a"], 1);
    for (const char* body : {"", "{", "[1,2]", "\"str\"", "{\"a\":}", "null"}) {
        try {
            parse_json_body(body);
            ADD_FAILURE() << body;
        } catch (const ProtocolError& e) {
            EXPECT_EQ(e.status, 400) << body;
            EXPECT_EQ(e.type, "invalid_request_error");
        }
    }
}

// Copying a JSON value recurses once per nesting level: a chat request whose chat_template_kwargs nested
// 100,000 arrays (a 200 KB body, far below the body limit) overflowed the stack when
// parse_chat_completion_request copied it. Bodies deeper than kMaxJsonNesting are refused up front.
TEST(Errors, DeeplyNestedBodyIsA400) {
    // {"messages": [...], "chat_template_kwargs": {"a": [[...]]}}: the arrays start at depth 3.
    auto chat_with_kwargs_depth = [](size_t depth) {
        return R"({"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"a": )" +
               std::string(depth - 2, '[') + std::string(depth - 2, ']') + "}}";
    };
    const ChatCompletionRequest r =
        parse_chat_completion_request(parse_json_body(chat_with_kwargs_depth(kMaxJsonNesting)));
    EXPECT_TRUE(r.chat_template_kwargs.contains("a"));
    // Brackets inside strings (and escaped quotes) are text, not nesting.
    const std::string text = "\\\"" + std::string(100000, '[');
    EXPECT_EQ(parse_json_body(R"({"prompt": ")" + text + R"("})")["prompt"].get<std::string>().size(), 100001u);
    for (size_t depth : {kMaxJsonNesting + 1, size_t(100000)}) {
        try {
            parse_chat_completion_request(parse_json_body(chat_with_kwargs_depth(depth)));
            ADD_FAILURE() << depth;
        } catch (const ProtocolError& e) {
            EXPECT_EQ(e.status, 400);
            EXPECT_NE(e.message.find(std::to_string(depth) + " levels deep"), std::string::npos) << e.message;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Responses

namespace {

std::vector<ChoiceResult> two_choices() {
    ChoiceResult a{0, "Hello", {10, 11}, {}, "stop"};
    a.logprobs = {TokenLogprob{"Hel", {}, -0.5f, {{"Hel", -0.5f}, {"He", -1.5f}}, 0},
                  TokenLogprob{"lo", {}, -0.25f, {{"lo", -0.25f}}, 3}};
    ChoiceResult b{1, "Hi", {12}, {}, "length"};
    b.logprobs = {TokenLogprob{"Hi", {}, -1.0f, {}, 0}};
    return {a, b};
}

}  // namespace

TEST(Responses, CompletionShape) {
    const json r = completion_response("cmpl-x", 1700000000, "m", two_choices(), Usage{5, 3}, false);
    EXPECT_EQ(r["id"], "cmpl-x");
    EXPECT_EQ(r["object"], "text_completion");
    EXPECT_TRUE(r["created"].is_number_integer());
    EXPECT_EQ(r["model"], "m");
    ASSERT_EQ(r["choices"].size(), 2u);
    const json& c = r["choices"][0];
    EXPECT_EQ(c["index"], 0);
    EXPECT_EQ(c["text"], "Hello");
    EXPECT_TRUE(c.contains("logprobs"));
    EXPECT_TRUE(c["logprobs"].is_null());
    EXPECT_EQ(c["finish_reason"], "stop");
    EXPECT_EQ(r["choices"][1]["finish_reason"], "length");
    EXPECT_EQ(r["usage"]["prompt_tokens"], 5);
    EXPECT_EQ(r["usage"]["completion_tokens"], 3);
    EXPECT_EQ(r["usage"]["total_tokens"], 8);
}

TEST(Responses, CompletionLogprobs) {
    const json r = completion_response("cmpl-x", 1, "m", two_choices(), Usage{5, 3}, true);
    const json& lp = r["choices"][0]["logprobs"];
    EXPECT_EQ(lp["tokens"], json::array({"Hel", "lo"}));
    ASSERT_EQ(lp["token_logprobs"].size(), 2u);
    EXPECT_DOUBLE_EQ(lp["token_logprobs"][0].get<double>(), -0.5);
    ASSERT_EQ(lp["top_logprobs"].size(), 2u);
    EXPECT_TRUE(lp["top_logprobs"][0].is_object());
    EXPECT_DOUBLE_EQ(lp["top_logprobs"][0]["He"].get<double>(), -1.5);
    EXPECT_EQ(lp["text_offset"], json::array({0, 3}));
    EXPECT_TRUE(r["choices"][1]["logprobs"]["top_logprobs"][0].is_object());
    EXPECT_TRUE(r["choices"][1]["logprobs"]["top_logprobs"][0].empty());
    // -inf (a filtered token) stays a number.
    const json inf = completion_logprobs_json({TokenLogprob{"x", {}, -INFINITY, {{"y", -INFINITY}}, 0}});
    EXPECT_TRUE(inf["token_logprobs"][0].is_number());
    EXPECT_TRUE(inf["top_logprobs"][0]["y"].is_number());
}

TEST(Responses, ChatShape) {
    const json r = chat_completion_response("chatcmpl-x", 1700000000, "m", two_choices(), Usage{5, 3}, false);
    EXPECT_EQ(r["object"], "chat.completion");
    EXPECT_EQ(r["id"], "chatcmpl-x");
    const json& c = r["choices"][0];
    EXPECT_EQ(c["index"], 0);
    EXPECT_EQ(c["message"]["role"], "assistant");
    EXPECT_EQ(c["message"]["content"], "Hello");
    EXPECT_TRUE(c["logprobs"].is_null());
    EXPECT_EQ(c["finish_reason"], "stop");
    EXPECT_EQ(r["usage"]["total_tokens"], 8);
}

TEST(Responses, ChatLogprobs) {
    const json r = chat_completion_response("chatcmpl-x", 1, "m", two_choices(), Usage{5, 3}, true);
    const json& content = r["choices"][0]["logprobs"]["content"];
    ASSERT_EQ(content.size(), 2u);
    EXPECT_EQ(content[0]["token"], "Hel");
    EXPECT_DOUBLE_EQ(content[0]["logprob"].get<double>(), -0.5);
    EXPECT_EQ(content[0]["bytes"], json::array({'H', 'e', 'l'}));
    ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
    EXPECT_EQ(content[0]["top_logprobs"][1]["token"], "He");
    EXPECT_EQ(content[0]["top_logprobs"][1]["bytes"], json::array({'H', 'e'}));
    EXPECT_TRUE(content[0]["top_logprobs"][1]["logprob"].is_number());
    EXPECT_TRUE(r["choices"][1]["logprobs"]["content"][0]["top_logprobs"].is_array());
}

TEST(Responses, NonUtf8TokenPieces) {
    EXPECT_TRUE(is_valid_utf8("héllo €"));
    EXPECT_FALSE(is_valid_utf8(std::string("\xe2\x82", 2)));  // truncated euro sign
    EXPECT_FALSE(is_valid_utf8(std::string("\xc0\xaf", 2)));  // overlong
    EXPECT_FALSE(is_valid_utf8(std::string("\xed\xa0\x80", 3)));  // surrogate
    EXPECT_FALSE(is_valid_utf8(std::string("\xff", 1)));
    EXPECT_EQ(token_display(std::string("\xe2\x82", 2)), "bytes:\\xe2\\x82");

    const std::string half("\xe2\x82", 2);
    TokenLogprob raw{"", {0xe2, 0x82}, -0.1f, {{half, -0.1f}}, 0};
    const json chat = chat_logprobs_json({raw});
    EXPECT_EQ(chat["content"][0]["token"], "bytes:\\xe2\\x82");
    EXPECT_EQ(chat["content"][0]["bytes"], json::array({0xe2, 0x82}));
    EXPECT_EQ(chat["content"][0]["top_logprobs"][0]["bytes"], json::array({0xe2, 0x82}));
    const json comp = completion_logprobs_json({TokenLogprob{half, {}, -0.1f, {{half, -0.1f}}, 0}});
    EXPECT_EQ(comp["tokens"][0], "bytes:\\xe2\\x82");
    EXPECT_NO_THROW(dump_json(chat));
    EXPECT_NO_THROW(dump_json(comp));

    // Invalid bytes in text itself: the plain dump throws, dump_json replaces them with U+FFFD.
    ChoiceResult bad{0, std::string("ok\xff\xfe", 4), {}, {}, "stop"};
    const json r = completion_response("cmpl-x", 1, "m", {bad}, Usage{}, false);
    EXPECT_THROW((void)r.dump(), nlohmann::json::type_error);
    std::string s;
    ASSERT_NO_THROW(s = dump_json(r));
    EXPECT_NE(s.find("ok\xef\xbf\xbd"), std::string::npos);
    EXPECT_NO_THROW(json::parse(s));
    EXPECT_NO_THROW(sse_event(chat_content_chunk("c", 1, "m", 0, std::string("\xe2", 1), nullptr, false)));
}

TEST(Responses, Ids) {
    const std::string a = make_request_id("cmpl-"), b = make_request_id("cmpl-");
    EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
    EXPECT_EQ(a.size(), 5u + 32u);
    EXPECT_NE(a, b);
    EXPECT_EQ(make_request_id("chatcmpl-").rfind("chatcmpl-", 0), 0u);
    EXPECT_GT(unix_time_now(), 1600000000);
}

TEST(Responses, Models) {
    const json r = models_response("llama", 1700000000, 8192);
    EXPECT_EQ(r["object"], "list");
    ASSERT_EQ(r["data"].size(), 1u);
    const json& m = r["data"][0];
    EXPECT_EQ(m["id"], "llama");
    EXPECT_EQ(m["object"], "model");
    EXPECT_EQ(m["created"], 1700000000);
    EXPECT_EQ(m["owned_by"], "swiftkv");
    EXPECT_EQ(m["max_model_len"], 8192);
}

// ------------------------------------------------------------------------------------------------
// Streaming

TEST(Streaming, SseFraming) {
    EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
    EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
    const std::string ev = sse_event(completion_chunk("cmpl-x", 1, "m", 0, "hi\nthere", nullptr, {}, false));
    EXPECT_EQ(ev.rfind("data: {", 0), 0u);
    EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
    // One event line: newlines in the text are escaped inside the JSON.
    EXPECT_EQ(ev.find('\n'), ev.size() - 2);
    EXPECT_EQ(json::parse(ev.substr(6))["choices"][0]["text"], "hi\nthere");
}

TEST(Streaming, CompletionChunks) {
    const json c = completion_chunk("cmpl-x", 1, "m", 2, "abc", nullptr, {}, false);
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_EQ(c["id"], "cmpl-x");
    ASSERT_EQ(c["choices"].size(), 1u);
    EXPECT_EQ(c["choices"][0]["index"], 2);
    EXPECT_EQ(c["choices"][0]["text"], "abc");
    EXPECT_TRUE(c["choices"][0]["logprobs"].is_null());
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
    EXPECT_FALSE(c.contains("usage"));
    const std::vector<TokenLogprob> lps{TokenLogprob{"abc", {}, -0.3f, {{"abc", -0.3f}}, 7}};
    const json last = completion_chunk("cmpl-x", 1, "m", 0, "abc", &lps, "length", true);
    EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(last["choices"][0]["logprobs"]["text_offset"], json::array({7}));
    EXPECT_TRUE(last.contains("usage"));
    EXPECT_TRUE(last["usage"].is_null());
}

TEST(Streaming, ChatChunks) {
    const json role = chat_role_chunk("chatcmpl-x", 1, "m", 0, false);
    EXPECT_EQ(role["object"], "chat.completion.chunk");
    EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(role["choices"][0]["delta"]["content"], "");
    EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
    EXPECT_FALSE(role.contains("usage"));

    const json content = chat_content_chunk("chatcmpl-x", 1, "m", 1, "tok", nullptr, false);
    EXPECT_EQ(content["choices"][0]["index"], 1);
    EXPECT_EQ(content["choices"][0]["delta"], json({{"content", "tok"}}));
    EXPECT_TRUE(content["choices"][0]["logprobs"].is_null());

    const std::vector<TokenLogprob> lps{TokenLogprob{"tok", {}, -0.1f, {}, 0}};
    const json with_lp = chat_content_chunk("chatcmpl-x", 1, "m", 0, "tok", &lps, false);
    EXPECT_EQ(with_lp["choices"][0]["logprobs"]["content"][0]["token"], "tok");

    const json fin = chat_finish_chunk("chatcmpl-x", 1, "m", 0, "stop", false);
    EXPECT_TRUE(fin["choices"][0]["delta"].is_object());
    EXPECT_TRUE(fin["choices"][0]["delta"].empty());
    EXPECT_EQ(fin["choices"][0]["finish_reason"], "stop");
}

TEST(Streaming, UsageChunkRules) {
    // include_usage: every regular chunk carries "usage": null ...
    for (const json& c : {chat_role_chunk("c", 1, "m", 0, true), chat_content_chunk("c", 1, "m", 0, "x", nullptr, true),
                          chat_finish_chunk("c", 1, "m", 0, "stop", true),
                          completion_chunk("c", 1, "m", 0, "x", nullptr, "stop", true)}) {
        ASSERT_TRUE(c.contains("usage"));
        EXPECT_TRUE(c["usage"].is_null());
        EXPECT_EQ(c["choices"].size(), 1u);
    }
    // ... and the last chunk before [DONE] has empty choices and the usage.
    const json u = usage_chunk("c", 1, "m", "chat.completion.chunk", Usage{4, 6});
    EXPECT_EQ(u["object"], "chat.completion.chunk");
    EXPECT_TRUE(u["choices"].is_array());
    EXPECT_TRUE(u["choices"].empty());
    EXPECT_EQ(u["usage"]["prompt_tokens"], 4);
    EXPECT_EQ(u["usage"]["completion_tokens"], 6);
    EXPECT_EQ(u["usage"]["total_tokens"], 10);
    EXPECT_EQ(usage_chunk("c", 1, "m", "text_completion", Usage{1, 1})["object"], "text_completion");

    // A whole stream, framed.
    std::string stream;
    stream += sse_event(chat_role_chunk("c", 1, "m", 0, true));
    stream += sse_event(chat_content_chunk("c", 1, "m", 0, "Hi", nullptr, true));
    stream += sse_event(chat_finish_chunk("c", 1, "m", 0, "stop", true));
    stream += sse_event(u);
    stream += sse_done();
    size_t events = 0, pos = 0;
    while (pos < stream.size()) {
        const size_t end = stream.find("\n\n", pos);
        ASSERT_NE(end, std::string::npos);
        const std::string line = stream.substr(pos, end - pos);
        ASSERT_EQ(line.rfind("data: ", 0), 0u);
        if (line != "data: [DONE]") {
            EXPECT_NO_THROW(json::parse(line.substr(6)));
        }
        ++events;
        pos = end + 2;
    }
    EXPECT_EQ(events, 5u);
    EXPECT_EQ(stream.substr(stream.size() - 14), "data: [DONE]\n\n");
}
