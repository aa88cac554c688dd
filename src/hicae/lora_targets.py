"""Which modules the encoder's LoRA adapter may wrap: only those inside the transformer layers.

peft matches ``target_modules`` by module-name suffix, so ``embed_tokens`` or ``lm_head`` are
accepted, and both go wrong in ICAE: the decoder reads the *base* embedding table and head (a twin
module tree without the adapter) and the encoder's output is the hidden states at the memory
positions, so an adapter there never gets a gradient; and peft then stores the full base matrices
in the checkpoint (82 MB for a tiny model, about 1 GB each at 7B) and writes them back over the
base on load. Refused before peft wraps anything, naming the modules.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError


def outside_layers(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of modules ``targets`` would wrap (peft's rule: the full name or its last parts) that are not
    inside a decoder layer (``...layers.<i>....``)."""
    out = []
    for name, _ in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and ".layers." not in f".{name}":
            out.append(name)
    return out


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    bad = outside_layers(model, targets)
    if bad:
        raise ConfigError(
            f"lora_target_modules {list(targets)} names modules outside the transformer layers ({', '.join(bad)}): "
            "an adapter there gets no gradient in ICAE and would store the full base matrices; target the layers' "
            "projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
        )
