"""`swiftkv eval` on good and bad input: perplexity, KL against a reference (the model against itself
must give KL 0 and 100% top-1 agreement), multiple choice with per-item JSON (equal to the stored
llama.cpp references of tests/eval/data), malformed records skipped and counted, and one-line
`error:` messages with exit status 1 for bad arguments and inputs."""
import json
import subprocess

import pytest

from testpaths import DATA, MODEL, ROOT, SWIFTKV
REFS = ROOT / "tests" / "eval" / "data" / "mc_llama_cpp_refs.json"

pytestmark = pytest.mark.skipif(not SWIFTKV.exists(), reason=f"{SWIFTKV} not built")
needs_model = pytest.mark.skipif(not MODEL.exists(), reason="default model not fetched")
needs_data = pytest.mark.skipif(not (DATA / "ARC-Easy-Dev.jsonl").exists(), reason="shared data missing")


def run(*args, timeout=300):
    return subprocess.run([str(SWIFTKV), "eval", "-t", "2", *map(str, args)], capture_output=True, timeout=timeout)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr.decode(errors="replace"))
    lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_eval_needs_exactly_one_mode(tmp_path):
    assert_clean_error(run(), "exactly one of")
    assert_clean_error(run("--reference", MODEL, "--mc", tmp_path / "x.jsonl"), "--reference needs --text")
    assert_clean_error(run("--text", "/nonexistent/text.txt"), "cannot read")


@needs_model
@needs_data
def test_eval_mc_matches_stored_llama_cpp_references(tmp_path):
    out = tmp_path / "arc.json"
    proc = run("--mc", DATA / "ARC-Easy-Dev.jsonl", "--limit", 5, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    stdout = proc.stdout.decode()
    assert "acc      = " in stdout and "acc_norm = " in stdout
    res = json.loads(out.read_text())
    assert res["mode"] == "multiple_choice" and res["format"] == "arc" and res["n"] == 5
    refs = json.loads(REFS.read_text())["sets"]["arc_easy"][:5]
    for item, ref in zip(res["items"], refs):
        assert item["id"] == ref["id"] and item["gold"] == ref["gold"]
        assert len(item["loglik"]) == len(ref["choices"])
        for ours, theirs in zip(item["loglik"], ref["choices"]):
            assert abs(ours - theirs["loglik"]) < 1e-3
        assert item["predicted"] == ref["pred"] and item["predicted_norm"] == ref["pred_norm"]
    assert res["acc"] == sum(i["acc"] for i in res["items"]) / 5


@needs_model
def test_eval_mc_skips_malformed_records(tmp_path):
    f = tmp_path / "mixed.jsonl"
    good = {"id": "g1", "question": {"stem": "What color is the sky on a clear day?",
                                     "choices": [{"text": "blue", "label": "A"}, {"text": "green", "label": "B"}]},
            "answerKey": "A"}
    f.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({**good, "answerKey": "Z"}) + "\n")
    out = tmp_path / "r.json"
    proc = run("--mc", f, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "2 malformed record(s) skipped" in proc.stdout.decode()
    res = json.loads(out.read_text())
    assert res["n"] == 1 and res["skipped_records"] == 2 and len(res["skip_messages"]) == 2


@needs_model
def test_eval_piqa_without_labels_is_a_clean_error(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b"}) + "\n")
    assert_clean_error(run("--mc", f), "--labels")


@needs_model
@needs_data
def test_eval_perplexity(tmp_path):
    out = tmp_path / "ppl.json"
    proc = run("--text", DATA / "wikitext-2-raw.valid.raw", "--ctx", 128, "--max-chunks", 3, "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "PPL = " in proc.stdout.decode()
    res = json.loads(out.read_text())
    assert res["mode"] == "perplexity" and res["chunks"] == 3 and res["tokens_scored"] == 3 * (128 - 1 - 64)
    assert 1 < res["ppl"] < 1000 and res["ppl_stderr"] > 0 and len(res["chunk_ppl"]) == 3


@needs_model
@needs_data
def test_eval_kl_against_itself_is_zero(tmp_path):
    out = tmp_path / "kl.json"
    proc = run("--text", DATA / "wikitext-2-raw.valid.raw", "--reference", MODEL, "--ctx", 64, "--max-chunks", 2,
               "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(out.read_text())
    assert res["mode"] == "kl_divergence" and res["tokens_scored"] == 2 * 31
    assert res["kl"]["mean"] == 0 and res["kl"]["max"] == 0 and res["top1_agreement"] == 1
    assert res["delta_ppl"] == 0 and res["ppl"] == res["reference_ppl"]


@needs_model
def test_eval_text_shorter_than_a_window(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("Just a few words.")
    assert_clean_error(run("--text", f), "fewer than one window")
