// swiftkv distill — the subcommand's arguments and entry point (tools/cmd_distill.cpp).
#pragma once

#include <CLI/CLI.hpp>

#include "train/distill_trainer.h"

struct DistillArgs {
    swiftkv::DistillOptions options;
    int64_t log_every = 1;   // progress line every N steps
    bool no_plot = false;    // skip the loss-curve PNG
};

void add_distill_args(CLI::App& app, DistillArgs& args);
// `app` is the distill subcommand (to see which flags were given when resuming).
int cmd_distill(const CLI::App& app, DistillArgs args);
