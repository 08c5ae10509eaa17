#!/usr/bin/env bash
# Builds the io libFuzzer targets (the `fuzz` CMake preset: clang, ASan + UBSan) and runs each for a
# bounded time on a seed corpus of small valid files: ones written by fuzz_make_seeds and the
# reference-library files in tests/io/data/. Exits non-zero when a fuzzer finds a crash, a sanitizer
# report, a leak, a timeout or an out-of-memory input; the input is saved under build/fuzz/artifacts/.
#
# Usage: scripts/run_fuzzers.sh [SECONDS_PER_FUZZER]      (default 60)
#   FUZZ_BUILD_DIR=DIR  use an already configured build directory instead of the preset's build/fuzz
#   FUZZ_JOBS=N         build parallelism (default 2)
# The working corpus grows in fuzz/corpus-gguf/ and fuzz/corpus-safetensors/ (git-ignored), so later
# runs start from what earlier ones found.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -n "${FUZZ_BUILD_DIR:-}" ]]; then
  build="$FUZZ_BUILD_DIR"
else
  build="$root/build/fuzz"
  cmake --preset fuzz >/dev/null
fi
cmake --build "$build" --target fuzz_gguf fuzz_safetensors fuzz_make_seeds -j "${FUZZ_JOBS:-2}"

seeds="$build/fuzz-seeds"
artifacts="$build/artifacts"
rm -rf "$seeds"
mkdir -p "$seeds/gguf" "$seeds/safetensors" "$artifacts"
"$build/fuzz/fuzz_make_seeds" "$seeds/gguf" "$seeds/safetensors"
cp tests/io/data/gguf_types.gguf "$seeds/gguf/"
cp tests/io/data/python_written.safetensors "$seeds/safetensors/"

status=0
for name in gguf safetensors; do
  corpus="$root/fuzz/corpus-$name"
  mkdir -p "$corpus"
  echo "== fuzz_$name for ${seconds}s"
  if ! "$build/fuzz/fuzz_$name" "$corpus" "$seeds/$name" \
      -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -dict="$root/fuzz/$name.dict" -artifact_prefix="$artifacts/$name-" -print_final_stats=1 \
      2> "$artifacts/fuzz_$name.log"; then
    echo "fuzz_$name FAILED; log: $artifacts/fuzz_$name.log" >&2
    grep -E "ERROR|SUMMARY|Test unit written|runtime error" "$artifacts/fuzz_$name.log" >&2 || tail -n 30 "$artifacts/fuzz_$name.log" >&2
    status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "$artifacts/fuzz_$name.log" || true
  fi
done
if [[ $status -eq 0 ]]; then echo "fuzzers: no crash found"; fi
exit $status
