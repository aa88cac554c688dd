"""LoRA targets outside the transformer layers (embed_tokens, lm_head) are refused, naming them."""

from __future__ import annotations

import pytest

from hicae import ConfigError
from hicae.lora_targets import outside_layers
from hicae.demo.tiny import tiny_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("extra, named", [("embed_tokens", "model.embed_tokens"), ("lm_head", "lm_head"),
                                          ("model.embed_tokens", "model.embed_tokens")])
def test_targets_outside_the_layers_are_refused(make_icae, extra, named):
    with pytest.raises(ConfigError, match=f"outside the transformer layers \\({named}\\)"):
        make_icae("qwen2", lora_target_modules=["q_proj", extra])


def test_layer_projections_are_accepted(make_icae):
    model = make_icae("qwen3", lora_target_modules=PROJECTIONS)
    names = [n for n in model.trained_tensors() if "lora_" in n]
    assert names and all(".layers." in n for n in names)
    assert outside_layers(tiny_model("qwen2"), PROJECTIONS) == []
