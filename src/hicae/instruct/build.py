"""Building ``{"input", "prompt", "answer"}`` records from a corpus, resumably (``hicae build-qa``).

Each source text gets questions (``questions.py``), seeded by ``--seed`` and the text's id, so a
rerun makes the same questions. Checkable (extractive) questions are answered by their gold span;
the others by the teacher (``teacher.py``), the costly part. Records are appended to the output
one text at a time and flushed; a rerun reads the ids already there and skips them, so an
interrupted build continues where it stopped and a finished one appends nothing. A last line cut
off by an interruption (no newline, not JSON) is dropped and redone; any other bad line is an error
naming file and line.

Every record is a valid ``hicae finetune`` / ``hicae eval --task qa`` record; the extra fields say
what it is: ``id``, ``source``, ``kind``, ``lang``, ``checkable``, and ``gold`` for checkable ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..training.data import PRETRAIN_FIELDS, iter_jsonl
from ..errors import ConfigError, DataError
from ..setting import setting as _f
from .questions import KINDS, make_questions



BALANCE = ("none", "language", "domain")


@dataclass
class BuildSettings:
    output: str = _f(None, "JSONL to append the records to (created if missing; ids already in it are skipped)")
    input: str | None = _f(None, "JSONL corpus: {'text'} per line, optionally 'id' (default id: file:line)")
    protocol_domains: str | None = _f(None, "instead of --input: comma-separated domains of the evaluation protocol "
                                            "(hicae.protocol.sources), e.g. en_kernel_docs,zh_manpages")
    protocol_side: str = _f("train", "which side of the protocol's held-out split to read: train (for fine-tuning "
                                     "data) or test (held-out documents, for evaluation data)")
    cache_dir: str = _f(os.path.expanduser("~/.cache/hicae/protocol"), "the protocol's package cache")
    text_tokens: int = _f(1024, "protocol documents are cut into passages of at most this many tokens "
                                "(several segments each: the memory the decoder must learn to read)")
    min_tokens: int = _f(64, "protocol passages shorter than this are dropped")
    model_name_or_path: str | None = _f(None, "the teacher: base model folder or .gguf (default: the real "
                                              "Qwen2.5-0.5B-Instruct)", aliases=["--base"])
    kinds: str = _f(",".join(KINDS), f"question kinds, comma-separated, from {', '.join(KINDS)}")
    per_kind: int = _f(1, "questions of each kind per text (cloze: one from each of this many stretches of the text)")
    max_texts: int | None = _f(None, "use only the first N source texts (after the seeded shuffle of protocol passages)")
    balance: str = _f("none", "protocol passage order: none (one seeded shuffle over all domains: the largest "
                              "dominate the first --max_texts; kernel docs are half of the English side), language "
                              "(English and Chinese alternate) or domain (the domains take turns)", choices=BALANCE)
    max_new_tokens: int = _f(96, "the teacher's answer length limit")
    batch_size: int = _f(4, "questions the teacher answers at once")
    seed: int = _f(0, "seed of the questions and of the protocol's split and passage order")
    holdout_fraction: float = _f(0.1, "the protocol's held-out share (must match the evaluation's)")
    dtype: str = _f("bf16", "teacher dtype")
    threads: int | None = _f(None, "torch threads (1-2 on a shared 2-core machine)")
    dry_run: bool = _f(False, "build at toy sizes with a tiny random teacher (tests; any --input)")

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("--output is required")
        if (self.input is None) == (self.protocol_domains is None):
            raise ConfigError("give one source: --input FILE.jsonl or --protocol_domains D1,D2")
        bad = [k for k in self.kind_list if k not in KINDS]
        if bad or not self.kind_list:
            raise ConfigError(f"--kinds: unknown {bad}; choose from {', '.join(KINDS)}")
        if self.balance not in BALANCE:
            raise ConfigError(f"--balance must be one of {', '.join(BALANCE)}, got {self.balance!r}")
        if self.input is not None and self.balance != "none":
            raise ConfigError("--balance orders protocol passages (--protocol_domains); --input is read in file order")
        if self.protocol_side not in ("train", "test"):
            raise ConfigError(f"--protocol_side must be train or test, got {self.protocol_side!r}")
        for name in ("text_tokens", "per_kind", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")

    @property
    def kind_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.kinds.split(",") if k.strip())


@dataclass
class Source:
    id: str
    text: str


def read_sources(path: str) -> Iterator[Source]:
    """A JSONL corpus; a bad line or a non-string 'id' is refused naming file and line."""
    for line, rec in iter_jsonl(path, PRETRAIN_FIELDS):
        sid = rec.get("id", f"{Path(path).name}:{line}")
        if not isinstance(sid, (str, int)):
            raise DataError(f"{path}:{line}: field 'id' must be a string or an integer, got {type(sid).__name__}")
        yield Source(str(sid), rec["text"])


def protocol_sources(s: BuildSettings, tokenizer: Any) -> list[Source]:
    """Passages of the protocol's documents, one side of its held-out split, in a seeded order."""
    from ..protocol.passages import document_passages, token_counter
    from ..protocol.sources import DOMAINS, load_domain
    from ..protocol.split import split_documents

    count = token_counter(tokenizer)
    groups: dict[str, list[Source]] = {}
    for name in [d.strip() for d in (s.protocol_domains or "").split(",") if d.strip()]:
        if name not in DOMAINS:
            raise ConfigError(f"--protocol_domains: unknown {name!r}; choose from {', '.join(DOMAINS)}")
        train, test = split_documents(load_domain(name, Path(s.cache_dir)), s.seed, s.holdout_fraction)
        key = {"none": "", "language": DOMAINS[name].language, "domain": name}[s.balance]
        for d in train if s.protocol_side == "train" else test:
            for i, (p, _) in enumerate(document_passages(d.text, count, s.text_tokens, s.min_tokens)):
                groups.setdefault(key, []).append(Source(f"{name}:{d.doc_id}#{i}", p))
    return take_turns(groups, s.seed)


def take_turns(groups: dict[str, list[Source]], seed: int) -> list[Source]:
    """Each group shuffled (seeded), then one from each group in turn until all are used: the first N of
    the result hold every group alike (as far as each has passages). One group: the plain shuffle."""
    if len(groups) == 1:  # --balance none: one shuffle, the order of every earlier build
        (only,) = groups.values()
        random.Random(seed).shuffle(only)
        return only
    lists = []
    for key in sorted(groups):
        g = list(groups[key])
        random.Random(f"{seed}:{key}").shuffle(g)
        lists.append(g)
    return [g[i] for i in range(max(map(len, lists), default=0)) for g in lists if i < len(g)]


def done_ids(path: Path) -> set[str]:
    """Ids already in the output; a partial last line (an interrupted write) is cut off the file."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    ids = set()
    for i, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: malformed JSON in the output being resumed ({e.msg}); fix or remove "
                            "that line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise DataError(f"{path}:{i}: a record without a string 'id': not an output of hicae build-qa")
        ids.add(rec["id"])
    return ids


def text_rng(seed: int, source_id: str) -> random.Random:
    """The questions of one text depend on the seed and its id only (not on what else is built)."""
    return random.Random(int(hashlib.sha256(f"{seed}:{source_id}".encode()).hexdigest()[:16], 16))


Answerer = Callable[[str, list[str]], list[str]]  # (text, prompts) -> answers


def build(sources: Iterable[Source], s: BuildSettings, answer: Answerer, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Append the records of every source not yet in ``s.output``; returns counts."""
    out = Path(s.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    stats = {"texts": 0, "written": 0, "skipped": 0, "teacher_answers": 0, "by_kind": {}}
    with open(out, "a", encoding="utf-8") as f:
        for n, src in enumerate(sources):
            if s.max_texts is not None and n >= s.max_texts:
                break
            stats["texts"] += 1
            qs = make_questions(src.text, s.kind_list, text_rng(s.seed, src.id), s.per_kind)
            ids = [f"{src.id}/{q.kind}{j}" for j, q in enumerate(qs)]
            todo = [(i, q) for i, q in zip(ids, qs) if i not in done]
            stats["skipped"] += len(qs) - len(todo)
            if not todo:
                continue
            asked = [q.prompt for _, q in todo if not q.checkable]
            answers = iter(answer(src.text, asked) if asked else [])
            stats["teacher_answers"] += len(asked)
            lines = []
            for rid, q in todo:
                rec = {"id": rid, "source": src.id, "kind": q.kind, "lang": q.lang, "checkable": q.checkable,
                       "input": src.text, "prompt": q.prompt, "answer": q.gold if q.checkable else next(answers)}
                if q.checkable:
                    rec["gold"] = q.gold
                rec.update({k: v for k, v in q.extra.items() if k not in rec})
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
                stats["by_kind"][q.kind] = stats["by_kind"].get(q.kind, 0) + 1
            f.write("".join(lines))  # one text's records in one write: a kill leaves at most one partial line
            f.flush()
            done.update(i for i, _ in todo)
            stats["written"] += len(lines)
            if stats["texts"] % 10 == 0:
                log(f"{stats['texts']} texts, {stats['written']} records written")
    return stats
