"""Output paths, checked before any work: an output never replaces an input, and its folder can take it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Tuple

from ..errors import ConfigError

Named = Iterable[Tuple[str, Optional[str]]]  # (option, path); a None path is skipped


def _same(a: Path, b: Path) -> bool:
    """Same file or folder: the same path once links are resolved, or the same inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: Named, inputs: Named) -> None:
    """Refuse an output that is an input, or an existing file inside an input folder (a checkpoint's)."""
    ins = [(opt, Path(p)) for opt, p in inputs if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    for out_opt, out in outputs:
        if out is None:
            continue
        o = Path(out)
        for in_opt, i in ins:
            if _same(o, i):
                kind = "folder" if i.is_dir() else "file"
                raise ConfigError(f"{out_opt} {out} is the same {kind} as {in_opt} {i}: writing it would destroy "
                                  f"the input; choose another {out_opt}")
            if i.is_dir() and o.is_file() and i.resolve() in o.resolve().parents:
                raise ConfigError(f"{out_opt} {out} is a file of {in_opt} {i}: writing it would damage the input; "
                                  f"choose another {out_opt}")


def check_writable(option: str, path: str | None, folder: bool = False) -> None:
    """Refuse an output whose kind is wrong (a folder for a file, or the reverse), whose parent is a
    file, or whose nearest existing folder is not writable: such a run would fail only at its end."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise ConfigError(f"{option} {path} is {kind}; give {'a folder' if folder else 'a file path'}")
    existing = p if folder and p.is_dir() else next((a for a in p.parents if a.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: cannot write there: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write there: Permission denied (folder {existing})")
