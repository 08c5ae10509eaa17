"""The distilled SwiftKV default models in weights/ (issue 6): each overlay (swiftkv_tensors.json + .safetensors)
loads on top of the base GGUF, has the cut and group it claims, and on CPU reproduces what the GPU evaluation
recorded (weights/README.md): on the first 4 WikiText-2 windows of 512 tokens its perplexity matches the H200
run's per-window values (bf16 there, f32 here: within 2%), and it is much closer to the base than the
undistilled student `swiftkv convert` makes from the same base (KL against the base at least 2.5x lower).
A tampered descriptor (wrong base) is refused with a clear error."""
import json
import subprocess
from pathlib import Path

import pytest

from testpaths import DATA, MODEL, ROOT, SWIFTKV

WEIGHTS = ROOT / "weights"
WIKI = DATA / "wikitext-2-raw.valid.raw"
# name: (cut, group, convert --swiftkv-layers, --group, per-window PPL of the distilled model on the H200
# (bf16), windows 1-4; from bench/results/gpu_h200_distill_default_eval.tar.xz)
MODELS = {
    "smollm2-135m-swiftkv50": (15, 1, "50%", 1, [30.663, 33.261, 30.539, 28.365]),
    "smollm2-135m-swiftkv25": (23, 1, "75%", 1, [16.696, 18.147, 19.220, 18.706]),
    "smollm2-135m-swiftkv50-g3": (15, 3, "50%", 3, [51.826, 52.959, 48.161, 44.242]),
}

needs = pytest.mark.skipif(not SWIFTKV.exists() or not MODEL.exists() or not WIKI.exists(),
                           reason="swiftkv, the default model or the shared data missing")


def run(*args, timeout=600):
    r = subprocess.run([str(SWIFTKV), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def kl_eval(model, out):
    run("eval", "-m", model, "--reference", MODEL, "--text", WIKI, "--ctx", 512, "--max-chunks", 4, "-q", "-o", out)
    return json.loads(Path(out).read_text())


@needs
@pytest.mark.parametrize("name", list(MODELS))
def test_overlay_matches_gpu_eval_and_beats_undistilled(name, tmp_path):
    cut, group, share, g, gpu_ppl = MODELS[name]
    desc = WEIGHTS / name / "swiftkv_tensors.json"
    info = run("inspect", desc)
    assert '"model_type": "llama_swiftkv"' in info and f'"num_key_value_layers": {cut}' in info, info[:3000]
    assert f'"key_value_group_size": {group}' in info, info[:3000]
    meta = json.loads(desc.read_text())
    assert meta["num_key_value_layers"] == cut and meta["key_value_group_size"] == group

    distilled = kl_eval(desc, tmp_path / "d.json")
    assert distilled["model"]["swiftkv_layers"] == cut and distilled["model"]["kv_group_size"] == group
    for cpu, gpu in zip(distilled["model_result"]["chunk_ppl"], gpu_ppl):
        assert abs(cpu - gpu) / gpu < 0.02, (distilled["model_result"]["chunk_ppl"], gpu_ppl)

    student = tmp_path / "student"
    run("convert", "--model", MODEL, "--swiftkv-layers", share, "--group", g, "--out", student)
    undistilled = kl_eval(student, tmp_path / "u.json")
    assert distilled["kl"]["mean"] * 2.5 < undistilled["kl"]["mean"], (distilled["kl"], undistilled["kl"])
    assert distilled["top1_agreement"] > undistilled["top1_agreement"] + 0.1


@needs
def test_overlay_with_wrong_base_is_refused(tmp_path):
    src = WEIGHTS / "smollm2-135m-swiftkv50"
    meta = json.loads((src / "swiftkv_tensors.json").read_text())
    # A base that is not there.
    meta["base"] = str(tmp_path / "missing.gguf")
    meta["tensors"] = str(src / "swiftkv_tensors.safetensors")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(meta))
    r = subprocess.run([str(SWIFTKV), "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "missing.gguf" in r.stderr + r.stdout
    # The right base but a descriptor claiming another cut: the tensor shapes do not fit.
    meta = json.loads((src / "swiftkv_tensors.json").read_text())
    meta["base"] = str(MODEL)
    meta["tensors"] = str(src / "swiftkv_tensors.safetensors")
    meta["num_key_value_layers"] = 10
    bad.write_text(json.dumps(meta))
    r = subprocess.run([str(SWIFTKV), "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout[-1000:]
    assert "q_proj_swiftkv.weight' is missing" in r.stderr + r.stdout, r.stderr[-1000:]
