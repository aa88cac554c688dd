"""Weights fingerprints: which base model and which trained encoder made a checkpoint or a memory.

A fingerprint is a short hash of a strided sample of every tensor (at most ``SAMPLE`` elements
each, first and last included) with the tensors' names and shapes. It costs one small gather per
tensor, not a pass over gigabytes, and it is deterministic: the sample is taken at fixed integer
positions and rounded to bf16 before hashing, so the same weights give the same fingerprint on
another machine or device, loaded in bf16 or fp32 (an fp32 adapter and its bf16 export agree).

**Casts a user makes.** The base model's fingerprint (``base_fingerprints``) holds two hashes,
``<bf16>/<fp16>``: the sample rounded to bf16 (the fingerprint above) and rounded to fp16. Two
fingerprints match (``weights_match``) when they share one. No single rounding can serve all three
dtypes of weights kept in fp32: bf16 rounding of the fp16 values is not always that of the
originals (a value whose fp16 rounding lands on a bf16 tie), and no function of the rounded values
can tell the two cases apart. With both hashes:

- weights stored in bf16 (every Qwen release, hicae's real model): fp32, bf16 and fp16 loads all
  match (bf16 values are exact in fp16 and fp32; fp16 subnormals round the same way from any copy);
- weights stored in fp32 (a checkpoint trained on them in fp32): the fp32 model matches its bf16
  cast (bf16 hash) and its fp16 cast (fp16 hash); the bf16 and fp16 casts of fp32 weights share no
  hash (the information one lacks is in the other), so a checkpoint trained on a bf16 cast of fp32
  weights is refused in fp16 (load the base in fp32 or bf16, or ``--allow_other_weights``);
- other weights share neither hash. A sample beyond fp16's range has no fp16 hash.

Fingerprints recorded before the fp16 hash (one 16-hex hash: the bf16 one) still match.
Paths are never part of it.

- ``base_fingerprints``: the frozen base model's parameters (tied weights counted once);
- ``encoder_fingerprint``: the trained encoder, i.e. the LoRA adapter's tensors and the learned
  embeddings, under the names a checkpoint stores them by.

The sample also serves as a cheap non-finite check of the base model (see ``base_fingerprint``).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from ..errors import CheckpointError

SAMPLE = 1024  # elements read from each tensor


SEP = "/"  # between the bf16 and the fp16 hash of a base fingerprint
FP16_MAX = 65504.0


def _raw_sample(t: torch.Tensor) -> torch.Tensor:
    """Up to ``SAMPLE`` evenly spaced elements of ``t`` (first and last included), in its own dtype, on the CPU.  -> [m]"""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    m = min(n, SAMPLE)
    if m == 0:
        return torch.zeros(0, dtype=flat.dtype)
    # integer positions: exact for any size, unlike a float linspace
    idx = torch.arange(m, dtype=torch.int64) * (n - 1) // max(1, m - 1)
    return flat[idx.to(flat.device)].cpu()


def _sample(t: torch.Tensor) -> torch.Tensor:
    """The sample rounded to bf16.  -> [m]"""
    return _raw_sample(t).to(torch.bfloat16)


def _bits(s: torch.Tensor) -> bytes:
    return s.view(torch.int16).numpy().astype("<i2").tobytes()  # bf16 / fp16 bits, little-endian


def weights_digest(tensors: Iterable[tuple[str, torch.Tensor]], what: str, fp16: bool = False) -> str:
    """16 hex digits over names, shapes and sampled values (rounded to bf16), in name order; with ``fp16`` also
    the hash of the sample rounded to fp16, after a ``/`` (none when a value is beyond fp16's range). A
    non-finite sample is an error."""
    h, h16 = hashlib.sha256(), hashlib.sha256() if fp16 else None
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        raw = _raw_sample(t)
        s = raw.to(torch.bfloat16)
        if not bool(torch.isfinite(s).all()):
            raise CheckpointError(f"{what}: tensor {name} has non-finite values (NaN or inf)")
        head = f"{name}:{tuple(t.shape)}:".encode()
        h.update(head)
        h.update(_bits(s))
        if h16 is not None:
            if raw.numel() and float(raw.float().abs().max()) > FP16_MAX:
                h16 = None  # an fp16 copy of these weights would overflow: no fp16 hash
            else:
                h16.update(head)
                h16.update(_bits(raw.to(torch.float16)))
    return h.hexdigest()[:16] + ("" if h16 is None else SEP + h16.hexdigest()[:16])


def base_fingerprint(model: torch.nn.Module, what: str = "base model") -> str:
    """The bf16 hash of a base model's parameters (see ``base_fingerprints`` for what models record). Its sample
    doubles as a non-finite check: a NaN or inf among the sampled elements is refused, naming the tensor (the
    sample reads ``SAMPLE`` points spread over each tensor, so a corrupted region larger than 1/SAMPLE of it is
    caught)."""
    return weights_digest(model.named_parameters(), what)


def base_fingerprints(model: torch.nn.Module, what: str = "base model") -> str:
    """``<bf16 hash>/<fp16 hash>`` of a base model's parameters: what checkpoints and memories record, so that
    the base loaded in fp32, bf16 or fp16 is recognised (module docstring)."""
    return weights_digest(model.named_parameters(), what, fp16=True)


def weights_match(recorded: str, current: str) -> bool:
    """Whether two fingerprints name the same weights: they share a hash (an old one-hash fingerprint is its
    bf16 hash)."""
    return bool(set(recorded.split(SEP)) & set(current.split(SEP)))


def encoder_fingerprint(tensors: dict[str, torch.Tensor], what: str = "encoder") -> str:
    """Fingerprint of the trained encoder: adapter tensors and learned embeddings, by stored name."""
    return weights_digest(tensors.items(), what)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse any tensor with a NaN or inf (every element is read: for small, trained tensors)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name} has non-finite values (NaN or inf)")
