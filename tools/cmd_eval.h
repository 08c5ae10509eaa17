// swiftkv eval — the subcommand's arguments and entry point (tools/cmd_eval.cpp).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "cli_common.h"

struct EvalArgs {
    std::string text;                 // perplexity (and KL) on this text file
    std::string reference;            // with --text: KL divergence against this model
    std::string reference_swiftkv;    // "on", "off" or empty: the reference's config decides
    int64_t max_chunks = 0;           // 0: every whole window
    std::string mc;                   // multiple-choice JSON-lines file
    std::string format = "auto";      // auto, arc, piqa, winogrande
    std::string labels;               // PIQA labels (default: FILE-labels.lst beside FILE.jsonl)
    int64_t limit = 0;                // first N items only
    int64_t batch_tokens = 4096;      // tokens per forward step
    std::string json_out;
    bool quiet = false;               // no progress lines on stderr
};

void add_eval_args(CLI::App& app, EvalArgs& args);
int cmd_eval(const swiftkv::cli::ModelArgs& model, const EvalArgs& args);
