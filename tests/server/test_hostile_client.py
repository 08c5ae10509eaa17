"""A standing hostile-client test of `swiftkv serve` (issue 12): what an attacker or a careless client
sends, each with the answer the server must give.

Classes covered: body limits for every way a body can arrive (Content-Length, Expect: 100-continue,
chunked), malformed and request-smuggling-shaped HTTP, header limits, unknown methods and paths,
pipelining, keep-alive latency, slow and silent clients, idle keep-alive connections, every request
field's wrong types and ranges on both generation endpoints (streaming or not), API keys, dropped
connections returning every gauge to 0, logprobs' text_offset in characters, the Prometheus `le`
labels, and a server still healthy after all of it.

Three servers, each module-scoped: `server` (small --max-body-bytes, otherwise defaults; most tests),
`strict_server` (small --max-header-bytes, --read-timeout and --keep-alive-timeout, so the slow-client
tests take seconds) and `auth_server` (--api-key). Every socket has a timeout and every wait a bound;
raw sockets where the test needs bytes on the wire that ordinary clients never send.
"""
import json
import re
import select
import socket
import statistics
import struct
import time
from http.client import HTTPConnection

import pytest

from serverutil import Server, http, metric_values, requires_server

pytestmark = requires_server

BODY_LIMIT = 65536       # --max-body-bytes of `server` and `strict_server`
HEADER_LIMIT = 8192      # --max-header-bytes of `strict_server`
READ_TIMEOUT = 2         # --read-timeout of `strict_server`
KEEP_ALIVE_TIMEOUT = 2   # --keep-alive-timeout of `strict_server`
SLACK = 2.5              # seconds a timeout may overrun on a busy 2-core machine
API_KEY = "sk-hostile-key-0123456789"
SOCK_TIMEOUT = 5         # no single socket wait is longer
GAUGES = ("swiftkv:num_requests_running", "swiftkv:num_requests_waiting", "swiftkv:kv_cache_blocks_used")


def start(*flags):
    """A server with these flags; a flag the binary lacks fails the test (never a skip)."""
    try:
        return Server(*flags)
    except RuntimeError as e:
        error = str(e)
    pytest.fail(f"`swiftkv serve {' '.join(flags)}` did not start (does this binary have these flags?): {error}",
                pytrace=False)


@pytest.fixture(scope="module")
def server():
    s = start("--max-body-bytes", str(BODY_LIMIT))
    yield s
    assert s.stop() == 0, "the server did not exit cleanly after the hostile traffic"


@pytest.fixture(scope="module")
def strict_server():
    s = start("--max-body-bytes", str(BODY_LIMIT), "--max-header-bytes", str(HEADER_LIMIT),
              "--read-timeout", str(READ_TIMEOUT), "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT))
    yield s
    assert s.stop() == 0, "the server did not exit cleanly after the hostile traffic"


@pytest.fixture(scope="module")
def auth_server():
    s = start("--api-key", API_KEY)
    yield s
    assert s.stop() == 0


# ---------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client


class NoResponse(AssertionError):
    pass


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def error(self):
        """The OpenAI error object of an error response."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        body = self.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
        assert body["error"].get("message"), body
        return body["error"]

    def __repr__(self):
        return f"Response({self.status}, {self.headers}, {self.body[:300]!r})"


class Conn:
    """One client connection: send bytes, read whole responses in order, see when the server closes."""

    def __init__(self, server, timeout=SOCK_TIMEOUT):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def close(self, reset=False):
        if reset:  # an abortive close: RST instead of FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self):
        """Reads more bytes into buf; False at EOF (or a reset)."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise NoResponse(f"no bytes from the server for {self.sock.gettimeout()} s; got so far {self.buf[:300]!r}")
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _until(self, sep):
        while sep not in self.buf:
            if not self._fill():
                raise NoResponse(f"the server closed the connection; got {self.buf[:300]!r}")
        i = self.buf.index(sep)
        out, self.buf = self.buf[:i], self.buf[i + len(sep):]
        return out

    def _exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise NoResponse(f"the server closed the connection in a body; got {self.buf[:300]!r}")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self):
        """The next response (status, lower-case headers, body), bodies by length, chunks or close."""
        head = self._until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/1."), f"not an HTTP status line: {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._until(b"\r\n"):  # trailers up to the empty line
                        pass
                    break
                body += self._exactly(size)
                self._until(b"\r\n")
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(int(parts[1]), headers, body)

    def closed_within(self, seconds):
        """True if the server closes (EOF or reset) within `seconds` without sending anything more."""
        if self.eof:
            return not self.buf
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        finally:
            if self.sock.fileno() >= 0:
                self.sock.settimeout(SOCK_TIMEOUT)
        if data:
            self.buf += data
            return False
        self.eof = True
        return not self.buf


def exchange(server, data):
    c = Conn(server)
    c.send(data)
    return c, c.response()


def request_bytes(method, path, body=None, headers=(), version="HTTP/1.1"):
    """A request's bytes; a dict body is JSON with its Content-Length."""
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *headers]
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def chunked(data, size):
    out = b""
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


GET_HEALTH = request_bytes("GET", "/health")
CHUNKED_HEAD = (b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def rss_bytes(server):
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def wait_idle(server, timeout=30):
    """/metrics once every gauge is 0 (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        v = metric_values(server)
        if all(v[g] == 0 for g in GAUGES):
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not become idle within {timeout} s: " + str({g: v[g] for g in GAUGES}))
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Body limits, for every way a body can arrive


def assert_413(r):
    assert r.status == 413, r
    err = r.error()
    assert err["type"] == "invalid_request_error", err
    assert str(BODY_LIMIT) in err["message"], f"the 413 message should name the limit: {err}"


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_content_length_over_limit_gets_413_before_the_body(server, expect):
    """The 413 comes from the headers alone: the client has not sent (and need never send) the body."""
    head = [f"Content-Length: {16 * BODY_LIMIT}", "Content-Type: application/json"]
    if expect:
        head.append("Expect: 100-continue")
    c = Conn(server, timeout=3)
    t0 = time.monotonic()
    c.send(request_bytes("POST", "/v1/completions", headers=head))
    r = c.response()
    assert_413(r)
    assert time.monotonic() - t0 < 2


def test_body_at_the_limit_is_accepted_one_byte_over_is_not(server):
    prompt = b'{"prompt": "hi"}'
    at_limit = prompt + b" " * (BODY_LIMIT - len(prompt))  # JSON allows trailing whitespace
    _, r = exchange(server, request_bytes("POST", "/tokenize", at_limit))
    assert r.status == 200, r
    _, r = exchange(server, request_bytes("POST", "/tokenize", at_limit + b" "))
    assert_413(r)


def test_chunked_body_under_the_limit_is_accepted(server):
    prompt = {"prompt": "Hello world, chunk by chunk"}
    _, r = exchange(server, CHUNKED_HEAD + chunked(json.dumps(prompt).encode(), 5))
    assert r.status == 200, r
    assert r.json()["tokens"] == http("POST", server.url + "/tokenize", prompt)[1]["tokens"]


def test_chunked_body_one_byte_over_the_limit_gets_413(server):
    prompt = b'{"prompt": "hi"}'
    over = prompt + b" " * (BODY_LIMIT + 1 - len(prompt))
    c = Conn(server)
    try:
        c.send(CHUNKED_HEAD + chunked(over, 4096))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before it took every byte
    assert_413(c.response())


def test_chunked_body_over_the_limit_gets_413_midway(server):
    """Chunks past --max-body-bytes: a 413 while the client still has chunks to send, the rest never
    read (the connection closes) and the server's memory does not grow by the attempted body."""
    total, size = 8 << 20, 64 << 10
    assert http("GET", server.url + "/health")[0] == 200
    rss_before = rss_bytes(server)
    c = Conn(server)
    c.send(CHUNKED_HEAD.replace(b"/tokenize", b"/v1/completions"))
    sent, answered = 0, False
    chunk = b"%x\r\n" % size + b"a" * size + b"\r\n"
    try:
        while sent < total:
            c.send(chunk)
            sent += size
            if select.select([c.sock], [], [], 0.02)[0]:
                answered = True
                break
    except (BrokenPipeError, ConnectionResetError):
        answered = True  # closed on us: the 413 should be waiting in our receive buffer
    except socket.timeout:
        answered = True  # the server stopped reading: it should have answered
    time.sleep(0.2)
    grew = rss_bytes(server) - rss_before
    assert answered and sent < total, \
        f"no answer while the client sent all {sent} chunked bytes (limit {BODY_LIMIT}); server RSS grew by {grew}"
    assert_413(c.response())
    assert c.closed_within(3), "the connection should close after a 413 for a chunked body"
    assert grew < total // 4, f"server RSS grew by {grew} bytes for a {total}-byte attempted body ({sent} sent)"
    assert http("GET", server.url + "/health")[0] == 200


def test_chunk_size_overflow(server):
    c = Conn(server)
    try:
        c.send(CHUNKED_HEAD + b"ffffffffffffffffffffffff\r\n" + b"a" * 100)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.response()
    assert r.status in (400, 413), r
    r.error()
    assert c.closed_within(3)


# ---------------------------------------------------------------------------------------------
# Malformed and smuggling-shaped HTTP: a precise 400 (or 501), then the connection closes

JSON_HI = b'{"prompt": "hi"}'
POST_TOKENIZE = b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

MALFORMED = [
    ("http11-without-host", b"GET /health HTTP/1.1\r\n\r\n", 400, "Host"),
    ("two-content-lengths", POST_TOKENIZE + b"Content-Length: 16\r\nContent-Length: 17\r\n\r\n" + JSON_HI + b" ",
     400, "Content-Length"),
    ("transfer-encoding-and-content-length",
     POST_TOKENIZE + b"Transfer-Encoding: chunked\r\nContent-Length: 23\r\n\r\n" + chunked(JSON_HI, 64), 400,
     "Transfer-Encoding"),
    ("content-length-and-transfer-encoding",
     POST_TOKENIZE + b"Content-Length: 23\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(JSON_HI, 64), 400,
     "Transfer-Encoding"),
    ("content-length-abc", POST_TOKENIZE + b"Content-Length: abc\r\n\r\n" + JSON_HI, 400, "Content-Length"),
    ("content-length-negative", POST_TOKENIZE + b"Content-Length: -1\r\n\r\n" + JSON_HI, 400, "Content-Length"),
    ("content-length-plus-sign", POST_TOKENIZE + b"Content-Length: +16\r\n\r\n" + JSON_HI, 400, "Content-Length"),
    ("chunk-size-not-hex", CHUNKED_HEAD + b"zz\r\n" + JSON_HI + b"\r\n0\r\n\r\n", 400, "chunk"),
    ("chunk-missing-crlf", CHUNKED_HEAD + b"10\r\n" + JSON_HI + b"XX0\r\n\r\n", 400, "chunk"),
    ("garbage-request-line", b"HELLO\r\n\r\n", 400, None),
    ("bad-http-version", b"GET /health HTTP/9.Z\r\nHost: 127.0.0.1\r\n\r\n", 400, None),
    ("header-without-colon", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColonHere\r\n\r\n", 400, None),
    ("transfer-encoding-gzip", POST_TOKENIZE + b"Transfer-Encoding: gzip\r\n\r\n" + JSON_HI, 501, "Transfer-Encoding"),
    ("transfer-encoding-gzip-chunked",
     POST_TOKENIZE + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(JSON_HI, 64), 501, "Transfer-Encoding"),
]


@pytest.mark.parametrize("raw,status,word", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_http(server, raw, status, word):
    c = Conn(server)
    try:
        c.send(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.response()
    assert r.status == status, r
    err = r.error()
    assert not re.fullmatch(r"HTTP error \d+", err["message"]), f"a generic message: {err}"
    if word:
        assert word.lower() in err["message"].lower(), f"the message should name {word!r}: {err}"
    assert c.closed_within(3), "the connection should close after a malformed request"
    assert http("GET", server.url + "/health")[0] == 200


@pytest.mark.parametrize("headers", [
    [f"X-Pad: {'a' * (HEADER_LIMIT + 100)}"],
    [f"X-Pad-{i}: {'a' * 60}" for i in range(HEADER_LIMIT // 60 + 10)],
], ids=["one-long-header", "many-headers"])
def test_header_block_over_the_limit_gets_431(strict_server, headers):
    c = Conn(strict_server)
    try:
        c.send(request_bytes("GET", "/health", headers=headers))
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.response()
    assert r.status == 431, r
    assert "header" in r.error()["message"].lower(), r
    assert c.closed_within(3)


def test_header_under_the_default_limit_is_accepted(server):
    """--max-header-bytes defaults to 64 KiB: a 20 KB header line (big cookies, tracing) is fine."""
    _, r = exchange(server, request_bytes("GET", "/health", headers=[f"X-Pad: {'a' * 20000}"]))
    assert r.status == 200, r


@pytest.mark.parametrize("method,path,allow", [
    ("FOO", "/health", "GET"),
    ("DELETE", "/v1/completions", "POST"),
    ("PUT", "/v1/models", "GET"),
])
def test_unknown_method_on_known_path_is_405(server, method, path, allow):
    c, r = exchange(server, request_bytes(method, path))
    assert r.status == 405, r
    assert allow in r.headers.get("allow", ""), r
    assert method in r.error()["message"], r


@pytest.mark.parametrize("method,path", [("FOO", "/nothing-here"), ("GET", "/v1/nothing-here"), ("POST", "/")])
def test_unknown_path_is_404(server, method, path):
    _, r = exchange(server, request_bytes(method, path))
    assert r.status == 404, r
    r.error()


def test_http10_without_host_is_fine(server):
    c, r = exchange(server, b"GET /health HTTP/1.0\r\n\r\n")
    assert r.status == 200, r
    assert c.closed_within(3), "HTTP/1.0 without keep-alive: the server closes after the response"


# ---------------------------------------------------------------------------------------------
# Pipelining and keep-alive


def test_pipelined_gets_get_three_responses(server):
    c = Conn(server)
    t0 = time.monotonic()
    c.send(GET_HEALTH * 2 + request_bytes("GET", "/health", headers=["Connection: close"]))
    statuses = [c.response().status for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert c.closed_within(3), "Connection: close on the last request: the server closes after it"
    assert time.monotonic() - t0 < 3


def test_pipelined_post_between_gets(server):
    prompt = {"prompt": "Pipelined requests arrive in one write"}
    c = Conn(server)
    c.send(GET_HEALTH + request_bytes("POST", "/tokenize", prompt) +
           request_bytes("GET", "/v1/models", headers=["Connection: close"]))
    first, tok, models = c.response(), c.response(), c.response()
    assert (first.status, tok.status, models.status) == (200, 200, 200), (first, tok, models)
    assert tok.json()["tokens"] == http("POST", server.url + "/tokenize", prompt)[1]["tokens"]
    assert models.json()["data"][0]["id"] == server.model
    assert c.closed_within(3)


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
def test_keep_alive_requests_are_fast(server, path):
    """On one reused connection requests 2..20 answer in well under Nagle + delayed-ACK time (~40 ms)."""
    wait_idle(server)
    conn = HTTPConnection(server.host, server.port, timeout=SOCK_TIMEOUT)
    times, local = [], None
    try:
        for _ in range(20):
            t0 = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            times.append(time.perf_counter() - t0)
            assert r.status == 200
            assert conn.sock is not None, f"the server closed the keep-alive connection after request {len(times)}"
            name = conn.sock.getsockname()
            assert local in (None, name), "the server closed the keep-alive connection"
            local = name
    finally:
        conn.close()
    reused = times[1:]
    ms = [round(t * 1000, 2) for t in reused]
    assert statistics.median(reused) < 0.005, f"reused-connection latencies (ms): {ms}"
    assert max(reused) < 0.1, f"reused-connection latencies (ms): {ms}"


def test_idle_keep_alive_connection_is_closed(strict_server):
    c, r = exchange(strict_server, GET_HEALTH)
    assert r.status == 200
    assert not c.closed_within(KEEP_ALIVE_TIMEOUT / 2), "closed at once: keep-alive does not work"
    c.send(GET_HEALTH)  # reused before the timeout: served, and the idle clock restarts
    assert c.response().status == 200
    t0 = time.monotonic()
    assert c.closed_within(KEEP_ALIVE_TIMEOUT + SLACK), f"an idle connection stayed open past {KEEP_ALIVE_TIMEOUT} s"
    assert time.monotonic() - t0 >= KEEP_ALIVE_TIMEOUT / 2


# ---------------------------------------------------------------------------------------------
# Slow clients


def test_slow_and_silent_clients_are_dropped_while_others_are_served(strict_server):
    """A client trickling its header (a byte a second), clients that stop mid-header and one that stops
    mid-body are each dropped within about --read-timeout (possibly after a 408); meanwhile other
    clients are served at once."""
    s = strict_server
    conns = {}  # Conn -> [first byte time, closed time, bytes received]
    trickle = Conn(s)
    trickle_bytes = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 64
    trickle.send(trickle_bytes[:1])
    conns[trickle] = [time.monotonic(), None, b""]
    for _ in range(16):
        c = Conn(s)
        c.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        conns[c] = [time.monotonic(), None, b""]
    mid_body = Conn(s)
    mid_body.send(POST_TOKENIZE + b"Content-Length: 1000\r\n\r\n" + b'{"prompt": "')
    conns[mid_body] = [time.monotonic(), None, b""]

    start = time.monotonic()
    deadline = start + READ_TIMEOUT + SLACK + 1
    next_byte, sent_bytes, served = start + 1, 1, []
    while time.monotonic() < deadline and any(v[1] is None for v in conns.values()):
        now = time.monotonic()
        if conns[trickle][1] is None and now >= next_byte and sent_bytes < len(trickle_bytes):
            try:
                trickle.send(trickle_bytes[sent_bytes:sent_bytes + 1])
                sent_bytes += 1
            except (BrokenPipeError, ConnectionResetError):
                conns[trickle][1] = now
            next_byte += 1
        if len(served) < 2 * (now - start) + 1:  # another client, served normally meanwhile
            t0 = time.monotonic()
            status = http("GET", s.url + "/health", timeout=2)[0]
            served.append((status, time.monotonic() - t0))
        open_socks = {c.sock: c for c, v in conns.items() if v[1] is None}
        for sock in select.select(list(open_socks), [], [], 0.05)[0]:
            c = open_socks[sock]
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if data:
                conns[c][2] += data
            else:
                conns[c][1] = time.monotonic()
    problems = set()
    for c, (first, closed, got) in conns.items():
        which = "trickling" if c is trickle else "mid-body" if c is mid_body else "mid-header"
        if closed is None:
            problems.add(f"a {which} client was not dropped within {deadline - start:.1f} s")
        elif not READ_TIMEOUT / 2 <= closed - first <= READ_TIMEOUT + SLACK:
            problems.add(f"a {which} client was dropped after {closed - first:.1f} s")
        if got and not got.startswith(b"HTTP/1.1 408"):
            problems.add(f"a {which} client got {got[:200]!r}")
        c.close()
    assert not problems, sorted(problems)
    assert len(served) >= 3 and all(st == 200 for st, _ in served), served
    assert max(t for _, t in served) < 1.0, f"other clients waited: {served}"
    assert http("GET", s.url + "/health")[0] == 200


# ---------------------------------------------------------------------------------------------
# Every request field's wrong types and ranges, on both endpoints


class Raw(str):
    """A value written into the JSON body as is (JSON that Python cannot produce)."""


def post_raw_json(server, path, body, timeout=30):
    raw_values = {k: v for k, v in body.items() if isinstance(v, Raw)}
    text = json.dumps({k: (f"__raw_{k}__" if k in raw_values else v) for k, v in body.items()})
    for k, v in raw_values.items():
        text = text.replace(f'"__raw_{k}__"', v)
    return http("POST", server.url + path, text.encode(), timeout=timeout)


BAD_INT = ["16", 1.5, -1, Raw("1e400"), 2 ** 63, 10 ** 30, {"a": 1}, [1], True]
COMMON_BAD = [
    ("model", v) for v in [1, {"a": 1}, ["m"], True]
] + [
    ("max_tokens", v) for v in BAD_INT
] + [
    ("temperature", v) for v in ["0.5", -0.5, 2.5, Raw("1e400"), Raw("NaN"), {"t": 1}, [0.5], True]
] + [
    ("top_p", v) for v in ["1", 0, -0.1, 1.5, Raw("1e400"), {}, True]
] + [
    ("top_k", v) for v in ["5", 1.5, -2, 2 ** 31, {}, True]
] + [
    ("min_p", v) for v in ["0.1", -0.1, 1.5, [], True]
] + [
    ("n", v) for v in ["2", 0, -1, 1.5, 10 ** 6, Raw("1e400"), {}, True]
] + [
    ("stop", v) for v in [3, {"a": 1}, [1], [""], "", ["x"] * 17, [["x"]], True]
] + [
    ("seed", v) for v in ["1", 1.5, 2 ** 64, Raw("1e400"), {}, [1], True]
] + [
    ("stream", v) for v in ["yes", 1, {}, []]
] + [
    ("stream_options", v) for v in ["x", [], 1]
] + [
    ("presence_penalty", v) for v in ["0", -2.5, 2.5, {}, True]
] + [
    ("frequency_penalty", v) for v in ["0", -2.5, 2.5, {}, True]
] + [
    ("repetition_penalty", v) for v in [0, -1, 10.5, "1", {}]
] + [
    ("logit_bias", v) for v in ["x", [1], 5, {"abc": 1}, {"1": "x"}, {"1": 1000}]
] + [
    ("stop_token_ids", v) for v in ["x", 1, [1.5], [-1], ["a"]]
] + [
    ("ignore_eos", v) for v in ["yes", 1]
] + [
    ("best_of", v) for v in [0, "1", 2]
] + [
    ("user", v) for v in [1, {}]
]

COMPLETIONS_BAD = COMMON_BAD + [
    ("prompt", v) for v in [None, 123, {"a": 1}, [], "", [[]], [1.5], [-1], [2 ** 40], [10 ** 7], [True], [{"a": 1}],
                            [None]]
] + [
    ("logprobs", v) for v in [True, -1, 21, "1", 1.5, {}]
] + [
    ("echo", v) for v in ["yes", 1, {}]
] + [
    ("max_tokens", 0),  # without echo
]

CHAT_BAD = COMMON_BAD + [
    ("messages", v) for v in [
        None, "hi", {}, [], [1], ["hi"], [{"role": "user"}], [{"content": "x"}], [{"role": "bogus", "content": "x"}],
        [{"role": 1, "content": "x"}], [{"role": "user", "content": 1}], [{"role": "user", "content": {"a": 1}}],
        [{"role": "user", "content": [1]}], [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
        [{"role": "user", "content": "x", "name": 1}]]
] + [
    ("max_tokens", 0),
] + [
    ("max_completion_tokens", v) for v in [0] + BAD_INT
] + [
    ("logprobs", v) for v in [1, "true", {}]
] + [
    ("top_logprobs", v) for v in [-1, 21, "1", 1.5, {}]
] + [
    ("response_format", v) for v in ["json", {"type": 1}, []]
] + [
    ("tools", v) for v in ["x", {}]
] + [
    ("tool_choice", v) for v in [1, {}]
] + [
    ("chat_template_kwargs", v) for v in ["x", []]
] + [
    ("add_generation_prompt", v) for v in ["yes", 1]
]

def field_cases():
    for endpoint, path, cases, base in [
        ("completions", "/v1/completions", COMPLETIONS_BAD, {"prompt": "Hi", "max_tokens": 1}),
        ("chat", "/v1/chat/completions", CHAT_BAD, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    ]:
        for field, value in cases:
            for stream in ([False] if field == "stream" else [False, True]):
                body = dict(base)
                if endpoint == "chat" and field == "top_logprobs":
                    body["logprobs"] = True  # else the missing logprobs would be the error
                if stream or field == "stream_options":
                    body["stream"] = True
                body[field] = value
                shown = value if isinstance(value, Raw) else json.dumps(value)
                if len(shown) > 40:
                    shown = shown[:40] + "..."
                yield pytest.param(path, field, body, id=f"{endpoint}-{field}={shown}" + ("-stream" if stream else ""))
    # Wrong only together with other fields.
    yield pytest.param("/v1/completions", "stream_options",
                       {"prompt": "Hi", "max_tokens": 1, "stream_options": {"include_usage": True}},
                       id="completions-stream_options-without-stream")
    yield pytest.param("/v1/chat/completions", "stream_options",
                       {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": True,
                        "stream_options": {"include_usage": "yes"}}, id="chat-stream_options.include_usage=yes")
    yield pytest.param("/v1/chat/completions", "top_logprobs",
                       {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "top_logprobs": 2},
                       id="chat-top_logprobs-without-logprobs")


@pytest.mark.parametrize("path,field,body", list(field_cases()))
def test_bad_request_field_is_400(server, path, field, body):
    """A wrong type or range gets a 400 (never a 500, and with stream: true never a 200 with an error
    event), whose param names the field where the server gives one."""
    code, resp = post_raw_json(server, path, body)
    assert code == 400, (code, str(resp)[:500])
    assert isinstance(resp, dict) and isinstance(resp.get("error"), dict) and resp["error"].get("message"), resp
    assert resp["error"]["type"] == "invalid_request_error", resp
    param = resp["error"].get("param")
    if param is not None:
        assert re.match(re.escape(field) + r"($|[.\[])", param), f"param {param!r} should name {field!r}: {resp}"


# ---------------------------------------------------------------------------------------------
# API keys


@pytest.mark.parametrize("auth,status", [
    ("Bearer " + API_KEY, 200),
    ("bearer " + API_KEY, 200),
    ("BEARER " + API_KEY, 200),
    (None, 401),
    ("Bearer wrong-key", 401),
    ("Bearer " + API_KEY[:-1], 401),
    ("Bearer " + API_KEY + "x", 401),
    ("Bearer ", 401),
    (API_KEY, 401),
    ("Basic " + API_KEY, 401),
], ids=["Bearer", "bearer", "BEARER", "missing", "wrong", "prefix", "longer", "empty", "no-scheme", "basic"])
def test_api_key(auth_server, auth, status):
    headers = {} if auth is None else {"Authorization": auth}
    code, body = http("GET", auth_server.url + "/v1/models", headers=headers)
    assert code == status, (code, body)
    code, body = http("POST", auth_server.url + "/tokenize", {"prompt": "hi"}, headers=headers)
    assert code == status, (code, body)
    if status == 401:
        assert isinstance(body, dict) and body["error"]["message"], body
    assert http("GET", auth_server.url + "/health")[0] == 200  # open without a key


# ---------------------------------------------------------------------------------------------
# Dropped connections


def test_dropped_connections_return_every_gauge_to_zero(server):
    """8 long generations (streamed and not, both endpoints) dropped mid-way: running, waiting and KV
    blocks return to 0 and each counts exactly once as finished_reason="abort"."""
    before = wait_idle(server)
    conns = []
    for i in range(8):
        chat, stream = bool(i & 1), bool(i & 2)
        body = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0.8, "seed": i, "stream": stream}
        if chat:
            body["messages"] = [{"role": "user", "content": f"Tell me a long story, number {i}."}]
        else:
            body["prompt"] = f"Once upon a time, story number {i},"
        c = Conn(server, timeout=30)
        c.send(request_bytes("POST", "/v1/chat/completions" if chat else "/v1/completions", body))
        conns.append((c, stream))
    for c, stream in conns:  # streams have started
        if stream:
            while b"data: " not in c.buf:
                assert c._fill(), f"the stream ended early: {c.buf[:300]!r}"
    deadline = time.monotonic() + 30
    while metric_values(server)["swiftkv:num_requests_running"] < len(conns):
        assert time.monotonic() < deadline, "the 8 requests did not all start"
        time.sleep(0.05)
    for i, (c, _) in enumerate(conns):
        c.close(reset=bool(i & 4))  # half with FIN, half with RST

    wait_idle(server, timeout=20)
    deadline = time.monotonic() + 3  # the counts may trail the gauges a little
    while metric_values(server)["swiftkv:request_success_total/abort"] < \
            before["swiftkv:request_success_total/abort"] + len(conns) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    v = metric_values(server)
    assert all(v[g] == 0 for g in GAUGES), v
    for reason, want in [("abort", len(conns)), ("length", 0), ("stop", 0)]:
        key = "swiftkv:request_success_total/" + reason
        assert v[key] - before[key] == want, f"{reason}: {v[key] - before[key]} after {len(conns)} dropped requests"
    assert http("GET", server.url + "/health")[0] == 200


# ---------------------------------------------------------------------------------------------
# Logprobs text_offset and Prometheus labels

UNICODE_PROMPT = "café naïve résumé"  # each multi-byte character stays inside one token


def check_text_offsets(lp):
    """text_offset[i] = characters (code points) of the tokens before i, up to the first token that
    is not whole UTF-8 (shown as bytes:...)."""
    tokens, offsets = lp["tokens"], lp["text_offset"]
    assert len(tokens) == len(offsets)
    text = ""
    for tok, off in zip(tokens, offsets):
        assert off == len(text), f"text_offset {offsets} for tokens {tokens}: expected {len(text)} before {tok!r}"
        if tok.startswith("bytes:"):
            break
        text += tok


@pytest.mark.parametrize("max_tokens", [0, 4])
def test_text_offset_counts_characters(server, max_tokens):
    body = {"prompt": UNICODE_PROMPT, "max_tokens": max_tokens, "temperature": 0, "echo": True, "logprobs": 1}
    code, out = http("POST", server.url + "/v1/completions", body)
    assert code == 200, out
    lp = out["choices"][0]["logprobs"]
    assert "".join(lp["tokens"][:len(lp["tokens"]) - max_tokens]) == UNICODE_PROMPT, lp["tokens"]
    check_text_offsets(lp)
    if max_tokens:  # the generated tokens continue after the echoed prompt's characters
        assert lp["text_offset"][-max_tokens] == len(UNICODE_PROMPT), lp
        code, text = http("POST", server.url + "/v1/completions", {**body, "stream": True})
        assert code == 200
        offsets = [o for e in text.split("\n\n") if e.startswith("data: {")
                   for c in json.loads(e[6:])["choices"] if c.get("logprobs") for o in c["logprobs"]["text_offset"]]
        assert offsets == lp["text_offset"], "streamed text_offset differs"


def test_prometheus_le_labels_are_shortest(server):
    code, text = http("GET", server.url + "/metrics")
    assert code == 200
    les = re.findall(r'le="([^"]*)"', text)
    assert les
    for le in les:
        if le == "+Inf":
            continue
        shortest = repr(float(le))  # the shortest decimal that reads back as the same double
        assert len(le) <= len(shortest) and float(le) == float(shortest), f'le="{le}" (shortest: "{shortest}")'


# ---------------------------------------------------------------------------------------------


def test_server_survived(server):
    """Last in the file: after all the hostile traffic the server is alive and healthy."""
    assert server.proc.poll() is None, "the server process died"
    assert http("GET", server.url + "/health") == (200, {})
    wait_idle(server)
