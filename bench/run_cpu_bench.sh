#!/usr/bin/env bash
# Side-by-side CPU benchmark on this machine, in one run: swiftkv (f32 and bf16 weights) and
# llama.cpp (llama-cpp-python, same weights as F32 GGUF; also its native Q4_1) on the default model,
# pp512 / pp2048 / tg128, 3 repetitions each; plus base versus SwiftKV conversions.
# Writes JSON into bench/results/ and prints the tables. Run it on an otherwise idle machine:
# both engines spin-wait between threads, so any other load distorts the numbers.
# Needs: pip install llama-cpp-python gguf numpy  (llama.cpp is built from source by pip).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
THREADS=${THREADS:-2}
SKV=build/release/tools/swiftkv
Q41=models/SmolLM2-135M-Instruct.Q4_1.gguf
F32=models/SmolLM2-135M-Instruct.F32.gguf
OUT=bench/results
mkdir -p "$OUT"
[ -x "$SKV" ] || { echo "build first: scripts/setup.sh"; exit 1; }
[ -f "$F32" ] || python3 scripts/make_f32_gguf.py "$Q41" "$F32"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== swiftkv, f32 weights"
$SKV bench -m "$Q41" -t "$THREADS" -p 512,2048 -g 128 -r "$REPS" -o "$OUT/cpu-swiftkv-f32.json"
echo "== llama.cpp, F32 GGUF (same values), F32 KV cache"
python3 bench/llamacpp_bench.py --model "$F32" --threads "$THREADS" --reps "$REPS" --type-k f32 \
  --pp 512,2048 --tg 128 --json-out "$OUT/cpu-llamacpp-f32.json"
echo "== swiftkv, bf16 weights"
$SKV bench -m "$Q41" --dtype bf16 -t "$THREADS" -p 512,2048 -g 128 -r "$REPS" -o "$OUT/cpu-swiftkv-bf16.json"
echo "== llama.cpp, native Q4_1 (for reference: 4.5-bit weights)"
python3 bench/llamacpp_bench.py --model "$Q41" --threads "$THREADS" --reps "$REPS" --type-k f32 \
  --pp 512,2048 --tg 128 --json-out "$OUT/cpu-llamacpp-q4_1.json"
echo "== swiftkv base versus SwiftKV (f32 weights)"
$SKV bench -m "$Q41" -t "$THREADS" -p 2048 -g 128 -r "$REPS" --swiftkv-cuts 50%,25%,75%,50%:3,25%:2 \
  -o "$OUT/cpu-swiftkv-vs-base.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
