"""Settings of ``hicae serve``: limits, batching and the prefix-cache budget (one dataclass, with help)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import ConfigError


@dataclass
class ServeConfig:
    max_body_bytes: int = field(default=8 << 20, metadata={"help": "Largest request body in bytes (413 above)."})
    max_text_chars: int = field(
        default=200_000,
        metadata={"help": "Longest text to compress or append, in characters (checked before tokenising; the "
                          "model's token limit applies too)."})
    max_texts: int = field(default=64, metadata={"help": "Most texts in one compress request."})
    max_prompts: int = field(default=64, metadata={"help": "Most prompts in one generate request."})
    max_prompt_chars: int = field(default=8_000, metadata={"help": "Longest prompt, in characters."})
    max_new_tokens: int = field(default=512, metadata={"help": "Largest max_new_tokens a request may ask for."})
    max_queue: int = field(
        default=64, metadata={"help": "Requests waiting for the model at most; more are refused with 429."})
    request_timeout: float = field(
        default=120.0,
        metadata={"help": "Seconds a request may wait and run; then 504 (its decoding is stopped)."})
    batch_window_ms: float = field(
        default=5.0,
        metadata={"help": "How long the micro-batcher waits for more requests on the same memory before "
                          "decoding (ms; 0: take only what is already queued)."})
    max_batch_rows: int = field(default=32, metadata={"help": "Most decoded rows in one batched decoder call."})
    prefix_cache_bytes: int = field(
        default=1 << 30,
        metadata={"help": "Budget of the LRU of hot memories (their slots and decoder prefix KV caches), in "
                          "bytes; 0 turns the prefix cache off."})
    api_key: str | None = field(
        default=None,
        metadata={"help": "Bearer token every request but /health and the OpenAPI page must carry "
                          "(default: the HICAE_API_KEY environment variable; none: no auth)."})

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "api_key":
                if v is not None and not v.strip():
                    raise ConfigError("--api_key is empty; give a token or leave it out")
                continue
            if f.name == "request_timeout":
                if not v > 0:
                    raise ConfigError(f"--request_timeout must be > 0, got {v}")
                continue
            low = 0 if f.name in ("batch_window_ms", "prefix_cache_bytes") else 1
            if not v >= low:
                raise ConfigError(f"--{f.name} must be >= {low}, got {v}")
