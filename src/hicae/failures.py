"""Expected failures and their one-line messages: the one mapping the CLI (exit 1) and the server (HTTP) share.

What is mapped is about the user's input, files or machine, never a bug in hicae: a ``HicaeError``;
an OS error (a file that cannot be read or written, a full disk, also when safetensors reports it);
a file torch's safe loader refuses or cannot read (a truncated ``optimizer.pt``); a ``ValueError``
that transformers raises about generation settings. Anything else is a bug: ``describe`` gives None,
the CLI keeps the traceback and the server answers 500 "internal error".
"""

from __future__ import annotations

import os
import pickle
import traceback

from .errors import HicaeError
from .io.fileio import io_failure

_GENERATION_CODE = os.sep + os.path.join("transformers", "generation") + os.sep
_TORCH_LOAD = os.path.join("torch", "serialization.py")


def _raised_in(e: BaseException, fragment: str) -> bool:
    tb = traceback.extract_tb(e.__traceback__)
    return bool(tb) and fragment in tb[-1].filename


def _refused_file(e: BaseException) -> str | None:
    """The file ``torch.load`` was reading when it raised ``e`` (its argument ``f``), if a path."""
    for frame, _ in traceback.walk_tb(e.__traceback__):
        if frame.f_code.co_name == "load" and frame.f_code.co_filename.endswith(_TORCH_LOAD):
            f = frame.f_locals.get("f")
            if isinstance(f, (str, os.PathLike)):
                return os.fspath(f)
    return None


def _unpickling_message(e: pickle.UnpicklingError) -> str:
    text = str(e)
    detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0] if "WeightsUnpickler error:" in text else ""
    where = _refused_file(e) or "a file"
    return (f"{where}: torch's safe loader refused it: it holds pickled Python objects, and loading those could "
            f"run code; hicae never loads such files" + (f" ({detail})" if detail else ""))


def describe(e: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for anything else (a bug)."""
    if isinstance(e, HicaeError):
        return str(e)
    damaged = _refused_file(e)  # torch reports a truncated file as EINVAL, EOFError or a PytorchStreamReader error
    if damaged is not None and (isinstance(e, (OSError, EOFError)) or str(e).startswith("PytorchStreamReader")):
        why = io_failure(e) or str(e).strip().splitlines()[0]
        return f"{damaged}: cannot read it (truncated or damaged?): {why}"
    why = io_failure(e)
    if why is not None:
        name = getattr(e, "filename", None)
        return f"{name}: {why}" if name else why
    if isinstance(e, pickle.UnpicklingError) and ("Weights only load failed" in str(e) or "weights_only" in str(e)):
        return _unpickling_message(e)
    if isinstance(e, ValueError) and _raised_in(e, _GENERATION_CODE):
        return f"generation settings: {str(e).strip().splitlines()[0]}"
    return None

