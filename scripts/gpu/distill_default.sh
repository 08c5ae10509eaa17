#!/usr/bin/env bash
# The distilled default model (issue 6, item 5), on the GPU machine, in phases that each fit one device
# call (state lives in /tmp/keep while the machine stays warm). Needs .devbundle (make_bundle.sh), the
# default GGUF carried as models/parts/q41.part* and ../shared/data copied to models/parts/data.
#
#   prep                   join the GGUF, stage the data, unpack the bundle
#   gendata [SECONDS]      the teacher (base model) answers every instruction prompt set of shared/data
#                          (not the evaluation sets) with `swiftkv gen-data -d cuda`; resumable, so a
#                          call that runs out of time is continued by the next one; tinyshakespeare is
#                          mixed in as raw text. Then splits off every 20th record as held-out data.
#   distill NAME CUT G LR TOKENS   convert the base at CUT (layer index or share) with group G, distill on
#                          the training split (T = 2, all tokens, 16 x 2048 tokens per step, bf16 compute)
#   heldout NAME...        KL / top-1 of each run's student against the base on the held-out answers
#   eval NAME...           wiki perplexity, KL and top-1 against the base, ARC-Easy / ARC-Challenge /
#                          PIQA accuracy for base, the undistilled students and the distilled ones
# Results go to $OUT (JSON per evaluation, train logs, overlays).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
K=/tmp/keep
R=/tmp/skv
mkdir -p $K
if [ -z "${SKV:-}" ] && [ ! -x $R/bin/swiftkv ]; then
  mkdir -p $R && tar -C $R -xJf .devbundle/bundle.tar.xz || { echo "no bundle"; exit 2; }
fi
CUBLAS_LIB=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=$R/lib:${CUBLAS_LIB}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
SKV=${SKV:-$R/bin/swiftkv}   # SKV=build/release/tools/swiftkv DEV=cpu: a local rehearsal
DEV=${DEV:-cuda}
G=$K/SmolLM2-135M-Instruct.Q4_1.gguf
D=$K/data
note() { echo "== $* ($(date +%T))"; }

phase=${1:-}
shift || true
case $phase in
prep)
  for p in models/parts/q41.part*; do [ -f "$p" ] && cp "$p" $K/; done
  [ -f models/parts/data.tar.xz ] && mkdir -p $D && tar -C $K -xJf models/parts/data.tar.xz
  [ -d models/parts/data ] && mkdir -p $D && cp models/parts/data/* $D/
  if ls $K/q41.part* >/dev/null 2>&1 && [ "$(ls $K/q41.part* | wc -l)" -ge 3 ]; then
    cat $K/q41.part* > $G
    echo "$(cat scripts/default_model.sha256)  $G" | sha256sum -c - || exit 1
  fi
  ls -la $K $D 2>/dev/null | head -40
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  ;;
gendata)
  secs=${1:-500}
  note "gen-data (budget $secs s)"
  timeout -s INT "$secs" $SKV gen-data -m $G -d $DEV --max-num-seqs 256 --max-tokens ${MAXTOK:-1024} ${GENDATA_ARGS:-} \
    --prompts $D/alpaca_eval_805_example_outputs.json $D/arena_hard_v0.1_questions.jsonl $D/gsm8k_train.jsonl \
      $D/mt_bench_questions.jsonl $D/oasst_prompt_lottery_en_250.jsonl $D/self_instruct_seed_tasks.jsonl \
      $D/self_instruct_user_oriented_instructions.jsonl $D/ultrachat_ultra_eval_385.json \
      $D/vicuna_bench_questions.jsonl $D/wizardlm_testset.jsonl \
    --text $D/tinyshakespeare.txt --out $K/teacher.jsonl 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -25
  rc=${PIPESTATUS[0]}
  echo "gen-data exit $rc; $(wc -l < $K/teacher.jsonl) records"
  if [ "$rc" = 0 ]; then
    python3 - $K/teacher.jsonl $K/train.jsonl $K/heldout.jsonl $K/heldout.txt <<'PY'
import json, sys
src, train, held, held_txt = sys.argv[1:]
n_tr = n_he = 0
answers = []
with open(src) as f, open(train, "w") as tr, open(held, "w") as he:
    for i, line in enumerate(f):
        if i % 20 == 19:
            he.write(line); n_he += 1
            rec = json.loads(line)
            for m in rec.get("messages", []):
                if m["role"] == "assistant": answers.append(m["content"].strip())
        else:
            tr.write(line); n_tr += 1
open(held_txt, "w").write("\n\n".join(answers) + "\n")
print(f"split: {n_tr} train records, {n_he} held out ({len(answers)} answers as text)")
PY
    python3 - $K/teacher.jsonl "$OUT/teacher_stats.json" <<'PY'
import json, sys, collections
by = collections.defaultdict(lambda: [0, 0, 0, collections.Counter()])
for line in open(sys.argv[1]):
    r = json.loads(line)
    s = by[r.get("source", "?")]
    s[0] += 1; s[1] += r.get("prompt_tokens", 0); s[2] += r.get("completion_tokens", 0); s[3][r.get("finish_reason")] += 1
out = {k: {"records": v[0], "prompt_tokens": v[1], "completion_tokens": v[2], "finish": dict(v[3])} for k, v in by.items()}
json.dump(out, open(sys.argv[2], "w"), indent=1)
for k, v in out.items(): print(k, v)
PY
    xz -T0 -6 -k -c $K/teacher.jsonl > "$OUT/teacher.jsonl.xz"
  fi
  ;;
gendata2)
  # A second sample of answers to the same prompts (another seed), the held-out prompts left out, added to
  # the training split: more distinct teacher tokens instead of more passes over the same ones.
  note "gen-data, second sample (seed 100000)"
  timeout -s INT "${1:-300}" $SKV gen-data -m $G -d $DEV --max-num-seqs 256 --max-tokens ${MAXTOK:-1024} --seed 100000 \
    --prompts $D/alpaca_eval_805_example_outputs.json $D/arena_hard_v0.1_questions.jsonl $D/gsm8k_train.jsonl \
      $D/mt_bench_questions.jsonl $D/oasst_prompt_lottery_en_250.jsonl $D/self_instruct_seed_tasks.jsonl \
      $D/self_instruct_user_oriented_instructions.jsonl $D/ultrachat_ultra_eval_385.json \
      $D/vicuna_bench_questions.jsonl $D/wizardlm_testset.jsonl \
    --out $K/teacher2.jsonl 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -3
  python3 - $K/heldout.jsonl $K/teacher2.jsonl $K/train.jsonl <<'PY'
import json, sys
held = {json.loads(l)["id"] for l in open(sys.argv[1])}
n = 0
with open(sys.argv[3], "a") as out:
    for line in open(sys.argv[2]):
        if json.loads(line)["id"] not in held:
            out.write(line); n += 1
print(f"added {n} second-sample records to the training split ({len(held)} held-out prompts left out)")
PY
  xz -T0 -6 -c $K/teacher2.jsonl > "$OUT/teacher2.jsonl.xz"
  ;;
distill)
  name=$1 cut=$2 group=$3 lr=$4 tokens=$5
  if [[ $tokens == *x ]]; then  # EPOCHSx: that many passes over the training split (estimated token count)
    tokens=$(python3 - $K/train.jsonl "${tokens%x}" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    n += r.get("prompt_tokens", 0) + r.get("completion_tokens", 0) + (1024 if "text" in r else 0) + 12
print(int(n * float(sys.argv[2])))
PY
)
  fi
  S=$K/stu_${cut//%/}_g$group
  if [ ! -f $S/config.json ]; then
    note "convert $cut g$group"
    $SKV convert --model $G --swiftkv-layers "$cut" --group "$group" --dtype bf16 --out $S --force | tail -3
  fi
  note "distill $name: cut $cut g$group lr $lr tokens $tokens"
  $SKV distill --model $S --base $G --data $K/train.jsonl --tokens "$tokens" ${DISTILL_SHAPE:---seq-len 2048 --batch-size 16} \
    --lr "$lr" -d $DEV --out $K/run_$name --force --save-every 0 --overlay-dtype bf16 --log-every 25 --no-plot ${DISTILL_EXTRA:-} 2>&1 | tail -40
  mkdir -p "$OUT/run_$name"
  cp $K/run_$name/train_log.jsonl $K/run_$name/swiftkv_tensors.* "$OUT/run_$name/" 2>/dev/null
  echo "$S" > $K/run_$name/student_dir
  ;;
heldout)
  for name in "$@"; do
    S=$(cat $K/run_$name/student_dir)
    for which in undistilled distilled; do
      M=$S; [ $which = distilled ] && M=$K/run_$name/swiftkv_tensors.json
      $SKV eval -m $M -d $DEV --reference $G --text $K/heldout.txt --ctx 512 ${EVAL_ARGS:-} -q -o "$OUT/heldout_${name}_$which.json" 2>&1 |
        grep -E 'KL|top-1|rror' | sed "s/^/$name $which: /"
    done
  done
  ;;
eval)
  mkdir -p "$OUT/eval"
  models=()
  [ "${EVAL_BASE:-1}" = 1 ] && models+=("base=$G")
  for name in "$@"; do
    [ "${EVAL_UNDISTILLED:-1}" = 1 ] && models+=("${name}_undistilled=$(cat $K/run_$name/student_dir)")
    models+=("${name}_distilled=$K/run_$name/swiftkv_tensors.json")
  done
  for entry in "${models[@]}"; do
    label=${entry%%=*} M=${entry#*=}
    note "eval $label"
    if [ $label = base ]; then
      $SKV eval -m $M -d $DEV --text $D/wikitext-2-raw.valid.raw --ctx 512 ${EVAL_ARGS:-} -q -o "$OUT/eval/${label}_wiki.json" 2>&1 | grep -E 'PPL|rror'
    else
      $SKV eval -m $M -d $DEV --reference $G --text $D/wikitext-2-raw.valid.raw --ctx 512 ${EVAL_ARGS:-} -q -o "$OUT/eval/${label}_wiki.json" 2>&1 |
        grep -E 'PPL|KL|top-1|rror'
    fi
    $SKV eval -m $M -d $DEV --mc $D/ARC-Easy-Dev.jsonl ${MC_ARGS:-} -q -o "$OUT/eval/${label}_arce.json" 2>&1 | grep -E 'acc|rror'
    $SKV eval -m $M -d $DEV --mc $D/ARC-Challenge-Dev.jsonl ${MC_ARGS:-} -q -o "$OUT/eval/${label}_arcc.json" 2>&1 | grep -E 'acc|rror'
    $SKV eval -m $M -d $DEV --mc $D/piqa-valid.jsonl ${MC_ARGS:-} -q -o "$OUT/eval/${label}_piqa.json" 2>&1 | grep -E 'acc|rror'
  done
  python3 scripts/gpu/distill_table.py "$OUT/eval" | tee "$OUT/eval_table.md"
  ;;
bench8b)
  # Distillation speed on the Llama-3.1-8B shape (random bf16 weights, random tokens, a few steps).
  for cfg in "${@:-50% 4}"; do
    set -- $cfg
    note "distill --synthetic llama-3.1-8b --synthetic-swiftkv $1, batch $2 x 2048"
    $SKV distill --synthetic llama-3.1-8b --synthetic-swiftkv "$1" --seq-len 2048 --batch-size "$2" \
      --tokens $((8 * $2 * 2048)) --max-steps 8 -d $DEV --out $K/bench8b --force --no-plot 2>&1 | tail -12
    tag=$(echo "$1_b$2" | tr -d '%:')
    cp $K/bench8b/train_log.jsonl "$OUT/distill_8b_$tag.jsonl"
  done
  ;;
*) echo "unknown phase '$phase' (prep gendata distill heldout eval)"; exit 2 ;;
esac
