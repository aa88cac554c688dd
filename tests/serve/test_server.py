"""The real ``hicae serve`` on a loopback port: every endpoint, streaming, auth, limits, bad input.

One server for the session (tests/serve/conftest.py: ``served``, ``api``); each error is a 4xx
with a one-line JSON message, and the server's log never shows a traceback.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from hicae.serve.store import SUFFIX

from conftest import TEXTS, build_icae

from .conftest import API_KEY

TEXT = "The quick brown fox jumps over the lazy dog near the river bank, and then it rests in the sun."


def _error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert "\n" not in message and "Traceback" not in r.text
    for n in needles:
        assert n in message, (n, message)
    return message


def _events(r: httpx.Response) -> list:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in r.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def memory(api):
    r = api.post("/v1/memories", json={"text": TEXT})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def test_health_openapi_and_auth(served):
    assert httpx.get(served.url + "/health").json()["status"] == "ok"  # no token needed
    assert httpx.get(served.url + "/docs").status_code == 200
    paths = httpx.get(served.url + "/openapi.json").json()["paths"]
    assert {"/v1/memories", "/v1/memories/{memory_id}", "/v1/memories/{memory_id}/append",
            "/v1/memories/{memory_id}/generate", "/v1/chat/completions", "/metrics"} <= set(paths)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        r = httpx.get(served.url + "/v1/memories", headers=headers)
        _error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
    ok = httpx.get(served.url + "/v1/memories", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and isinstance(ok.json()["data"], list)


def test_memory_lifecycle(api, memory):
    again = api.post("/v1/memories", json={"text": TEXT})  # same text, same model: compressed once
    assert again.status_code == 200 and again.json()["id"] == memory and not again.json()["created_now"]
    info = api.get(f"/v1/memories/{memory}").json()
    assert info["texts"] == 1 and info["tokens"][0] > 8 and info["hierarchical"] and info["levels"] >= 1
    assert info["base_model"] == "tiny-qwen2" and info["created"].startswith("20")
    assert memory in api.get("/v1/memories").json()["data"]
    two = api.post("/v1/memories", json={"texts": TEXTS[:2], "max_slots": 8})
    assert two.status_code == 201 and two.json()["texts"] == 2 and max(two.json()["slots"]) <= 8
    # append: a new memory, the old one stays; its tokens are the sum
    more = api.post(f"/v1/memories/{memory}/append", json={"text": " The dog wakes up and barks."})
    assert more.status_code == 201, more.text
    grown = more.json()
    assert grown["id"] != memory and grown["parent"] == memory and grown["tokens"][0] > info["tokens"][0]
    r = api.post(f"/v1/memories/{grown['id']}/generate", json={"prompt": "Who barks?", "max_new_tokens": 3})
    assert r.status_code == 200 and r.json()["outputs"][0]["tokens"] <= 3
    assert api.delete(f"/v1/memories/{grown['id']}").json()["deleted"]
    _error(api.get(f"/v1/memories/{grown['id']}"), 404, "no memory")
    _error(api.delete(f"/v1/memories/{grown['id']}"), 404, "no memory")
    assert api.get(f"/v1/memories/{memory}").status_code == 200


def test_generate_tasks_and_streaming(api, memory):
    r = api.post(f"/v1/memories/{memory}/generate", json={"prompts": ["Which animal?", "Where?"], "max_new_tokens": 5})
    outs = r.json()["outputs"]
    assert [o["prompt"] for o in outs] == ["Which animal?", "Where?"] and all(o["tokens"] <= 5 for o in outs)
    for task in ("reconstruct", "continue"):
        out = api.post(f"/v1/memories/{memory}/generate", json={"task": task, "max_new_tokens": 4}).json()["outputs"]
        assert len(out) == 1 and out[0]["prompt"] is None and 1 <= out[0]["tokens"] <= 4
    sampled = api.post(f"/v1/memories/{memory}/generate",
                       json={"prompt": "Which animal?", "max_new_tokens": 5, "do_sample": True, "temperature": 0.8,
                             "seed": 3})
    again = api.post(f"/v1/memories/{memory}/generate",
                     json={"prompt": "Which animal?", "max_new_tokens": 5, "do_sample": True, "temperature": 0.8,
                           "seed": 3})
    assert sampled.json()["outputs"] == again.json()["outputs"]  # a seed makes sampling repeatable
    # streaming: the pieces make up the non-streamed answer (greedy)
    r = api.post(f"/v1/memories/{memory}/generate", json={"prompt": "Which animal?", "max_new_tokens": 5, "stream": True})
    events = _events(r)
    assert events[-1]["done"] and events[-1]["text"] == outs[0]["text"] and len(events) >= 2
    assert "".join(e["text"] for e in events[:-1]) == outs[0]["text"]


def test_chat_completions_with_the_openai_client(served, api, memory):
    want = api.post(f"/v1/memories/{memory}/generate", json={"prompt": "Which animal?", "max_new_tokens": 6}).json()
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY)
    reply = client.chat.completions.create(model="hicae", messages=[{"role": "user", "content": "Which animal?"}],
                                           max_tokens=6, extra_body={"memory_id": memory})
    assert reply.choices[0].message.content == want["outputs"][0]["text"]
    assert reply.choices[0].finish_reason == want["outputs"][0]["finish_reason"]
    assert reply.usage.completion_tokens == want["outputs"][0]["tokens"]
    stream = client.chat.completions.create(model="hicae", messages=[{"role": "user", "content": "Which animal?"}],
                                            max_tokens=6, stream=True, extra_body={"memory_id": memory})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want["outputs"][0]["text"]
    assert chunks[-1].choices[0].finish_reason == want["outputs"][0]["finish_reason"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong").chat.completions.create(
            model="hicae", messages=[{"role": "user", "content": "x"}], extra_body={"memory_id": memory})


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(api, memory):
    """Concurrent greedy requests on two memories, of two lengths: batched across memories, each answer equal to
    the one-at-a-time answer (the shorter one is cut from the longer call: exact, it is greedy)."""
    other = api.post("/v1/memories", json={"text": "A hash table maps keys to buckets; collisions are chained."})
    other = other.json()["id"]
    asks = [(memory, "Which animal?", 6), (other, "What is chained?", 6), (memory, "Where does it rest?", 3),
            (other, "Why?", 6)]
    before = api.get("/metrics").json()["decoding"]
    results: dict[int, dict] = {}

    def ask(i: int) -> None:
        mid, p, n = asks[i]
        results[i] = api.post(f"/v1/memories/{mid}/generate", json={"prompt": p, "max_new_tokens": n}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = api.get("/metrics").json()["decoding"]
    assert after["batched_requests"] > before["batched_requests"]  # some of them shared a decoder call
    assert after["max_memories_per_call"] == 2  # ... across the two memories
    for i, (mid, p, n) in enumerate(asks):  # each alone (the window still applies, but nothing else is queued)
        alone = api.post(f"/v1/memories/{mid}/generate", json={"prompt": p, "max_new_tokens": n}).json()
        assert alone["outputs"] == results[i]["outputs"]
    assert results[2]["outputs"][0]["tokens"] <= 3


def test_queue_full_is_429_and_nothing_is_lost(served, api, memory):
    # sampled requests run one at a time; with --max_queue 4 some of 12 simultaneous ones are refused
    statuses: list[int] = []

    def ask(i: int) -> None:
        r = api.post(f"/v1/memories/{memory}/generate",
                     json={"prompt": "Tell me more.", "max_new_tokens": 32, "do_sample": True, "seed": i})
        statuses.append(r.status_code)
        if r.status_code == 429:
            _error(r, 429, "--max_queue 4")
            assert r.headers["retry-after"] == "1"

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 12 and set(statuses) <= {200, 429}
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1
    m = api.get("/metrics").json()
    assert m["requests"]["rejected_429"] >= statuses.count(429) and m["queue"]["limit"] == 4
    assert m["prefix_cache"]["hits"] >= 1 and m["tokens"]["generated"] > 0


def test_bad_input_is_a_clear_4xx(served, api, memory, qwen3_tokenizer):
    gen = f"/v1/memories/{memory}/generate"
    raw = {"content-type": "application/json"}
    _error(api.post("/v1/memories", content=b'{"text": "unterminated', headers=raw), 400, "malformed JSON")
    _error(api.post("/v1/memories", json={"text": "x", "colour": "red"}), 422, "colour")
    _error(api.post("/v1/memories", json={}), 422, '"text" or "texts"')
    _error(api.post("/v1/memories", json={"text": "   "}), 400, "empty")
    _error(api.post("/v1/memories", json={"text": "word " * 300}), 400, "text 0 has 30", "over --max_text_tokens=200")
    _error(api.post("/v1/memories", json={"text": "x" * 2001}), 413, "--max_text_chars 2000")
    _error(api.post("/v1/memories", content=b'{"text": "' + b"y" * 30000 + b'"}', headers=raw), 413, "--max_body_bytes")
    _error(api.post(gen, json={"prompts": ["q"] * 5}), 413, "--max_prompts 4")
    _error(api.post(gen, json={"prompt": "q", "max_new_tokens": 65}), 413, "--max_new_tokens 64")
    _error(api.post(gen, json={"prompt": "q", "max_new_tokens": 0}), 422, "max_new_tokens")
    _error(api.post(gen, json={"prompt": "q", "temperature": -1, "do_sample": True}), 422, "temperature")
    _error(api.post(gen, json={"task": "translate"}), 422, "task")
    _error(api.post(gen, json={"task": "reconstruct", "prompt": "q"}), 400, "takes no prompts")
    _error(api.post(gen, json={}), 400, "needs a prompt")
    _error(api.post(gen, json={"prompts": ["a", "b"], "stream": True}), 400, "stream")
    _error(api.post(f"/v1/memories/{'0' * 32}/generate", json={"prompt": "q"}), 404, "no memory")
    for bad in ("abc", "A" * 32, "%2e%2e", "0" * 32 + "%00"):
        _error(api.get(f"/v1/memories/{bad}"), 400, "invalid memory id")
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f.lock"):  # a slash: no route matches (404), no file is read
        r = api.get(f"/v1/memories/{bad}")
        assert r.status_code in (400, 404) and r.json()["error"]["message"]
    _error(api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}), 422, "memory_id")
    _error(api.post("/v1/chat/completions", json={"memory_id": memory, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]}), 400, "one user message")
    _error(api.get("/v1/nothing"), 404, "no route")
    # wrong files in the store: not a memory at all, and a memory of another model (config)
    store = served.store
    junk, other = "e" * 32, "f" * 32
    (store / f"{junk}{SUFFIX}").write_bytes(b"\x00" * 64)
    build_icae(qwen3_tokenizer, "qwen2", mem_size=2).model.compress(TEXT).save(store / f"{other}{SUFFIX}")
    _error(api.get(f"/v1/memories/{junk}"), 409, f"memory {junk}", "cannot read")
    message = _error(api.post(f"/v1/memories/{other}/generate", json={"prompt": "q"}), 409, "another model or config")
    assert str(store) not in message
    assert "Traceback" not in served.output()


def test_chunked_body_over_the_limit_is_413(api):
    def chunks():  # no Content-Length: the limit applies while the body is read
        yield b'{"text": "'
        for _ in range(30):
            yield b"z" * 1000
        yield b'"}'

    _error(api.post("/v1/memories", content=chunks(), headers={"content-type": "application/json"}), 413,
           "--max_body_bytes 20000")


def test_kill9_then_restart_serves_the_store(served, api, memory):
    """Last in this file: it restarts the shared server (same port and store)."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ask = {"prompts": ["What is it about?", "Who?"], "max_new_tokens": 6}
    before = api.post(f"/v1/memories/{memory}/generate", json=ask).json()
    info = api.get(f"/v1/memories/{memory}").json()
    acknowledged = set(api.get("/v1/memories").json()["data"])

    def compress_late() -> None:  # in flight when the server dies: it may or may not have finished
        try:
            httpx.post(served.url + "/v1/memories", json={"texts": ["word " * 40] * 8}, headers=auth, timeout=60)
        except httpx.TransportError:
            pass

    late = threading.Thread(target=compress_late, daemon=True)
    late.start()
    time.sleep(0.05)
    served.kill9()
    late.join()
    (served.store / f".{'9' * 32}{SUFFIX}.abc.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves
    served.start()
    listed = set(httpx.get(served.url + "/v1/memories", headers=auth).json()["data"])
    assert acknowledged <= listed and len(listed - acknowledged) <= 1
    for mid in listed - {"e" * 32, "f" * 32}:  # every file but the planted wrong ones is whole: it loads
        assert httpx.get(f"{served.url}/v1/memories/{mid}", headers=auth).status_code == 200
    assert httpx.get(f"{served.url}/v1/memories/{memory}", headers=auth).json() == info
    after = httpx.post(f"{served.url}/v1/memories/{memory}/generate", json=ask, headers=auth, timeout=60).json()
    assert after == before
    assert not list(served.store.glob(".*.tmp"))
    assert "Traceback" not in served.output()
