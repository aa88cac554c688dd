"""What every task shares: settings, seeding, batches, progress bars, compression and its bookkeeping."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import torch

from ..errors import ConfigError
from ..memory import Memory

T = TypeVar("T")


@dataclass
class EvalSettings:
    """Knobs common to all tasks (``hicae eval``'s flags, one per field)."""

    batch_size: int = field(default=8, metadata={"help": "texts (questions, samples) per batch"})
    limit: int | None = field(default=None, metadata={
        "help": "use only the first N records (passkey/needle: N samples)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic haystacks and of torch"})
    max_slots: int | None = field(default=None, metadata={
        "help": "hierarchical checkpoints: memory budget per text, in slots"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation limit (default: ae each text's length + 8, qa 64, passkey/needle 16)"})
    progress: bool = field(default=True, metadata={"help": "a progress bar (--no_progress: none)"})
    bleu_tokenize: str = field(default="auto", metadata={
        "choices": ["auto", "13a", "zh", "intl", "char", "none"],
        "help": "ae: sacrebleu's tokenisation (auto: zh, one token per CJK character, for groups holding Chinese; "
                "else 13a)"})

    def __post_init__(self) -> None:
        from .metrics import bleu_tokenizer

        bleu_tokenizer([], self.bleu_tokenize)  # an unknown name is a ConfigError now, not after the model loads
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.max_slots is not None and self.max_slots < 1:
            raise ConfigError(f"--max_slots must be >= 1, got {self.max_slots}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress_batches(items: Sequence[T], size: int, desc: str, enabled: bool = True) -> Iterator[Sequence[T]]:
    """``batches`` with a tqdm bar on stderr counting examples; the bar is closed however the loop ends."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="ex", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
    try:
        for b in batches(items, size):
            yield b
            bar.update(len(b))
    finally:
        bar.close()


def check_max_slots(model: Any, max_slots: int | None) -> None:
    """``--max_slots`` is a hierarchical checkpoint's option (a flat one would refuse most texts anyway)."""
    if max_slots is not None and not model.hierarchical:
        raise ConfigError("--max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")


def context_limit(model: Any) -> int:
    """Most tokens one text may have: ICAE's model_max_length, or the hierarchy's max_text_tokens."""
    return model.length_limit()[0]


def compress_ids(model: Any, token_lists: list[list[int]], max_slots: int | None = None) -> Memory:
    """Batched compression of already-checked token lists (no gradient), ICAE or hierarchical."""
    with torch.no_grad():
        return model.compress_ids(token_lists, max_slots)


def text_levels(mem: Memory) -> list[int]:
    """Each text's highest memory level (1 for ICAE memory; hierarchical: the top level of its blocks)."""
    if mem.blocks is None:
        return [1] * len(mem)
    return [max((b[0] for b in bl), default=1) for bl in mem.blocks]


def ratio_bucket(tokens: int, slots: int) -> str:
    """Compression ratio (tokens per slot) as a power-of-two bucket label, e.g. ``'[4, 8)'``."""
    r = tokens / max(1, slots)
    lo = 2.0 ** math.floor(math.log2(r)) if r > 0 else 0.0
    return f"[{lo:g}, {2 * lo:g})"


def bucket_key(label: str) -> float:
    return float(label.strip("[").split(",")[0])


def model_info(model: Any, max_slots: int | None) -> dict[str, Any]:
    cfg = model.icae_config
    info: dict[str, Any] = {
        "base_model": model.base_model_name,
        "fingerprint": model.fingerprint,
        "weights": {"base": model.base_weights, "encoder": model.encoder_weights()},  # which weights were scored
        "mem_size": cfg.mem_size,
        "compression_rate": cfg.compression_rate,
        "hierarchical": model.hierarchical,
        "dtype": str(model.dtype).replace("torch.", ""),
    }
    if model.hierarchical:
        h = model.hierarchy
        info.update(levels=h.levels, group_size=h.group_size,
                    max_slots=max_slots if max_slots is not None else h.max_slots)
    return info


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def group_by(rows: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out
