"""Atomic file writes: outputs appear whole or not at all, and a failed write names the output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError

from ..errors import OutputError


def io_failure(e: BaseException) -> str | None:
    """Why an I/O operation failed (``No space left on device``...), or None when ``e`` is no I/O error."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    # safetensors writes from Rust and reports the OS error only inside its message
    if isinstance(e, SafetensorError) and "I/O error" in str(e):
        return str(e).split("I/O error", 1)[1].lstrip(": ")
    return None


def _parent_problem(path: Path) -> str | None:
    """Why ``path``'s folder cannot hold it: an ancestor that is a file rather than a folder."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, not a folder"
    return None


def _fail(path: Path, e: BaseException, existed: bool) -> OutputError:
    why = _parent_problem(path) or io_failure(e)
    kept = f" ({path} is unchanged)" if existed else ""
    return OutputError(f"cannot write {path}: {why}{kept}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    An I/O failure (permissions, full disk, a file in place of a folder) becomes an ``OutputError``
    naming ``path``; the old file, if any, is left as it was and no temporary file remains.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _fail(path, e, existed) from e
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        if isinstance(e, OutputError) or io_failure(e) is None:
            raise
        raise _fail(path, e, existed) from e
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; if the block succeeds, move its entries into ``path``.

    Each entry replaces its namesake atomically; other contents of ``path`` (a Trainer's
    ``checkpoint-*`` folders, logs) are left alone. A failed block leaves ``path`` untouched; an I/O
    failure becomes an ``OutputError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _fail(path, e, False) from e
    try:
        yield tmp
        for entry in tmp.iterdir():
            dest = path / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    except Exception as e:
        if isinstance(e, OutputError) or io_failure(e) is None:
            raise
        raise _fail(path, e, False) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
