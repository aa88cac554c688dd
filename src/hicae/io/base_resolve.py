"""The base model a checkpoint runs on when none is given: a local copy with its weights first, then the hub.

A checkpoint records its base by name (a hub id such as ``Qwen/Qwen2.5-Coder-0.5B-Instruct``, or a
local path) and by weights fingerprint (fingerprint.py). Loading it with no ``--model_name_or_path``:

1. a recorded local path that exists is loaded as is;
2. else the local model folders hicae knows are tried, those of the recorded shape only:
   ``$HICAE_QWEN25``, then every folder with a ``config.json`` in hicae's cache (``~/.cache/hicae``
   or ``$HICAE_CACHE``, where ``scripts/setup.sh`` puts the real Qwen2.5). The first whose weights
   fingerprint matches the recorded one is used: the same weights, whatever the folder is called;
3. else the recorded name goes to transformers (the Hugging Face cache, then the hub). Whether the
   hub is reachable is checked first (``HF_HUB_OFFLINE``, or a TCP connection with a 3 s limit):
   offline, only the Hugging Face cache is read, and a miss is one line naming
   ``--model_name_or_path`` and the cache folder within seconds (transformers alone retries for
   about a minute before failing).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

from .cache import cache_dir
from ..config import base_shape, shape_mismatches
from ..errors import CheckpointError
from .fingerprint import base_fingerprints, weights_match

if TYPE_CHECKING:
    from .checkpoint_meta import CheckpointInfo

log = logging.getLogger("hicae")
HUB_TIMEOUT = 3.0  # seconds to reach the hub before calling it offline


def local_folders() -> list[Path]:
    """Model folders on this machine that hicae knows of, in the order they are tried."""
    out = []
    env = os.environ.get("HICAE_QWEN25")
    if env:
        out.append(Path(env).expanduser())
    root = cache_dir()
    if root.is_dir():
        out += sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file())
    return list(dict.fromkeys(out))


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """False under ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, or when the hub's host does not accept a TCP
    connection within ``timeout`` seconds (name resolution included: it runs in a thread that is not waited for)."""
    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return ok.wait(timeout)


def _shape_of(folder: Path) -> dict[str, Any] | None:
    from transformers import AutoConfig

    try:
        return base_shape(AutoConfig.from_pretrained(str(folder), trust_remote_code=False))
    except (OSError, ValueError):
        return None


def load_recorded_base(info: CheckpointInfo, load_base: Callable[..., tuple[Any, Any]],
                       **load_kwargs: Any) -> tuple[Any, Any]:
    """The base model and tokenizer of the checkpoint ``info`` describes; see the module docstring.
    ``load_base``: ``checkpoint_files.load_base`` (passed in), given ``load_kwargs`` (dtype, device,
    attn_implementation)."""
    path, name, want = info.path, info.base_model, info.base_weights
    if not name:
        raise CheckpointError(f"{path}: the checkpoint names no base model; pass base_model and tokenizer")
    if Path(name).expanduser().exists():
        return load_base(name, **load_kwargs)
    if want:
        for folder in local_folders():
            shape = _shape_of(folder)
            if shape is None or shape_mismatches(info.base_shape, shape):
                continue
            model, tok = load_base(str(folder), **load_kwargs)
            if weights_match(want, base_fingerprints(model)):
                log.info("hicae: base model %r: using %s (the same weights)", name, folder)
                return model, tok
            del model, tok
    online = hub_reachable()
    try:
        return load_base(name, local_files_only=not online, **load_kwargs)
    except CheckpointError as e:
        if online:
            raise
        raise CheckpointError(
            f"{path}: its base model {name!r} is not on this machine (no folder in {cache_dir()} has its weights, "
            f"nor the Hugging Face cache) and the model hub cannot be reached: pass --model_name_or_path with a "
            f"local copy of it (a folder or .gguf file), or run scripts/setup.sh for hicae's real Qwen2.5"
        ) from e
