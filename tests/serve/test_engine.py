"""The model worker in-process: micro-batched answers equal one-at-a-time answers, the LRU's byte
bound, the bounded queue, deadlines, and the store's ids and atomic files."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hicae.errors import CheckpointError, DataError
from hicae.sampling import SamplingOptions
from hicae.serve.engine import CompressArgs, DecodeArgs, Engine, QueueFull, Timeout
from hicae.speed import adapter_in_dtype
from hicae.serve.settings import ServeConfig
from hicae.serve.store import MemoryStore, NotFound, check_id

from conftest import TEXTS, build_icae, memory_argmax, penalised, perturb_trainable

PROMPTS = ["Which animal jumps?", "Where?", "What is near the river bank, and what does the fox do there?"]


@pytest.fixture(scope="module")
def model(qwen3_tokenizer):
    return build_icae(qwen3_tokenizer, "qwen2").model


def _engine(model, tmp_path, **cfg) -> Engine:
    return Engine(model, MemoryStore(tmp_path / "store"), ServeConfig(**cfg))


def _compress(engine: Engine, texts: list[str]) -> str:
    mid = engine.memory_id_of("compress", texts=texts, max_slots=None)
    job = engine.submit(engine.job("compress", CompressArgs(id=mid, texts=texts, max_slots=None, parent=None)))
    assert job.future.result(60)["created"]
    return mid


def _decode(engine: Engine, mid: str, prompts, task="answer", max_new_tokens=6):
    """A decoding job as the HTTP handlers make it (``Engine.decode_job``), queued."""
    options = SamplingOptions(max_new_tokens=max_new_tokens)
    return engine.submit(engine.decode_job(mid, engine.hot.get(mid).mem, task, prompts, options))


def test_micro_batch_equals_one_at_a_time(model, tmp_path):
    """Greedy requests on different memories and of different lengths share one decoder call (each row from
    its own memory's prefix cache, decoded to the longest length and cut), and every answer equals the
    one-request-at-a-time answer of the plain model (fp32, exact token ids)."""
    engine = _engine(model, tmp_path, batch_window_ms=300)
    engine.start()
    try:
        one, two, three = _compress(engine, [TEXTS[0]]), _compress(engine, TEXTS[1:3]), _compress(engine, [TEXTS[3]])
        _decode(engine, three, ["Warm-up: its prefix is cached."], max_new_tokens=1).future.result(60)
        calls = engine.stats.snapshot()["decoder_calls"]
        jobs = [_decode(engine, one, [p]) for p in PROMPTS] + [_decode(engine, one, PROMPTS[:2])]
        jobs += [_decode(engine, two, ["Summarise."]), _decode(engine, three, [PROMPTS[2]], max_new_tokens=3)]
        jobs += [_decode(engine, one, None, task="reconstruct"), _decode(engine, two, ["Longer."], max_new_tokens=9)]
        results = [j.future.result(120) for j in jobs]
        stats = engine.stats.snapshot()
        mems = [engine.hot.get(m).mem for m in (one, two, three)]
    finally:
        engine.stop()
    # the seven answer requests of at most 6 tokens on three memories shared one decoder call (the 3-token one
    # cut from it); the reconstruction (another task) and the 9-token request (longer than the call) had their own
    assert (stats["batch_requests_max"], stats["batch_memories_max"], stats["decoder_calls"] - calls) == (6, 3, 3)
    assert stats["prefix_cache_hits"] >= 1  # memory three's prefix, computed by the warm-up, was reused
    # the reference: the plain model, one request at a time, no prefix cache
    tok = model.tokenizer
    want = [model.generate_ids(mems[0], [p], 6, prefix_cache=False) for p in PROMPTS]
    want.append(model.generate_ids(mems[0], PROMPTS[:2], 6, prefix_cache=False))
    want.append(model.generate_ids(mems[1], ["Summarise."], 6, prefix_cache=False))
    want.append(model.generate_ids(mems[2], [PROMPTS[2]], 3, prefix_cache=False))
    want.append(model.reconstruct_ids(mems[0], 6, prefix_cache=False))
    want.append(model.generate_ids(mems[1], ["Longer."], 9, prefix_cache=False))
    for res, ids in zip(results, want):
        assert [o["text"] for o in res["outputs"]] == tok.batch_decode(ids, skip_special_tokens=True)
        assert [o["tokens"] for o in res["outputs"]] == [len(x) for x in ids]
    assert len(results[3]["outputs"]) == 2 and len(results[4]["outputs"]) == 2  # 2 prompts; 2 texts
    assert results[5]["outputs"][0]["tokens"] == 3 and results[5]["outputs"][0]["finish_reason"] == "length"
    assert {len(x) for r in want[:5] for x in r} == {6}  # no early stop: the cut really shortened a longer row


def test_batches_are_filled_oldest_first_and_never_lengthened(model, tmp_path):
    """``_take``: the oldest job leads each call; queued jobs of its group join oldest first if they decode no
    longer than it and fit ``max_batch_rows``; others wait for a later call (nothing starves)."""
    engine = _engine(model, tmp_path, batch_window_ms=0, max_batch_rows=4)

    def job(name, limit=8, rows=1, task="answer", grouped=True):
        args = DecodeArgs(memory_id=name, task=task, prompts=None, max_new_tokens=limit, sampling=SamplingOptions(),
                          rows=rows)
        return engine.submit(engine.job("decode", args, ("greedy", task, "m") if grouped else None))

    job("a", 8), job("b", 16), job("c", 4), job("d", grouped=False), job("e", 4, task="reconstruct"), job("f", 8, rows=3)
    job("g", 8, rows=2)
    taken = [[j.args.memory_id for j in engine._take()] for _ in range(4)]
    assert taken == [["a", "c", "g"], ["b", "f"], ["d"], ["e"]] and engine.depth == 0


def test_prefix_lru_is_bounded_in_bytes(model, tmp_path):
    engine = _engine(model, tmp_path, prefix_cache_bytes=1)  # smaller than any memory: nothing stays
    engine.start()
    try:
        a = _compress(engine, [TEXTS[0]])
        _decode(engine, a, ["Q?"]).future.result(60)
        assert engine.hot.nbytes <= 1 and len(engine.hot) == 0 and engine.hot.evictions >= 1
    finally:
        engine.stop()
    engine = _engine(model, tmp_path / "b")
    engine.start()
    try:
        a, b = _compress(engine, [TEXTS[0]]), _compress(engine, [TEXTS[3]])
        _decode(engine, a, ["Q?"]).future.result(60)
        size_a = engine.hot.nbytes
        _decode(engine, a, ["Another question?"]).future.result(60)  # the prefix is reused: a hit
        s = engine.stats.snapshot()
        assert (s["prefix_cache_misses"], s["prefix_cache_hits"]) == (1, 1)
        _decode(engine, b, ["Q?"]).future.result(60)
        both = engine.hot.nbytes
        assert both > size_a > 0
        engine.hot.budget = both - 1  # one byte short of both: the least recently used (a) goes
        engine.hot.trim()
        assert engine.hot.nbytes <= engine.hot.budget and list(engine.hot._items) == [b]
    finally:
        engine.stop()


def test_bounded_queue_deadline_and_bad_rows(model, tmp_path):
    engine = _engine(model, tmp_path, max_queue=2, request_timeout=0.05)
    mid = engine.memory_id_of("compress", texts=[TEXTS[0]], max_slots=None)
    args = DecodeArgs(memory_id=mid, task="answer", prompts=["Q?"], max_new_tokens=6, sampling=SamplingOptions(), rows=1)
    queued = [engine.submit(engine.job("decode", args, ("greedy", "answer", "m"))) for _ in range(2)]
    with pytest.raises(QueueFull, match="max_queue 2"):
        engine.submit(engine.job("decode", args))
    time.sleep(0.1)  # past the deadline before the worker starts: dropped, not run
    engine.start()
    try:
        for job in queued:
            with pytest.raises(Timeout):
                job.future.result(30)
        assert "decoder_calls" not in engine.stats.snapshot()
    finally:
        engine.stop()
    # a deadline that passes mid-decoding stops it between two tokens
    engine = _engine(model, tmp_path / "slow", request_timeout=0.3, max_new_tokens=4000)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])
        args = DecodeArgs(memory_id=mid, task="continue", prompts=None, max_new_tokens=4000, rows=1,
                          sampling=SamplingOptions(do_sample=True, seed=0, top_k=50000))  # sampling: no early stop on EOS
        job = engine.submit(engine.job("decode", args))
        started = time.monotonic()
        out = job.future.result(60)["outputs"][0]
        assert out["tokens"] < 4000 and time.monotonic() - started < 10
    finally:
        engine.stop()
    with pytest.raises(DataError, match="3 prompts for 2 memories"):
        Engine.rows_of([0, 1], "answer", ["a", "b", "c"])
    with pytest.raises(DataError, match="takes no prompts"):
        Engine.rows_of([0], "reconstruct", ["a"])


def test_store_ids_atomic_files_and_lock(model, tmp_path):
    root = tmp_path / "store"
    store = MemoryStore(root)
    with pytest.raises(Exception, match="another hicae serve"):
        MemoryStore(root)
    for bad in ("../../etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "/x", ".lock"):
        with pytest.raises(DataError, match="invalid memory id"):
            store.path(bad)
    assert check_id("0" * 32) == "0" * 32
    mem = model.compress(TEXTS[0])
    store.save("a" * 32, mem)
    (root / ("b" * 32 + ".mem.safetensors")).write_bytes(b"not a memory")
    (root / f".{'c' * 32}.mem.safetensors.x1.tmp").write_bytes(b"half")  # what kill -9 mid-write leaves
    store.close()
    store = MemoryStore(root)  # a restart removes the half-written file, keeps the complete ones
    assert store.ids() == ["a" * 32, "b" * 32] and not list(root.glob(".*.tmp"))
    assert store.load("a" * 32).num_tokens == mem.num_tokens
    with pytest.raises(CheckpointError, match=f"memory {'b' * 32}: cannot read") as e:
        store.load("b" * 32)
    assert str(root) not in str(e.value)  # clients see ids, not server paths
    with pytest.raises(NotFound):
        store.load("d" * 32)
    store.delete("a" * 32)
    with pytest.raises(NotFound):
        store.delete("a" * 32)
    # the same texts on the same model: the same id; other texts or another budget: another
    ids = {model_id(model, t, m) for t, m in [("x", None), ("x", None), ("y", None), ("x", 8)]}
    assert len(ids) == 3
    store.close()


def model_id(model, text, max_slots):
    from hicae.serve.store import memory_id

    return memory_id(model, op="compress", texts=[text], max_slots=max_slots)


def test_serve_cli_refuses_bad_settings_in_one_line(tmp_path, capsys):
    from hicae.cli.main import main

    base = ["serve", "--checkpoint", str(tmp_path / "none"), "--store", str(tmp_path / "store"), "--device", "cpu"]
    for extra, needle in ((["--max_queue", "0"], "--max_queue must be >= 1"),
                          (["--request_timeout", "0"], "--request_timeout must be > 0"),
                          (["--api_key", " "], "--api_key is empty"),
                          (["--port", "70000"], "--port must be in 0..65535")):
        assert main(base + extra) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("hicae serve: error:") and needle in err and "\n" not in err
    held = MemoryStore(tmp_path / "store")  # a running server's lock
    try:
        assert main(base) == 1
        assert "another hicae serve is using this store" in capsys.readouterr().err
    finally:
        held.close()


def test_every_failure_maps_to_a_status_and_one_line():
    from hicae.errors import ConfigError, OutputError
    from hicae.serve.errors import TooLarge, Unauthorized, classify

    cases = [(NotFound("n"), 404), (QueueFull("q"), 429), (Timeout("t"), 504), (TooLarge("l"), 413),
             (Unauthorized("u"), 401), (CheckpointError("c"), 409), (DataError("d"), 400), (ConfigError("g"), 400),
             (OutputError("o"), 500)]
    for e, status in cases:
        assert classify(e) == (status, classify(e)[1], str(e))
    assert classify(RuntimeError("secret detail")) == (500, "internal_error",
                                                       "internal error (the server log has the details)")
    assert classify(OSError(28, "No space left on device"))[0::2] == (500, "No space left on device")


def test_default_length_is_within_the_servers_cap(model, tmp_path):
    """A request without max_new_tokens decodes at most --max_new_tokens (not a fixed 128)."""
    engine = _engine(model, tmp_path, max_new_tokens=3)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])
        for task, prompts in (("answer", ["Q?"]), ("continue", None)):
            res = _decode(engine, mid, prompts, task=task, max_new_tokens=None).future.result(60)
            assert max(o["tokens"] for o in res["outputs"]) == 3
    finally:
        engine.stop()


def test_handler_threads_never_size_the_caches_and_deleted_memories_stay_out(model, tmp_path):
    """``HotMemories.get`` runs on request threads: it must not trim (sizing reads prefix caches that the
    worker mutates), and a memory deleted while a request was loading it is not put back."""
    engine = _engine(model, tmp_path)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])
    finally:
        engine.stop()
    hot = engine.hot
    hot.drop(mid)
    hot.trim = lambda: pytest.fail("trim() called on a request thread")
    assert hot.get(mid).mem.num_tokens and len(hot) == 1  # a miss loads and keeps it, without trimming
    hot.drop(mid)
    load = engine.store.load

    def load_then_deleted(memory_id, **kw):  # DELETE /v1/memories/{id} lands between load and insert
        mem = load(memory_id, **kw)
        engine.store.delete(memory_id)
        hot.drop(memory_id)
        return mem

    engine.store.load = load_then_deleted
    assert hot.get(mid).mem.num_tokens  # this request is still answered
    assert len(hot) == 0


def test_sampling_options_without_do_sample_are_refused():
    """Greedy decoding would ignore them: a 4xx naming them, not an answer decoded otherwise than asked."""
    from pydantic import ValidationError

    from hicae.serve.schemas import GenerateRequest

    with pytest.raises(ValidationError, match='temperature, seed only apply when sampling: set "do_sample": true'):
        GenerateRequest(prompt="Q?", temperature=0.7, seed=1)
    assert GenerateRequest(prompt="Q?", do_sample=True, temperature=0.7).options().generate_kwargs() == {
        "do_sample": True, "temperature": 0.7}
    assert GenerateRequest(prompt="Q?").options().generate_kwargs() == {}


def test_greedy_requests_ignore_the_base_generation_config(qwen3_tokenizer, tmp_path):
    """The server decodes as a hand-written argmax loop although the base's generation_config sets a repetition
    penalty and no_repeat_ngram_size (batched answers, a reconstruction, a continuation)."""
    model = penalised(build_icae(qwen3_tokenizer, "qwen2").model)
    engine = _engine(model, tmp_path, batch_window_ms=200)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])
        jobs = {(task, p): _decode(engine, mid, [p] if p else None, task=task, max_new_tokens=8)
                for task, p in [("answer", PROMPTS[0]), ("answer", PROMPTS[1]), ("reconstruct", None), ("continue", None)]}
        got = {k: j.future.result(60)["outputs"][0]["text"] for k, j in jobs.items()}
        mem = engine.hot.get(mid).mem
    finally:
        engine.stop()
    for (task, p), text in got.items():
        want = memory_argmax(model, mem, {"answer": "ft", "reconstruct": "ae", "continue": "lm"}[task], p)
        assert text == model.tokenizer.decode(want, skip_special_tokens=True), (task, p)


def _fp16_engine(qwen3_tokenizer, tmp_path) -> Engine:
    model = build_icae(qwen3_tokenizer, "qwen2").model.to(torch.float16)
    model.mem_embeddings.data, model.task_embeddings.data = model.mem_embeddings.float(), model.task_embeddings.float()
    for n, p in model.encoder.named_parameters():  # peft keeps trainable adapter weights in fp32
        if "lora_" in n:
            p.data = p.data.float()
    perturb_trainable(model, seed=5)  # fp32 values again, not fp16 ones held in fp32
    return _engine(model, tmp_path)


def _never():
    raise AssertionError("the adapter was read outside the worker thread")


def test_loading_a_memory_never_reads_the_adapter(qwen3_tokenizer, tmp_path):
    """A memory loaded on an HTTP thread (a prefix-cache miss) while the worker compresses, i.e. while the
    adapter is swapped to the model's dtype (fp16 here): checked against the engine's cached fingerprint,
    not a fresh one of the half-swapped adapter (which differs: bf16 rounding of fp16 values)."""
    engine = _fp16_engine(qwen3_tokenizer, tmp_path)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])
        engine.hot.drop(mid)
        model = engine.model
        with adapter_in_dtype(model.encoder, torch.float16):  # what compression does in the worker
            model.encoder_weights = _never  # reading the adapter here would see it half swapped
            try:
                assert engine.hot.get(mid).cache is not None
            finally:
                del model.encoder_weights
    finally:
        engine.stop()


def test_fp16_memories_under_concurrent_compress_and_ask(qwen3_tokenizer, tmp_path):
    """Threads asking about fp16 memories (each a prefix-cache miss) while others compress: none is refused."""
    engine = _fp16_engine(qwen3_tokenizer, tmp_path)
    engine.start()
    refused, asked, stop = [], [0], threading.Event()
    try:
        mids = [_compress(engine, [t]) for t in TEXTS]

        def compress_forever():
            i = 0
            while not stop.is_set():
                _compress(engine, [f"{TEXTS[i % len(TEXTS)]} ({i})"])
                i += 1

        def ask_forever():
            while not stop.is_set():
                for mid in mids:
                    engine.hot.drop(mid)  # a miss: the memory is loaded and checked again
                    try:
                        engine.hot.get(mid)
                        asked[0] += 1
                    except CheckpointError as e:
                        refused.append(str(e))

        threads = [threading.Thread(target=compress_forever), threading.Thread(target=ask_forever)]
        for t in threads:
            t.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        engine.stop()
    assert asked[0] > 20 and not refused, (asked[0], refused[:1])


def test_the_server_never_recomputes_the_encoder_fingerprint_per_decode(model, tmp_path, monkeypatch):
    """The engine computes the encoder's fingerprint once and checks every memory against it (on load, and
    on each decode), so two decoding requests call ``model.encoder_weights`` not at all; the public
    ``generate`` still recomputes it and still refuses a memory of other encoder weights."""
    engine = _engine(model, tmp_path, batch_window_ms=0)
    engine.start()
    try:
        mid = _compress(engine, [TEXTS[0]])  # compressing records the fingerprint in the memory (one call)
        real, calls = model.encoder_weights, []
        monkeypatch.setattr(model, "encoder_weights", lambda: calls.append(1) or real())
        _decode(engine, mid, [PROMPTS[0]]).future.result(60)
        _decode(engine, mid, None, task="reconstruct").future.result(60)
        assert calls == []
        mem = engine.hot.get(mid).mem
        assert mem.encoder_weights == engine.encoder_weights
    finally:
        engine.stop()
    model.generate(mem, PROMPTS[0], max_new_tokens=2)  # the default path: checked, fingerprint recomputed
    assert len(calls) == 1
    other = mem[[0]]
    other.encoder_weights = "0" * len(mem.encoder_weights)
    with pytest.raises(CheckpointError, match="encoder weights"):
        model.generate(other, PROMPTS[0], max_new_tokens=2)
    assert len(calls) == 2
