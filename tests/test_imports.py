"""The import graph of hicae's modules has no cycle, and its layers hold: the core (the model classes calling down
into io/checkpoint_files.py), io/, training/, the wings.

Every ``import`` statement counts, those inside functions too: a lazy import hides a cycle from
Python's loader but not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hicae

ROOT = Path(hicae.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the hicae modules (or packages) it imports, from the source (nothing is executed)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, f in mods.items():
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: level 1 is the package itself
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:  # `from pkg import mod` imports pkg.mod; `from mod import name`, mod
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                    if target in mods:
                        graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(g) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_relative_and_lazy_imports():
    g = import_graph()
    assert "hicae.model" in g["hicae.io.checkpoint"] and "hicae.hierarchy" in g["hicae.io.checkpoint"]
    assert "hicae.io.checkpoint_files" in g["hicae.model"]  # imported inside a method
    assert "hicae.evaluation.metrics" in g["hicae.evaluation.qa"]  # `from . import metrics`
    assert "hicae.io.checkpoint" in g["hicae.cli.demo"]  # imported inside a function


def test_hicae_modules_import_no_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles among hicae modules: {found}"


def test_model_classes_call_down_into_io():
    """from_pretrained & co. are ordinary methods of ICAE calling io/checkpoint_files.py, which imports no model
    class; io/checkpoint.py (``load_icae``) and io/migration.py build models, so they sit above the classes."""
    g = import_graph()
    assert "hicae.io.checkpoint_files" in g["hicae.model"]  # imported inside the methods
    for mod in ("hicae.model", "hicae.hierarchy", "hicae.hierarchy.model", "hicae.hierarchy.plan"):
        assert not g[mod] & IO_ABOVE_MODEL, f"{mod} imports {sorted(g[mod] & IO_ABOVE_MODEL)}"
    for mod in IO_BELOW_MODEL:
        up = g[mod] & ({"hicae.model", "hicae.hierarchy", "hicae.hierarchy.model"} | IO_ABOVE_MODEL)
        assert not up, f"{mod} imports {sorted(up)}: it sits below the model classes"
    from hicae import HierarchicalICAE, ICAE

    for name in ("from_base", "from_pretrained", "save_pretrained"):
        assert name in vars(ICAE), f"ICAE.{name} is not defined in the class body"
    assert ICAE.from_pretrained.__func__.__module__ == "hicae.model"
    assert HierarchicalICAE.save_pretrained is ICAE.save_pretrained
    assert ICAE._hierarchy_class is HierarchicalICAE  # what a hierarchical checkpoint loads as


IO = "hicae.io"
# The leaves of io/ the core may use (atomic writes, weights fingerprints, the cache folder): they import only errors.
IO_LEAVES = {"hicae.io.fileio", "hicae.io.fingerprint", "hicae.io.cache"}
# io/ below the model classes (they call it) and above them (what builds a model: load_icae, the ICAE v2 import).
IO_BELOW_MODEL = IO_LEAVES | {"hicae.io.checkpoint_files", "hicae.io.checkpoint_meta", "hicae.io.base_resolve"}
IO_ABOVE_MODEL = {"hicae.io", "hicae.io.checkpoint", "hicae.io.migration"}
# Outside the wings, what may use the rest of io/: model.py (its I/O methods) and training, which saves and
# resumes checkpoints.
ABOVE_IO = {"hicae.model", "hicae.training.trainer", "hicae.training.run_folder"}
TRAINING = "hicae.training"


def test_io_sits_above_the_core_and_below_the_wings():
    """The core imports of io/ only its leaves; the leaves import nothing of hicae but errors; io/ imports no wing."""
    g = import_graph()
    for leaf in IO_LEAVES:
        assert g[leaf] <= {"hicae.errors"}, f"{leaf} imports {sorted(g[leaf])}: an io/ leaf imports only errors"
    for mod, targets in g.items():
        if _in(mod, IO):
            up = [t for t in targets if _wing(t) or _in(t, TRAINING)]
            assert not up, f"{mod} imports {up}: io/ imports no wing and no training"
        elif _wing(mod) is None and not _in(mod, "hicae.demo") and mod not in ABOVE_IO:
            io = {t for t in targets if _in(t, IO)} - IO_LEAVES
            assert not io, f"core module {mod} imports {sorted(io)}: I/O sits above the core"


def test_training_sits_above_io_and_below_the_wings():
    """training/ imports the core and io/, no wing; the core imports no training (only wings use it)."""
    for mod, targets in import_graph().items():
        if _in(mod, TRAINING):
            assert not [t for t in targets if _wing(t)], f"{mod} imports a wing: {sorted(targets)}"
        elif _wing(mod) is None:
            assert not [t for t in targets if _in(t, TRAINING)], f"core module {mod} imports training: {sorted(targets)}"


WINGS = ("hicae.cli", "hicae.serve", "hicae.evaluation", "hicae.protocol", "hicae.instruct", "hicae.longqa")


def _wing(mod: str) -> str | None:
    return next((w for w in WINGS if mod == w or mod.startswith(w + ".")), None)


def test_layers_of_docs_architecture():
    """The core (top-level modules) imports no wing; only the CLI imports the server; nobody imports the CLI
    (what wings share, the error messages and the device picker, lives in the core)."""
    for mod, targets in import_graph().items():
        for t in targets:
            src, dst = _wing(mod), _wing(t)
            if dst is None or dst == src:
                continue
            assert src is not None, f"core module {mod} imports the {dst} wing ({t})"
            assert dst != "hicae.serve" or src == "hicae.cli", f"{mod} imports the server ({t})"
            assert dst != "hicae.cli", f"{mod} imports the CLI ({t})"


# Demo fixtures (tiny random models, the fetched Qwen3 tokenizer and Qwen2.5, the demo corpus and checkpoint)
# serve tests, the demo, benchmarks and experiments. Inside the package only these wings use them: the CLI's
# demo and build-qa commands (tiny models, the shipped adapter), the protocol and long-document QA (the real
# Qwen2.5 as their default base).
DEMO = "hicae.demo"
DEMO_USERS = ("hicae.cli", "hicae.protocol", "hicae.longqa")


def test_demo_fixtures_stay_out_of_the_library():
    """The core, evaluation, the server and instruct import no demo fixture; the fixtures import only the core."""
    graph = import_graph()
    assert DEMO in graph and f"{DEMO}.tiny" in graph
    for mod, targets in graph.items():
        in_demo = mod == DEMO or mod.startswith(DEMO + ".")
        for t in targets:
            if in_demo:
                assert _wing(t) is None, f"demo fixture {mod} imports the {_wing(t)} wing ({t})"
            elif t == DEMO or t.startswith(DEMO + "."):
                assert _wing(mod) in DEMO_USERS, f"{mod} imports the demo fixture {t}"


DECODING = "hicae.decoding"
# What the decoding wing may import besides itself: the core's settings, layouts, task vocabulary, tokens,
# batching, memory values and errors. Never the model classes (the model is passed in), I/O, a wing, cli or serve.
DECODING_MAY_IMPORT = {"hicae.config", "hicae.layout", "hicae.tasks", "hicae.tokens", "hicae.batching", "hicae.memory",
                       "hicae.memory_checks", "hicae.errors", "hicae.decoder_side"}


def _in(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def test_decoding_imports_only_the_core():
    g = import_graph()
    assert "hicae.decoding.run" in g["hicae.model"]  # the model's generate decodes through the wing
    for mod, targets in g.items():
        if _in(mod, DECODING):
            outside = {t for t in targets if not _in(t, DECODING)} - DECODING_MAY_IMPORT
            assert not outside, f"{mod} imports {sorted(outside)}: the decoding wing imports only the core"
