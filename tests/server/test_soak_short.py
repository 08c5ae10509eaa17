"""A short run of the soak test (scripts/soak_serve.py) in CI: 200 requests at concurrency 32 against
`swiftkv serve` on the default model, a fifth cancelled mid-stream, some over the context limit,
malformed requests among them. It must pass the same checks as the long recorded run
(bench/results/cpu_soak.json: 1000 requests at concurrency 64): no 5xx, every accepted request
completes or is cancelled, the KV cache is empty when idle, memory flat."""
import json
import socket
import subprocess
import sys

import pytest

from testpaths import MODEL, ROOT, SWIFTKV


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not SWIFTKV.exists() or not MODEL.exists(), reason="swiftkv or the default model missing")
def test_short_soak(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak_serve.py"), "--swiftkv", str(SWIFTKV),
                        "--model", str(MODEL), "--requests", "200", "--concurrency", "32",
                        "--port", str(free_port()), "--json-out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["pass"] and report["server_alive"]
    assert report["kv_blocks_used_when_idle"] == 0
