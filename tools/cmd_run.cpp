// swiftkv run / swiftkv chat — streaming generation from the command line.
#include <cstdio>
#include <iostream>
#include <string>

#include "cli_common.h"
#include "core/error.h"

using namespace swiftkv;

namespace {

std::vector<int32_t> encode_prompt(const Engine& engine, const std::string& text) {
    const auto& tok = engine.tokenizer();
    const auto& spec = tok.spec();
    // A chat template that already wrote BOS must not get a second one.
    const bool starts_with_bos = spec.bos_id >= 0 && text.rfind(tok.token_bytes(spec.bos_id), 0) == 0;
    return tok.encode(text, /*add_special=*/!starts_with_bos, /*parse_special=*/true);
}

void print_stats(const GenerationResult& r) {
    const double pp = r.prefill_seconds > 0 ? double(r.prompt_tokens) / r.prefill_seconds : 0;
    const double gen_after_first = double(std::max<size_t>(r.tokens.size(), 1) - 1);
    const double tg = r.decode_seconds > 0 ? gen_after_first / r.decode_seconds : 0;
    std::fprintf(stderr, "\n[prompt: %lld tokens, %.1f tokens/s | generation: %zu tokens, %.1f tokens/s | finish: %s]\n",
                 (long long)r.prompt_tokens, pp, r.tokens.size(), tg, r.finish_reason.c_str());
}

bool print_chunk(std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
}

}  // namespace

int cmd_run(const cli::ModelArgs& model_args, const cli::SamplingArgs& sampling, const std::string& prompt,
            bool chat_format, const std::string& system) {
    GenerationRequest req = cli::make_request(sampling);  // validate before loading the model
    Engine engine(cli::engine_options(model_args));
    std::string text = prompt;
    if (chat_format) {
        nlohmann::json messages = nlohmann::json::array();
        if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
        messages.push_back({{"role", "user"}, {"content", prompt}});
        text = engine.apply_chat_template(messages, true);
    }
    req.prompt = encode_prompt(engine, text);
    if (!chat_format) print_chunk(prompt);
    GenerationResult r = engine.generate(req, print_chunk);
    std::printf("\n");
    print_stats(r);
    return 0;
}

int cmd_chat(const cli::ModelArgs& model_args, const cli::SamplingArgs& sampling, const std::string& system) {
    GenerationRequest base = cli::make_request(sampling);
    Engine engine(cli::engine_options(model_args));
    SKV_CHECK(engine.has_chat_template(), "this model has no chat template; use `swiftkv run` instead");
    nlohmann::json messages = nlohmann::json::array();
    if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
    std::fprintf(stderr, "swiftkv chat: type a message and press Enter; /reset clears the history, /exit or Ctrl-D quits.\n");
    std::string line;
    while (true) {
        std::fprintf(stderr, "\n> ");
        if (!std::getline(std::cin, line)) break;
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
            messages = nlohmann::json::array();
            if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
            continue;
        }
        if (line.empty()) continue;
        messages.push_back({{"role", "user"}, {"content", line}});
        GenerationRequest req = base;
        req.prompt = encode_prompt(engine, engine.apply_chat_template(messages, true));
        try {
            GenerationResult r = engine.generate(req, print_chunk);
            std::printf("\n");
            print_stats(r);
            messages.push_back({{"role", "assistant"}, {"content", r.text}});
        } catch (const Error& e) {
            // A turn that fails (e.g. the conversation outgrew the context) is reported; the chat goes on.
            std::fprintf(stderr, "error: %s\n", e.what());
            messages.erase(messages.end() - 1);
        }
    }
    return 0;
}
