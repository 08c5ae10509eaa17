// ChatTemplate — renders a model's own Jinja chat_template (from tokenizer_config.json or GGUF
// tokenizer.chat_template) with an interpreter for the subset of Jinja2 that chat templates use:
// statements if/elif/else, for (with loop.index/index0/first/last/length, else), set (including
// namespace() attributes), macro-free expressions, filters (trim, length, tojson, upper, lower,
// default, join, replace, string, first, last, items, ...), tests (defined, none, string, ...),
// string methods (strip, startswith, ...), slicing, raise_exception(), whitespace control {%- -%}.
// Output is byte-for-byte what Python's jinja2 renders for the same template and context.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace swiftkv {

class ChatTemplate {
public:
    // Parses the template; throws swiftkv::Error with line/column on a syntax error.
    explicit ChatTemplate(const std::string& source);
    ~ChatTemplate();
    ChatTemplate(ChatTemplate&&) noexcept;
    ChatTemplate& operator=(ChatTemplate&&) noexcept;

    // context: a JSON object of variables, e.g. {"messages": [...], "add_generation_prompt": true,
    // "bos_token": "<s>", "eos_token": "</s>"}. Throws swiftkv::Error on a render error or
    // raise_exception().
    std::string render(const nlohmann::json& context) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// A model's chat template with the BOS/EOS text it may reference (model_loader.h builds one).
struct ChatFormat {
    std::unique_ptr<ChatTemplate> tmpl;  // null: the model has none
    std::string bos_text, eos_text;
    std::string model_path;
    // Renders messages (OpenAI-style list of {role, content}); throws if there is no template.
    std::string render(const nlohmann::json& messages, bool add_generation_prompt) const;
};

}  // namespace swiftkv
