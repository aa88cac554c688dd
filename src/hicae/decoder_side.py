"""What may learn on the slots' side of the decoder (issue 17's method options), off by default.

- ``SlotProjector`` (``ICAEConfig.slot_projector="mlp"``): the slots the decoder reads are
  ``x + MLP(RMSNorm(x))`` of the encoder's final states ``x`` instead of ``x`` itself. The MLP's
  output layer starts at zero, so a fresh projector is the identity and training starts exactly
  where the plain method does. It is applied where the encoder's states become slots
  (``ICAE.run_encoder``), so memories hold decoder-ready vectors and every decoding path (prefix
  cache, static/compiled decoding, the server, the hand-off of input embeddings) carries it.
- A decoder-side LoRA (``ICAEConfig.decoder_lora_r > 0``): adapters injected into the decoder
  twin (``model.twin_module``), wrapping the very Linear layers the encoder's adapters wrap. They
  are on whenever the decoder runs, i.e. whenever it reads slots; ``plain_base`` switches them off
  for the base model's own outputs (full-text and no-context baselines), which must stay the
  frozen LLM's. Everything that decodes through ``model.decoder`` (prefix cache, static/compiled
  decoding, the server) carries them. Their tensors are stored with the learned embeddings
  (``ICAE.trained_embeddings``), so checkpoints load them strictly and the encoder fingerprint
  covers them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

DECODER_ADAPTER = "slots"  # peft adapter name of the decoder-side LoRA
DECODER_LORA_PREFIX = "decoder_lora."  # key prefix of its tensors in icae_embeddings.safetensors
PROJECTOR_PREFIX = "slot_projector."


class SlotProjector(nn.Module):
    """``x + W2 act(W1 RMSNorm(x))``, computed in fp32 (its weights are trainable fp32 tensors, as peft's
    adapter weights); returns the input's dtype.  x: [..., D] -> [..., D]"""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, hidden)
        self.down = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.down.weight)  # identity at initialisation
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return (h + self.down(nn.functional.gelu(self.up(self.norm(h))))).to(x.dtype)


def inject_decoder_lora(decoder: nn.Module, r: int, alpha: int, dropout: float, targets: list[str]) -> None:
    """Put LoRA adapters (named ``DECODER_ADAPTER``) into ``decoder``'s target modules, in place.

    ``decoder`` is the twin tree whose leaves are the base model's own Linear layers: peft wraps
    them in new LoRA layers inside the twin only, so the encoder's tree and adapters are untouched.
    """
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(cfg, decoder, adapter_name=DECODER_ADAPTER)
    for name, p in decoder.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # trainable tensors in fp32, as peft keeps the encoder's adapter
        p.requires_grad_("lora_" in name)


def decoder_lora_parameters(decoder: nn.Module) -> dict[str, nn.Parameter]:
    """The decoder adapter's tensors under stable names (``DECODER_LORA_PREFIX`` + module path)."""
    return {DECODER_LORA_PREFIX + n: p for n, p in decoder.named_parameters() if "lora_" in n}


def plain_state_dict(decoder: nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's state dict as the base model's own (what ``save_pretrained`` of the base writes): the
    LoRA wrappers' tensors left out and their ``base_layer`` names unwrapped."""
    return {k.replace(".base_layer.", "."): v for k, v in decoder.state_dict().items() if "lora_" not in k}


@contextlib.contextmanager
def plain_base(decoder: nn.Module) -> Iterator[None]:
    """The decoder without its slot-side adapters: the frozen base model itself (nothing to do without them)."""
    layers = [m for m in decoder.modules() if isinstance(m, BaseTunerLayer)]
    was = [m.disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True  # only the flag: peft's enable_adapters() would also flip requires_grad
        yield
    finally:
        for m, w in zip(layers, was):
            m._disable_adapters = w
