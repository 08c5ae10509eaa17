// OpenAI-compatible protocol layer — parses and validates the JSON bodies of /v1/completions,
// /v1/chat/completions, /tokenize and /detokenize into plain structs, and builds the JSON responses,
// streaming chunks (SSE framing) and error bodies. No HTTP and no engine calls: the server glues this
// to the engine's request API (GenerationRequest / SamplingParams).
//
// Conventions:
//  - Errors are thrown as ProtocolError (HTTP status, message, param, type, code); error_json() or
//    ProtocolError::to_json() gives OpenAI's shape {"error": {"message", "type", "param", "code"}}.
//  - Unknown request fields are ignored (OpenAI clients send extras such as "user" or
//    "parallel_tool_calls"); a JSON null counts as "absent" for every optional field.
//  - Integer fields accept JSON integers or floats with an integral value (5.0), like the reference
//    server's lax validation; booleans must be JSON booleans, strings JSON strings.
//  - Sampling fields the request leaves out fall back to the model's generation defaults
//    (generation_config.json: temperature, top_k, top_p, min_p, repetition_penalty), then to OpenAI's
//    defaults (temperature 1, top_p 1).
//  - Every JSON is serialized with dump_json(), which replaces invalid UTF-8 instead of throwing.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "tokenizer/bpe_tokenizer.h"  // swiftkv::is_valid_utf8

namespace swiftkv::server {

// ---------------------------------------------------------------------------------------------
// Errors

class ProtocolError : public std::runtime_error {
public:
    // type empty: error_type_for_status(status). param/code empty: JSON null.
    ProtocolError(int status, std::string message, std::string param = {}, std::string type = {},
                  std::string code = {});
    int status;
    std::string message;
    std::string param;
    std::string type;
    std::string code;
    nlohmann::json to_json() const;
};

// 400/413/422 invalid_request_error, 401 authentication_error, 403 permission_error,
// 404 not_found_error, 405 method_not_allowed_error, 429 rate_limit_error, 503 service_unavailable_error,
// 500 and any other 5xx server_error.
std::string error_type_for_status(int status);
nlohmann::json error_json(int status, std::string_view message, std::string_view param = {},
                          std::string_view code = {});

// Parses a request body; invalid JSON, a non-object top level or arrays and objects nested deeper than
// kMaxJsonNesting: ProtocolError 400.
inline constexpr size_t kMaxJsonNesting = 256;
nlohmann::json parse_json_body(std::string_view body);

// ---------------------------------------------------------------------------------------------
// Requests

// Fields shared by completions and chat completions. Optional sampling fields stay unset when the
// request leaves them out (or null) so the model's defaults can apply.
struct SamplingFields {
    std::optional<float> temperature;         // [0, 2]
    std::optional<float> top_p;               // (0, 1]
    std::optional<int32_t> top_k;             // -1 or >= 0 (vLLM)
    std::optional<float> min_p;               // [0, 1] (vLLM)
    std::optional<float> repetition_penalty;  // > 0 (vLLM)
    float presence_penalty = 0.0f;            // [-2, 2]
    float frequency_penalty = 0.0f;           // [-2, 2]
    std::optional<int64_t> seed;
    std::vector<std::string> stop;            // up to 16 non-empty strings
    std::vector<int32_t> stop_token_ids;      // vLLM
    bool ignore_eos = false;                  // vLLM
    int n = 1;                                // [1, 16]
    bool stream = false;
    bool include_usage = false;               // stream_options.include_usage

    // Engine sampling parameters (validated; a failure is a ProtocolError 400). generation_defaults is
    // Engine::generation_defaults() (an object; may be empty or null).
    SamplingParams to_sampling_params(const nlohmann::json& generation_defaults = {}) const;
    // The engine request (n choices); max_tokens as decided by the server (after the context cap).
    GenerationRequest to_generation_request(std::vector<int32_t> prompt, int64_t max_tokens,
                                            const nlohmann::json& generation_defaults = {}) const;
};

struct CompletionRequest : SamplingFields {
    std::string model;                        // optional: we serve one model
    // Exactly one of prompt_text / prompt_tokens is used (prompt_is_tokens says which); never empty.
    std::string prompt_text;
    std::vector<int32_t> prompt_tokens;
    bool prompt_is_tokens = false;
    int64_t max_tokens = 16;                  // OpenAI's default; [0, 1 << 24]
    std::optional<int> logprobs;              // [0, 20]: top alternatives per token
    bool echo = false;
};

struct ChatCompletionRequest : SamplingFields {
    std::string model;
    // Normalized messages for Engine::apply_chat_template: [{"role", "content": string, "name"?}];
    // text parts joined, "developer" mapped to "system", assistant null content to "".
    nlohmann::json messages = nlohmann::json::array();
    std::optional<int64_t> max_tokens;        // max_completion_tokens (preferred) or max_tokens, >= 1; unset:
                                              // up to the context limit
    bool logprobs = false;
    int top_logprobs = 0;                     // [0, 20], needs logprobs
    bool add_generation_prompt = true;
    nlohmann::json chat_template_kwargs = nlohmann::json::object();
};

CompletionRequest parse_completion_request(const nlohmann::json& body);
ChatCompletionRequest parse_chat_completion_request(const nlohmann::json& body);

// Validates and normalizes a chat "messages" array (see ChatCompletionRequest::messages).
nlohmann::json parse_chat_messages(const nlohmann::json& messages);

// vLLM /tokenize: {"prompt": str} or {"messages": [...]}.
struct TokenizeRequest {
    std::string model;
    std::optional<std::string> prompt;
    std::optional<nlohmann::json> messages;   // normalized as for chat
    bool add_special_tokens = true;           // default true for prompt, false for messages (vLLM)
    bool add_generation_prompt = true;        // messages only
};
TokenizeRequest parse_tokenize_request(const nlohmann::json& body);

// vLLM /detokenize: {"tokens": [...]}.
struct DetokenizeRequest {
    std::string model;
    std::vector<int32_t> tokens;
};
DetokenizeRequest parse_detokenize_request(const nlohmann::json& body);

// ---------------------------------------------------------------------------------------------
// Responses

struct TokenLogprob {
    std::string token;                             // the piece's text; may hold invalid UTF-8
    std::vector<uint8_t> bytes;                    // raw bytes of the piece; empty: token's bytes
    float logprob = 0.0f;
    std::vector<std::pair<std::string, float>> top;  // alternatives, most likely first
    int text_offset = 0;                           // completions: offset of the piece in the text
};

struct ChoiceResult {
    int index = 0;
    std::string text;
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprob> logprobs;            // used when the request asked for logprobs
    std::string finish_reason;                     // "stop" or "length"; empty: null
};

struct Usage {
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
    nlohmann::json to_json() const;
};

// A fresh id: prefix + 32 random hex digits ("cmpl-", "chatcmpl-").
std::string make_request_id(std::string_view prefix);
int64_t unix_time_now();

// A token's text for JSON: itself when valid UTF-8, else "bytes:\xNN..." (each byte as \xNN), the
// convention of OpenAI's completions logprobs.
std::string token_display(std::string_view piece);
// Raw bytes of a token as JSON ints.
nlohmann::json token_bytes_json(const TokenLogprob& lp);

// Completions "logprobs" object {tokens, token_logprobs, top_logprobs, text_offset}. A NaN logprob (the
// first prompt token under echo) is written as null in token_logprobs and top_logprobs.
nlohmann::json completion_logprobs_json(const std::vector<TokenLogprob>& logprobs);
// Chat "logprobs" object {content: [{token, logprob, bytes, top_logprobs}]}.
nlohmann::json chat_logprobs_json(const std::vector<TokenLogprob>& logprobs);

// with_logprobs false: "logprobs": null in every choice.
nlohmann::json completion_response(std::string_view id, int64_t created, std::string_view model,
                                   const std::vector<ChoiceResult>& choices, const Usage& usage,
                                   bool with_logprobs);
nlohmann::json chat_completion_response(std::string_view id, int64_t created, std::string_view model,
                                        const std::vector<ChoiceResult>& choices, const Usage& usage,
                                        bool with_logprobs);

// Streaming chunks (JSON). include_usage: each chunk carries "usage": null (OpenAI's rule), and the
// last one, usage_chunk, carries the usage with empty choices.
nlohmann::json completion_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                                std::string_view text, const std::vector<TokenLogprob>* logprobs,
                                std::string_view finish_reason, bool include_usage);
// Chat: the first chunk per choice has delta {role: "assistant", content: ""}; then deltas {content};
// the last has an empty delta and the finish_reason.
nlohmann::json chat_role_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                               bool include_usage);
nlohmann::json chat_content_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                                  std::string_view content, const std::vector<TokenLogprob>* logprobs,
                                  bool include_usage);
nlohmann::json chat_finish_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                                 std::string_view finish_reason, bool include_usage);
// object: "text_completion" or "chat.completion.chunk".
nlohmann::json usage_chunk(std::string_view id, int64_t created, std::string_view model,
                           std::string_view object, const Usage& usage);

// UTF-8-safe serialization (invalid bytes become U+FFFD), compact.
std::string dump_json(const nlohmann::json& j);
// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& j);
// "data: [DONE]\n\n"
std::string sse_done();

// /v1/models
nlohmann::json models_response(std::string_view model_id, int64_t created, int64_t max_model_len);
// /tokenize and /detokenize
nlohmann::json tokenize_response(const std::vector<int32_t>& tokens, int64_t max_model_len);
nlohmann::json detokenize_response(std::string_view prompt);

}  // namespace swiftkv::server
