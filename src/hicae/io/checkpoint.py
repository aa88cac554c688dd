"""``load_icae``: a checkpoint loaded as the model class it records, for callers holding no class.

What a checkpoint holds, and reading and writing its files, is ``checkpoint_files.py`` (below the model classes, whose
``from_pretrained`` / ``save_pretrained`` / ``from_base`` call it); this module sits above them and
also names what callers of the I/O layer use, so they import one module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hierarchy import HierarchicalICAE  # noqa: F401  registers the class hierarchical checkpoints load as
from ..model import ICAE
from .checkpoint_files import (  # noqa: F401  the I/O layer's names, from one module
    ADAPTER_FILE,
    BASE_DIR,
    EMBED_FILE,
    absolute_source,
    load_base,
    load_trained_weights,
    save_icae,
)
from .checkpoint_meta import CONFIG_FILE, CheckpointInfo, read_checkpoint, read_checkpoint_config  # noqa: F401


def load_icae(path: "str | Path | CheckpointInfo", base_model: Any = None, tokenizer: Any = None, **kwargs: Any) -> ICAE:
    """``ICAE.from_pretrained``: a hierarchical checkpoint loads as ``HierarchicalICAE`` (see
    ``checkpoint_files.load_checkpoint`` for ``config_overrides``, ``hierarchy``, ``allow_other_weights``)."""
    return ICAE.from_pretrained(path, base_model=base_model, tokenizer=tokenizer, **kwargs)
