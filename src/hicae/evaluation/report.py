"""Writing a task's results: JSON (summary and breakdowns), JSONL (per example), markdown report, PNG plots.

Every file is written atomically. Plots need matplotlib (``pip install 'hicae[eval]'``); without
it the report says so and the rest is written. Nothing here depends on time or the machine, so
the same run writes the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.fileio import atomic_path, write_text_atomic


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Bars:
    """Grouped bar chart: one group per label, one bar per series."""

    name: str  # file stem: <task>_<name>.png
    title: str
    labels: list[str]
    series: dict[str, list[float]]
    ylabel: str = ""
    xlabel: str = ""
    ylim: tuple[float, float] | None = None


@dataclass
class Heatmap:
    name: str
    title: str
    x_labels: list[str]
    y_labels: list[str]
    values: list[list[float]]  # [len(y_labels)][len(x_labels)], in [0, 1]
    xlabel: str = ""
    ylabel: str = ""


@dataclass
class TaskResult:
    task: str
    summary: dict[str, Any]
    breakdowns: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Bars | Heatmap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:g}" if v == int(v) else f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def _clean(o: Any) -> Any:
    """NaN -> None (strict JSON)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, plt: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def plot_bars(b: Bars, path: Path, plt: Any) -> None:
    n = max(1, len(b.series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(b.labels) * n / 2 + 3), 4))
    for j, (name, vals) in enumerate(b.series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(b.labels))]
        ax.bar(xs, [0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in vals], width, label=name)
    ax.set_xticks(range(len(b.labels)))
    ax.set_xticklabels(b.labels)
    ax.set_title(b.title)
    ax.set_ylabel(b.ylabel)
    ax.set_xlabel(b.xlabel)
    ax.grid(axis="y", alpha=0.3)
    if b.ylim is not None:
        ax.set_ylim(*b.ylim)
    if len(b.series) > 1:
        ax.legend()
    _save(fig, plt, path)


def plot_heatmap(h: Heatmap, path: Path, plt: Any) -> None:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(h.x_labels) + 2.5), max(3.0, 0.5 * len(h.y_labels) + 1.5)))
    im = ax.imshow(h.values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(h.x_labels)))
    ax.set_xticklabels(h.x_labels)
    ax.set_yticks(range(len(h.y_labels)))
    ax.set_yticklabels(h.y_labels)
    for i, row in enumerate(h.values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel(h.xlabel)
    ax.set_ylabel(h.ylabel)
    ax.set_title(h.title)
    fig.colorbar(im, ax=ax, label="accuracy")
    _save(fig, plt, path)


def report_paths(task: str, output_dir: str | Path) -> dict[str, str]:
    """The report's JSON, examples and markdown files (its plots are ``<task>_*.png`` beside them)."""
    out = Path(output_dir)
    return {"json": str(out / f"{task}.json"), "examples": str(out / f"{task}_examples.jsonl"), "markdown": str(out / f"{task}.md")}


def write_report(result: TaskResult, output_dir: str | Path, meta: dict[str, Any]) -> dict[str, str]:
    """Write ``<task>.json``, ``<task>_examples.jsonl``, ``<task>.md`` and ``<task>_*.png``; returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = result.task
    files = report_paths(t, out)
    plt = _pyplot() if result.plots else None
    pngs = []
    notes = list(result.notes)
    for p in result.plots:
        if plt is None:
            notes.append("matplotlib is not installed: no plots (pip install 'hicae[eval]')")
            break
        path = out / f"{t}_{p.name}.png"
        (plot_heatmap if isinstance(p, Heatmap) else plot_bars)(p, path, plt)
        pngs.append(path)
    files["plots"] = [str(p) for p in pngs]  # type: ignore[assignment]
    doc = {"task": t, "meta": meta, "summary": result.summary, "breakdowns": result.breakdowns, "notes": notes}
    write_text_atomic(files["json"], json.dumps(_clean(doc), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(files["examples"], "".join(json.dumps(_clean(e), ensure_ascii=False) + "\n" for e in result.examples))
    md = [f"# hicae eval: {t}", ""]
    md += ["| setting | value |", "|---|---|"]
    md += [f"| {k} | {_fmt(v)} |" for k, v in _flat(meta).items()]
    md.append("")
    for tab in result.tables:
        md.append(markdown_table(tab))
    for p in pngs:
        md += [f"![{p.stem}]({p.name})", ""]
    if notes:
        md += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    md.append(f"Per-example results: `{Path(files['examples']).name}`; all numbers: `{Path(files['json']).name}`.\n")
    write_text_atomic(files["markdown"], "\n".join(md))
    return files


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v if not isinstance(v, list) else ", ".join(map(str, v))
    return out
