"""A small English corpus that every machine has: docstrings of Python's standard library.

The demo trains on it, so nothing is downloaded or committed. Passages are whole docstrings (or
their first paragraphs), split by module so the held-out set shares no module with training.
"""

from __future__ import annotations

import importlib
import inspect

TRAIN_MODULES = ("textwrap", "string", "json", "base64", "shutil", "fnmatch", "glob", "heapq", "bisect",
                 "statistics", "random", "functools", "itertools", "collections", "difflib", "csv", "copy",
                 "zipfile", "tarfile", "gzip", "hashlib", "uuid", "calendar", "datetime", "argparse")
HELDOUT_MODULES = ("pprint", "html", "queue", "secrets")


def _docstrings(module_name: str) -> list[str]:
    mod = importlib.import_module(module_name)
    out = []
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) not in (module_name, None):
            continue
        doc = inspect.getdoc(obj)
        if doc:
            para = doc.split("\n\n")[0].replace("\n", " ").strip()  # the summary paragraph
            if len(para) >= 40:
                out.append(para)
    return out


def passages(modules: tuple[str, ...], min_chars: int = 40, max_chars: int = 400) -> list[str]:
    seen, out = set(), []
    for m in modules:
        for p in _docstrings(m):
            p = p[:max_chars].rsplit(" ", 1)[0] if len(p) > max_chars else p
            if len(p) >= min_chars and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def demo_corpus() -> tuple[list[str], list[str]]:
    """(training passages, held-out passages)."""
    return passages(TRAIN_MODULES), passages(HELDOUT_MODULES)


LONG_MODULES = ("argparse", "collections", "json", "textwrap", "difflib", "csv", "datetime", "functools", "itertools",
                "statistics", "random", "shutil", "tarfile", "zipfile", "pprint", "html", "queue", "heapq")


def long_document(max_chars: int = 80_000) -> str:
    """Full docstrings of many standard-library modules and their members, joined (tens of thousands of tokens)."""
    parts: list[str] = []
    size = 0
    for name in LONG_MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        docs += [inspect.getdoc(o) or "" for n, o in sorted(vars(mod).items())
                 if not n.startswith("_") and getattr(o, "__module__", None) == name]
        for d in docs:
            if d and size < max_chars:
                parts.append(d)
                size += len(d) + 2
    return "\n\n".join(parts)[:max_chars]
