"""`swiftkv gen-data`: the default model answers a few prompts from the shared sets (MT-bench two-turn
conversations included) and a hand-written file (a duplicate and a malformed line); the output is
chat-format JSON lines; a run stopped early (--max-prompts, a cut-off last line, SIGINT) is continued
by running again, with every prompt answered exactly once; raw text comes through as text chunks;
bad arguments give one-line `error:` messages before any model is loaded."""
import json
import signal
import subprocess
import time

import pytest

from testpaths import DATA, MODEL, SWIFTKV

pytestmark = pytest.mark.skipif(not SWIFTKV.exists(), reason=f"{SWIFTKV} not built")
needs_model = pytest.mark.skipif(not MODEL.exists(), reason="default model not fetched")
needs_data = pytest.mark.skipif(not (DATA / "mt_bench_questions.jsonl").exists(), reason="shared data missing")


def gen_data(*args, timeout=120):
    return subprocess.run([str(SWIFTKV), "gen-data", "-t", "2", *map(str, args)], capture_output=True, timeout=timeout)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr.decode(errors="replace"))
    lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error: "), lines
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def read_records(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(l) for l in text.splitlines()]


def check_chat_record(rec, max_tokens):
    assert list(rec)[:3] == ["id", "source", "messages"]
    assert rec["id"].startswith(rec["source"] + ":")
    msgs = rec["messages"]
    assert len(msgs) >= 2 and len(msgs) % 2 == 0
    for i, m in enumerate(msgs):
        assert m["role"] == ("user" if i % 2 == 0 else "assistant")
        assert isinstance(m["content"], str)
    assert msgs[0]["content"].strip()
    turns = len(msgs) // 2
    assert rec["finish_reason"] in ("stop", "length")
    if turns > 1:
        assert len(rec["finish_reasons"]) == turns and rec["finish_reasons"][-1] == rec["finish_reason"]
    assert rec["prompt_tokens"] > 0
    assert 1 <= rec["completion_tokens"] <= max_tokens * turns


def prompt_files(tmp_path):
    own = tmp_path / "own.jsonl"
    own.write_text("\n".join([
        json.dumps({"prompt": "How can I improve my time management skills?"}),  # = vicuna's first
        '{"prompt": "broken',
        json.dumps({"prompt": "Name a primary color."}),
        json.dumps({"prompt": "Say hello."}),
    ]) + "\n")
    # --limit 2: MT-bench 2 (two turns each), Vicuna 2, own 2 of which 1 duplicates Vicuna -> 5 prompts.
    return [DATA / "mt_bench_questions.jsonl", DATA / "vicuna_bench_questions.jsonl", own]


def test_bad_arguments_fail_before_loading(tmp_path):
    assert_clean_error(gen_data("--prompts", tmp_path / "missing.jsonl", "--out", tmp_path / "o.jsonl"), "cannot read")
    weird = tmp_path / "weird.jsonl"
    weird.write_text('{"foo": 1}\n')
    assert_clean_error(gen_data("--prompts", weird, "--out", tmp_path / "o.jsonl"), "cannot tell the prompt format")
    assert_clean_error(gen_data("--prompts", weird, "--out", tmp_path / "nodir" / "o.jsonl"), "does not exist")
    a = tmp_path / "a"
    a.mkdir()
    (a / "weird.jsonl").write_text('{"prompt": "x"}\n')
    assert_clean_error(gen_data("--prompts", weird, a / "weird.jsonl", "--out", tmp_path / "o.jsonl"), "named 'weird.jsonl'")
    assert_clean_error(gen_data("--text", weird, "--out", tmp_path / "o.jsonl", "--temp", "-1"), "temperature")
    assert not (tmp_path / "o.jsonl").exists()


@needs_model
@needs_data
def test_generate_resume_and_text(tmp_path):
    out = tmp_path / "teacher.jsonl"
    files = prompt_files(tmp_path)
    common = ["--prompts", *files, "--limit", 2, "--max-tokens", 8, "--out", out]

    first = gen_data(*common, "--max-prompts", 3)
    assert first.returncode == 0, first.stderr.decode()
    err = first.stderr.decode()
    assert "own.jsonl: 1 prompts (format prompt; 3 records read, 1 malformed skipped, 1 duplicates" in err, err
    assert "own.jsonl:2: not valid JSON" in err
    recs = read_records(out)
    assert len(recs) == 3
    assert sorted(r["id"] for r in recs) == ["mt_bench_questions.jsonl:0", "mt_bench_questions.jsonl:1",
                                             "vicuna_bench_questions.jsonl:0"]
    for r in recs:
        check_chat_record(r, 8)
    mt = next(r for r in recs if r["id"] == "mt_bench_questions.jsonl:0")
    assert len(mt["messages"]) == 4  # both turns answered, the second after the first answer
    assert mt["messages"][2]["content"] == "Rewrite your previous response. Start every sentence with the letter A."

    # A run killed mid-write leaves a partial line: it is cut off, and the run continues.
    with open(out, "a") as f:
        f.write('{"id": "vicuna_bench_questions.jsonl:1", "source": "vic')
    second = gen_data(*common, "--max-prompts", 6)
    assert second.returncode == 0, second.stderr.decode()
    assert "partial last line" in second.stderr.decode()
    assert "3 already answered" in second.stderr.decode()
    recs = read_records(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == 5 and len(set(ids)) == 5, ids  # 5 distinct prompts in all (max 6)
    assert "own.jsonl:2" in ids and "own.jsonl:0" not in ids  # the duplicate of vicuna's first prompt is dropped
    for r in recs:
        check_chat_record(r, 8)

    # Nothing left: no model load, no new lines. Then text chunks are added.
    third = gen_data(*common)
    assert third.returncode == 0 and b"nothing to do" in third.stdout, third.stderr.decode()
    text = tmp_path / "book.txt"
    text.write_text("First paragraph, line one.\nLine two.\n\nSecond paragraph.\n\n\n" + "word " * 300 + "\n")
    fourth = gen_data(*common, "--text", text, "--text-chunk-tokens", 64)
    assert fourth.returncode == 0, fourth.stderr.decode()
    recs = read_records(out)
    texts = [r for r in recs if "text" in r]
    assert len(recs) == 7 and len(texts) == 2  # --limit 2 applies to text chunks too
    assert texts[0] == {"id": "book.txt:0", "source": "book.txt",
                        "text": "First paragraph, line one.\nLine two.\n\nSecond paragraph."}
    assert 20 < len(texts[1]["text"].split()) < 100  # the 300-word line is cut at spaces


@needs_model
@needs_data
def test_sigint_stops_and_rerun_completes(tmp_path):
    out = tmp_path / "teacher.jsonl"
    args = [str(SWIFTKV), "gen-data", "-t", "2", "--prompts", DATA / "vicuna_bench_questions.jsonl", "--limit", 12,
            "--max-tokens", 48, "--max-num-seqs", 4, "--temp", 0, "--out", out]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if interrupted and proc.returncode == 130:
        assert b"interrupted" in err and b"run the same command again" in err, err
    else:
        assert proc.returncode == 0, err  # it finished before the signal arrived
    partial = read_records(out)
    assert 1 <= len(partial) <= 12
    rerun = subprocess.run(list(map(str, args)), capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    recs = read_records(out)
    ids = [r["id"] for r in recs]
    assert sorted(ids) == sorted(f"vicuna_bench_questions.jsonl:{i}" for i in range(12))
    for r in recs:
        check_chat_record(r, 48)
