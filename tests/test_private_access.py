"""Nothing outside model.py reaches into ICAE's private attributes for what it offers publicly:
``decoder_inputs`` (was ``_decoder_embeds``), ``eval_mode`` (``_eval_mode``), ``labelled_losses``
(``_labelled_loss``) and ``compile_encoder(enabled=...)`` (writing ``_compiled_encoder``).
HierarchicalICAE (a subclass) uses them too, so the rule holds for every file of src/ and benchmarks/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(r"\._(decoder_embeds|eval_mode|compiled_encoder|labelled_loss)\b")


def test_no_private_icae_access_outside_model_py():
    files = [f for d in ("src", "benchmarks") for f in sorted((ROOT / d).rglob("*.py"))]
    assert any(f.name == "model.py" for f in files)  # the scan sees the sources
    found = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
             for f in files if f.relative_to(ROOT) != Path("src/hicae/model.py")
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)]
    assert not found, "private ICAE attributes used outside model.py (use the public methods):\n" + "\n".join(found)
