"""The ablation table of issue 17: one row per setting, from ``real_quality.py`` reports of equal-budget runs.

Each report is a ``real.json`` written by ``experiments/real_quality.py --stages 4x --extra '<flags>'`` (same
corpus, seed, batch, learning rate and steps; only ``--extra`` differs). A row shows the training AE and LM
losses averaged over a window of logged steps (each logged value is itself a 10-step mean) and the held-out
curve points (16 texts a language, BLEU-4 and token accuracy) at the given steps.

    .venv/bin/python experiments/ablation_table.py docs/real/real.json docs/real/ablations/*.json --steps 50,100,150
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def window_mean(history: list[list[float]], lo: int, hi: int) -> float | None:
    vals = [v for s, v in history if lo <= s <= hi]
    return sum(vals) / len(vals) if vals else None


def row(path: Path, steps: list[int], window: int) -> dict:
    rep = json.loads(path.read_text())
    st = rep["stages"]["4x"]
    hist = st.get("loss_history", {})
    curve = {c["step"]: c for c in st.get("curve", [])}
    out = {"name": path.stem, "extra": rep.get("extra") or "(baseline)", "steps": st.get("steps")}
    for s in steps:
        c = curve.get(s)
        out[f"ae@{s}"] = window_mean(hist.get("ae_loss", []), s - window + 10, s)
        out[f"lm@{s}"] = window_mean(hist.get("lm_loss", []), s - window + 10, s)
        out[f"bleu@{s}"] = (c["en"]["bleu"], c["zh"]["bleu"]) if c else None
        out[f"acc@{s}"] = (c["en"]["token_accuracy"], c["zh"]["token_accuracy"]) if c else None
    return out


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return " / ".join(f"{x:.1f}" if x >= 1 else f"{x:.3f}" for x in v)
    return f"{v:.2f}"


def render(rows: list[dict], steps: list[int], window: int) -> str:
    head = ["setting (`--extra`)", "steps"]
    for s in steps:
        head += [f"AE loss @{s}", f"LM loss @{s}", f"BLEU en / zh @{s}", f"token acc. en / zh @{s}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['extra']}`" if r["extra"] != "(baseline)" else "baseline (reference method)", str(r["steps"])]
        for s in steps:
            cells += [fmt(r[f"ae@{s}"]), fmt(r[f"lm@{s}"]), fmt(r[f"bleu@{s}"]), fmt(r[f"acc@{s}"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Losses: mean of the logged values over the {window} steps up to each step (training batches, "
                 "not held out). BLEU / token accuracy: 16 held-out texts a language at that step.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--steps", default="50,100,150")
    p.add_argument("--window", type=int, default=30, help="steps of loss history averaged up to each step")
    a = p.parse_args(argv)
    steps = [int(s) for s in a.steps.split(",")]
    print(render([row(r, steps, a.window) for r in a.reports], steps, a.window), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
