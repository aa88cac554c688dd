"""hicae's cache folder: ``$HICAE_CACHE``, else ``$XDG_CACHE_HOME/hicae`` (``~/.cache/hicae``).

What ``scripts/setup.sh`` fetches lives there (the Qwen3 tokenizer, the real Qwen2.5), and
base_resolve.py looks there for a checkpoint's base model.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("HICAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hicae"
    )
    return Path(root)
