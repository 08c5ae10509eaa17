// swiftkv score — logits of a model at chosen positions of a token sequence, as JSON. For checking
// swiftkv against other implementations and for debugging: the positions run through the same
// batched forward as generation (survivor path for SwiftKV models unless --full-student).
#include <fstream>

#include <fmt/format.h>

#include "cli_common.h"
#include "core/error.h"

using namespace swiftkv;

int cmd_score(const cli::ModelArgs& model_args, const ScoreArgs& args) {
    Engine engine(cli::engine_options(model_args));
    std::vector<int32_t> tokens = args.tokens;
    if (!args.text.empty()) {
        SKV_CHECK(tokens.empty(), "give either --tokens or --text, not both");
        tokens = engine.tokenizer().encode(args.text, true, true);
    }
    SKV_CHECK(!tokens.empty(), "nothing to score: give --tokens or --text");
    std::vector<int32_t> positions = args.positions;
    if (positions.empty()) positions.push_back(int32_t(tokens.size()) - 1);
    std::sort(positions.begin(), positions.end());
    for (int32_t p : positions) {
        SKV_CHECK(p >= 0 && p < int32_t(tokens.size()), "position {} is outside the {} tokens", p, tokens.size());
    }
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
    const auto logits = engine.prompt_logits(tokens, positions);
    const int64_t V = engine.config().vocab;
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < positions.size(); ++i) {
        rows.push_back(std::vector<float>(logits.begin() + int64_t(i) * V, logits.begin() + int64_t(i + 1) * V));
    }
    nlohmann::json out = {{"model", engine.options().model_path},
                          {"swiftkv_layers", engine.config().swiftkv_layers},
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
