// swiftkv convert — the subcommand's arguments and entry point (tools/cmd_convert.cpp).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

struct ConvertArgs {
    std::string model;           // empty: the bundled default model
    std::string num_kv_layers;  // "15" or "50%"
    int64_t group = 1;
    std::string out;
    std::string format = "hf";   // "hf" (directory) or "gguf" (one file)
    std::string dtype = "auto";
    bool no_tokenizer = false;
    bool force = false;
    uint64_t max_shard_bytes = 4'000'000'000ull;
};

void add_convert_args(CLI::App& app, ConvertArgs& args);
int cmd_convert(const ConvertArgs& args);
