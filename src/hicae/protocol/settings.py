"""The protocol's settings: one dataclass, each field's help text is its ``--flag``'s help."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields

from ..errors import ConfigError
from ..setting import setting as _f
from .sources import DOMAINS



@dataclass
class ProtocolSettings:
    checkpoint: str | None = _f(None, "ICAE checkpoint folder to evaluate (hicae.io.checkpoint.load_icae); "
                                      "may be left out when only --write_train is wanted")
    base: str | None = _f(None, "base model folder or .gguf (default: the real Qwen2.5-0.5B-Instruct of hicae.demo.real_model)")
    out_dir: str = _f("outputs/protocol", "where protocol.json and protocol.md are written (atomically)")
    tokens: int = _f(64, "tokens per held-out text (64 = 16 slots at 4x with k=16; 128 = 2 segments)")
    texts_per_domain: int = _f(16, "held-out texts per domain (8 domains: 128 texts; sized for < 10 min on 2 CPU cores: "
                                       "24 cost 900 CPU-seconds with the 0.5B base)")
    per_doc: int = _f(2, "at most this many texts from one held-out document")
    batch_size: int = _f(24, "texts per compression/reconstruction batch")
    seed: int = _f(0, "seed of the held-out split and of the order documents are drawn in")
    holdout_fraction: float = _f(0.1, "share of each domain's documents held out")
    domains: str = _f(",".join(DOMAINS), "comma-separated domains to evaluate (all by default)")
    ppl_texts: int = _f(8, "texts per language group for memory / truncated / full / no-context perplexity "
                           "(hicae.evaluation.run_ppl); 0 skips it")
    continuation: int = _f(32, "continuation tokens scored for perplexity (the context is --tokens tokens)")
    examples_per_domain: int = _f(2, "reconstructions printed beside their references per domain")
    loop_share: float = _f(0.3, "a reconstruction loops when its most frequent 3-gram covers more than this share of its tokens")
    dtype: str = _f("bf16", "model dtype")
    threads: int | None = _f(None, "torch threads (default: torch's; 1-2 on a shared 2-core machine)")
    cache_dir: str = _f(os.path.expanduser("~/.cache/hicae/protocol"),
                        "where the Debian packages are downloaded and unpacked (once)")
    write_train: str | None = _f(None, "also write the training-side passages (every document not held out, all "
                                       "domains) to this JSONL: {\"text\", \"domain\"} records")
    train_tokens: int | None = _f(None, "tokens per training passage at most (default: --tokens)")
    train_min_tokens: int = _f(16, "training passages shorter than this are dropped")

    def __post_init__(self) -> None:
        bad = [d for d in self.domain_list if d not in DOMAINS]
        if bad:
            raise ConfigError(f"--domains: unknown {bad}; choose from {', '.join(DOMAINS)}")
        for name in ("tokens", "texts_per_domain", "per_doc", "batch_size", "continuation"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"--holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.checkpoint is None and self.write_train is None:
            raise ConfigError("nothing to do: pass --checkpoint (evaluate) and/or --write_train FILE.jsonl")

    @property
    def domain_list(self) -> list[str]:
        return [d.strip() for d in self.domains.split(",") if d.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=True)
    for f in fields(ProtocolSettings):
        kind = {"int | None": int, "str | None": str, "int": int, "float": float, "str": str}[str(f.type)]
        default = f.default if f.default is not MISSING else None
        p.add_argument(f"--{f.name}", type=kind, default=default, help=f.metadata["help"] + f" (default: {default})")
    return p
