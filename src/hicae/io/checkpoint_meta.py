"""Reading a checkpoint's two config files, checked: a malformed or inconsistent file is one CheckpointError.

``hicae_config.json`` holds the ICAEConfig, the base model's name, shape and the weights
fingerprints; ``adapter_config.json`` is peft's. ICAE builds its LoRA from the former and only
loads tensors from the adapter file, so if the two disagreed (say alpha 32 against 512) one would
silently win: they must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import HierarchyConfig, ICAEConfig
from ..errors import CheckpointError, ConfigError

CONFIG_FILE = "hicae_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1

# key of hicae_config.json -> (accepted types, required)
_META_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "format_version": ((int,), False),
    "icae": ((dict,), True),
    "base_model": ((str,), True),
    "base_shape": ((dict,), True),
    "fingerprint": ((str,), False),
    "has_base": ((bool,), False),
    "hierarchy": ((dict,), False),
    "weights": ((dict,), False),
}
WEIGHTS_KEYS = ("base", "encoder")


def _read_json(f: Path) -> Any:
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: invalid JSON: {e}") from e


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``hicae_config.json`` of a checkpoint, every field checked (types, the configs it holds)."""
    path = Path(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{path}: not a hicae checkpoint (no {CONFIG_FILE})")
    meta = _read_json(f)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(meta).__name__}")
    for key, (types, required) in _META_KEYS.items():
        if key not in meta:
            if required:
                raise CheckpointError(f"{f}: missing {key!r}")
            continue
        if not isinstance(meta[key], types) or (isinstance(meta[key], bool) and bool not in types):
            raise CheckpointError(f"{f}: {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                                  f"got {json.dumps(meta[key])[:60]}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{f}: checkpoint format {meta['format_version']} is newer than this hicae reads")
    weights = meta.get("weights", {})
    bad = [k for k in WEIGHTS_KEYS if k in weights and not isinstance(weights[k], str)]
    if bad or set(weights) - set(WEIGHTS_KEYS):
        raise CheckpointError(f"{f}: 'weights' must map {list(WEIGHTS_KEYS)} to fingerprint strings, got {weights}")
    try:
        ICAEConfig.from_dict(meta["icae"])
        if "hierarchy" in meta:
            HierarchyConfig.from_dict(meta["hierarchy"])
    except ConfigError as e:
        raise CheckpointError(f"{f}: {e}") from None
    return meta


# adapter_config.json keys ICAE never sets, at the values that leave its LoRA as ICAEConfig builds it
# (a key missing from the file means this value, as in older peft versions)
_PEFT_NEUTRAL = {"bias": "none", "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}


def _expected_lora(cfg: ICAEConfig) -> dict[str, Any]:
    """The adapter_config.json entries of the LoRA that ``ICAE`` builds from ``cfg``."""
    return {"peft_type": "LORA", "r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
            "target_modules": sorted(cfg.lora_target_modules), **_PEFT_NEUTRAL}


def check_adapter_config(path: str | Path, meta: dict[str, Any]) -> None:
    """The LoRA settings of ``adapter_config.json`` must be those of ``hicae_config.json``."""
    f = Path(path) / ADAPTER_CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    peft_cfg = _read_json(f)
    if not isinstance(peft_cfg, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(peft_cfg).__name__}")
    cfg = ICAEConfig.from_dict(meta["icae"])
    got = dict(peft_cfg)
    tm = got.get("target_modules")
    if isinstance(tm, list) and all(isinstance(m, str) for m in tm):  # peft writes a set: any order
        got["target_modules"] = sorted(tm)
    diffs = [f"{k}: {json.dumps(got.get(k, _PEFT_NEUTRAL.get(k)))} vs {json.dumps(v)}"
             for k, v in _expected_lora(cfg).items() if got.get(k, _PEFT_NEUTRAL.get(k)) != v]
    if diffs:
        raise CheckpointError(f"{f} disagrees with {CONFIG_FILE} ({ADAPTER_CONFIG_FILE} vs {CONFIG_FILE}): "
                              + "; ".join(diffs) + "; the checkpoint's files do not belong together")
