"""``passkey`` and ``needle``: synthetic retrieval from a long haystack, over context lengths and needle depths.

The haystack repeats filler sentences up to exactly ``length`` tokens; a needle sentence sits at
the sentence boundary nearest ``depth`` (0 = start, 1 = end) of the filler.

- ``passkey``: needle "The pass key is 71432. Remember it.", question "What is the pass key?";
- ``needle``: a keyed fact, "One of the special magic numbers for {key} is: {7 digits}.", question
  "What is the special magic number for {key} mentioned in the provided text?"; ``distractors``
  more such facts with other keys and numbers are spread at random depths.

The haystack is compressed (hierarchical checkpoints reach 128k tokens and beyond; ICAE stops at
``model_max_length``) and the question is answered from memory. Correct = the number appears in the
answer as a whole number. ``fulltext`` also asks the base model with the haystack inline.
Samples are drawn from ``seed``, the length, depth and sample index, so a cell's haystacks do not
depend on the other cells.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from ..decoding.generation import generate_plain
from ..errors import ConfigError
from ..layout import fulltext_content
from ..tokens import tokenize_one
from . import metrics
from .decoding import chat_prompt_ids, decode
from .eval_task import EvalTask
from .report import Heatmap, Table, TaskResult
from .runtime import EvalSettings, compress_ids, progress_batches, text_levels

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
KEYS = ("apple", "river", "violin", "lantern", "falcon", "marble", "orchid", "compass", "glacier", "harbor", "saffron",
        "meadow", "quartz", "tundra", "beacon", "canyon", "ember", "juniper", "kestrel", "nebula")
DEFAULT_MAX_NEW_TOKENS = 16
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([km]?)$")


def parse_lengths(spec: str) -> list[int]:
    """``'1k,4k,16k'`` -> [1024, 4096, 16384] (k = 1024, m = 1024^2; plain numbers are tokens)."""
    out = []
    for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
        m = _SIZE.match(part)
        if not m:
            raise ConfigError(f"--lengths: cannot read {part!r} (use token counts such as 512, 4k, 128k)")
        n = int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2)])
        if n < 1:
            raise ConfigError(f"--lengths: {part!r} is not a positive length")
        out.append(n)
    if not out:
        raise ConfigError("--lengths is empty")
    return list(dict.fromkeys(out))


def parse_depths(spec: str) -> list[float]:
    try:
        out = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--depths: cannot read {spec!r} (fractions in [0, 1], e.g. 0,0.25,0.5,0.75,1)") from None
    if not out or any(not 0.0 <= d <= 1.0 for d in out):
        raise ConfigError(f"--depths must be fractions in [0, 1], got {spec!r}")
    return list(dict.fromkeys(out))


def check_settings(samples: int, distractors: int) -> None:
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if not 0 <= distractors < len(KEYS):
        raise ConfigError(f"--distractors must be in [0, {len(KEYS) - 1}], got {distractors}")


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


@dataclass
class Sample:
    length: int
    depth: float
    index: int
    ids: list[int]  # the haystack, exactly ``length`` tokens
    question: str
    answer: str  # the digits to find


class Haystack:
    """Builds haystacks in token space: exact lengths, and the needle between whole sentences."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.filler = [self._ids(" " + s) for s in FILLER]

    def _ids(self, text: str) -> list[int]:
        return tokenize_one(self.tokenizer, text)

    def build(self, length: int, needles: list[tuple[float, str]]) -> list[int]:
        """``length`` tokens of filler with each ``(depth, sentence)`` needle inserted at a sentence boundary."""
        needle_ids = [(d, self._ids(" " + s)) for d, s in needles]
        budget = length - sum(len(x) for _, x in needle_ids)
        if budget < 0:
            raise ConfigError(f"--lengths: {length} tokens cannot even hold the needle(s) ({length - budget} tokens)")
        sentences, n = [], 0
        while n < budget:
            s = self.filler[len(sentences) % len(self.filler)][: budget - n]
            sentences.append(s)
            n += len(s)
        starts = [0]
        for s in sentences:
            starts.append(starts[-1] + len(s))
        inserts: dict[int, list[list[int]]] = {}
        for d, x in needle_ids:  # the boundary nearest depth * filler tokens
            k = min(range(len(starts)), key=lambda i: (abs(starts[i] - d * budget), i))
            inserts.setdefault(k, []).append(x)
        out: list[int] = []
        for i in range(len(sentences) + 1):
            for x in inserts.get(i, []):
                out += x
            if i < len(sentences):
                out += sentences[i]
        assert len(out) == length, (len(out), length)
        return out


def make_samples(task: str, tokenizer: Any, lengths: list[int], depths: list[float], samples: int, seed: int,
                 distractors: int = 0) -> list[Sample]:
    hay = Haystack(tokenizer)
    out = []
    for L in lengths:
        for d in depths:
            for i in range(samples):
                rng = random.Random(f"{seed}/{task}/{L}/{d}/{i}")
                if task == "passkey":
                    key = str(rng.randint(10000, 99999))
                    needles = [(d, f"The pass key is {key}. Remember it.")]
                    question = "What is the pass key?"
                else:
                    names = rng.sample(KEYS, 1 + distractors)
                    values = [str(rng.randint(1_000_000, 9_999_999)) for _ in names]
                    key = values[0]
                    needles = [(d, f"One of the special magic numbers for {names[0]} is: {key}.")]
                    needles += [(rng.random(), f"One of the special magic numbers for {n} is: {v}.")
                                for n, v in zip(names[1:], values[1:])]
                    question = f"What is the special magic number for {names[0]} mentioned in the provided text?"
                out.append(Sample(L, d, i, hay.build(L, needles), question, key))
    return out


def _grid(rows: list[dict[str, Any]], lengths: list[int], depths: list[float], key: str) -> list[list[float]]:
    """Accuracy [depth][length] (NaN where --limit left a cell without samples)."""
    grid = []
    for d in depths:
        line = []
        for L in lengths:
            cell = [r[key] for r in rows if r["length"] == L and r["depth"] == d]
            line.append(sum(cell) / len(cell) if cell else float("nan"))  # empty: cut off by --limit
        grid.append(line)
    return grid


def run_retrieval(task: str, model: Any, s: EvalSettings, lengths: list[int], depths: list[float], samples: int = 5,
                  distractors: int = 0, fulltext: bool = False) -> TaskResult:
    if task not in ("passkey", "needle"):
        raise ValueError(task)
    check_settings(samples, distractors)
    limit, option = model.length_limit()
    too_long = [n for n in lengths if n > limit]
    if too_long:
        what = option.lstrip("-")
        hint = "" if model.hierarchical else "; use a hierarchical checkpoint for longer contexts (or raise --model_max_length)"
        raise ConfigError(f"--lengths {','.join(map(length_label, too_long))}: over this checkpoint's {what} of {limit} tokens{hint}")
    max_new = s.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    work = make_samples(task, model.tokenizer, lengths, depths, samples, s.seed, distractors)
    if s.limit is not None:
        work = work[: s.limit]
    rows: list[dict[str, Any]] = []
    for batch in progress_batches(work, s.batch_size, task, s.progress):
        mem = compress_ids(model, [x.ids for x in batch], s.max_slots)
        answers = decode(model, model.generate_ids(mem, [x.question for x in batch], max_new_tokens=max_new))
        if fulltext:
            text = decode(model, [x.ids for x in batch])
            prompts = [chat_prompt_ids(model, fulltext_content(t, x.question)) for t, x in zip(text, batch)]
            full = decode(model, generate_plain(model, prompts, max_new))
        for j, (x, level) in enumerate(zip(batch, text_levels(mem))):
            row = {"length": x.length, "depth": x.depth, "sample": x.index, "expected": x.answer,
                   "slots": mem.num_slots[j], "level": level, "answer_memory": answers[j],
                   "correct_memory": metrics.contains_digits(answers[j], x.answer)}
            if fulltext:
                row.update(answer_fulltext=full[j], correct_fulltext=metrics.contains_digits(full[j], x.answer))
            rows.append(row)

    lengths = [n for n in lengths if any(r["length"] == n for r in rows)]  # --limit may cut cells off
    depths = [d for d in depths if any(r["depth"] == d for r in rows)]
    sources = ["memory"] + (["fulltext"] if fulltext else [])
    x_labels, y_labels = [length_label(n) for n in lengths], [f"{d:g}" for d in depths]
    grids = {src: _grid(rows, lengths, depths, f"correct_{src}") for src in sources}
    summary: dict[str, Any] = {
        "samples": len(rows),
        **{f"accuracy_{src}": sum(r[f"correct_{src}"] for r in rows) / len(rows) for src in sources},
        "lengths": lengths, "depths": depths, "samples_per_cell": samples, "distractors": distractors,
        "grid": {src: {"rows": "depths", "columns": "lengths", "accuracy": g} for src, g in grids.items()},
        "slots_per_length": {length_label(n): sum(r["slots"] for r in rows if r["length"] == n) /
                             sum(1 for r in rows if r["length"] == n) for n in lengths},
    }
    label = {"memory": "memory slots", "fulltext": "full text (base model)"}
    tables = [Table(f"Accuracy, {label[src]} (rows: needle depth; columns: context length in tokens)",
                    ["depth \\ length", *x_labels], [[y, *line] for y, line in zip(y_labels, g)]) for src, g in grids.items()]
    tables.append(Table("Memory size", ["length", "mean slots", "tokens per slot"],
                        [[length_label(n), v, n / v] for n, v in zip(lengths, summary["slots_per_length"].values())]))
    plots = [Heatmap(f"heatmap_{src}", f"{task}: {label[src]}", x_labels, y_labels, g, "context length (tokens)",
                     "needle depth") for src, g in grids.items()]
    notes = [f"{samples} sample(s) per cell; correct = the expected number appears in the answer as a whole number."]
    return TaskResult(task, summary, {}, rows, tables, plots, notes)


@dataclass
class RetrievalFlags:
    _argument_group_name = "passkey / needle"

    lengths: str = field(default="1k,4k,16k", metadata={
        "help": "context lengths in tokens (k = 1024), e.g. 1k,4k,16k,128k"})
    depths: str = field(default="0,0.25,0.5,0.75,1", metadata={"help": "needle depths as fractions of the haystack"})
    samples: int = field(default=5, metadata={"help": "samples per (length, depth) cell"})
    distractors: int = field(default=0, metadata={"help": "needle: other keyed numbers in the haystack"})
    fulltext: bool = field(default=False, metadata={
        "help": "passkey/needle: also ask the base model with the haystack inline"})


def _prepare(args: Any) -> tuple[list[int], list[float]]:
    lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
    check_settings(args.samples, args.distractors)
    return lengths, depths


def _task(name: str, summary: str) -> EvalTask:
    def run(model: Any, s: EvalSettings, args: Any, prep: tuple[list[int], list[float]]) -> TaskResult:
        return run_retrieval(name, model, s, prep[0], prep[1], args.samples, args.distractors, args.fulltext)

    return EvalTask(name, summary, reads_data=False, prepare=_prepare, run=run, flags=RetrievalFlags)


PASSKEY = _task("passkey", "find a 5-digit pass key in a filler haystack, over --lengths x --depths")
NEEDLE = _task("needle", "find a keyed 7-digit number (optionally among --distractors), over --lengths x --depths")
