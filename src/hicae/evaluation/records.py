"""Reading evaluation data: JSONL ``{"text"}`` and the two QA formats, every bad line named by file:line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..data import PRETRAIN_FIELDS, decode_utf8, iter_jsonl, parse_line
from ..errors import ConfigError, DataError

QA_FORMATS = ("auto", "pwc", "longbench")
PWC_FIELDS = ("input", "prompt", "answer")  # the context, the question, the answer
LONGBENCH_FIELDS = ("context", "input")  # the context, the question; "answers" is a list


@dataclass
class TextRecord:
    where: str  # file:line
    text: str


@dataclass
class QARecord:
    where: str
    context: str
    question: str
    answers: list[str]


def read_texts(path: str | os.PathLike, limit: int | None = None) -> list[TextRecord]:
    out = []
    for line, rec in iter_jsonl(path, PRETRAIN_FIELDS):
        out.append(TextRecord(f"{path}:{line}", rec["text"]))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no records (expected JSON lines with a 'text' field)")
    return out


def _detect(raw: bytes) -> str:
    """The format of a record: LongBench when it has 'context' and 'answers', else PwC."""
    try:
        obj = json.loads(decode_utf8(raw, ""))
    except (DataError, json.JSONDecodeError):
        obj = None  # parse_line will name the problem with file:line
    return "longbench" if isinstance(obj, dict) and "context" in obj and "answers" in obj else "pwc"


def _qa_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if raw.strip():
                yield f"{path}:{i}", raw


def read_qa(path: str | os.PathLike, limit: int | None = None, fmt: str = "auto") -> list[QARecord]:
    """PwC records ``{"input", "prompt", "answer"}`` or LongBench records ``{"context", "input", "answers": [...]}``.

    ``fmt='auto'`` takes the format from the first record; every record must then have it.
    """
    if fmt not in QA_FORMATS:
        raise ConfigError(f"--format must be one of {QA_FORMATS}, got {fmt!r}")
    path = Path(path)
    out: list[QARecord] = []
    for where, raw in _qa_lines(path):
        if fmt == "auto":
            fmt = _detect(raw)
        if fmt == "pwc":
            rec = parse_line(raw, where, PWC_FIELDS)
            assert rec is not None
            out.append(QARecord(where, rec["input"], rec["prompt"], [rec["answer"]]))
        else:
            rec = parse_line(raw, where, LONGBENCH_FIELDS)
            assert rec is not None
            answers = rec.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise DataError(f"{where}: field 'answers' must be a non-empty list of strings (LongBench format)")
            out.append(QARecord(where, rec["context"], rec["input"], list(answers)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no records (expected PwC {list(PWC_FIELDS)} or LongBench "
                        f"{list(LONGBENCH_FIELDS) + ['answers']} JSON lines)")
    return out
