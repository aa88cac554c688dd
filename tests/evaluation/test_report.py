"""Result files: JSON (strict), JSONL, markdown tables, PNGs, and running without matplotlib."""

import json

from hicae.evaluation import TaskResult, write_report
from hicae.evaluation import report as R


def result():
    return TaskResult(
        "demo", {"score": 0.5, "missing": float("nan")}, {"by_x": {"a": {"n": 1}}},
        [{"where": "f:1", "v": float("inf")}],
        [R.Table("Scores", ["name", "value"], [["a|b", 0.123456], ["c", 2.0]])],
        [R.Bars("bars", "Bars", ["x", "y"], {"s": [0.1, float("nan")]}, ylim=(0, 1)),
         R.Heatmap("heat", "Heat", ["1k", "2k"], ["0", "1"], [[0.0, 1.0], [0.5, 0.25]])],
        ["a note"],
    )


def test_writes_all_files(tmp_path):
    files = write_report(result(), tmp_path / "out", {"checkpoint": "ck", "model": {"mem_size": 4}, "lengths": [1, 2]})
    doc = json.loads((tmp_path / "out" / "demo.json").read_text())  # strict JSON: NaN became null
    assert doc["summary"] == {"score": 0.5, "missing": None} and doc["meta"]["model"]["mem_size"] == 4
    assert json.loads((tmp_path / "out" / "demo_examples.jsonl").read_text()) == {"where": "f:1", "v": None}
    md = (tmp_path / "out" / "demo.md").read_text()
    assert "| model.mem_size | 4 |" in md and "| lengths | 1, 2 |" in md
    assert "| a\\|b | 0.1235 |" in md and "| c | 2 |" in md and "- a note" in md
    assert [p.split("/")[-1] for p in files["plots"]] == ["demo_bars.png", "demo_heat.png"]
    for p in files["plots"]:
        assert open(p, "rb").read(4) == b"\x89PNG"
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == sorted(
        ["demo.json", "demo_examples.jsonl", "demo.md", "demo_bars.png", "demo_heat.png"])  # no temporary files


def test_same_result_same_bytes(tmp_path):
    write_report(result(), tmp_path / "a", {})
    write_report(result(), tmp_path / "b", {})
    for name in ("demo.json", "demo.md", "demo_heat.png", "demo_bars.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_without_matplotlib_the_report_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "_pyplot", lambda: None)
    files = write_report(result(), tmp_path, {})
    assert files["plots"] == [] and not list(tmp_path.glob("*.png"))
    assert "matplotlib is not installed" in (tmp_path / "demo.md").read_text()
