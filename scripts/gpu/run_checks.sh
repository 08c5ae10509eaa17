#!/usr/bin/env bash
# Runs on the GPU machine (H100/H200): builds nothing (carry .devbundle/bundle.tar.xz made by
# make_bundle.sh), then checks and measures swiftkv's CUDA backend in one go. Phases (any subset, in
# order): ops hf swiftkv bench serve torch greedy distill. Results and logs go to $OUT (or ./gpu-out).
#   ops    attention self-test (tensor-core kernels against an f64 reference), GEMV self-test,
#          test_backend and test_train_ops (every op on every backend against f64 references, with the
#          model-sized grids on CUDA), test_cuda_ops / test_cuda_train_ops (what only CUDA has: graphs,
#          memory accounting, the forced SIMT training attention, timings), test_cuda_forward
#   hf     transformers builds random bf16 Llama checkpoints (small; Llama-3.1-8B layer shape with 4
#          layers); swiftkv's logits on the GPU must match transformers' (compare_logits.py); SwiftKV
#          survivor logits must match swiftkv's own full-student path on the GPU
#   bench  swiftkv bench --synthetic llama-3.1-8b (prefill, decode, SwiftKV 25%/50%, AcrossKV 2/4)
#   serve  bench/serve_bench.py against `swiftkv serve --synthetic llama-3.1-8b` (base, SwiftKV 50%)
#   torch  the PyTorch/transformers baseline of the same shapes (scripts/gpu/torch_baseline_bench.py)
#   distill swiftkv distill against PyTorch (scripts/gpu/torch_distill_check.py)
#   greedy the default model (models/*.gguf, carried in parts) greedy on GPU against the stored CPU
#          continuations of the oracle prompts
#   sidebyside  an older build (.devbundle/baseline.tar.xz, made by `BASELINE=REV make_bundle.sh`)
#          against this one, alternating in the same run: bench --synthetic llama-3.1-8b (base and
#          SwiftKV 50%) and the distillation step (8 x 2048 tokens, SwiftKV 50%); ROUNDS=2 by default
# Usage: scripts/gpu/run_checks.sh ops hf bench
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
S=scripts/gpu
R=/tmp/skv
if [ ! -x $R/bin/swiftkv ]; then
  mkdir -p $R && tar -C $R -xJf .devbundle/bundle.tar.xz || { echo "no bundle: run make_bundle.sh and carry .devbundle"; exit 2; }
fi
CUBLAS_LIB=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=$R/lib:${CUBLAS_LIB}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
SKV=$R/bin/swiftkv
status=0
note() { echo "== $* ($(date +%T))"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

for phase in "$@"; do
case $phase in
ops)
  note "attention self-test"
  $R/bin/attention_selftest 2>&1 | tee "$OUT/attention_selftest.log" | tail -40 || status=1
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  note "GEMV self-test (decode-sized matmul) against an f64 reference, and against cuBLASLt's speed"
  $R/bin/gemv_selftest 2>&1 | tee "$OUT/gemv_selftest.log" | tail -45
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  note "op tests on every backend against double-precision references (test_backend: the suites instantiated on all backends)"
  $R/bin/test_backend --gtest_brief=1 2>&1 | tee "$OUT/test_backend.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  note "training ops on every backend against double-precision references (test_train_ops)"
  $R/bin/test_train_ops --gtest_brief=1 2>&1 | tee "$OUT/test_train_ops.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  note "CUDA only: memory accounting, graph capture/replay (test_cuda_ops); the training attention's SIMT path and timings (test_cuda_train_ops)"
  $R/bin/test_cuda_ops --gtest_brief=1 2>&1 | tee "$OUT/test_cuda_ops.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  $R/bin/test_cuda_train_ops --gtest_brief=1 2>&1 | tee "$OUT/test_cuda_train_ops.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  note "CUDA forward (graphs replayed, SwiftKV survivors) against the CPU forward"
  $R/bin/test_cuda_forward --gtest_brief=1 2>&1 | tee "$OUT/test_cuda_forward.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ;;
hf)
  for preset in small 8b-layers; do
    M=/tmp/hf_$preset
    note "HF random checkpoint $preset"
    if [ $preset = small ]; then V=4096; BOS=""; else V=128256; BOS="--bos 128000"; fi
    [ -f $M/config.json ] || python3 $S/make_hf_random_llama.py --out $M --preset $preset --layers 4 --seed 0 || status=1
    python3 $S/make_prompt_tokens.py --vocab $V --lengths 7,64,300,1024 --seed 1 $BOS --out /tmp/p_$preset.json || status=1
    python3 $S/hf_reference_logits.py --model $M --tokens /tmp/p_$preset.json --out /tmp/ref_$preset.npz || status=1
    n=$(python3 -c "import json;print(len(json.load(open('/tmp/p_$preset.json'))['prompts']))")
    files=()
    for ((i = 0; i < n; i++)); do
      toks=$(python3 -c "import json;print(','.join(map(str,json.load(open('/tmp/p_$preset.json'))['prompts'][$i])))")
      $SKV score -m $M -d cuda --tokens "$toks" --all-positions --npy /tmp/skv_${preset}_$i.npy -c 2048 || status=1
      files+=(/tmp/skv_${preset}_$i.npy)
    done
    python3 $S/compare_logits.py --ref /tmp/ref_$preset.npz --swiftkv "${files[@]}" --json-out "$OUT/compare_$preset.json" \
      2>&1 | tee "$OUT/compare_$preset.log" | tail -20
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
  ;;
swiftkv)
  for preset in small 8b-layers; do
    M=/tmp/hf_$preset
    [ -f $M/config.json ] || python3 $S/make_hf_random_llama.py --out $M --preset $preset --layers 4 --seed 0 || status=1
    if [ $preset = small ]; then V=4096; BOS=""; else V=128256; BOS="--bos 128000"; fi
    [ -f /tmp/p_$preset.json ] || python3 $S/make_prompt_tokens.py --vocab $V --lengths 7,64,300,1024 --seed 1 $BOS --out /tmp/p_$preset.json || status=1
    # SwiftKV: survivor logits against the full-student path, both on the GPU.
    for cut in 50%:1 50%:2 25%:1; do
      D=/tmp/hf_${preset}_skv_$(echo $cut | tr -d '%:')
      $SKV convert --model $M --swiftkv-layers ${cut%%:*} --group ${cut##*:} --out $D --force --no-tokenizer >/dev/null || status=1
      toks=$(python3 -c "import json;print(','.join(map(str,json.load(open('/tmp/p_$preset.json'))['prompts'][3])))")
      last=$(python3 -c "print(','.join(str(i) for i in range(1019,1024)))")
      $SKV score -m $D -d cuda --tokens "$toks" --positions $last --npy /tmp/surv.npy -c 2048 || status=1
      $SKV score -m $D -d cuda --tokens "$toks" --positions $last --npy /tmp/full.npy -c 2048 --full-student || status=1
      python3 - "$cut" "$preset" <<'PY' | tee -a "$OUT/swiftkv_exactness.log" || status=1
import sys, numpy as np
a, b = np.load('/tmp/surv.npy').astype(np.float64), np.load('/tmp/full.npy').astype(np.float64)
rel = np.linalg.norm(a - b) / np.linalg.norm(b)
top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
ok = np.isfinite(a).all() and rel < 2e-2 and top1 >= 0.8
print(f"SwiftKV {sys.argv[1]} {sys.argv[2]}: survivors vs full-student on GPU rel {rel:.2e} top1 {top1:.2f} {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
    done
  done
  ;;
bench)
  note "swiftkv bench, Llama-3.1-8B shape"
  $SKV bench -d cuda --synthetic llama-3.1-8b --swiftkv-cuts 25%,50%,50%:2,50%:4 -r 3 -o "$OUT/swiftkv_bench.json" \
    2>&1 | tee "$OUT/swiftkv_bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ;;
serve)
  # The SwiftKV reference workload through the HTTP server: Llama-3.1-8B shape, random bf16 weights,
  # 2000 prompt tokens / 250 output tokens (ignore_eos), base against SwiftKV 50% on the same prompts.
  # SERVE_LEVELS / SERVE_WAVES / SERVE_VARIANTS override the load levels, waves per level and variants.
  note "serve load benchmark, Llama-3.1-8B shape, 2000 in / 250 out"
  cmds=()
  for v in ${SERVE_VARIANTS:-base 50%}; do
    extra=""; label=base
    if [ "$v" != base ]; then extra="--synthetic-swiftkv $v"; label="swiftkv${v//%/}"; label=${label//:/_g}; fi
    cmds+=(--server-cmd "$SKV serve -d cuda --synthetic llama-3.1-8b $extra -c 4096 --max-num-seqs 256 --max-batched-tokens 8192" --label "$label")
  done
  python3 bench/serve_bench.py --compare "${cmds[@]}" --input-len 2000 --output-len 250 \
    --concurrency "${SERVE_LEVELS:-1,16,64,128,256}" --num-requests 4 --requests-per-concurrency "${SERVE_WAVES:-2}" \
    --token-min 1000 --token-max 100000 --warmup 2 --timeout 900 --server-log-dir "$OUT" \
    --json-out "$OUT/serve_bench.json" --png-out "$OUT/serve_bench.png" \
    --title "swiftkv serve, Llama-3.1-8B shape (random bf16), 2000 in / 250 out" 2>&1 | tee "$OUT/serve_bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ;;
torch)
  note "PyTorch baseline, Llama-3.1-8B shape"
  python3 $S/torch_baseline_bench.py --out "$OUT/torch_baseline.json" ${TORCH_ARGS:-} 2>&1 | tee "$OUT/torch_baseline.log" | tail -40
  ;;
greedy)
  note "default model greedy on GPU vs CPU"
  G=models/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f $G ] || cat models/parts/q41.part* > $G
  python3 scripts/gpu/greedy_check.py check --swiftkv $SKV --model $G --out "$OUT/greedy.json" 2>&1 | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ;;
distill)
  note "swiftkv distill (CPU and CUDA) against a PyTorch statement of the recipe, 5 steps on a tiny random model"
  python3 $S/torch_distill_check.py --swiftkv $SKV --work /tmp/tdc --device cuda --swiftkv-devices cpu,cuda \
    --out "$OUT/torch_distill_check.json" 2>&1 | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ;;
sidebyside)
  B=/tmp/skv_baseline
  if [ ! -x $B/bin/swiftkv ]; then
    mkdir -p $B && tar -C $B -xJf .devbundle/baseline.tar.xz || { echo "no .devbundle/baseline.tar.xz"; status=2; continue; }
  fi
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for which in baseline current; do
      bin=$SKV; libs=$LD_LIBRARY_PATH
      if [ $which = baseline ]; then bin=$B/bin/swiftkv; libs=$B/lib:$LD_LIBRARY_PATH; fi
      note "$which, round $round: bench --synthetic llama-3.1-8b"
      LD_LIBRARY_PATH=$libs $bin bench -d cuda --synthetic llama-3.1-8b --swiftkv-cuts 50% -r 3 \
        -o "$OUT/sbs_bench_${which}_$round.json" > "$OUT/sbs_bench_${which}_$round.log" 2>&1 || status=1
      note "$which, round $round: distill step, llama-3.1-8b, SwiftKV 50%, 8 x 2048"
      LD_LIBRARY_PATH=$libs $bin distill --synthetic llama-3.1-8b --synthetic-swiftkv 50% --seq-len 2048 --batch-size 8 \
        --tokens $((8 * 8 * 2048)) --max-steps 8 -d cuda --out /tmp/sbs_distill --force --no-plot \
        > "$OUT/sbs_distill_${which}_$round.log" 2>&1 || status=1
      cp /tmp/sbs_distill/train_log.jsonl "$OUT/sbs_distill_${which}_$round.jsonl" 2>/dev/null || status=1
    done
  done
  python3 $S/sidebyside_table.py "$OUT" 2>&1 | tee "$OUT/sidebyside.md"
  # The device tool fetches a handful of files per call: pack the raw results into one.
  tar -C "$OUT" -cJf "$OUT/sidebyside_raw.tar.xz" $(cd "$OUT" && ls sbs_*) && (cd "$OUT" && rm -f sbs_*)
  ;;
*) echo "unknown phase $phase"; status=2 ;;
esac
done
note "done, status $status"
exit $status
