"""Evaluation data: text and QA JSONL, formats, limits, and bad lines named by file and line."""

import json

import pytest

from hicae import DataError
from hicae.evaluation import read_qa, read_texts

from .conftest import write_jsonl


def test_read_texts_limit_and_where(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    recs = read_texts(f, limit=2)
    assert [r.text for r in recs] == ["a", "b"] and recs[1].where == f"{f}:2"


@pytest.mark.parametrize("line, message", [
    (b"{not json\n", "malformed JSON"),
    (b'{"txt": "x"}\n', "missing field 'text'"),
    (b'{"text": 3}\n', "must be a string"),
    (b'{"text": "  "}\n', "is empty"),
    (b'"just a string"\n', "expected a JSON object"),
    (b'{"text": "\xff"}\n', "invalid UTF-8"),
])
def test_bad_text_lines_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "fine"}\n\n' + line)
    with pytest.raises(DataError, match=message) as e:
        read_texts(f)
    assert f"{f}:3" in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_texts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_texts(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no records"):
        read_qa(tmp_path / "empty.jsonl")


def test_read_qa_both_formats(tmp_path):
    pwc = write_jsonl(tmp_path / "pwc.jsonl", [{"input": "ctx", "prompt": "q?", "answer": "a"}])
    lb = write_jsonl(tmp_path / "lb.jsonl", [{"context": "ctx", "input": "q?", "answers": ["a", "b"], "length": 3}])
    (r1,), (r2,) = read_qa(pwc), read_qa(lb)
    assert (r1.context, r1.question, r1.answers) == ("ctx", "q?", ["a"])
    assert (r2.context, r2.question, r2.answers) == ("ctx", "q?", ["a", "b"])
    assert read_qa(lb, fmt="longbench")[0].answers == ["a", "b"]
    with pytest.raises(DataError, match="missing field 'prompt'"):
        read_qa(lb, fmt="pwc")


@pytest.mark.parametrize("rec, message", [
    ({"context": "c", "input": "q", "answers": "a"}, "'answers' must be a non-empty list of strings"),
    ({"context": "c", "input": "q", "answers": []}, "'answers' must be a non-empty list"),
    ({"context": "c", "input": "q", "answers": [1]}, "'answers' must be a non-empty list"),
    ({"context": "", "input": "q", "answers": ["a"]}, "'context' is empty"),
    ({"input": "c", "prompt": "q"}, "missing field 'answer'"),
])
def test_bad_qa_lines_name_file_and_line(tmp_path, rec, message):
    first = {"context": "c", "input": "q", "answers": ["a"]} if "context" in rec else {"input": "c", "prompt": "q", "answer": "a"}
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps(first) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=message) as e:
        read_qa(f)
    assert f"{f}:2" in str(e.value)


def test_malformed_first_qa_line_is_named(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_bytes(b"\n{oops\n")
    with pytest.raises(DataError, match=f"{f}:2: malformed JSON"):
        read_qa(f)
