// swiftkv gen-data — the subcommand's arguments and entry point (tools/cmd_gen_data.cpp).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli_common.h"

struct GenDataArgs {
    std::vector<std::string> prompts;   // prompt files (JSON lines or a JSON array)
    std::vector<std::string> texts;     // raw text files copied through as chunks
    std::string out;
    std::string format = "auto";
    int64_t limit = 0;                  // per file
    int64_t max_prompts = 0;            // in all
    bool shuffle = false;
    int64_t seed = 0;
    bool first_turn_only = false;
    std::optional<float> temperature, top_p, min_p, repetition_penalty;
    std::optional<int32_t> top_k;
    int64_t max_tokens = 1024;
    int64_t text_chunk_tokens = 1024;
    int64_t max_num_seqs = 256;
    int64_t max_batched_tokens = 2048;
    bool no_prefix_caching = false;
    bool quiet = false;
};

void add_gen_data_args(CLI::App& app, GenDataArgs& args);
int cmd_gen_data(const swiftkv::cli::ModelArgs& model, const GenDataArgs& args);
