"""The model worker: one thread runs every model call, fed by a bounded queue, with a micro-batcher.

torch does not make concurrent forward passes of one model safe, so HTTP handlers never touch the
model: they put a ``Job`` on the queue (refused with ``QueueFull``, i.e. 429, when ``max_queue``
jobs are waiting) and await its future. The worker takes the oldest job; a greedy decoding job
also takes, oldest first, the queued jobs of its *group* (greedy, same task, memories of one
model) whose ``max_new_tokens`` is at most its own, waiting up to ``batch_window_ms`` for more, up
to ``max_batch_rows`` rows, and decodes all their rows in one ``generate`` call: rows of several
memories, each continuing from its own memory's prefix cache (hot.py, ``hicae.decoding.prefix_cache``),
left-padded and masked, to the longest ``max_new_tokens``, each row then cut to its own. So each
answer is the one-request-at-a-time answer (tests/serve/test_engine.py checks it exactly, fp32).

Why batch: decoding is bound by reading the weights, not by arithmetic (Qwen2.5-0.5B, bf16, one
CPU thread: one step costs about the same for 1 and 16 rows; docs/serve.md). Why the length rule:
the oldest job's call is never lengthened by a newer one, and a job joins a call only when it
would otherwise wait for that call anyway; every call starts with the oldest job, so none starves.
Sampled and streamed jobs run alone (their randomness / their streamer belong to one request).

A job past its deadline, or whose client went away, is dropped before it runs and stops decoding
between two tokens (a ``StoppingCriteria``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..decoding.requests import decode_request, request_rows
from ..decoding.run import decode
from ..errors import DataError, HicaeError
from ..memory import Memory
from ..sampling import SamplingOptions
from ..tasks import PROMPTED, model_task
from .hot import HotMemories
from .settings import ServeConfig
from .stats import Stats
from .store import MemoryStore, memory_id

log = logging.getLogger("hicae.serve")


class QueueFull(HicaeError):
    """The bounded queue is full (429)."""


class Timeout(HicaeError):
    """A request ran past ``request_timeout`` (504)."""


@dataclass(frozen=True)
class CompressArgs:
    """A "compress" / "append" job: store ``texts`` as memory ``id`` (appended to memory ``parent`` if set)."""

    id: str
    texts: list[str]
    max_slots: int | None = None
    parent: str | None = None


@dataclass(frozen=True)
class DecodeArgs:
    """A "decode" job: ``task`` on memory ``memory_id``, each row cut to ``max_new_tokens``."""

    memory_id: str
    task: str
    prompts: list[str] | None
    max_new_tokens: int
    sampling: SamplingOptions
    rows: int = 1  # rows the job adds to a batched decoder call


JobArgs = CompressArgs | DecodeArgs


@dataclass
class Job:
    kind: str  # "compress" | "append" (CompressArgs) | "decode" (DecodeArgs)
    args: JobArgs
    deadline: float  # time.monotonic() after which the job is dropped / stopped
    group: tuple | None = None  # decode jobs of one group may share a decoder call
    streamer: Any = None  # decode: a transformers streamer (the job then runs alone)
    cancelled: bool = False  # the client went away or timed out
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class _Abandoned(StoppingCriteria):
    """Stop decoding once every job of the call is cancelled or past its deadline."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        now = time.monotonic()
        stop = all(j.cancelled or now > j.deadline for j in self.jobs)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _rows(job: Job) -> int:
    """Rows the job adds to a decoder call (a compression job: 1)."""
    return job.args.rows if isinstance(job.args, DecodeArgs) else 1


def _decode_args(job: Job) -> DecodeArgs:
    assert isinstance(job.args, DecodeArgs), job.kind
    return job.args


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Engine:
    def __init__(self, model: Any, store: MemoryStore, cfg: ServeConfig):
        self.model, self.store, self.cfg = model, store, cfg
        # The weights do not change while serving: fingerprint the trained encoder once (it reads every
        # LoRA tensor; per request it would stall the event loop and wait on the device).
        self.encoder_weights = model.encoder_weights()
        self.hot = HotMemories(model, store, cfg.prefix_cache_bytes, self.encoder_weights)
        self.stats = Stats()
        self.hierarchical = model.hierarchical
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hicae-model", daemon=True)

    # ---- lifecycle and submission (any thread) ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs:
                job.cancelled = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def submit(self, job: Job) -> Job:
        with self._cond:
            if len(self._jobs) >= self.cfg.max_queue:
                self.stats.add("rejected_queue_full")
                raise QueueFull(f"the server is busy: {len(self._jobs)} requests are waiting (--max_queue "
                                f"{self.cfg.max_queue}); retry later")
            self._jobs.append(job)
            self.stats.high("queue_depth_max", len(self._jobs))
            self._cond.notify_all()
        return job

    def job(self, kind: str, args: JobArgs, group: tuple | None = None, streamer: Any = None) -> Job:
        return Job(kind, args, time.monotonic() + self.cfg.request_timeout, group, streamer)

    def decode_job(self, memory_id: str, mem: Any, task: str, prompts: list[str] | None, options: SamplingOptions,
                   streamer: Any = None) -> Job:
        """A decoding job on ``mem`` (its rows checked), its length settled and its batching group set."""
        entries, _ = self.rows_of(mem, task, prompts)
        max_new_tokens = options.max_new_tokens
        if max_new_tokens is None:  # reconstruct: the text's length and a little more; else 128; within the cap
            longest = max(mem.num_tokens[e] for e in entries)
            max_new_tokens = min(longest + 8 if task == "reconstruct" else 128, self.cfg.max_new_tokens)
        args = DecodeArgs(memory_id=memory_id, task=task, prompts=prompts, max_new_tokens=max_new_tokens,
                          sampling=options, rows=len(entries))
        group = None if (streamer is not None or options.do_sample) else ("greedy", task, mem.origin)
        return self.job("decode", args, group, streamer)

    async def wait(self, job: Job) -> Any:
        """The job's result, awaited in the event loop; past the deadline: ``Timeout`` and the job is stopped."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)),
                                          timeout=max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Timeout(f"the request took longer than --request_timeout {self.cfg.request_timeout:g} s") from None
        finally:
            if not job.future.done():
                job.cancelled = True  # timed out or the client went away: stop its work

    def memory_id_of(self, op: str, **what: Any) -> str:
        return memory_id(self.model, op=op, encoder_weights=self.encoder_weights, **what)

    # ---- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = []
            for job in batch:
                if not job.future.set_running_or_notify_cancel():
                    continue
                if job.cancelled or time.monotonic() > job.deadline:
                    job.future.set_exception(Timeout("the request waited longer than --request_timeout "
                                                     f"{self.cfg.request_timeout:g} s"))
                    self._end_stream(job)
                else:
                    live.append(job)
            if not live:
                continue
            try:
                self._execute(live)
            except Exception as e:  # noqa: BLE001 - every failure goes back to its request
                if not isinstance(e, HicaeError):
                    log.exception("hicae serve: %s job failed", live[0].kind)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(e)
                    self._end_stream(job)
            finally:
                self.hot.trim()

    @staticmethod
    def _end_stream(job: Job) -> None:
        if job.streamer is not None:
            job.streamer.end()  # wakes the reader; the job's future holds the outcome

    def _take(self) -> list[Job] | None:
        """The oldest job and, for a groupable one, queued jobs of its group that decode no longer than it,
        oldest first, up to ``max_batch_rows`` rows (waiting up to the window)."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            batch, rows = [first], _rows(first)
            if first.group is None:
                return batch
            assert isinstance(first.args, DecodeArgs)  # only decode jobs have a group
            longest = first.args.max_new_tokens
            end = time.monotonic() + self.cfg.batch_window_ms / 1000
            while rows < self.cfg.max_batch_rows:
                for job in list(self._jobs):
                    n = _rows(job)
                    if (job.group == first.group and isinstance(job.args, DecodeArgs)
                            and job.args.max_new_tokens <= longest
                            and rows + n <= self.cfg.max_batch_rows):
                        self._jobs.remove(job)
                        batch.append(job)
                        rows += n
                left = end - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            return batch

    def _execute(self, jobs: list[Job]) -> None:
        kind = jobs[0].kind
        if kind == "decode":
            self._decode(jobs)
        elif kind in ("compress", "append"):
            (job,) = jobs
            assert isinstance(job.args, CompressArgs)
            job.future.set_result(self._compress(job.args))
        else:  # pragma: no cover - jobs are built by service.py
            raise ValueError(f"unknown job kind {kind!r}")

    # ---- compression -----------------------------------------------------------------------------

    def _compress(self, args: CompressArgs) -> dict[str, Any]:
        mid = args.id
        if self.store.exists(mid):  # an identical request finished while this one waited
            return {"id": mid, "created": False}
        model = self.model
        if args.parent:  # routes/memories.py offers append on a hierarchical checkpoint only
            mem = model.append(self.hot.get(args.parent).mem, args.texts, max_slots=args.max_slots)
        else:
            mem = model.compress(args.texts, max_slots=args.max_slots)
        mem.extra.update(created=_now(), **({"parent": args.parent} if args.parent else {}))
        self.store.save(mid, mem)
        self.stats.add("compressions")
        self.stats.add("compressed_tokens", sum(mem.num_tokens))
        return {"id": mid, "created": True}

    # ---- decoding ----------------------------------------------------------------------------------

    @staticmethod
    def rows_of(mem: Any, task: str, prompts: list[str] | None) -> tuple[list[int], list[str] | None]:
        """Memory entries and prompts of one request's rows (``hicae.decoding.requests``, as ``model.generate``)."""
        if task == PROMPTED and not prompts:
            raise DataError("task 'answer' needs a prompt (\"prompt\" or \"prompts\")")
        return request_rows(len(mem), model_task(task), prompts, task)

    def _decode(self, jobs: list[Job]) -> None:
        """One ``generate`` call for the rows of ``jobs`` (one job: sampled / streamed; or a greedy batch, whose
        rows may come from several memories), each job's rows cut to its own ``max_new_tokens``."""
        task, model = _decode_args(jobs[0]).task, self.model
        parts = []  # (job, its memory, its rows' entries, its prompts)
        for job in jobs:
            try:
                hot = self.hot.get(_decode_args(job).memory_id)
                entries, prompts = self.rows_of(hot.mem, task, _decode_args(job).prompts)
            except HicaeError as err:  # deleted meanwhile, or a bad request: that job only
                job.future.set_exception(err)
                self._end_stream(job)
                continue
            parts.append((job, hot, entries, prompts or []))
        if not parts:
            return
        rows = Memory.cat([hot.mem[entries] for _, hot, entries, _ in parts])
        prompts = [p for *_, ps in parts for p in ps]
        caches = [hot.cache for _, hot, entries, _ in parts for _ in entries]
        cache = False if any(c is None for c in caches) else caches  # one cache per row: its memory's
        limit = max(_decode_args(job).max_new_tokens for job, *_ in parts)  # decode to the longest, cut each row
        options: SamplingOptions = _decode_args(parts[0][0]).sampling  # one job when it samples
        gen = options.generate_kwargs()
        options.seed_torch()
        live = [job for job, *_ in parts]
        gen["stopping_criteria"] = StoppingCriteriaList([_Abandoned(live)])
        if live[0].streamer is not None:
            gen["streamer"] = live[0].streamer
        before = {id(c): c.prefix_tokens for c in caches if c is not None}
        started = time.perf_counter()
        # the rows' layouts, worked out once: decoded here, and counted as each output's prompt_tokens
        request = decode_request(model, rows, model_task(task), prompts if task == PROMPTED else None)
        # hot.py checked each memory when it loaded it; decode checks the rows again, against the fingerprint
        # computed once here rather than recomputed from the encoder's tensors on every call
        ids = decode(model, request, limit, prefix_cache=cache, encoder_weights=self.encoder_weights, **gen)
        seconds = time.perf_counter() - started
        steps = max((len(x) for x in ids), default=0)
        own = [_decode_args(job).max_new_tokens for job, _, entries, _ in parts for _ in entries]
        ids = [x[:n] for x, n in zip(ids, own)]  # greedy: a row's first tokens do not depend on the call's length
        self._count(parts, ids, steps, seconds, before)
        texts = model.tokenizer.batch_decode(ids, skip_special_tokens=True)
        start = 0
        for job, _, entries, _ in parts:
            outputs = [{
                "index": i,
                "prompt": prompts[r] if task == PROMPTED else None,
                "text": texts[r],
                "tokens": len(ids[r]),
                "prompt_tokens": len(request.examples[r].ids),
                "finish_reason": "length" if len(ids[r]) >= own[r] else "stop",
            } for i, r in enumerate(range(start, start + len(entries)))]
            start += len(entries)
            job.future.set_result({"memory_id": _decode_args(job).memory_id, "task": task, "outputs": outputs})

    def _count(self, parts: list, ids: list[list[int]], steps: int, seconds: float, before: dict[int, int]) -> None:
        """``/metrics`` counters of one decoder call, and a debug line (what a profile of the load needs)."""
        live = [job for job, *_ in parts]
        for _, hot, _, _ in parts:
            if hot.cache is not None:  # a hit: this job's memory computed no prefix in the call
                hit = hot.cache.prefix_tokens == before[id(hot.cache)]
                self.stats.add("prefix_cache_hits" if hit else "prefix_cache_misses")
        memories = len({_decode_args(job).memory_id for job in live})
        self.stats.add("decoder_calls")
        self.stats.add("decoded_rows", len(ids))
        self.stats.add("decode_steps", steps)
        self.stats.add("decode_ms", round(seconds * 1000))
        self.stats.add("generated_tokens", sum(len(x) for x in ids))
        self.stats.high("batch_requests_max", len(live))
        self.stats.high("batch_memories_max", memories)
        if len(live) > 1:
            self.stats.add("batched_requests", len(live))
        log.debug("decoder call: %d requests, %d rows, %d memories, %d steps, %.2f s", len(live), len(ids), memories,
                  steps, seconds)
