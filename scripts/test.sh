#!/usr/bin/env bash
# The whole test suite: builds the release preset, runs every test binary through ctest (op tests,
# loaders, tokenizer and chat templates against stored outside references, the llama.cpp oracle
# comparison, engine), then runs each libFuzzer target for a bounded time.
# Usage: scripts/test.sh [fuzz-seconds-per-target, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${1:-30}

[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || SWIFTKV_SETUP_NO_RUN=1 scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"
ctest --preset release -j"$(nproc)"

# Python-side interop checks (they drive the C++ binaries of build/release).
SWIFTKV_BUILD_DIR=build/release python3 -m pytest -q tests

if [ "$FUZZ_SECONDS" != "0" ]; then
  scripts/run_fuzzers.sh "$FUZZ_SECONDS"
fi
