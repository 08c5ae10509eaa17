#!/usr/bin/env bash
# Builds the inputs of the PyTorch SwiftKV check (scripts/torch_swiftkv_check.py) in
# tests/swiftkv/torch_check/: two checkpoints made by `swiftkv convert` from the tiny teacher GGUF
# (L=1 g=3 and L=2 g=1), their SwiftKV tensors moved off the conversion init as distillation would
# (scripts/perturb_swiftkv.py) so that using the wrong projection could not go unnoticed; the
# independent tiny checkpoint of tests/convert/data (L=2 g=2); and swiftkv's survivor logits for
# four prompts on each (swiftkv score).
set -euo pipefail
cd "$(dirname "$0")/.."
SKV=${SKV:-build/release/tools/swiftkv}
OUT=tests/swiftkv/torch_check
rm -rf "$OUT" && mkdir -p "$OUT"
for spec in "1:3" "2:1"; do
  L=${spec%%:*}; G=${spec##*:}
  $SKV convert --model tests/convert/data/tiny_teacher.gguf --swiftkv-layers "$L" --group "$G" --dtype f32 \
    --out "$OUT/converted_L${L}_g${G}" 2>/dev/null
  python3 scripts/perturb_swiftkv.py "$OUT/converted_L${L}_g${G}" --seed "$L$G"
done
cp -r tests/convert/data/tiny_swiftkv "$OUT/independent_L2_g2"
python3 - "$SKV" "$OUT" <<'PY'
import json, random, subprocess, sys
skv, out = sys.argv[1], sys.argv[2]
result = {"made_by": "scripts/make_torch_check_inputs.sh (swiftkv score, survivor path)", "checkpoints": {}}
for ckpt in ("converted_L1_g3", "converted_L2_g1", "independent_L2_g2"):
    vocab = json.load(open(f"{out}/{ckpt}/config.json"))["vocab_size"]
    rng = random.Random(ckpt)
    entries = []
    for n in (1, 7, 33, 120):
        tokens = [rng.randrange(vocab) for _ in range(n)]
        positions = list(range(max(0, n - 3), n))
        r = subprocess.run([skv, "score", "-m", f"{out}/{ckpt}", "--tokens", ",".join(map(str, tokens)),
                            "--positions", ",".join(map(str, positions))], check=True, capture_output=True)
        j = json.loads(r.stdout)
        entries.append({"tokens": tokens, "positions": positions, "logits": j["logits"]})
    result["checkpoints"][ckpt] = entries
json.dump(result, open(f"{out}/swiftkv_scores.json", "w"))
PY
ls -la "$OUT"
