"""Settings of long-document fine-tuning on cached memories (``finetune.py``, ``ft_run.py``): one dataclass,
each field's help text is its ``--flag``'s help (``settings.parser(LongDocFTSettings)``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..setting import setting as _f


@dataclass
class LongDocFTSettings:
    checkpoint: str = _f("", "flat ICAE checkpoint to start from; it must have a decoder-side adapter "
                             "(decoder_lora_r > 0): that adapter and the task embeddings train (with "
                             "--train_encoder the encoder's adapter and memory embeddings too)")
    base: str | None = _f(None, "base model folder or .gguf (default: the real Qwen2.5-0.5B-Instruct)")
    out_dir: str = _f("outputs/longdoc_ft", "run folder: checkpoints step-N/, log.jsonl, memories of the "
                                            "training documents; rerunning continues from the last checkpoint")
    lengths: str = _f("1k,2k,4k", "training document lengths in tokens (k = 1000)")
    docs_per_length: int = _f(8, "training documents per language and length (each compressed once)")
    val_docs: int = _f(1, "documents per language (of the first length over 1k) kept for validation")
    steps: int = _f(300, "optimizer steps; each reads one document's memory")
    questions: int = _f(4, "cloze questions per step (rows sharing the memory's prefix pass)")
    ae_rows: int = _f(2, "segment reconstructions per step (rehearsal of [AE]); 0: none")
    ae_weight: float = _f(0.5, "weight of the reconstruction loss beside the answers' loss")
    retrieve_slots: int = _f(0, "train where memory_retrieved reads: each step's memory is the segments BM25 picks "
                                "for a fresh cloze question of the document, whole, up to this many slots, and the "
                                "questions are about those segments' text; 0: the whole document's memory")
    train_encoder: bool = _f(False, "also train the encoder's adapter and memory embeddings (each step compresses "
                                    "its picked segments with gradients); needs --retrieve_slots")
    lr: float = _f(2e-4, "peak learning rate (AdamW; linear warm-up, cosine to 10%)")
    warmup: int = _f(10, "warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    val_every: int = _f(50, "validate (cloze accuracy on the validation documents) every this many steps")
    val_questions: int = _f(8, "cloze questions per validation document (2 words / 4 characters, as evaluated)")
    save_every: int = _f(50, "checkpoint every this many steps (and at the end)")
    languages: str = _f("en,zh", "comma-separated: en, zh")
    en_domains: str = _f("en_kernel_docs,en_debian_reference", "English: protocol domains whose TRAINING-side "
                                                               "documents make the training documents")
    zh_domains: str = _f("zh_debian_reference,zh_manpages", "Chinese: the same")
    corpus: str | None = _f(None, "instead of the protocol: JSONL {'text'} documents (language by script)")
    seed: int = _f(0, "seed of the split, the documents, the order and the questions")
    holdout_fraction: float = _f(0.1, "the protocol's held-out share (as in experiments/protocol.py): those "
                                      "documents are never trained on")
    cache_dir: str = _f(os.path.expanduser("~/.cache/hicae/protocol"), "the protocol's package cache")
    dtype: str = _f("bf16", "model dtype")
    threads: int | None = _f(None, "torch threads (1-2 on a shared 2-core machine)")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("--checkpoint: the flat ICAE checkpoint to fine-tune is required")
        for name in ("steps", "docs_per_length", "questions", "val_every", "save_every", "val_questions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.retrieve_slots < 0:
            raise ConfigError(f"--retrieve_slots must be >= 0, got {self.retrieve_slots}")
        if self.train_encoder and not self.retrieve_slots:
            raise ConfigError("--train_encoder recompresses the memory every step, which only the picked segments "
                              "make affordable: set --retrieve_slots (e.g. 64)")
        if self.ae_rows < 0 or self.ae_weight < 0 or self.val_docs < 0:
            raise ConfigError("--ae_rows, --ae_weight and --val_docs must be >= 0")
        if not set(self.language_list) <= {"en", "zh"} or not self.language_list:
            raise ConfigError(f"--languages: en and/or zh, got {self.languages!r}")

    @property
    def language_list(self) -> list[str]:
        return [x.strip() for x in self.languages.split(",") if x.strip()]
