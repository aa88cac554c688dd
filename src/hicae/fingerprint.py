"""Weights fingerprints: which base model and which trained encoder made a checkpoint or a memory.

A fingerprint is a short hash of a strided sample of every tensor (at most ``SAMPLE`` elements
each, first and last included) with the tensors' names and shapes. It costs one small gather per
tensor, not a pass over gigabytes, and it is deterministic: the sample is taken at fixed integer
positions and rounded to bf16 before hashing, so the same weights give the same fingerprint on
another machine or device, loaded in bf16 or fp32 (an fp32 adapter and its bf16 export agree).
Paths are never part of it.

- ``base_fingerprint``: the frozen base model's parameters (tied weights counted once);
- ``encoder_fingerprint``: the trained encoder, i.e. the LoRA adapter's tensors and the learned
  embeddings, under the names a checkpoint stores them by.

The sample also serves as a cheap non-finite check of the base model (see ``base_fingerprint``).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from .errors import CheckpointError

SAMPLE = 1024  # elements read from each tensor


def _sample(t: torch.Tensor) -> torch.Tensor:
    """Up to ``SAMPLE`` evenly spaced elements of ``t`` (first and last included), in bf16.  -> [m]"""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    m = min(n, SAMPLE)
    if m == 0:
        return torch.zeros(0, dtype=torch.bfloat16)
    # integer positions: exact for any size, unlike a float linspace
    idx = torch.arange(m, dtype=torch.int64) * (n - 1) // max(1, m - 1)
    return flat[idx.to(flat.device)].to(torch.bfloat16).cpu()


def weights_digest(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> str:
    """16 hex digits over names, shapes and sampled values, in name order; a non-finite sample is an error."""
    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        s = _sample(t)
        if not bool(torch.isfinite(s).all()):
            raise CheckpointError(f"{what}: tensor {name} has non-finite values (NaN or inf)")
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(s.view(torch.int16).numpy().astype("<i2").tobytes())  # bf16 bits, little-endian
    return h.hexdigest()[:16]


def base_fingerprint(model: torch.nn.Module, what: str = "base model") -> str:
    """Fingerprint of a base model's parameters. Its sample doubles as a non-finite check: a NaN
    or inf among the sampled elements is refused, naming the tensor (the sample reads ``SAMPLE``
    points spread over each tensor, so a corrupted region larger than 1/SAMPLE of it is caught)."""
    return weights_digest(model.named_parameters(), what)


def encoder_fingerprint(tensors: dict[str, torch.Tensor], what: str = "encoder") -> str:
    """Fingerprint of the trained encoder: adapter tensors and learned embeddings, by stored name."""
    return weights_digest(tensors.items(), what)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse any tensor with a NaN or inf (every element is read: for small, trained tensors)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name} has non-finite values (NaN or inf)")
