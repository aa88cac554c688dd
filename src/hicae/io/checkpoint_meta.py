"""Reading a checkpoint's two config files, checked: a malformed or inconsistent file is one CheckpointError.

``hicae_config.json`` holds the ICAEConfig, the base model's name, shape and the weights
fingerprints; ``adapter_config.json`` is peft's. ICAE builds its LoRA from the former and only
loads tensors from the adapter file, so if the two disagreed (say alpha 32 against 512) one would
silently win: they must agree.

``read_checkpoint(path)`` reads and checks both once into a ``CheckpointInfo``, the one value a load
(and any caller asking what a checkpoint is) passes around; ``read_checkpoint_config`` is the raw,
checked dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint's ``hicae_config.json``, checked and typed (``read_checkpoint``)."""

    path: Path
    icae: ICAEConfig
    hierarchy: HierarchyConfig | None  # None: a flat ICAE checkpoint
    base_model: str  # hub name or absolute local path ("" if none recorded)
    base_shape: dict[str, Any]  # config.base_shape of the base it was trained on
    has_base: bool = False  # the base model is saved in the checkpoint's base/
    base_weights: str | None = None  # weights fingerprints (fingerprint.py); None: an older hicae recorded none
    encoder_weights: str | None = None
    fingerprint: str | None = None  # the memory fingerprint
    format_version: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the file as read

    @property
    def hierarchical(self) -> bool:
        return self.hierarchy is not None

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE


def read_checkpoint(path: str | Path, check_adapter: bool = True) -> CheckpointInfo:
    """What checkpoint ``path`` is: its ``hicae_config.json`` read and checked once (and, with ``check_adapter``,
    its ``adapter_config.json`` checked against it)."""
    path = Path(path)
    meta = read_checkpoint_config(path)
    icae = ICAEConfig.from_dict(meta["icae"])  # checked by read_checkpoint_config: cannot fail here
    if check_adapter:
        _check_adapter(path, icae)
    weights = meta.get("weights", {})
    return CheckpointInfo(
        path=path, icae=icae,
        hierarchy=HierarchyConfig.from_dict(meta["hierarchy"]) if "hierarchy" in meta else None,
        base_model=meta["base_model"], base_shape=meta["base_shape"], has_base=meta.get("has_base", False),
        base_weights=weights.get("base"), encoder_weights=weights.get("encoder"),
        fingerprint=meta.get("fingerprint"), format_version=meta.get("format_version", 0), raw=meta,
    )


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``hicae_config.json`` of a checkpoint as a dict, every field checked (types, the configs it holds);
    ``read_checkpoint`` gives it typed."""
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
    """The LoRA settings of ``adapter_config.json`` must be those of ``hicae_config.json`` (``meta``, as read)."""
    _check_adapter(path, ICAEConfig.from_dict(meta["icae"]))


def _check_adapter(path: str | Path, cfg: ICAEConfig) -> None:
    f = Path(path) / ADAPTER_CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    peft_cfg = _read_json(f)
    if not isinstance(peft_cfg, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(peft_cfg).__name__}")
    got = dict(peft_cfg)
    tm = got.get("target_modules")
    if isinstance(tm, list) and all(isinstance(m, str) for m in tm):  # peft writes a set: any order
        got["target_modules"] = sorted(tm)
    diffs = [f"{k}: {json.dumps(got.get(k, _PEFT_NEUTRAL.get(k)))} vs {json.dumps(v)}"
             for k, v in _expected_lora(cfg).items() if got.get(k, _PEFT_NEUTRAL.get(k)) != v]
    if diffs:
        raise CheckpointError(f"{f} disagrees with {CONFIG_FILE} ({ADAPTER_CONFIG_FILE} vs {CONFIG_FILE}): "
                              + "; ".join(diffs) + "; the checkpoint's files do not belong together")
