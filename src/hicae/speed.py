"""Optional speed paths: static-KV-cache decoding, compiled decoding and a compiled encoder.

All are off by default: the eager transformers code is the reference every test compares against.

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

With the prefix cache (``hicae.prefix_cache``), the cached prefix keys/values are copied into the
static cache's first positions, so "compress once, ask many" and static/compiled decoding combine.

Inference runs the LoRA adapter in the model's dtype (``adapter_in_dtype``): peft keeps trainable
adapter weights in fp32, so in a bf16 model every adapted projection would cast its input to fp32
and run two fp32 matmuls; on an H200 with a 7B shape that cost 7% of compression time
(benchmarks/probes/probe_compress_gap.py: 61% -> 65% of the matmul roofline; the base alone: 66%).

``contiguous_head_input`` keeps the output layer on ``mm``: ``generate``'s first step feeds it
the last position of every row (``hidden[:, -1:]``, a strided view); with a frozen weight (no
``requires_grad``) torch's ``matmul`` then does not fold the batch and runs ``bmm`` on a
contiguous copy of the transposed weight per row (Qwen2.5-0.5B, bf16, 1 CPU thread: 1.4 s per row
and call for the 152k x 896 head, against 40 ms for the product itself).

``bf16_adapter_training`` is the training counterpart: within a forward it computes the LoRA
products of a bf16 model in bf16 from the fp32 weights the optimizer updates, fused into the base
projection (``x W^T + b + (x A^T)(s B)^T`` as two matmuls), instead of peft's fp32 input cast,
fp32 products, scaling and fp32 add per projection. ``ICAETrainer`` uses it for a bf16 model on
the CPU without gradient checkpointing (benchmarks/bench_step.py; docs/benchmarks.md).

``compile_encoder`` wraps the encoder's transformer body in ``torch.compile(dynamic=True)`` for
compression (fuses the norm/rotary/activation passes between matmuls; chunks vary in shape, hence
dynamic shapes). Training still runs the eager encoder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .errors import ConfigError

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


@contextlib.contextmanager
def adapter_in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, the LoRA weights of ``module`` are ``dtype`` copies; the original tensors
    (fp32, exactly as they were) are put back on exit. For inference only (no autograd)."""
    saved = [(p, p.data) for n, p in module.named_parameters() if "lora_" in n and p.dtype != dtype]
    try:
        for p, data in saved:
            p.data = data.to(dtype)
        yield
    finally:
        for p, data in saved:
            p.data = data


@contextlib.contextmanager
def bf16_adapter_training(model: torch.nn.Module, fused: bool = True) -> Iterator[None]:
    """A training step's forward with the LoRA products in the base model's dtype (bf16) from their fp32
    (master) weights: the gradients flow back to the fp32 tensors the optimizer updates.

    peft keeps trainable adapter weights in fp32, so in a bf16 model every adapted projection casts
    its input to fp32, runs both small products in fp32, scales, and adds an fp32 result to the bf16
    one (several full-size fp32 passes per projection, forward and backward: on the CPU these
    elementwise passes cost more than the products; see benchmarks/bench_step.py).

    ``fused`` (default): each adapted Linear computes ``x W^T + b + (x A^T)(s B)^T`` as two matmuls,
    the second accumulating into the first (``addmm``; the scale folded into the r x out factor): no
    fp32 copy of an activation and no elementwise pass. Layers it does
    not cover (dropout, DoRA and other variants, several active adapters, merged or disabled
    adapters) run peft's own forward. ``fused=False``: autocast bf16 with peft's input cast off.
    Forward only: call backward outside the block.
    """
    from peft.helpers import disable_input_dtype_casting

    if not fused:
        with torch.autocast(_device_type(model), dtype=torch.bfloat16), disable_input_dtype_casting(model):
            yield
        return
    from peft.tuners.lora import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for m in layers:  # an instance attribute, removed on exit: the class's forward is untouched
        m.forward = _fused_lora_forward.__get__(m)
    try:
        yield
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


def _device_type(model: torch.nn.Module) -> str:
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's LoRA Linear forward for one plain active adapter, in ``x``'s dtype, as two matmuls."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    base = self.base_layer
    if (self.disable_adapters or self.merged or args or kwargs or len(active) != 1 or active[0] in self.lora_variant
            or not isinstance(self.lora_dropout[active[0]], torch.nn.Identity) or not isinstance(base, torch.nn.Linear)
            or base.weight.dtype != x.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    dt = x.dtype
    a = self.lora_A[name].weight.to(dt)  # [r, in]
    b = (self.lora_B[name].weight * self.scaling[name]).to(dt)  # [out, r]: the scale folded into the tiny factor
    x2 = x.reshape(-1, x.shape[-1])
    low = torch.nn.functional.linear(torch.nn.functional.linear(x2, a), b, base.bias)  # [N, out]
    return torch.addmm(low, x2, base.weight.t()).reshape(*x.shape[:-1], -1)


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


def compile_encoder(model: Any, mode: str | None = None) -> Any:
    """``torch.compile`` of the encoder's transformer body (dynamic shapes); returns the compiled callable."""
    body = model.encoder.get_base_model().model
    return torch.compile(body.forward, dynamic=True, mode=mode)
