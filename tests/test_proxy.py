"""experiments/proxy.py: corpus parsing and splitting (fast), and the whole quick mode (slow)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "proxy.py"


def _proxy():
    spec = importlib.util.spec_from_file_location("hicae_bench_proxy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_fortunes_and_document_split():
    proxy = _proxy()
    text = ("第一条\n\n\x1b[33m -- 作者\x1b[m\n%\n  \n%\nsecond entry\nline two\n%\n"
            "a % inside a line stays\n%%\nnot a separator either\n%\nlast, no trailing separator")
    entries = proxy.parse_fortunes(text)
    assert entries == ["第一条\n\n -- 作者", "second entry\nline two",
                       "a % inside a line stays\n%%\nnot a separator either", "last, no trailing separator"]

    docs = [f"doc {i}\n" + "line\n" * i for i in range(20)]
    train, test = proxy.split_documents(docs, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15
    assert sorted(train + test) == sorted(docs)  # a partition of whole documents
    assert proxy.split_documents(docs, 0.25, seed=3) == (train, test)  # deterministic
    assert proxy.split_documents(docs, 0.25, seed=4)[1] != test  # and seeded
    assert proxy.split_documents(["only"], 0.1, seed=0) == (["only"], [])

    doc = "\n".join(f"line {i:02d} " + "x" * 20 for i in range(10))
    ps = proxy.passages(doc, max_chars=70, min_chars=10)
    assert all(len(p) <= 70 for p in ps) and len(ps) > 1
    assert "\n".join(ps) == doc  # whole lines, nothing lost or repeated


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian/Ubuntu) to fetch the corpus")
    out = tmp_path / "proxy"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out_dir", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((out / "proxy.json").read_text())
    assert rep["checks"]["memory_beats_no_context"]
    assert set(rep["results"]) == {"4x", "8x", "16x-hier"}
    for key, res in rep["results"].items():
        assert 0.0 <= res["ae"]["bleu"] <= 100.0
        if key != "16x-hier":
            assert res["ppl"]["memory"]["ppl"] < res["ppl"]["none"]["ppl"]
    hier = rep["results"]["16x-hier"]
    assert hier["compression_rate"] == 16 and list(hier["by_level"]) == ["2"]  # one level-2 block per text
    assert (out / "proxy.md").read_text().startswith("# hicae offline quality proxy (quick mode)")
