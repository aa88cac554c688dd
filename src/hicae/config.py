"""Method settings of ICAE, separate from the Trainer's arguments (like peft's ``LoraConfig``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ConfigError

POSITION_LAYOUTS = ("contiguous", "spread")
SEGMENTATIONS = ("even", "fixed")
OVERLONG_POLICIES = ("error", "truncate")
LM_CUTS = ("second_half", "uniform")
BOS_MODES = ("auto", "always", "never")
SLOT_PROJECTORS = ("none", "mlp")
DECODER_POSITIONS = ("sequential", "follow")
SLOT_SOURCES = ("memory_tokens", "pooled")
LOSS_BALANCES = ("tokens", "tasks")


@dataclass
class ICAEConfig:
    mem_size: int = field(
        default=128,
        metadata={"help": "k: memory slots per segment.", "aliases": ["--fixed_mem_size"]},
    )
    compression_rate: int = field(
        default=4,
        metadata={
            "help": "r: mean tokens per slot; a segment holds at most k*r tokens.",
            "aliases": ["--mean_compression_rate"],
        },
    )
    lora_r: int = field(default=128, metadata={"help": "LoRA rank of the encoder adapter."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names the encoder adapter wraps (the paper: q and v projections)."},
    )
    position_layout: str = field(
        default="contiguous",
        metadata={
            "help": "Position ids of memory tokens in the encoder: 'contiguous' (right after the segment's "
            "tokens, as the reference does for one unpadded segment) or 'spread' (evenly over the "
            "segment's span, an ablation)."
        },
    )
    segmentation: str = field(
        default="even",
        metadata={
            "help": "How a text is cut into segments: 'even' (the reference: n = ceil(L/(k*r)) segments of "
            "ceil(L/n) tokens) or 'fixed' (segments of exactly k*r tokens, the last one shorter; "
            "needed for streaming, so the hierarchy uses it)."
        },
    )
    model_max_length: int = field(
        default=5120,
        metadata={"help": "Longest text (in tokens) that compress() and training accept. A training setting: the "
                          "inference commands (compress, generate, eval, serve) default to the base model's window "
                          "instead (inference_max_length)."},
    )
    overlong: str = field(
        default="error",
        metadata={"help": "What to do with a text over model_max_length: 'error' (refuse) or 'truncate' (keep the head)."},
    )
    compress_batch_tokens: int = field(
        default=32768,
        metadata={"help": "Token budget of one encoder batch: segments of all texts are packed up to this many tokens."},
    )
    leave_tokens_for_lm: int = field(
        default=8, metadata={"help": "LM objective: the first N continuation tokens carry no loss."}
    )
    min_tokens_for_lm: int = field(
        default=64, metadata={"help": "LM objective: used only when the continuation would exceed N tokens."}
    )
    add_special_token_for_lm: bool = field(
        default=True,
        metadata={"help": "LM objective (and continuing from memory): the [LM] task embedding follows the slots. "
                          "False: the continuation follows the slots directly (the reference ICAE v2's default)."},
    )
    lm_cut: str = field(
        default="second_half",
        metadata={"help": "LM objective: where a text is cut into compressed head and continuation. 'second_half': "
                          "uniformly in its second half, the continuation longer than min_tokens_for_lm, else the "
                          "text is an AE example; 'uniform' (the reference ICAE v2): anywhere, and a continuation "
                          "of min_tokens_for_lm tokens or fewer makes an AE example of the head (docs/migration.md)."},
    )
    bos: str = field(
        default="auto",
        metadata={"help": "BOS before each compressed text (and so in its AE target and at the head of an LM "
                          "example): 'auto' (when the tokenizer adds one by default, as Mistral/Llama's <s>; ICAE v2 "
                          "tokenises that way; Qwen has none, so nothing changes there), 'always' (the tokenizer's "
                          "BOS, which must exist) or 'never' (the text alone; what ICAE v2's fine-tuning script "
                          "compresses). See docs/migration.md."},
    )

    # ---- method options (issue 17): each off by default, so the reference-parity setting is the default
    decoder_lora_r: int = field(
        default=0,
        metadata={"help": "Rank of a decoder-side LoRA adapter (same target modules as the encoder's), active only "
                          "while the decoder reads slots; the plain base model's own outputs (full-text baselines) "
                          "run without it. 0: the frozen decoder of the paper and ICAE v2."},
    )
    decoder_lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha of the decoder-side adapter."})
    slot_projector: str = field(
        default="none",
        metadata={"help": "What maps the encoder's final states to the slots the decoder reads: 'none' (the states "
                          "themselves, the paper) or 'mlp' (x + MLP(RMSNorm(x)), its output layer zero-initialised "
                          "so that training starts from the plain states)."},
    )
    decoder_positions: str = field(
        default="sequential",
        metadata={"help": "Position ids in the decoder: 'sequential' (0, 1, 2, ... over slots, task token and "
                          "tokens, the paper) or 'follow' (EPL, arXiv 2409.14364: each slot keeps the position of "
                          "the text it stands for, the reconstruction restarts at the text's first position and a "
                          "continuation or question follows the text; see layout.follow_position_ids). Pair it "
                          "with position_layout='spread', which does the same in the encoder."},
    )
    slot_source: str = field(
        default="memory_tokens",
        metadata={"help": "Where slots come from: 'memory_tokens' (the encoder's final states at k learned tokens "
                          "after the segment, the paper) or 'pooled' (slot j = the mean of the final states of the "
                          "segment's j-th part, as LCLM and ARC-Encoder do; no memory tokens are read)."},
    )

    # ---- training-only options (issue 17 point 3): they change how the adapter learns, not what a slot
    # means (a memory reads the same with or without them), so they stay out of the memory fingerprint
    lm_distill: float = field(
        default=0.0,
        metadata={"help": "LM objective: weight w of distillation from the plain base model reading the whole text "
                          "(head + continuation as ordinary tokens, no adapters) into the decoder reading "
                          "[slots] [LM] continuation. Each labelled continuation token's loss is "
                          "(1-w)*CE + w*T^2*KL(teacher || student); AE tokens keep their CE (FT tokens: ft_distill). One extra "
                          "no-grad base forward per LM example. 0: off (plain CE, the paper). Flat ICAE only."},
    )
    ft_distill: float = field(
        default=0.0,
        metadata={"help": "Fine-tuning objective: weight w of distillation from the plain base model reading the "
                          "input (as the memory holds it) and the prompt in its chat format (the full-text answer a teacher gives, "
                          "hicae build-qa's teacher) into the decoder reading [slots] [FT] prompt. Each answer "
                          "token's loss is (1-w)*CE + w*T^2*KL(teacher || student) on the record's answer, so the "
                          "memory learns the teacher's whole next-token distribution, not only its greedy text. "
                          "One extra no-grad base forward per instruction record. 0: off. Flat ICAE only."},
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature T of lm_distill and ft_distill: both distributions are softened by T and "
                          "the KL is scaled by T^2 (Hinton et al.), so its gradient keeps its size as T changes."},
    )

    loss_balance: str = field(
        default="tokens",
        metadata={"help": "How a batch's labelled tokens make one loss: 'tokens' (the mean over all of them, the "
                          "paper: a task weighs as much as its token count, so 256-token reconstructions drown "
                          "a 10-token answer) or 'tasks' (each task in the batch weighs the same: the mean of "
                          "the AE, LM and FT tokens' mean losses, over the tasks present). Under DDP each process "
                          "balances its own batch."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mem_size < 1:
            raise ConfigError(f"mem_size must be >= 1, got {self.mem_size}")
        if self.compression_rate < 1:
            raise ConfigError(f"compression_rate must be >= 1, got {self.compression_rate}")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules is empty: the encoder adapter must wrap some modules")
        if self.position_layout not in POSITION_LAYOUTS:
            raise ConfigError(f"position_layout must be one of {POSITION_LAYOUTS}, got {self.position_layout!r}")
        if self.segmentation not in SEGMENTATIONS:
            raise ConfigError(f"segmentation must be one of {SEGMENTATIONS}, got {self.segmentation!r}")
        if self.lm_cut not in LM_CUTS:
            raise ConfigError(f"lm_cut must be one of {LM_CUTS}, got {self.lm_cut!r}")
        if self.bos not in BOS_MODES:
            raise ConfigError(f"bos must be one of {BOS_MODES}, got {self.bos!r}")
        if self.decoder_lora_r < 0:
            raise ConfigError(f"decoder_lora_r must be >= 0 (0: frozen decoder), got {self.decoder_lora_r}")
        if self.slot_projector not in SLOT_PROJECTORS:
            raise ConfigError(f"slot_projector must be one of {SLOT_PROJECTORS}, got {self.slot_projector!r}")
        if self.decoder_positions not in DECODER_POSITIONS:
            raise ConfigError(f"decoder_positions must be one of {DECODER_POSITIONS}, got {self.decoder_positions!r}")
        if self.slot_source not in SLOT_SOURCES:
            raise ConfigError(f"slot_source must be one of {SLOT_SOURCES}, got {self.slot_source!r}")
        if not 0.0 <= self.lm_distill <= 1.0:
            raise ConfigError(f"lm_distill must be in [0, 1] (the KL's share of the LM loss), got {self.lm_distill}")
        if not 0.0 <= self.ft_distill <= 1.0:
            raise ConfigError(f"ft_distill must be in [0, 1] (the KL's share of the answer loss), "
                              f"got {self.ft_distill}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ConfigError(f"distill_temperature must be a positive number, got {self.distill_temperature}")
        if self.loss_balance not in LOSS_BALANCES:
            raise ConfigError(f"loss_balance must be one of {LOSS_BALANCES}, got {self.loss_balance!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if self.model_max_length < 1:
            raise ConfigError(f"model_max_length must be >= 1, got {self.model_max_length}")
        if self.compress_batch_tokens < self.segment_tokens + self.mem_size:
            raise ConfigError(
                f"compress_batch_tokens ({self.compress_batch_tokens}) must hold at least one segment "
                f"({self.segment_tokens} tokens + {self.mem_size} memory tokens)"
            )

    # The distillation weight of each task that has a teacher (AE has none: nothing teaches a reconstruction).
    DISTILL_FIELDS = {"lm": "lm_distill", "ft": "ft_distill"}

    def distill_share(self, task: str) -> float:
        """The KL's share of ``task``'s token loss (0: plain CE, and no teacher reads that task's examples)."""
        name = self.DISTILL_FIELDS.get(task)
        return float(getattr(self, name)) if name else 0.0

    @property
    def segment_tokens(self) -> int:
        """Most text tokens one segment holds (k * r)."""
        return self.mem_size * self.compression_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ICAEConfig":
        return _from_dict(cls, d)

    # Fields that change what a memory slot means; runtime knobs (batch budget, length policy,
    # LM loss settings) do not, so memory stays valid across them.
    _MEMORY_FIELDS = (
        "mem_size",
        "compression_rate",
        "lora_r",
        "lora_alpha",
        "lora_target_modules",
        "position_layout",
        "segmentation",
        "decoder_lora_r",
        "decoder_lora_alpha",
        "slot_projector",
        "decoder_positions",
        "slot_source",
    )
    # Memory fields added after the first release: they enter the fingerprint only when set away from their
    # defaults, so every earlier checkpoint and memory file keeps its fingerprint.
    _OPTIONAL_MEMORY_FIELDS = ("decoder_lora_r", "decoder_lora_alpha", "slot_projector", "decoder_positions",
                               "slot_source")

    def memory_fingerprint(self, base_config: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """A short hash of everything that determines the meaning of the slots."""
        payload = {
            "icae": {k: getattr(self, k) for k in self._MEMORY_FIELDS
                     if k not in self._OPTIONAL_MEMORY_FIELDS or getattr(self, k) != self.__dataclass_fields__[k].default},
            "base": {k: base_config.get(k) for k in BASE_SHAPE_KEYS},
        }
        if extra:
            payload["extra"] = extra
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (int, float, str, bool, list[...], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # JSON true/false are not numbers here
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


def _from_dict(cls: type, d: Any) -> Any:
    """Build a config dataclass from a dict (a saved config), refusing unknown fields (a checkpoint
    from another version) and values of the wrong type, so a hand-edited file is a ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping of fields, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {unknown}")
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{cls.__name__} field {name!r} must be {_type_name(hints[name])}, got {value!r}")
    return cls(**d)


# Keys of the base model's config that a checkpoint and a memory file must agree on.
BASE_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
    "rope_theta",
    "tie_word_embeddings",
)


def base_shape(config: Any) -> dict[str, Any]:
    """The shape-defining fields of a transformers config (missing ones are None)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {k: d.get(k) for k in BASE_SHAPE_KEYS}
    if out["rope_theta"] is None:  # transformers 5 keeps it under rope_parameters
        rp = d.get("rope_parameters") or {}
        out["rope_theta"] = rp.get("rope_theta") if isinstance(rp, dict) else None
    return out


DEFAULT_WINDOW = 32768  # inference text limit for a base whose config states no max_position_embeddings


def inference_max_length(base_config: Any) -> int:
    """Longest text the inference commands accept by default: the base model's window (``max_position_embeddings``,
    else ``DEFAULT_WINDOW``). Not the length the adapter was trained on: compression cuts a text into segments
    of ``k*r`` tokens however long it is, and a text of the window's length gives the decoder ``1/r`` of it in
    slots."""
    return int(getattr(base_config, "max_position_embeddings", None) or DEFAULT_WINDOW)


def shape_mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    return [f"{k}: expected {expected.get(k)!r}, got {actual.get(k)!r}" for k in BASE_SHAPE_KEYS if expected.get(k) != actual.get(k)]


@dataclass
class HierarchyConfig:
    """Settings of HierarchicalICAE (recursive compression); see docs/hierarchy.md."""

    levels: int = field(
        default=8,
        metadata={"help": "Most levels L: level-1 blocks come from text, level l+1 from g level-l blocks "
                          "(L=1: plain ICAE, no merges)."},
    )
    group_size: int = field(default=2, metadata={"help": "g: blocks merged into one block of the next level (>= 2)."})
    max_slots: int | None = field(
        default=None,
        metadata={"help": "Default memory budget per text in slots. None: no budget; memory grows with log(length) "
                          "up to g^(L-1) segments, then by one block per g^(L-1) segments."},
    )
    max_text_tokens: int = field(
        default=1 << 21, metadata={"help": "Longest text (tokens) the hierarchy accepts; model_max_length is ICAE's."}
    )
    stop_gradient: bool = field(
        default=False, metadata={"help": "Training: no gradient through the inputs of merges (saves memory)."}
    )

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (g blocks merge into one), got {self.group_size}")
        if self.levels < 1:
            raise ConfigError(f"levels must be >= 1, got {self.levels}")
        if self.max_text_tokens < 1:
            raise ConfigError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HierarchyConfig":
        return _from_dict(cls, d)

    def memory_fields(self) -> dict[str, Any]:
        """What changes the meaning of hierarchical slots (the budget does not)."""
        return {"levels": self.levels, "group_size": self.group_size}
