"""Static-KV-cache and compiled decoding, and the output layer's contiguous input.

Off by default: the eager transformers code is the reference every test compares against.

Decoding modes (``ICAE.set_decoding``; CLI ``--decoding``):

* ``dynamic``: transformers' ``DynamicCache`` (grows by concatenation), eager forward per token.
* ``static``: a ``StaticCache`` allocated once per call (keys/values written in place), eager.
* ``compiled``: the static cache plus transformers' own automatic compilation of the one-token
  decode step (``generate(..., compile_config=...)``; on CUDA ``mode="reduce-overhead"``, i.e.
  CUDA graphs). Decoding 7B-sized models is launch-bound in eager mode (tens of ms a token where
  reading the weights takes ~3.5 ms on an H200); a graph replays a whole step as one launch.

The static cache's length is rounded up to a multiple of ``bucket`` tokens so that calls of similar
lengths share one compiled graph (a compiled step is specialised to the cache's shape; exact
lengths would recompile for every new prompt length or ``max_new_tokens``). Its batch size is
that of the call, so a compiled step is also specialised to the batch size.

With the prefix cache (``hicae.decoding.prefix_cache``), the cached prefix keys/values are copied
into the static cache's first positions, so "compress once, ask many" and static/compiled decoding
combine.

``contiguous_head_input`` keeps the output layer on ``mm``: ``generate``'s first step feeds it
the last position of every row (``hidden[:, -1:]``, a strided view); with a frozen weight (no
``requires_grad``) torch's ``matmul`` then does not fold the batch and runs ``bmm`` on a
contiguous copy of the transposed weight per row (Qwen2.5-0.5B, bf16, 1 CPU thread: 1.4 s per row
and call for the 152k x 896 head, against 40 ms for the product itself).

The encoder's and training's speed paths (the adapter in the model's dtype, the compiled encoder,
bf16 adapter training) are in ``hicae.speed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

DECODING_MODES = ("dynamic", "static", "compiled")


@dataclass
class DecodingOptions:
    mode: str = "dynamic"
    bucket: int = 256  # static cache length rounded up to a multiple of this
    compile_mode: str | None = None  # torch.compile mode; None: "reduce-overhead" on CUDA, "default" elsewhere

    def __post_init__(self) -> None:
        if self.mode not in DECODING_MODES:
            raise ConfigError(f"unknown decoding mode {self.mode!r} (choose from {', '.join(DECODING_MODES)})")
        if self.bucket < 1:
            raise ConfigError(f"decoding bucket must be >= 1, got {self.bucket}")


def static_length(needed: int, bucket: int) -> int:
    """``needed`` rounded up to a multiple of ``bucket``."""
    return -(-needed // bucket) * bucket


def static_cache(config: Any, needed: int, bucket: int, prefix: Any = None) -> Any:
    """A ``StaticCache`` of ``static_length(needed, bucket)`` positions; ``prefix`` (a ``DynamicCache``
    of P positions) is copied into its first P positions and its length set to P."""
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=static_length(needed, bucket))
    if prefix is not None:
        for src, dst in zip(prefix.layers, cache.layers):
            k, v = src.keys, src.values  # [B, H, P, d]
            dst.lazy_initialization(k, v)
            dst.keys[:, :, : k.shape[2]].copy_(k)
            dst.values[:, :, : v.shape[2]].copy_(v)
            dst.cumulative_length.fill_(k.shape[2])
    return cache


def generation_kwargs(opts: DecodingOptions, model: Any, needed: int, prefix: Any = None) -> dict[str, Any]:
    """Extra ``generate`` kwargs for ``opts``: none for ``dynamic``; else a static cache (and compile settings).

    ``needed``: the longest sequence the call can reach (prefix + inputs + max_new_tokens).
    """
    if opts.mode == "dynamic":
        return {} if prefix is None else {"past_key_values": prefix}
    kw: dict[str, Any] = {"past_key_values": static_cache(model.decoder.config, needed, opts.bucket, prefix)}
    if opts.mode == "static":
        kw["disable_compile"] = True
        return kw
    from transformers import CompileConfig

    cuda = model.device.type == "cuda"
    cc = CompileConfig(mode=opts.compile_mode or ("reduce-overhead" if cuda else "default"))
    if not cuda:
        cc._compile_all_devices = True  # transformers auto-compiles on CUDA only unless told
    kw["compile_config"] = cc
    return kw


def _standard_strides(shape: torch.Size) -> tuple[int, ...]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return tuple(reversed(out))


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    x = args[0]
    # not ``is_contiguous()``: a [1, 1, D] slice counts as contiguous (size-1 dims), yet matmul's fold
    # test reads its strides as they are
    if x.dim() > 2 and x.stride() != _standard_strides(x.shape):
        x = x.clone(memory_format=torch.contiguous_format)
    return (x, *args[1:])


def contiguous_head_input(decoder: torch.nn.Module) -> None:
    """Make the output layer's input contiguous (a copy of ``[B, 1, D]`` at most) before each call:
    see the module docstring. Values are unchanged."""
    head = decoder.get_output_embeddings()
    # once per module: the head is shared with the base model, which may be wrapped more than once
    if head is not None and _contiguous_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_input)
