"""hicae build-qa: questions from the text, extractive gold spans, resumable output, hicae's own readers."""

from __future__ import annotations

import json
import random

import pytest

from hicae.cli.main import main
from hicae.training.data import FINETUNE_FIELDS, JsonlDataset
from hicae.errors import ConfigError, DataError
from hicae.evaluation.records import read_qa
from hicae.instruct.build import BuildSettings, Source, build
from hicae.instruct.questions import KINDS, cloze_questions, lang_of, list_items, make_questions, named_things

EN = ("Debian Reference is a guide for users of the Debian System. The APT tool installs packages.\n\n"
      "To upgrade a system:\n\n1. Edit the sources.list file.\n2. Run apt update to refresh the lists.\n"
      "3. Run apt full-upgrade and answer the questions.\n\nThe Linux Kernel keeps running while APT works, "
      "and the Debian Reference explains why the kernel image is replaced last.")
ZH = ("本文介绍如何使用软件包管理工具安装和升级系统。管理员应当先更新软件包列表，然后再执行升级命令。"
      "如果出现依赖问题，可以使用“aptitude”解决冲突。系统升级完成以后需要重新启动计算机才能使用新的内核。")


def test_language_by_script():
    assert lang_of(EN) == "en" and lang_of(ZH) == "zh" and lang_of("apt-get 安装软件包的命令") == "zh"


@pytest.mark.parametrize("text", [EN, ZH])
def test_cloze_gold_is_a_verbatim_span_after_a_unique_cue(text):
    qs = cloze_questions(text, 3, random.Random(0))
    assert qs
    for q in qs:
        cue, gold = q.extra["cue"], q.gold
        assert text.count(cue) == 1 and gold in text
        assert text[q.extra["offset"] : q.extra["offset"] + len(gold)] == gold
        assert text.index(cue) + len(cue) <= q.extra["offset"]  # the gold follows the cue
        assert cue in q.prompt and q.checkable and q.lang == lang_of(text)


def test_named_things_lists_and_kinds():
    assert {"Debian Reference", "APT"} <= set(named_things(EN, "en"))
    assert "aptitude" in named_things(ZH, "zh")
    assert named_things("请参阅 the manual 中的 untag 选项，the 文件。", "zh") == ["manual", "untag"]
    assert named_things("地址族为 AF_INET. 端口", "zh") == ["AF_INET"]
    assert list_items(EN)[0][:2] == ["Edit the sources.list file.", "Run apt update to refresh the lists."]
    qs = make_questions(EN, KINDS, random.Random(0))
    assert {q.kind for q in qs} == set(KINDS)
    nxt = next(q for q in qs if q.kind == "next_step")
    assert nxt.extra["expected"] in EN and not nxt.checkable


def _fake_teacher(calls):
    def answer(text, prompts):
        calls.append(len(prompts))
        return [f"answer to {p[:12]} about {text[:8]}" for p in prompts]  # per prompt, as greedy answers are
    return answer


def test_build_is_resumable_and_readable_by_hicae(tmp_path):
    out = tmp_path / "qa.jsonl"
    s = BuildSettings(output=str(out), input="unused.jsonl", per_kind=2)
    srcs = [Source("en", EN), Source("zh", ZH)]
    calls: list[int] = []
    first = build(srcs, s, _fake_teacher(calls))
    data = out.read_bytes()
    assert first["written"] > 0 and sum(calls) == first["teacher_answers"]
    again = build(srcs, s, _fake_teacher(calls))
    assert again["written"] == 0 and again["skipped"] == first["written"] and out.read_bytes() == data
    recs = [json.loads(x) for x in data.decode().splitlines()]
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        assert r["lang"] == ("zh" if r["source"] == "zh" else "en")
        if r["checkable"]:
            assert r["kind"] == "cloze" and r["answer"] == r["gold"] and r["gold"] in r["input"]
    # hicae's own readers take the file as it is
    assert len(JsonlDataset(out, FINETUNE_FIELDS)) == len(recs) == len(read_qa(out, fmt="pwc"))
    # an interrupted write: the cut line is dropped and redone, nothing else changes
    out.write_bytes(data[:-40])
    build(srcs, s, _fake_teacher(calls))
    assert out.read_bytes() == data


def test_resume_refuses_a_foreign_output(tmp_path):
    out = tmp_path / "qa.jsonl"
    out.write_text('{"input": "x", "prompt": "p", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:1: a record without a string 'id'"):
        build([Source("a", EN)], BuildSettings(output=str(out), input="x"), _fake_teacher([]))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="one source"):
        BuildSettings(output="o.jsonl")
    with pytest.raises(ConfigError, match="--kinds"):
        BuildSettings(output="o.jsonl", input="i.jsonl", kinds="cloze,riddle")


def test_cli_dry_run_twice_and_a_bad_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": EN}) + "\n" + json.dumps({"text": ZH, "id": "zh"}) + "\n")
    out = tmp_path / "o.jsonl"
    argv = ["build-qa", "--dry_run", "--input", str(corpus), "--output", str(out)]
    assert main(argv) == 0
    data = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == data
    ids = [json.loads(x)["id"] for x in data.decode().splitlines()]
    assert any(i.startswith("c.jsonl:1/") for i in ids) and any(i.startswith("zh/") for i in ids)
    corpus.write_text(json.dumps({"text": EN}) + "\n{not json\n")
    capsys.readouterr()
    assert main(argv) != 0
    assert "c.jsonl:2" in capsys.readouterr().err


class _WordTokenizer:  # one token per word: enough for the passage packer
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def _fake_protocol(monkeypatch, sizes):
    """Domains with the given number of one-paragraph documents (split by the protocol's own rule)."""
    from hicae.protocol import sources

    def load(name, cache):
        return [sources.Document(name, f"d{i}", f"passage {i} of {name} " * 5, f"{name}/{i}") for i in range(sizes[name])]

    monkeypatch.setattr(sources, "load_domain", load)


@pytest.mark.parametrize("balance", ["none", "language", "domain"])
def test_protocol_passage_order_balance(monkeypatch, tmp_path, balance):
    from hicae.instruct.build import protocol_sources

    sizes = {"en_kernel_docs": 300, "en_python_docs": 100, "zh_manpages": 40}
    _fake_protocol(monkeypatch, sizes)
    s = BuildSettings(output=str(tmp_path / "o.jsonl"), protocol_domains=",".join(sizes), text_tokens=64,
                      min_tokens=4, balance=balance)
    order = protocol_sources(s, _WordTokenizer())
    again = protocol_sources(s, _WordTokenizer())
    assert [x.id for x in order] == [x.id for x in again]  # seeded
    assert len({x.id for x in order}) == len(order) and 380 < len(order) < 440  # each train passage once
    head = [x.id.split(":")[0] for x in order[:60]]
    zh = head.count("zh_manpages")
    if balance == "none":
        assert zh < 15  # about 9% of the passages: English dominates the first N
    elif balance == "language":
        assert zh == 30 and all(head[i].startswith("en") != head[i + 1].startswith("en") for i in range(0, 60, 2))
    else:
        assert head.count("en_kernel_docs") == head.count("en_python_docs") == zh == 20
    tail = [x.id.split(":")[0] for x in order[-20:]]  # a group that runs out leaves the others in turn
    if balance == "language":
        assert all(t.startswith("en_") for t in tail)
    elif balance == "domain":
        assert tail == ["en_kernel_docs"] * 20


def test_balance_is_checked():
    with pytest.raises(ConfigError, match="--balance must be one of"):
        BuildSettings(output="o.jsonl", protocol_domains="zh_manpages", balance="lang")
    with pytest.raises(ConfigError, match="--input is read in file order"):
        BuildSettings(output="o.jsonl", input="x.jsonl", balance="language")
