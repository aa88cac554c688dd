"""hicae.protocol.run end to end: a tiny ICAE, an in-test corpus standing in for the Debian packages, no apt."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hicae.protocol import sources
from hicae.protocol.run import run, summaries
from hicae.protocol.settings import ProtocolSettings, parser
from hicae.errors import ConfigError

WORDS = "alpha beta gamma delta river stone cloud light paper green window music".split()


def _prose(i: int, n: int = 30) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n)) + "."


def fake_cache(root: Path) -> Path:
    """``unpacked/<package>`` trees as dpkg-deb -x would leave them, for four domains."""
    u = root / "unpacked"
    f = u / "fortunes-min" / sources.FORTUNE_DIR
    f.mkdir(parents=True)
    (f / "fortunes").write_text("\n%\n".join(f"Fortune {i}: {_prose(i, 12)}" for i in range(60)) + "\n")
    (f / "fortunes.dat").write_bytes(b"\0")  # an index file: skipped
    (u / "fortunes" / sources.FORTUNE_DIR).mkdir(parents=True)
    z = u / "fortunes-zh" / sources.FORTUNE_DIR
    z.mkdir(parents=True)
    poems = [f"《诗{i}》\n" + "".join("春江花月夜山水云天"[(i + j) % 9] for j in range(28)) + "。" for i in range(40)]
    (z / "chinese").write_text("\n%\n".join(poems[:20] + ["Debian 是一个 free 系统，这条有拉丁字母。"]) + "\n")
    (z / "tang300").write_text("\n%\n".join(poems[20:]) + "\n")
    (z / "song100").write_text("")
    for pkg, lang, body in (("debian-reference-en", "en", lambda i: _prose(i, 40)),
                            ("debian-reference-zh-cn", "zh-cn", lambda i: "这是第" + str(i) + "节的中文说明文字，内容很长。" * 4)):
        d = u / pkg / "usr/share/debian-reference"
        d.mkdir(parents=True)
        text = "".join(f"{c}.{s}. Section {c}.{s}\n\n    {body(c * 10 + s)}\n\n" for c in range(1, 6) for s in range(1, 9))
        (d / f"debian-reference.{lang}.txt.gz").write_bytes(gzip.compress(text.encode()))
    return root


@pytest.fixture
def no_apt(monkeypatch):
    real = sources.subprocess.run

    def refuse(cmd, *a, **k):
        if cmd[0] in ("apt-get", "dpkg-deb"):
            raise AssertionError(f"the protocol ran {cmd} in a test")
        return real(cmd, *a, **k)
    monkeypatch.setattr(sources.subprocess, "run", refuse)


DOMAINS = "en_fortunes,en_debian_reference,zh_debian_reference,zh_classical"


def test_end_to_end_tiny(tmp_path, make_icae, no_apt):
    cache = fake_cache(tmp_path / "cache")
    model = make_icae("qwen2", model_max_length=8, overlong="truncate")  # k=4, 2x: 8 tokens -> 4 slots
    s = ProtocolSettings(checkpoint=None, out_dir=str(tmp_path / "out"), tokens=8, texts_per_domain=3, batch_size=4,
                         domains=DOMAINS, ppl_texts=2, continuation=4, cache_dir=str(cache),
                         write_train=str(tmp_path / "train.jsonl"), train_tokens=24, train_min_tokens=2)
    rep = run(s, model=model, log=lambda m: None)

    out = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert set(out["by_domain"]) == set(DOMAINS.split(","))
    assert set(out["by_group"]) == {"en", "zh", "zh_classical"}
    for d in out["by_domain"].values():
        assert d["n"] == 3 and 0 <= d["bleu"] <= 100 and 0 <= d["loops"] <= 1
    assert set(out["by_base_nll_tercile"]["en"]) == {"cuts", "low", "mid", "high"}
    assert set(out["ppl"]["zh"]) >= {"memory", "truncated", "full", "none"}
    rows = [json.loads(x) for x in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["slots"] == 4 and r["tokens"] == 8 for r in rows)
    assert summaries(rows, DOMAINS.split(","))["by_domain"] == out["by_domain"]  # a report can be redone from its rows
    md = (tmp_path / "out" / "protocol.md").read_text()
    assert "| en_fortunes | en | 3 |" in md and "reconstruction:" in md and "zh (hard)" in md
    assert out["corpus"]["zh_classical"]["docs"] == 40  # the entry with Latin letters is left out

    # training side: every document not held out, none that is
    recs = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "train.jsonl.stats.json").read_text())["domains"]
    assert {r["domain"] for r in recs} == set(DOMAINS.split(","))
    assert sum(v["passages"] for v in stats.values()) == len(recs)
    from hicae.protocol.split import split_documents

    for name in DOMAINS.split(","):
        train, test = split_documents(sources.load_domain(name, cache), 0, 0.1)
        assert test, name
        train_text = "\n".join(r["text"] for r in recs if r["domain"] == name)
        # each document's first line is unique to it (a fortune's number, a section's, a poem's title)
        assert not [d.doc_id for d in test if d.text.splitlines()[0] in train_text], name
        assert not [d.doc_id for d in train if d.text.splitlines()[0] not in train_text], name
    assert rep["train_jsonl"]["domains"] == stats


def test_settings_and_flags():
    a = parser().parse_args(["--checkpoint", "x", "--tokens", "128", "--domains", "en_fortunes"])
    s = ProtocolSettings(**vars(a))
    assert s.tokens == 128 and s.domain_list == ["en_fortunes"] and s.texts_per_domain == 16
    with pytest.raises(ConfigError, match="unknown"):
        ProtocolSettings(checkpoint="x", domains="en_fortunes,klingon")
    with pytest.raises(ConfigError, match="nothing to do"):
        ProtocolSettings()
