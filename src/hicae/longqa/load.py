"""Loading what the long-document QA run reads: held-out documents per language, and the models.

Checkpoints load with their length limit raised to the longest document (a flat ICAE compresses
every segment of it; the hierarchy's ``max_text_tokens`` likewise), nothing else changed.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from .settings import LongQASettings


def held_out_docs(s: LongQASettings, lang: str) -> list[tuple[str, str]]:
    """``(source id, text)`` of one language: the corpus's documents of that script, or the held-out documents
    of the language's protocol domains, each domain in a seeded order, domain after domain."""
    return protocol_docs(s, lang, held_out=True)


def protocol_docs(s: Any, lang: str, held_out: bool) -> list[tuple[str, str]]:
    """``held_out_docs``, or (``held_out=False``) the training side of the same split: what fine-tuning reads.
    ``s``: any settings with ``corpus``, ``en_domains``, ``zh_domains``, ``seed``, ``holdout_fraction``, ``cache_dir``."""
    from ..instruct.build import read_sources
    from ..instruct.questions import lang_of

    if s.corpus:
        return [(x.id, x.text) for x in read_sources(s.corpus) if lang_of(x.text) == lang]
    from ..protocol.sources import load_domain
    from ..protocol.split import split_documents

    out = []
    for name in [d.strip() for d in (s.en_domains if lang == "en" else s.zh_domains).split(",") if d.strip()]:
        train, test = split_documents(load_domain(name, Path(s.cache_dir)), s.seed, s.holdout_fraction)
        test = sorted(test if held_out else train, key=lambda d: d.doc_id)
        random.Random(f"{s.seed}:{name}").shuffle(test)
        out += [(f"{name}:{d.doc_id}", d.text) for d in test]
    return out


def load_checkpoint(path: str, s: Any, limit: int) -> Any:
    """A checkpoint with its length limit raised to ``limit`` tokens (``s``: ``base``, ``dtype``)."""
    from ..io.checkpoint import load_base, load_icae, read_checkpoint
    from ..demo.real_model import qwen25_path

    info = read_checkpoint(path)
    kw: dict[str, Any] = {"config_overrides": {"model_max_length": limit, "overlong": "truncate"}}
    if info.hierarchy is not None:
        kw["hierarchy"] = dataclasses.replace(info.hierarchy, max_text_tokens=limit)
    if info.has_base and not s.base:
        return load_icae(info, dtype=s.dtype, **kw).eval()
    base, tok = load_base(s.base or str(qwen25_path()), dtype=s.dtype)
    return load_icae(info, base_model=base, tokenizer=tok, **kw).eval()


def load_models(s: LongQASettings, longest: int) -> tuple[dict[str, Any], Any]:
    """Memory condition -> model, and the model whose plain base answers the text conditions."""
    from ..instruct.teacher import PlainBase
    from ..demo.real_model import qwen25_path

    limit = longest + 16  # room for a BOS and a cut character's bytes
    paths = {"memory_flat": s.checkpoint, "memory_hier": s.hier_checkpoint}
    models = {c: load_checkpoint(paths[c], s, limit) for c in s.models_needed}
    plain = next(iter(models.values()), None) or PlainBase.load(s.base or str(qwen25_path()), dtype=s.dtype)
    return models, plain
