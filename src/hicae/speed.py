"""Optional speed paths of the encoder and of training: the adapter in the model's dtype, a compiled
encoder, bf16 adapter training. (Static and compiled *decoding*: ``hicae.decoding.static``.)

All are off by default, or exact: the eager transformers code is the reference every test compares against.

Inference runs the LoRA adapter in the model's dtype (``adapter_in_dtype``): peft keeps trainable
adapter weights in fp32, so in a bf16 model every adapted projection would cast its input to fp32
and run two fp32 matmuls; on an H200 with a 7B shape that cost 7% of compression time
(benchmarks/probes/probe_compress_gap.py: 61% -> 65% of the matmul roofline; the base alone: 66%).

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
from typing import Any, Iterator

import torch


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


def compile_encoder(model: Any, mode: str | None = None) -> Any:
    """``torch.compile`` of the encoder's transformer body (dynamic shapes); returns the compiled callable."""
    body = model.encoder.get_base_model().model
    return torch.compile(body.forward, dynamic=True, mode=mode)
