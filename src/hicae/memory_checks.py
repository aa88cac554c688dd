"""What a memory file must hold to be loaded: metadata of the right types, slots that match it.

A file whose metadata says 7 segments but holds the slots of 4, or whose counts are not numbers,
would otherwise be decoded into nonsense or fail deep inside the decoder. Each problem is one
CheckpointError naming the file and the field (or tensor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def _json(path: Path, meta: dict[str, str], key: str, default: Any = None) -> Any:
    if key not in meta:
        if default is None:
            raise CheckpointError(f"{path}: not a complete memory file: metadata has no {key!r}")
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: cannot read memory file: metadata {key!r} is not valid JSON ({e})") from None


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ints(path: Path, key: str, value: Any, minimum: int) -> list[int]:
    if not isinstance(value, list) or not all(_int(v) and v >= minimum for v in value):
        raise CheckpointError(f"{path}: metadata {key!r} must be a list of integers >= {minimum}, "
                              f"got {json.dumps(value)[:80]}")
    return value


def parse_metadata(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments of ``Memory`` (all but ``slots``) from a file's string metadata, type-checked."""
    out: dict[str, Any] = {}
    for key in ("mem_size", "compression_rate", "levels"):
        v = _json(path, meta, key, 1 if key == "levels" else None)
        if not _int(v) or v < 1:
            raise CheckpointError(f"{path}: metadata {key!r} must be an integer >= 1, got {meta.get(key)!r}")
        out[key] = v
    out["num_tokens"] = _ints(path, "num_tokens", _json(path, meta, "num_tokens"), 1)
    out["num_segments"] = _ints(path, "num_segments", _json(path, meta, "num_segments"), 1)
    if len(out["num_segments"]) != len(out["num_tokens"]):
        raise CheckpointError(f"{path}: metadata has {len(out['num_tokens'])} num_tokens but "
                              f"{len(out['num_segments'])} num_segments")
    for key in ("base_model", "fingerprint"):
        if key not in meta:
            raise CheckpointError(f"{path}: not a complete memory file: metadata has no {key!r}")
        out[key] = meta[key]
    out["base_weights"] = meta.get("base_weights", "")
    out["encoder_weights"] = meta.get("encoder_weights", "")
    out["extra"] = _json(path, meta, "extra", {})
    if not isinstance(out["extra"], dict):
        raise CheckpointError(f"{path}: metadata 'extra' must be a JSON object")
    if ("blocks" in meta) != ("tails" in meta):
        raise CheckpointError(f"{path}: metadata has one of 'blocks' and 'tails' without the other")
    out["blocks"] = out["tails"] = None
    if "blocks" in meta:
        n = len(out["num_tokens"])
        blocks, tails = _json(path, meta, "blocks"), _json(path, meta, "tails")
        ok = isinstance(blocks, list) and len(blocks) == n and all(
            isinstance(bl, list) and all(isinstance(b, list) and len(b) == 3 and all(_int(x) for x in b) for b in bl)
            for bl in blocks)
        if not ok:
            raise CheckpointError(f"{path}: metadata 'blocks' must hold, for each of {n} texts, a list of "
                                  "[level, start, end] integer triples")
        if not (isinstance(tails, list) and len(tails) == n and all(isinstance(t, list) for t in tails)):
            raise CheckpointError(f"{path}: metadata 'tails' must hold a list of token ids for each of {n} texts")
        out["blocks"], out["tails"] = blocks, tails
    return out


def check_slots(path: Path, fields: dict[str, Any], slots: list[torch.Tensor]) -> None:
    """Slot tensors against the metadata: 2-D floats of one width; per text, as many rows as its
    blocks (hierarchical) or segments hold, and as many segments as its tokens fill."""
    k, seg = fields["mem_size"], fields["mem_size"] * fields["compression_rate"]
    width = None
    for i, (s, ntok, nseg) in enumerate(zip(slots, fields["num_tokens"], fields["num_segments"])):
        name = f"slots.{i}"
        if s.ndim != 2 or not s.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} must be a 2-D float tensor [slots, hidden], "
                                  f"got {s.dtype} of shape {tuple(s.shape)}")
        if width is not None and s.shape[1] != width:
            raise CheckpointError(f"{path}: tensor {name} is {s.shape[1]} wide, slots.0 is {width}")
        width = s.shape[1]
        # both segmentations cut a text of L tokens into ceil(L / (k*r)) segments
        if nseg != math.ceil(ntok / seg):
            raise CheckpointError(f"{path}: text {i} has {ntok} tokens, which make {math.ceil(ntok / seg)} segments "
                                  f"of up to {seg}, but the metadata says {nseg}")
        blocks = nseg if fields["blocks"] is None else len(fields["blocks"][i])
        if s.shape[0] != blocks * k:
            unit = "segments" if fields["blocks"] is None else "blocks"
            raise CheckpointError(f"{path}: tensor {name} holds {s.shape[0]} slots, but the metadata's {blocks} "
                                  f"{unit} of {k} slots make {blocks * k}")
