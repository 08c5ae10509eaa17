"""What the `swiftkv serve` tests share: a server subprocess on a free port (`--port 0`, it prints
"listening on URL"), a small HTTP helper that never raises on HTTP errors, and /metrics parsed into
a flat dict."""
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from testpaths import MODEL, SWIFTKV

CTX = 2048

# Every server test needs the binary and the default model.
requires_server = [
    pytest.mark.skipif(not SWIFTKV.exists(), reason=f"{SWIFTKV} not built"),
    pytest.mark.skipif(not MODEL.exists(), reason="default model not fetched"),
]


class Server:
    def __init__(self, *extra, ctx=CTX):
        self.args = [str(SWIFTKV), "serve", "-m", str(MODEL), "-c", str(ctx), "--port", "0", *extra]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        self.url = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("server did not start: " + self.proc.stderr.read())
        while time.time() < deadline:  # the port answers as soon as it listens
            try:
                if http("GET", self.url + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        self.model = MODEL.stem
        self.host, port = self.url.split("//")[1].split(":")
        self.port = int(port.rstrip("/"))

    def client(self, api_key="none", **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def http(method, url, body=None, headers=None, timeout=30):
    """(status, parsed JSON or text) without raising on HTTP errors."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    text = raw.decode("utf-8", errors="replace")
    return status, (json.loads(text) if "json" in ctype else text)


def metric_values(server):
    """/metrics as {name[/finished_reason][@le]: value}."""
    from prometheus_client import parser as prom_parser

    code, text = http("GET", server.url + "/metrics")
    assert code == 200
    values = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("" if "finished_reason" not in s.labels else "/" + s.labels["finished_reason"])
            if "le" in s.labels:
                key += "@" + s.labels["le"]
            values[key] = s.value
    return values
