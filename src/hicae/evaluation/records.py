"""Reading evaluation data: JSONL ``{"text"}`` and the two QA formats, every bad line named by file:line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..training.data import PRETRAIN_FIELDS, decode_utf8, iter_jsonl, parse_line
from ..errors import ConfigError, DataError
from .longbench import DATASET_METRIC, check_dataset
from .prompts import PromptTemplate

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
    dataset: str | None = None  # LongBench: the dataset, whose official metric scores the answers
    all_classes: list[str] | None = None  # LongBench classification datasets (trec, lsht): the class names
    template: PromptTemplate | None = None  # --prompt_template(s): how context and question make the prompts


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


def _longbench_record(rec: dict, where: str, dataset: str | None) -> QARecord:
    answers = rec.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: field 'answers' must be a non-empty list of strings (LongBench format)")
    name = dataset or rec.get("dataset")
    if name is not None and not isinstance(name, str):
        raise DataError(f"{where}: field 'dataset' must be a string, got {type(name).__name__}")
    classes = rec.get("all_classes")
    if name is not None:
        name = check_dataset(name, where)
        if DATASET_METRIC[name] == "classification" and (
                not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)):
            raise DataError(f"{where}: LongBench dataset {name!r} is scored by class: field 'all_classes' must be "
                            "a non-empty list of strings")
    return QARecord(where, rec["context"], rec["input"], list(answers), name,
                    list(classes) if isinstance(classes, list) else None)


def read_qa(path: str | os.PathLike, limit: int | None = None, fmt: str = "auto",
            dataset: str | None = None) -> list[QARecord]:
    """PwC records ``{"input", "prompt", "answer"}`` or LongBench records ``{"context", "input", "answers": [...]}``.

    ``fmt='auto'`` takes the format from the first record; every record must then have it. A
    LongBench record's ``dataset`` field (or ``dataset``, which overrides it) picks LongBench's
    official metric for it (see ``longbench``).
    """
    if fmt not in QA_FORMATS:
        raise ConfigError(f"--format must be one of {QA_FORMATS}, got {fmt!r}")
    if dataset is not None:
        check_dataset(dataset, "--longbench_dataset")
    path = Path(path)
    out: list[QARecord] = []
    for where, raw in _qa_lines(path):
        if fmt == "auto":
            fmt = _detect(raw)
        if fmt == "pwc":
            if dataset is not None:
                raise ConfigError(f"--longbench_dataset is for LongBench records; {where} is a PwC record")
            rec = parse_line(raw, where, PWC_FIELDS)
            assert rec is not None
            out.append(QARecord(where, rec["input"], rec["prompt"], [rec["answer"]]))
        else:
            rec = parse_line(raw, where, LONGBENCH_FIELDS)
            assert rec is not None
            out.append(_longbench_record(rec, where, dataset))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no records (expected PwC {list(PWC_FIELDS)} or LongBench "
                        f"{list(LONGBENCH_FIELDS) + ['answers']} JSON lines)")
    return out
