"""Which device a command or the server runs on: ``--device`` checked against this machine, in one line."""

from __future__ import annotations

import torch

from .errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def pick_device(name: str | None) -> str:
    """The device ``name`` names (auto: cuda if there is one, else cpu), refused in one line if this machine lacks it."""
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):  # torch lists its twenty device types: name ours instead
        raise ConfigError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name}: hicae runs on auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    if dev.type != "cuda" and dev.type != "cpu" and not getattr(torch, dev.type).is_available():
        raise ConfigError(f"--device {name}: {dev.type} is not available on this machine")
    return name
