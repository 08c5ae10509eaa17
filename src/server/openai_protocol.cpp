#include "server/openai_protocol.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>

#include <fmt/format.h>

#include "core/error.h"

namespace swiftkv::server {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(std::string_view param, const std::string& message) {
    throw ProtocolError(400, message, std::string(param));
}

const char* type_name(const json& v) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return "boolean";
    if (v.is_number_integer()) return "integer";
    if (v.is_number()) return "number";
    if (v.is_string()) return "string";
    if (v.is_array()) return "array";
    if (v.is_object()) return "object";
    return "value";
}

// The field's value when present and not null.
const json* field(const json& body, const char* name) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return nullptr;
    return &*it;
}

// An integer value (or an integral float) in [lo, hi]; `what` names the parameter in messages.
int64_t as_int(const json& v, std::string_view what, int64_t lo, int64_t hi, std::string_view param) {
    int64_t x = 0;
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (u > uint64_t(std::numeric_limits<int64_t>::max()))
            bad(param, fmt::format("'{}' must be between {} and {}, got {}", what, lo, hi, u));
        x = int64_t(u);
    } else if (v.is_number_integer()) {
        x = v.get<int64_t>();
    } else if (v.is_number_float()) {
        const double d = v.get<double>();
        if (!(d == std::floor(d)) || d < -9.2e18 || d > 9.2e18)
            bad(param, fmt::format("'{}' must be an integer, got {}", what, d));
        x = int64_t(d);
    } else {
        bad(param, fmt::format("'{}' must be an integer, got {}", what, type_name(v)));
    }
    if (x < lo || x > hi) bad(param, fmt::format("'{}' must be between {} and {}, got {}", what, lo, hi, x));
    return x;
}

double as_number(const json& v, std::string_view param) {
    if (!v.is_number()) bad(param, fmt::format("'{}' must be a number, got {}", param, type_name(v)));
    return v.get<double>();
}

bool as_bool(const json& v, std::string_view param) {
    if (!v.is_boolean()) bad(param, fmt::format("'{}' must be a boolean, got {}", param, type_name(v)));
    return v.get<bool>();
}

std::string as_string(const json& v, std::string_view param) {
    if (!v.is_string()) bad(param, fmt::format("'{}' must be a string, got {}", param, type_name(v)));
    return v.get<std::string>();
}

std::optional<int64_t> opt_int(const json& body, const char* name, int64_t lo, int64_t hi) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    return as_int(*v, name, lo, hi, name);
}

// A number in a range; lo_open makes the lower bound exclusive.
std::optional<float> opt_float(const json& body, const char* name, double lo, double hi, bool lo_open = false) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    const double d = as_number(*v, name);
    if (!(lo_open ? d > lo : d >= lo) || !(d <= hi))
        bad(name, fmt::format("'{}' must be in {}{}, {}], got {}", name, lo_open ? "(" : "[", lo, hi, d));
    return float(d);
}

std::optional<bool> opt_bool(const json& body, const char* name) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    return as_bool(*v, name);
}

std::string opt_string(const json& body, const char* name) {
    const json* v = field(body, name);
    return v ? as_string(*v, name) : std::string();
}

std::vector<int32_t> token_list(const json& v, std::string_view param) {
    std::vector<int32_t> out;
    out.reserve(v.size());
    for (const json& t : v) {
        if (!t.is_number_integer())
            bad(param, fmt::format("'{}' must hold integer token ids, got {}", param, type_name(t)));
        out.push_back(int32_t(as_int(t, "token id", 0, std::numeric_limits<int32_t>::max(), param)));
    }
    return out;
}

void parse_sampling(const json& body, SamplingFields& s) {
    s.temperature = opt_float(body, "temperature", 0.0, 2.0);
    s.top_p = opt_float(body, "top_p", 0.0, 1.0, /*lo_open=*/true);
    if (const json* v = field(body, "top_k")) {
        const int64_t k = as_int(*v, "top_k", -1, std::numeric_limits<int32_t>::max(), "top_k");
        s.top_k = int32_t(k);
    }
    s.min_p = opt_float(body, "min_p", 0.0, 1.0);
    s.repetition_penalty = opt_float(body, "repetition_penalty", 0.0, 10.0, /*lo_open=*/true);
    s.presence_penalty = opt_float(body, "presence_penalty", -2.0, 2.0).value_or(0.0f);
    s.frequency_penalty = opt_float(body, "frequency_penalty", -2.0, 2.0).value_or(0.0f);
    s.seed = opt_int(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());

    if (const json* v = field(body, "stop")) {
        if (v->is_string()) {
            s.stop.push_back(v->get<std::string>());
        } else if (v->is_array()) {
            if (v->size() > 16) bad("stop", fmt::format("'stop' may hold at most 16 strings, got {}", v->size()));
            for (const json& e : *v) s.stop.push_back(as_string(e, "stop"));
        } else {
            bad("stop", fmt::format("'stop' must be a string or an array of strings, got {}", type_name(*v)));
        }
        for (const std::string& st : s.stop)
            if (st.empty()) bad("stop", "'stop' strings must not be empty");
    }
    if (const json* v = field(body, "stop_token_ids")) {
        if (!v->is_array())
            bad("stop_token_ids", fmt::format("'stop_token_ids' must be an array of integers, got {}", type_name(*v)));
        s.stop_token_ids = token_list(*v, "stop_token_ids");
    }
    s.ignore_eos = opt_bool(body, "ignore_eos").value_or(false);
    s.n = int(opt_int(body, "n", 1, 16).value_or(1));
    if (const json* v = field(body, "best_of")) {
        const int64_t b = as_int(*v, "best_of", 1, 16, "best_of");
        if (b != s.n) bad("best_of", fmt::format("'best_of' must equal 'n' ({}) if given: best_of > n is not supported, got {}", s.n, b));
    }
    if (const json* v = field(body, "logit_bias")) {
        if (!v->is_object()) bad("logit_bias", fmt::format("'logit_bias' must be an object, got {}", type_name(*v)));
        if (!v->empty()) bad("logit_bias", "'logit_bias' is not supported by this server; send an empty object or omit it");
    }
    s.stream = opt_bool(body, "stream").value_or(false);
    if (const json* v = field(body, "stream_options")) {
        if (!v->is_object())
            bad("stream_options", fmt::format("'stream_options' must be an object, got {}", type_name(*v)));
        if (!s.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (const json* u = field(*v, "include_usage")) s.include_usage = as_bool(*u, "stream_options.include_usage");
    }
    if (const json* v = field(body, "user")) (void)as_string(*v, "user");  // accepted and ignored
}

// Joins the text of a message's content (string or array of parts).
std::string message_content(const json& content, size_t i) {
    const std::string param = fmt::format("messages[{}].content", i);
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array())
        bad(param, fmt::format("'{}' must be a string or an array of content parts, got {}", param, type_name(content)));
    std::string text;
    for (const json& part : content) {
        if (!part.is_object()) bad(param, fmt::format("'{}' parts must be objects, got {}", param, type_name(part)));
        const json* type = field(part, "type");
        if (!type || !type->is_string()) bad(param, fmt::format("'{}' parts need a string 'type'", param));
        const std::string t = type->get<std::string>();
        if (t == "text") {
            const json* tx = field(part, "text");
            if (!tx || !tx->is_string()) bad(param, fmt::format("'{}' text parts need a string 'text'", param));
            text += tx->get<std::string>();
        } else if (t == "image_url" || t == "image" || t == "input_image") {
            bad(param, "image content is not supported: this model accepts text only");
        } else if (t == "input_audio" || t == "audio" || t == "file") {
            bad(param, fmt::format("'{}' content is not supported: this model accepts text only", t));
        } else {
            bad(param, fmt::format("unknown content part type '{}' (expected 'text')", t));
        }
    }
    return text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Errors

ProtocolError::ProtocolError(int status_, std::string message_, std::string param_, std::string type_, std::string code_)
    : std::runtime_error(message_), status(status_), message(std::move(message_)), param(std::move(param_)),
      type(type_.empty() ? error_type_for_status(status_) : std::move(type_)), code(std::move(code_)) {}

json ProtocolError::to_json() const {
    json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
    if (!param.empty()) e["param"] = param;
    if (!code.empty()) e["code"] = code;
    return json{{"error", std::move(e)}};
}

std::string error_type_for_status(int status) {
    switch (status) {
    case 400: case 413: case 422: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "method_not_allowed_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

json error_json(int status, std::string_view message, std::string_view param, std::string_view code) {
    return ProtocolError(status, std::string(message), std::string(param), {}, std::string(code)).to_json();
}

namespace {

// The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count). Only
// exact for valid JSON, which is all it must be: anything else fails to parse anyway.
size_t json_nesting_depth(std::string_view text) {
    size_t depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') ++i;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return deepest;
}

}  // namespace

json parse_json_body(std::string_view body) {
    // nlohmann parses and destroys without recursion, but copying, comparing or dumping a value recurses
    // once per level: a body of a few hundred KB of "[[[[..." in chat_template_kwargs overflowed the stack
    // when the chat request copied it. No OpenAI request nests anywhere near this deep.
    if (const size_t depth = json_nesting_depth(body); depth > kMaxJsonNesting)
        throw ProtocolError(400, fmt::format("the request body nests arrays and objects {} levels deep; at most {} "
                                             "are allowed", depth, kMaxJsonNesting));
    json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw ProtocolError(400, "the request body is not valid JSON");
    if (!j.is_object()) throw ProtocolError(400, "the request body must be a JSON object");
    return j;
}

// ---------------------------------------------------------------------------------------------
// Requests

SamplingParams SamplingFields::to_sampling_params(const json& defaults) const {
    auto def = [&](const char* name, float fallback) {
        if (defaults.is_object()) {
            auto it = defaults.find(name);
            if (it != defaults.end() && it->is_number()) return it->get<float>();
        }
        return fallback;
    };
    SamplingParams p;
    p.temperature = temperature ? *temperature : def("temperature", 1.0f);
    p.top_p = top_p ? *top_p : def("top_p", 1.0f);
    p.top_k = top_k ? *top_k : int32_t(def("top_k", 0.0f));
    p.min_p = min_p ? *min_p : def("min_p", 0.0f);
    p.repetition_penalty = repetition_penalty ? *repetition_penalty : def("repetition_penalty", 1.0f);
    p.presence_penalty = presence_penalty;
    p.frequency_penalty = frequency_penalty;
    if (seed) p.seed = uint64_t(*seed);
    try {
        p.validate();
    } catch (const Error& e) {
        throw ProtocolError(400, e.what());
    }
    return p;
}

GenerationRequest SamplingFields::to_generation_request(std::vector<int32_t> prompt, int64_t max_tokens,
                                                        const json& defaults) const {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.sampling = to_sampling_params(defaults);
    r.max_tokens = max_tokens;
    r.stop = stop;
    r.stop_token_ids = stop_token_ids;
    r.ignore_eos = ignore_eos;
    r.n = n;
    return r;
}

CompletionRequest parse_completion_request(const json& body) {
    if (!body.is_object()) throw ProtocolError(400, "the request body must be a JSON object");
    CompletionRequest r;
    r.model = opt_string(body, "model");

    const json* p = field(body, "prompt");
    if (!p) bad("prompt", "'prompt' is required");
    if (p->is_string()) {
        r.prompt_text = p->get<std::string>();
    } else if (p->is_array()) {
        if (p->empty()) bad("prompt", "'prompt' must not be empty");
        const json& first = (*p)[0];
        if (first.is_string() || first.is_array()) {
            if (p->size() > 1)
                bad("prompt", fmt::format("batched prompts are not supported: send one prompt per request "
                                          "(got {}), or use 'n' for several completions", p->size()));
            if (first.is_string()) {
                r.prompt_text = first.get<std::string>();
            } else {
                r.prompt_tokens = token_list(first, "prompt");
                r.prompt_is_tokens = true;
            }
        } else if (first.is_number()) {
            r.prompt_tokens = token_list(*p, "prompt");
            r.prompt_is_tokens = true;
        } else {
            bad("prompt", fmt::format("'prompt' must be a string, an array of strings or an array of token ids, "
                                      "got an array of {}", type_name(first)));
        }
    } else {
        bad("prompt", fmt::format("'prompt' must be a string, an array of strings or an array of token ids, got {}",
                                  type_name(*p)));
    }
    if (r.prompt_is_tokens ? r.prompt_tokens.empty() : r.prompt_text.empty()) bad("prompt", "'prompt' must not be empty");

    r.max_tokens = opt_int(body, "max_tokens", 0, int64_t(1) << 24).value_or(16);
    parse_sampling(body, r);
    if (const json* v = field(body, "logprobs")) {
        if (v->is_boolean()) bad("logprobs", "'logprobs' must be an integer (0 to 20) for completions, got boolean");
        r.logprobs = int(as_int(*v, "logprobs", 0, 20, "logprobs"));
    }
    r.echo = opt_bool(body, "echo").value_or(false);
    if (field(body, "suffix")) bad("suffix", "'suffix' is not supported by this server");
    return r;
}

json parse_chat_messages(const json& messages) {
    if (!messages.is_array())
        bad("messages", fmt::format("'messages' must be an array, got {}", type_name(messages)));
    if (messages.empty()) bad("messages", "'messages' must not be empty");
    json out = json::array();
    for (size_t i = 0; i < messages.size(); ++i) {
        const json& m = messages[i];
        const std::string param = fmt::format("messages[{}]", i);
        if (!m.is_object()) bad(param, fmt::format("'{}' must be an object, got {}", param, type_name(m)));
        const json* role = field(m, "role");
        if (!role || !role->is_string()) bad(param + ".role", fmt::format("'{}.role' is required and must be a string", param));
        std::string r = role->get<std::string>();
        if (r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer")
            bad(param + ".role", fmt::format("'{}.role' must be one of system, user, assistant, tool, developer; got '{}'",
                                             param, r));
        if (r == "developer") r = "system";
        json nm = {{"role", r}};
        const json* content = field(m, "content");
        if (!content) {
            if (r != "assistant") bad(param + ".content", fmt::format("'{}.content' is required", param));
            nm["content"] = "";
        } else {
            nm["content"] = message_content(*content, i);
        }
        if (const json* name = field(m, "name")) nm["name"] = as_string(*name, param + ".name");
        out.push_back(std::move(nm));
    }
    return out;
}

ChatCompletionRequest parse_chat_completion_request(const json& body) {
    if (!body.is_object()) throw ProtocolError(400, "the request body must be a JSON object");
    ChatCompletionRequest r;
    r.model = opt_string(body, "model");
    const json* m = field(body, "messages");
    if (!m) bad("messages", "'messages' is required");
    r.messages = parse_chat_messages(*m);

    const int64_t max_limit = int64_t(1) << 24;
    // A chat answer has no echo, so 0 tokens would ask for nothing (vLLM and OpenAI refuse it too).
    if (auto v = opt_int(body, "max_completion_tokens", 1, max_limit)) r.max_tokens = v;
    else r.max_tokens = opt_int(body, "max_tokens", 1, max_limit);
    parse_sampling(body, r);

    r.logprobs = opt_bool(body, "logprobs").value_or(false);
    if (auto v = opt_int(body, "top_logprobs", 0, 20)) {
        if (!r.logprobs) bad("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
        r.top_logprobs = int(*v);
    }
    if (const json* v = field(body, "response_format")) {
        if (!v->is_object()) bad("response_format", fmt::format("'response_format' must be an object, got {}", type_name(*v)));
        const json* t = field(*v, "type");
        if (!t || !t->is_string()) bad("response_format", "'response_format.type' is required and must be a string");
        if (t->get<std::string>() != "text")
            bad("response_format", fmt::format("response_format type '{}' is not supported; only 'text' is",
                                               t->get<std::string>()));
    }
    if (const json* v = field(body, "tools")) {
        if (!v->is_array()) bad("tools", fmt::format("'tools' must be an array, got {}", type_name(*v)));
        if (!v->empty()) bad("tools", "tool calling is not supported by this server yet; omit 'tools'");
    }
    if (const json* v = field(body, "functions")) {
        if (!v->is_array() || !v->empty()) bad("functions", "function calling is not supported by this server; omit 'functions'");
    }
    if (const json* v = field(body, "tool_choice")) {
        if (!(v->is_string() && (v->get<std::string>() == "none" || v->get<std::string>() == "auto")))
            bad("tool_choice", "tool calling is not supported by this server yet; 'tool_choice' may only be 'none' or 'auto'");
    }
    r.add_generation_prompt = opt_bool(body, "add_generation_prompt").value_or(true);
    if (const json* v = field(body, "chat_template_kwargs")) {
        if (!v->is_object())
            bad("chat_template_kwargs", fmt::format("'chat_template_kwargs' must be an object, got {}", type_name(*v)));
        r.chat_template_kwargs = *v;
    }
    return r;
}

TokenizeRequest parse_tokenize_request(const json& body) {
    if (!body.is_object()) throw ProtocolError(400, "the request body must be a JSON object");
    TokenizeRequest r;
    r.model = opt_string(body, "model");
    const json* p = field(body, "prompt");
    const json* m = field(body, "messages");
    if (p && m) bad("prompt", "send either 'prompt' or 'messages', not both");
    if (!p && !m) bad("prompt", "'prompt' or 'messages' is required");
    if (p) {
        r.prompt = as_string(*p, "prompt");
        r.add_special_tokens = true;
    } else {
        r.messages = parse_chat_messages(*m);
        r.add_special_tokens = false;
    }
    if (auto v = opt_bool(body, "add_special_tokens")) r.add_special_tokens = *v;
    r.add_generation_prompt = opt_bool(body, "add_generation_prompt").value_or(true);
    return r;
}

DetokenizeRequest parse_detokenize_request(const json& body) {
    if (!body.is_object()) throw ProtocolError(400, "the request body must be a JSON object");
    DetokenizeRequest r;
    r.model = opt_string(body, "model");
    const json* t = field(body, "tokens");
    if (!t) bad("tokens", "'tokens' is required");
    if (!t->is_array()) bad("tokens", fmt::format("'tokens' must be an array of integers, got {}", type_name(*t)));
    r.tokens = token_list(*t, "tokens");
    return r;
}

// ---------------------------------------------------------------------------------------------
// Responses

json Usage::to_json() const {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
}

std::string make_request_id(std::string_view prefix) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    return fmt::format("{}{:016x}{:016x}", prefix, rng(), rng());
}

int64_t unix_time_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string token_display(std::string_view piece) {
    if (is_valid_utf8(piece)) return std::string(piece);
    std::string out = "bytes:";
    for (char c : piece) out += fmt::format("\\x{:02x}", uint8_t(c));
    return out;
}

json token_bytes_json(const TokenLogprob& lp) {
    json b = json::array();
    if (!lp.bytes.empty()) {
        for (uint8_t x : lp.bytes) b.push_back(int(x));
    } else {
        for (char c : lp.token) b.push_back(int(uint8_t(c)));
    }
    return b;
}

namespace {

// JSON has no infinities: a -inf logprob (a token the filters removed) becomes -9999, as vLLM does.
double finite_logprob(float lp) { return std::isfinite(lp) ? double(lp) : -9999.0; }

std::string piece_text(const TokenLogprob& lp) {
    if (lp.bytes.empty()) return lp.token;
    return std::string(lp.bytes.begin(), lp.bytes.end());
}

json str_bytes(std::string_view s) {
    json b = json::array();
    for (char c : s) b.push_back(int(uint8_t(c)));
    return b;
}

json base_object(std::string_view id, std::string_view object, int64_t created, std::string_view model) {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
}

}  // namespace

json completion_logprobs_json(const std::vector<TokenLogprob>& logprobs) {
    json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
    for (const TokenLogprob& lp : logprobs) {
        tokens.push_back(token_display(piece_text(lp)));
        offsets.push_back(lp.text_offset);
        if (std::isnan(lp.logprob)) {  // echo: the prompt's first token has no logprob
            token_logprobs.push_back(nullptr);
            top.push_back(nullptr);
            continue;
        }
        token_logprobs.push_back(finite_logprob(lp.logprob));
        json alts = json::object();
        for (const auto& [tok, v] : lp.top) {
            const std::string key = token_display(tok);
            if (!alts.contains(key)) alts[key] = finite_logprob(v);
        }
        top.push_back(std::move(alts));
    }
    return {{"tokens", std::move(tokens)},
            {"token_logprobs", std::move(token_logprobs)},
            {"top_logprobs", std::move(top)},
            {"text_offset", std::move(offsets)}};
}

json chat_logprobs_json(const std::vector<TokenLogprob>& logprobs) {
    json content = json::array();
    for (const TokenLogprob& lp : logprobs) {
        json alts = json::array();
        for (const auto& [tok, v] : lp.top)
            alts.push_back({{"token", token_display(tok)}, {"logprob", finite_logprob(v)}, {"bytes", str_bytes(tok)}});
        content.push_back({{"token", token_display(piece_text(lp))},
                           {"logprob", finite_logprob(lp.logprob)},
                           {"bytes", token_bytes_json(lp)},
                           {"top_logprobs", std::move(alts)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
}

static json finish_json(std::string_view finish_reason) {
    return finish_reason.empty() ? json(nullptr) : json(finish_reason);
}

json completion_response(std::string_view id, int64_t created, std::string_view model,
                         const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs) {
    json out = base_object(id, "text_completion", created, model);
    json cs = json::array();
    for (const ChoiceResult& c : choices) {
        cs.push_back({{"index", c.index},
                      {"text", c.text},
                      {"logprobs", with_logprobs ? completion_logprobs_json(c.logprobs) : json(nullptr)},
                      {"finish_reason", finish_json(c.finish_reason)}});
    }
    out["choices"] = std::move(cs);
    out["usage"] = usage.to_json();
    return out;
}

json chat_completion_response(std::string_view id, int64_t created, std::string_view model,
                              const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs) {
    json out = base_object(id, "chat.completion", created, model);
    json cs = json::array();
    for (const ChoiceResult& c : choices) {
        cs.push_back({{"index", c.index},
                      {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                      {"logprobs", with_logprobs ? chat_logprobs_json(c.logprobs) : json(nullptr)},
                      {"finish_reason", finish_json(c.finish_reason)}});
    }
    out["choices"] = std::move(cs);
    out["usage"] = usage.to_json();
    return out;
}

json completion_chunk(std::string_view id, int64_t created, std::string_view model, int index, std::string_view text,
                      const std::vector<TokenLogprob>* logprobs, std::string_view finish_reason, bool include_usage) {
    json out = base_object(id, "text_completion", created, model);
    out["choices"] = json::array({{{"index", index},
                                   {"text", text},
                                   {"logprobs", logprobs ? completion_logprobs_json(*logprobs) : json(nullptr)},
                                   {"finish_reason", finish_json(finish_reason)}}});
    if (include_usage) out["usage"] = nullptr;
    return out;
}

static json chat_chunk(std::string_view id, int64_t created, std::string_view model, int index, json delta,
                       json logprobs, std::string_view finish_reason, bool include_usage) {
    json out = base_object(id, "chat.completion.chunk", created, model);
    out["choices"] = json::array({{{"index", index},
                                   {"delta", std::move(delta)},
                                   {"logprobs", std::move(logprobs)},
                                   {"finish_reason", finish_json(finish_reason)}}});
    if (include_usage) out["usage"] = nullptr;
    return out;
}

json chat_role_chunk(std::string_view id, int64_t created, std::string_view model, int index, bool include_usage) {
    return chat_chunk(id, created, model, index, {{"role", "assistant"}, {"content", ""}}, nullptr, {}, include_usage);
}

json chat_content_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                        std::string_view content, const std::vector<TokenLogprob>* logprobs, bool include_usage) {
    return chat_chunk(id, created, model, index, {{"content", content}},
                      logprobs ? chat_logprobs_json(*logprobs) : json(nullptr), {}, include_usage);
}

json chat_finish_chunk(std::string_view id, int64_t created, std::string_view model, int index,
                       std::string_view finish_reason, bool include_usage) {
    return chat_chunk(id, created, model, index, json::object(), nullptr, finish_reason, include_usage);
}

json usage_chunk(std::string_view id, int64_t created, std::string_view model, std::string_view object,
                 const Usage& usage) {
    json out = base_object(id, object, created, model);
    out["choices"] = json::array();
    out["usage"] = usage.to_json();
    return out;
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

json models_response(std::string_view model_id, int64_t created, int64_t max_model_len) {
    return {{"object", "list"},
            {"data", json::array({{{"id", model_id},
                                   {"object", "model"},
                                   {"created", created},
                                   {"owned_by", "swiftkv"},
                                   {"max_model_len", max_model_len}}})}};
}

json tokenize_response(const std::vector<int32_t>& tokens, int64_t max_model_len) {
    return {{"tokens", tokens}, {"count", int64_t(tokens.size())}, {"max_model_len", max_model_len}};
}

json detokenize_response(std::string_view prompt) { return {{"prompt", prompt}}; }

}  // namespace swiftkv::server
