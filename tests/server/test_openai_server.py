"""`swiftkv serve`: the OpenAI-compatible HTTP API, driven by the official `openai` client.

A module-scoped server runs the default model (-c 2048) on a free port; a second one requires an API
key. Generations stay short (the default model decodes ~40 tokens/s on a small CPU).
Decisions checked here: a request naming a model other than the served one gets 404
(openai.NotFoundError, code model_not_found), like the OpenAI API and vLLM; an empty model is fine.
"""
import json
import math
import time
import urllib.request

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client.parser")

from serverutil import CTX, Server, http, metric_values, requires_server
from testpaths import ROOT
API_KEY = "sk-test-key-123"

pytestmark = requires_server


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def auth_server():
    s = Server("--api-key", API_KEY)
    yield s
    s.stop()


PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def greedy16(client):
    r = client.completions.create(model="", prompt=PROMPT, max_tokens=16, temperature=0)
    return r


def assert_error(resp, status):
    code, body = resp
    assert code == status, body
    assert isinstance(body, dict) and "error" in body, body
    assert body["error"]["message"], body
    return body["error"]


# ---------------------------------------------------------------------------------------------
# Basics


def test_health_and_models(server, client):
    assert http("GET", server.url + "/health") == (200, {})
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]


def test_completion_stream_matches_non_stream(client, greedy16):
    assert greedy16.choices[0].finish_reason in ("length", "stop")
    assert greedy16.usage.completion_tokens <= 16
    text = greedy16.choices[0].text
    assert text
    stream = client.completions.create(model="", prompt=PROMPT, max_tokens=16, temperature=0, stream=True)
    parts, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            parts.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(parts) == text
    assert finish == greedy16.choices[0].finish_reason


def test_chat_non_stream_and_stream(client):
    msgs = [{"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(model="", messages=msgs, max_tokens=8, temperature=0)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert r.object == "chat.completion"
    stream = client.chat.completions.create(model="", messages=msgs, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == msg.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_stream_ends_with_done(server):
    req = urllib.request.Request(server.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                                  "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [l for l in r.read().decode().split("\n\n") if l]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_usage_matches_tokenize(server, greedy16):
    code, tok = http("POST", server.url + "/tokenize", {"prompt": PROMPT})
    assert code == 200
    assert greedy16.usage.prompt_tokens == tok["count"] == len(tok["tokens"])
    assert greedy16.usage.total_tokens == greedy16.usage.prompt_tokens + greedy16.usage.completion_tokens


def test_tokenize_detokenize_round_trip(server):
    text = "Hello world, this is swiftkv!"
    code, tok = http("POST", server.url + "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert code == 200 and tok["max_model_len"] == CTX
    code, detok = http("POST", server.url + "/detokenize", {"tokens": tok["tokens"]})
    assert code == 200 and detok["prompt"] == text
    code, chat_tok = http("POST", server.url + "/tokenize", {"messages": [{"role": "user", "content": text}]})
    assert code == 200 and chat_tok["count"] > tok["count"]
    assert_error(http("POST", server.url + "/detokenize", {"tokens": [10**9]}), 400)


# ---------------------------------------------------------------------------------------------
# Sampling and stopping


def test_n_choices(client):
    r = client.completions.create(model="", prompt=PROMPT, max_tokens=4, temperature=0.8, seed=1, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.text for c in r.choices)
    assert 2 <= r.usage.completion_tokens <= 8
    if all(c.finish_reason == "length" for c in r.choices):
        assert r.usage.completion_tokens == 8


def test_stop_string(client, greedy16):
    text = greedy16.choices[0].text
    # A stop string from the middle of the greedy text: the output is cut right before it.
    cut = max(2, len(text) // 2)
    stop = text[cut:cut + 2]
    assert stop.strip(), text
    r = client.completions.create(model="", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:text.index(stop)]


def test_max_tokens_gives_length(client):
    r = client.completions.create(model="", prompt=PROMPT, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_seed_reproducible(client):
    a = client.completions.create(model="", prompt="Once upon a time", max_tokens=8, temperature=0.8, seed=1234)
    b = client.completions.create(model="", prompt="Once upon a time", max_tokens=8, temperature=0.8, seed=1234)
    assert a.choices[0].text == b.choices[0].text


def test_completion_logprobs(client):
    r = client.completions.create(model="", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert math.isfinite(v) and v <= 0
        assert len(top) == 2
        assert all(math.isfinite(x) and x <= 0 for x in top.values())
        assert max(top.values()) == pytest.approx(v, abs=1e-5)  # greedy: the chosen token is the most likely
    assert "".join(lp.tokens) == r.choices[0].text


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for item in content:
        assert math.isfinite(item.logprob) and item.logprob <= 0
        assert len(item.top_logprobs) == 3
    stream = client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                            temperature=0, logprobs=True, top_logprobs=1, stream=True)
    streamed = [x for c in stream if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [x.token for x in streamed] == [x.token for x in content]


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs", [
    dict(temperature=5),
    dict(n=0),
    dict(max_tokens=CTX + 10),  # prompt + max_tokens over the context
    dict(extra_body={"max_tokens": "abc"}),
    dict(extra_body={"stop": 3}),
])
def test_bad_completion_requests(client, kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="", prompt=PROMPT, **{"max_tokens": 2, **kwargs})
    assert e.value.body and e.value.body.get("message"), e.value.body


def test_context_length_message(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="", prompt="word " * 2100, max_tokens=1)
    assert f"maximum context length is {CTX} tokens" in str(e.value)


def test_bad_chat_requests(server, client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=[], max_tokens=2)
    err = assert_error(http("POST", server.url + "/v1/chat/completions", {"max_tokens": 2}), 400)
    assert "messages" in err["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=1)
    assert "no-such-model" in str(e.value)


def test_http_errors(server):
    err = assert_error(http("POST", server.url + "/v1/completions", b"{not json"), 400)
    assert err["type"] == "invalid_request_error"
    assert_error(http("POST", server.url + "/v1/completions", b"[1, 2]"), 400)
    assert_error(http("GET", server.url + "/v1/nothing-here"), 404)
    assert_error(http("GET", server.url + "/v1/completions"), 405)
    assert_error(http("POST", server.url + "/v1/completions", b"x" * (9 << 20)), 413)


def test_client_disconnect_mid_stream(server, client):
    req = urllib.request.Request(server.url + "/v1/completions", method="POST",
                                 data=json.dumps({"prompt": PROMPT, "max_tokens": 400, "temperature": 0.7,
                                                  "ignore_eos": True, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    r = urllib.request.urlopen(req, timeout=30)
    r.readline()  # the first event arrived: generation is running
    r.close()
    t0 = time.time()
    out = client.completions.create(model="", prompt=PROMPT, max_tokens=2, temperature=0)
    assert out.choices[0].text
    assert time.time() - t0 < 8, "the abandoned generation was not aborted"


def test_client_disconnect_non_streaming(server, client):
    """A non-streaming client that hangs up gets its request aborted (its KV blocks freed)."""
    import socket
    host, port = server.url.split("//")[1].split(":")
    body = json.dumps({"prompt": PROMPT, "max_tokens": 400, "temperature": 0.7, "ignore_eos": True}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.time() + 10
    while time.time() < deadline and metric_values(server).get("swiftkv:num_requests_running", 0) < 1:
        time.sleep(0.05)
    s.close()
    t0 = time.time()
    out = client.completions.create(model="", prompt=PROMPT, max_tokens=2, temperature=0)
    assert out.choices[0].text
    assert time.time() - t0 < 8, "the abandoned non-streaming generation was not aborted"
    deadline = time.time() + 10
    while time.time() < deadline and metric_values(server).get("swiftkv:kv_cache_blocks_used", 1) != 0:
        time.sleep(0.05)
    assert metric_values(server)["swiftkv:kv_cache_blocks_used"] == 0


def oracle_prompts():
    refs = json.loads((ROOT / "tests" / "oracle" / "data" / "oracle_refs.json").read_text())
    return [p for p in refs["prompts"] if p.get("position_stats")]


def test_echo_prompt_logprobs_match_llama_cpp(server, client):
    """echo + logprobs returns every prompt token's logprob (the first is null), as lm-eval's
    log-likelihood requests need; the values match llama.cpp's (scripts/make_oracle_refs.py)."""
    for p in oracle_prompts():
        ids = p["prompt_ids"]
        ref = p["position_stats"]["next_token_logprob"]
        for max_tokens in (0, 1):
            out = client.completions.create(model="", prompt=ids, max_tokens=max_tokens, temperature=0,
                                            echo=True, logprobs=1)
            lp = out.choices[0].logprobs
            assert len(lp.tokens) == len(ids) + max_tokens
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            got = lp.token_logprobs[1:len(ids)]
            assert max(abs(a - b) for a, b in zip(got, ref)) < 2e-3, p["name"]
            for j in range(1, len(ids)):  # the top alternative is at least as likely as the token
                assert max(lp.top_logprobs[j].values()) >= lp.token_logprobs[j] - 1e-5
            assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
            text = out.choices[0].text
            assert text.startswith(http("POST", server.url + "/detokenize", {"tokens": ids})[1]["prompt"])
            assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == max_tokens


def test_stop_token_has_a_logprob(client):
    """A generated stop token gets its logprob entry like any other token (lm-eval drops the last entry
    of an echo response as the generated one)."""
    p = oracle_prompts()[0]
    ids, first = p["prompt_ids"], p["greedy_ids"][0]
    out = client.completions.create(model="", prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1,
                                    extra_body={"stop_token_ids": [first]})
    c = out.choices[0]
    assert c.finish_reason == "stop"
    assert len(c.logprobs.token_logprobs) == len(ids) + 1
    assert c.logprobs.token_logprobs[-1] == max(c.logprobs.top_logprobs[-1].values())  # it was the greedy pick


def test_echo_logprobs_stream_and_text_prompt(client):
    text = "The capital of France is"
    full = client.completions.create(model="", prompt=text, max_tokens=3, temperature=0, echo=True, logprobs=2)
    chunks = list(client.completions.create(model="", prompt=text, max_tokens=3, temperature=0, echo=True,
                                            logprobs=2, stream=True))
    streamed_text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed_text == full.choices[0].text and streamed_text.startswith(text)
    streamed_lps = [v for c in chunks if c.choices and c.choices[0].logprobs
                    for v in c.choices[0].logprobs.token_logprobs]
    assert streamed_lps[0] is None and full.choices[0].logprobs.token_logprobs[0] is None
    assert all(abs(a - b) < 1e-5 for a, b in zip(streamed_lps[1:], full.choices[0].logprobs.token_logprobs[1:]))
    # max_tokens 0 needs echo
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="", prompt=text, max_tokens=0)


# ---------------------------------------------------------------------------------------------
# Metrics and auth


def test_metrics(server, client):
    before = metric_values(server)
    for name in ["swiftkv:num_requests_running", "swiftkv:num_requests_waiting", "swiftkv:kv_cache_blocks_used",
                 "swiftkv:kv_cache_blocks_total", "swiftkv:prefix_cache_hit_rate"]:
        assert name in before, name
    assert before["swiftkv:kv_cache_blocks_total"] > 0
    client.completions.create(model="", prompt=PROMPT, max_tokens=3, temperature=0)
    after = metric_values(server)
    assert after["swiftkv:prompt_tokens_total"] > before["swiftkv:prompt_tokens_total"]
    assert after["swiftkv:generation_tokens_total"] >= before["swiftkv:generation_tokens_total"] + 3
    assert after["swiftkv:request_success_total/length"] >= before["swiftkv:request_success_total/length"] + 1
    for h in ["swiftkv:time_to_first_token_seconds", "swiftkv:time_per_output_token_seconds",
              "swiftkv:e2e_request_latency_seconds"]:
        assert after[h + "_count"] >= before[h + "_count"] + 1
        assert after[h + "_bucket@+Inf"] == after[h + "_count"]
        assert after[h + "_sum"] > 0


def test_auth(auth_server):
    with pytest.raises(openai.AuthenticationError):
        auth_server.client(api_key="wrong").completions.create(model="", prompt=PROMPT, max_tokens=1)
    assert_error(http("POST", auth_server.url + "/tokenize", {"prompt": "hi"}), 401)
    r = auth_server.client(api_key=API_KEY).completions.create(model="", prompt=PROMPT, max_tokens=2, temperature=0)
    assert r.choices[0].text
    assert http("GET", auth_server.url + "/health")[0] == 200
    assert http("GET", auth_server.url + "/metrics")[0] == 200
    code, _ = http("POST", auth_server.url + "/tokenize", {"prompt": "hi"},
                   headers={"Authorization": "Bearer " + API_KEY})
    assert code == 200


def test_sigterm_exits_cleanly_mid_request(auth_server):
    req = urllib.request.Request(auth_server.url + "/v1/completions", method="POST",
                                 data=json.dumps({"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
                                                  "stream": True}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + API_KEY})
    r = urllib.request.urlopen(req, timeout=30)
    r.readline()
    t0 = time.time()
    assert auth_server.stop() == 0
    assert time.time() - t0 < 15
    r.close()


def test_queued_request_counts_as_waiting(server, client):
    import threading
    req = urllib.request.Request(server.url + "/v1/completions", method="POST",
                                 data=json.dumps({"prompt": PROMPT, "max_tokens": 300, "ignore_eos": True,
                                                  "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    r = urllib.request.urlopen(req, timeout=30)
    r.readline()  # the long request runs
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", client.completions.create(model="", prompt=PROMPT, max_tokens=2, temperature=0)))
    t.start()
    seen = None
    for _ in range(100):
        v = metric_values(server)
        if v["swiftkv:num_requests_waiting"] == 1:
            seen = v
            break
        time.sleep(0.02)
    r.close()  # abort the long one: the queued one runs next
    t.join(timeout=30)
    assert seen is not None and seen["swiftkv:num_requests_running"] == 1
    assert seen["swiftkv:kv_cache_blocks_used"] > 0
    assert result["r"].choices[0].text


def test_concurrent_requests_are_batched_and_unchanged(server, client):
    # Continuous batching: requests in flight together advance in the same steps, and each gets the
    # same greedy text as when it runs alone.
    import concurrent.futures

    prompts = ["The capital of France is", "Once upon a time", "def add(a, b):", "Water boils at"]
    alone = [client.completions.create(model="", prompt=p, max_tokens=12, temperature=0).choices[0].text
             for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(
            lambda p: client.completions.create(model="", prompt=p, max_tokens=12, temperature=0).choices[0].text,
            prompts))
    assert together == alone
