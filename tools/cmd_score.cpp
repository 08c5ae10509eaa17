// swiftkv score — logits of a model at chosen positions of a token sequence, as JSON. For checking
// swiftkv against other implementations and for debugging: the positions run through the same
// batched forward as generation (survivor path for SwiftKV models unless --full-student).
#include <fstream>

#include <fmt/format.h>

#include "cli_common.h"
#include "core/error.h"

using namespace swiftkv;

int cmd_score(const cli::ModelArgs& model_args, const ScoreArgs& args) {
    EngineOptions eo = cli::engine_options(model_args);
    eo.model.load_tokenizer = !args.text.empty() || args.greedy > 0;
    Engine engine(eo);
    if (!args.prompts_file.empty()) {
        // Greedy continuations of many token prompts with one loaded model: {"prompts": [[ids...], ...]}.
        SKV_CHECK(args.greedy > 0, "--prompts-file needs --greedy N");
        std::ifstream in(args.prompts_file);
        SKV_CHECK(in.good(), "cannot read '{}'", args.prompts_file);
        const nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
        SKV_CHECK(doc.is_object() && doc.contains("prompts") && doc["prompts"].is_array(),
                  "{}: expected {{\"prompts\": [[token ids...], ...]}}", args.prompts_file);
        nlohmann::json results = nlohmann::json::array();
        for (const auto& p : doc["prompts"]) {
            GenerationRequest req;
            req.prompt = p.get<std::vector<int32_t>>();
            req.max_tokens = args.greedy;
            req.ignore_eos = true;
            const GenerationResult r = engine.generate(req);
            results.push_back({{"greedy_ids", r.tokens}, {"prompt_tokens", r.prompt_tokens}});
        }
        const nlohmann::json out = {{"model", engine.options().model.path},
                                    {"device", engine.options().device},
                                    {"results", results}};
        if (args.json_out.empty()) {
            fmt::print("{}\n", out.dump());
        } else {
            std::ofstream f(args.json_out);
            SKV_CHECK(f.good(), "cannot write '{}'", args.json_out);
            f << out.dump(1) << "\n";
        }
        return 0;
    }
    std::vector<int32_t> tokens = args.tokens;
    if (!args.text.empty()) {
        SKV_CHECK(tokens.empty(), "give either --tokens or --text, not both");
        tokens = engine.tokenizer().encode(args.text, true, true);
    }
    SKV_CHECK(!tokens.empty(), "nothing to score: give --tokens or --text");
    std::vector<int32_t> positions = args.positions;
    if (args.all_positions) {
        positions.resize(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) positions[i] = int32_t(i);
    }
    if (positions.empty()) positions.push_back(int32_t(tokens.size()) - 1);
    std::sort(positions.begin(), positions.end());
    for (int32_t p : positions) {
        SKV_CHECK(p >= 0 && p < int32_t(tokens.size()), "position {} is outside the {} tokens", p, tokens.size());
    }
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
    const auto logits = engine.prompt_logits(tokens, positions);
    const int64_t V = engine.config().vocab;
    if (!args.npy_out.empty()) {
        // float32 [positions, vocab] in NumPy's .npy format (version 1.0), little-endian.
        std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
                                         positions.size(), V);
        const size_t total = 10 + header.size() + 1;
        header.append((64 - total % 64) % 64, ' ');
        header.push_back('\n');
        const std::string tmp = args.npy_out + ".tmp";
        {
            std::ofstream f(tmp, std::ios::binary);
            SKV_CHECK(f.good(), "cannot write '{}'", args.npy_out);
            const uint16_t len = uint16_t(header.size());
            f.write("\x93NUMPY\x01\x00", 8);
            f.write(reinterpret_cast<const char*>(&len), 2);
            f << header;
            f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
            SKV_CHECK(f.good(), "writing '{}' failed", args.npy_out);
        }
        std::rename(tmp.c_str(), args.npy_out.c_str());
        if (args.json_out.empty()) return 0;
    }
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < positions.size(); ++i) {
        rows.push_back(std::vector<float>(logits.begin() + int64_t(i) * V, logits.begin() + int64_t(i + 1) * V));
    }
    nlohmann::json out = {{"model", engine.options().model.path},
                          {"swiftkv_layers", engine.config().num_kv_layers},
                          {"kv_group_size", engine.config().kv_group_size},
                          {"full_student", model_args.full_student},
                          {"tokens", tokens},
                          {"positions", positions},
                          {"logits", rows}};
    if (args.json_out.empty()) {
        fmt::print("{}\n", out.dump());
    } else {
        const std::string tmp = args.json_out + ".tmp";
        {
            std::ofstream f(tmp);
            SKV_CHECK(f.good(), "cannot write '{}'", args.json_out);
            f << out.dump() << "\n";
        }
        std::rename(tmp.c_str(), args.json_out.c_str());
    }
    return 0;
}
