"""Loss curves from a Trainer's log history (PNG when matplotlib is installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io.fileio import atomic_path, write_text_atomic

CURVE_KEYS = ("loss", "ae_loss", "lm_loss", "ft_loss", "distill_loss", "eval_loss")


def loss_series(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` for each loss the log history holds."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in log_history:
        for k in CURVE_KEYS:
            if k in row and "step" in row:
                out.setdefault(k, []).append((int(row["step"]), float(row[k])))
    return out


def save_loss_curve(log_history: list[dict[str, Any]], out_dir: str | Path, title: str = "ICAE training") -> Path | None:
    """Write ``loss_history.json`` and ``loss_curve.png``; returns the PNG path, or None without matplotlib."""
    out_dir = Path(out_dir)
    series = loss_series(log_history)
    write_text_atomic(out_dir / "loss_history.json", json.dumps(series, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="o" if k.startswith("eval") else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    png = out_dir / "loss_curve.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
