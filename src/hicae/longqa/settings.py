"""The long-document QA benchmark's settings: one dataclass, each field's help text is its ``--flag``'s help."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields

from ..errors import ConfigError
from ..setting import setting as _f

CONDITIONS = ("memory_flat", "memory_hier", "memory_retrieved", "memory_retrieved_each", "memory_decoded", "full", "last_n", "bm25", "none")
MEMORY = ("memory_flat", "memory_hier")  # answered by the decoder from the slots
DECODED = "memory_decoded"  # the flat memory read back as text (decoded.py), then BM25 and the plain base
RETRIEVED = "memory_retrieved"  # BM25 picks segments of the flat memory, the decoder reads their slots (retrieved.py)
EACH = "memory_retrieved_each"  # the same picks read one segment at a time, the surest answer kept (retrieved.py)
PICKED = (RETRIEVED, EACH)  # conditions that read the segments BM25 picks
FROM_FLAT = (*PICKED, DECODED)  # conditions served by the flat checkpoint besides memory_flat
COMPRESSED = (*MEMORY, *FROM_FLAT)  # conditions that compress the document once
RETRIEVE_FROM = ("text", "read_back")



@dataclass
class LongQASettings:
    checkpoint: str | None = _f(None, "flat ICAE checkpoint: the memory_flat condition (multi-span, all segments' "
                                      "slots), memory_retrieved (the slots of the segments BM25 picks; "
                                      "memory_retrieved_each: each picked segment alone, the surest answer) and "
                                      "memory_decoded (that memory read back as text, then BM25)")
    hier_checkpoint: str | None = _f(None, "hierarchical checkpoint: the memory_hier condition (at most --max_slots slots)")
    base: str | None = _f(None, "base model folder or .gguf (default: the real Qwen2.5-0.5B-Instruct); "
                                "checkpoints that carry their base/ use it")
    max_slots: int = _f(512, "memory_hier's slot budget per document")
    budget: int | None = _f(None, "N for last_n and bm25 when no memory condition runs (else N = the largest "
                                  "slot count of the memory conditions on that document)")
    lengths: str = _f("2k,8k,32k,100k", "document lengths in tokens (k = 1000)")
    docs_per_length: int = _f(1, "long documents per language and length")
    questions: int = _f(4, "cloze questions per document, one from each of this many equal stretches of it")
    retrieve_slots: int = _f(64, "memory_retrieved(_each): slots the decoder reads per question, whole segments of k, "
                                 "the best BM25 ranks first (at least one segment)")
    retrieve_from: str = _f("text", "memory_retrieved(_each): what BM25 ranks the segments by: text (the document's "
                                    "segments, kept beside the memory) or read_back (the memory read back as text "
                                    "once per document: only the slots are kept)")
    max_new_tokens: int = _f(16, "answer length limit (the gold spans are 2 words / 4 characters)")
    chunk_tokens: int = _f(128, "bm25: chunk size in tokens")
    prefix_cache: bool = _f(True, "memory conditions: the decoder's pass over the memory runs once per document "
                                  "(prefix s; compress once, ask many) and each question reads its cache; "
                                  "--no-prefix_cache: every question rereads the memory")
    conditions: str = _f(",".join(CONDITIONS), f"comma-separated subset of {', '.join(CONDITIONS)}; memory "
                                               "conditions run when their checkpoint is given")
    full_max_tokens: int | None = _f(None, "full: only prompts of at most this many tokens (default: the base's "
                                           "window, max_position_embeddings); longer ones are reported as n/a")
    languages: str = _f("en,zh", "comma-separated: en, zh")
    en_domains: str = _f("en_kernel_docs,en_debian_reference", "English: protocol domains whose held-out documents "
                                                               "make the long documents (the first, then the next)")
    zh_domains: str = _f("zh_debian_reference,zh_manpages", "Chinese: the same")
    corpus: str | None = _f(None, "instead of the protocol: JSONL {'text'} documents (language by script), "
                                  "concatenated the same way")
    out_dir: str = _f("outputs/long_qa", "where long_qa.json, long_qa.md and rows.jsonl go; rerunning continues "
                                         "from rows.jsonl (each document x condition done is skipped)")
    seed: int = _f(0, "seed of the held-out split, the documents and the questions")
    holdout_fraction: float = _f(0.1, "the protocol's held-out share (as in experiments/protocol.py)")
    cache_dir: str = _f(os.path.expanduser("~/.cache/hicae/protocol"), "the protocol's package cache")
    dtype: str = _f("bf16", "model dtype")
    threads: int | None = _f(None, "torch threads (1-2 on a shared 2-core machine)")
    dry_run: bool = _f(False, "toy sizes (lengths 96,160; 2 questions; 4 new tokens): every code path, for tests")

    def __post_init__(self) -> None:
        bad = [c for c in self.condition_list if c not in CONDITIONS]
        if bad or not self.condition_list:
            raise ConfigError(f"--conditions: unknown {bad}; choose from {', '.join(CONDITIONS)}")
        if not set(self.languages.split(",")) <= {"en", "zh"}:
            raise ConfigError(f"--languages: en and/or zh, got {self.languages!r}")
        if self.retrieve_from not in RETRIEVE_FROM:
            raise ConfigError(f"--retrieve_from: one of {', '.join(RETRIEVE_FROM)}, got {self.retrieve_from!r}")
        for name in ("max_slots", "retrieve_slots", "docs_per_length", "questions", "max_new_tokens", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.memory_conditions and not self.budget:
            raise ConfigError("no memory condition runs (give --checkpoint and/or --hier_checkpoint), so give "
                              "--budget N for last_n and bm25")

    @property
    def condition_list(self) -> list[str]:
        return [c.strip() for c in self.conditions.split(",") if c.strip()]

    @property
    def memory_conditions(self) -> list[str]:
        have = {"memory_flat": self.checkpoint, "memory_hier": self.hier_checkpoint, DECODED: self.checkpoint,
                RETRIEVED: self.checkpoint, EACH: self.checkpoint}
        return [c for c in self.condition_list if c in have and have[c]]

    @property
    def models_needed(self) -> list[str]:
        """The checkpoints to load, by the memory condition they serve (memory_retrieved(_each) and
        memory_decoded read the flat one)."""
        return sorted({"memory_flat" if c in FROM_FLAT else c for c in self.memory_conditions})

    @property
    def language_list(self) -> list[str]:
        return [x.strip() for x in self.languages.split(",") if x.strip()]


DRY = dict(lengths="96,160", questions=2, max_new_tokens=4, chunk_tokens=16, max_slots=16, retrieve_slots=8,
           dtype="fp32")


def parser(settings: type = None) -> argparse.ArgumentParser:  # type: ignore[assignment]
    """A ``--flag`` per field of a settings dataclass (default: ``LongQASettings``), its help the field's."""
    p = argparse.ArgumentParser(add_help=True)
    for f in fields(settings or LongQASettings):
        default = f.default if f.default is not MISSING else None
        if str(f.type) == "bool":
            action = argparse.BooleanOptionalAction if default else "store_true"  # on by default: --no-<flag>
            p.add_argument(f"--{f.name}", action=action, default=bool(default), help=f.metadata["help"])
            continue
        kind = {"int | None": int, "str | None": str, "int": int, "float": float, "str": str,
                "float | None": float}[str(f.type)]
        p.add_argument(f"--{f.name}", type=kind, default=default, help=f.metadata["help"] + f" (default: {default})")
    return p
