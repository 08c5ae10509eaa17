#!/usr/bin/env bash
# Builds the libFuzzer targets (the `fuzz` CMake preset: clang, ASan + UBSan) and runs each for a
# bounded time on a seed corpus: fuzz_gguf and fuzz_safetensors on small valid files (ones written by
# fuzz_make_seeds and the reference-library files in tests/io/data/), fuzz_openai_request on the JSON
# request bodies in fuzz/seeds-openai/ (inputs up to 4 KiB; it renders chat messages through real chat
# templates). Exits non-zero when a fuzzer finds a crash, a sanitizer report, an unexpected exception, a
# leak, a timeout or an out-of-memory input; the input is saved under build/fuzz/artifacts/.
#
# Usage: scripts/run_fuzzers.sh [SECONDS_PER_FUZZER]      (default 60)
#   FUZZ_BUILD_DIR=DIR  use an already configured build directory instead of the preset's build/fuzz
#   FUZZ_JOBS=N         build parallelism (default 2)
# The working corpus grows in fuzz/corpus-gguf/, fuzz/corpus-safetensors/ and fuzz/corpus-openai/
# (git-ignored), so later runs start from what earlier ones found.
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
cmake --build "$build" --target fuzz_gguf fuzz_safetensors fuzz_openai_request fuzz_make_seeds -j "${FUZZ_JOBS:-2}"

seeds="$build/fuzz-seeds"
artifacts="$build/artifacts"
rm -rf "$seeds"
mkdir -p "$seeds/gguf" "$seeds/safetensors" "$artifacts"
"$build/fuzz/fuzz_make_seeds" "$seeds/gguf" "$seeds/safetensors"
cp tests/io/data/gguf_types.gguf "$seeds/gguf/"
cp tests/io/data/python_written.safetensors "$seeds/safetensors/"

# Per target: seed directory, dictionary, largest input. Request bodies stay small so that the
# fuzzer spends its time on structure, not on long strings.
declare -A seed_dir=([gguf]="$seeds/gguf" [safetensors]="$seeds/safetensors" [openai]="$root/fuzz/seeds-openai")
declare -A dict=([gguf]=gguf.dict [safetensors]=safetensors.dict [openai]=openai.dict)
declare -A target=([gguf]=fuzz_gguf [safetensors]=fuzz_safetensors [openai]=fuzz_openai_request)
declare -A max_len=([gguf]=8192 [safetensors]=8192 [openai]=4096)

status=0
for name in gguf safetensors openai; do
  corpus="$root/fuzz/corpus-$name"
  fuzzer="${target[$name]}"
  mkdir -p "$corpus"
  echo "== $fuzzer for ${seconds}s"
  if ! "$build/fuzz/$fuzzer" "$corpus" "${seed_dir[$name]}" \
      -max_total_time="$seconds" -max_len="${max_len[$name]}" -timeout=10 -rss_limit_mb=2048 \
      -dict="$root/fuzz/${dict[$name]}" -artifact_prefix="$artifacts/$name-" -print_final_stats=1 \
      2> "$artifacts/$fuzzer.log"; then
    echo "$fuzzer FAILED; log: $artifacts/$fuzzer.log" >&2
    grep -E "ERROR|SUMMARY|Test unit written|runtime error" "$artifacts/$fuzzer.log" >&2 || tail -n 30 "$artifacts/$fuzzer.log" >&2
    status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "$artifacts/$fuzzer.log" || true
  fi
done
if [[ $status -eq 0 ]]; then echo "fuzzers: no crash found"; fi
exit $status
