"""How one decoding request decodes: the one type that ``hicae generate``'s flags and the server's request
bodies (``serve/schemas.py``) both turn into, checked before any model runs.

Greedy unless ``do_sample``; the sampling knobs only apply when sampling, and are refused otherwise
(greedy decoding would ignore them: the caller asked for sampling and would not get it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MIN_TEMPERATURE = 0.001  # smallest sampling temperature (logits / temperature must stay finite)
MAX_SEED = 2**32 - 1  # a 32-bit seed: exact as a JSON number in any client (torch.manual_seed takes 64 bits)
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "seed")


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Most new tokens per answer (hicae generate: 128; the server: 128, reconstruct "
                                        "the text's length + 8, both within its --max_new_tokens cap)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (needs --do_sample)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass (needs --do_sample)."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k likeliest tokens (needs --do_sample)."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampler (needs --do_sample)."})

    def check(self) -> "SamplingOptions":
        check_generation(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.top_k, self.seed)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """transformers' ``generate`` keywords (greedy: none); the seed is not one of them (``seed_torch``)."""
        if not self.do_sample:
            return {}
        opts = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {"do_sample": True, **{k: v for k, v in opts.items() if v is not None}}

    def seed_torch(self) -> None:
        if self.seed is not None:
            import torch

            torch.manual_seed(self.seed)


def check_generation(max_new_tokens: int | None, do_sample: bool = False, temperature: float | None = None,
                     top_p: float | None = None, top_k: int | None = None, seed: int | None = None) -> None:
    """Generation flags, checked before a model is loaded (transformers would raise mid-run)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if not do_sample:
        values = dict(zip(SAMPLING_ONLY, (temperature, top_p, top_k, seed)))
        given = [f"--{name}" for name, v in values.items() if v is not None]
        if given:  # greedy decoding would ignore them: say so rather than decode otherwise than asked
            raise ConfigError(f"{' and '.join(given)} only apply when sampling: add --do_sample, or drop "
                              f"{'them' if len(given) > 1 else 'it'} for greedy decoding")
        return
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"--temperature must be > 0 when sampling (--do_sample), got {temperature}; "
                          "for greedy decoding drop --do_sample (and --temperature)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top_k must be >= 1, got {top_k}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be in [0, {MAX_SEED}], got {seed}")
