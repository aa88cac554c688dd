"""The hand-off to another decoding engine: the exact input embeddings ``generate`` feeds the decoder.

The decoder is the frozen base model (no adapter); everything hicae adds lives in its *input
embeddings*: the chat template's text, the memory slots, the task embedding and the prompt. An
engine that accepts prompt embeddings (vLLM >= 0.11 with ``enable_prompt_embeds=True``, see
examples/vllm_decode.py) can therefore decode a hicae memory with the plain base model's weights:
hand it these tensors and stop on ``model.tokens.stop_ids``.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..memory import Memory
from ..tasks import model_task
from .requests import decode_request


def decoder_input_embeddings(model, mem: Memory, prompts: list[str] | str | None = None,
                             task: str = "answer") -> list[torch.Tensor]:
    """One ``[T_i, D]`` tensor per decoded row, in the model's dtype and on its device.

    ``task``: ``answer`` (chat prefix, slots, ``[FT]``, prompt and the template's generation
    prompt; prompts broadcast over ``mem`` as in ``model.generate``), ``reconstruct``
    (``[slots] [AE]``) or ``continue`` (``[slots] [LM]``, or ``[slots]`` alone with
    ``add_special_token_for_lm=False``). Row ``i`` is what ``generate`` feeds
    the decoder for that row, without the left padding a batch adds (tests/test_handoff.py checks
    it against the embeddings the transformers ``generate`` call receives).
    """
    decoder_task = model_task(task)
    if model.icae_config.decoder_lora_r:
        raise ConfigError("this checkpoint has a decoder-side LoRA (decoder_lora_r > 0): its slots are read by the "
                          "base model *with* that adapter, so input embeddings alone do not reproduce its decoding; "
                          "decode with hicae (generate, hicae serve) instead")
    if model.icae_config.decoder_positions != "sequential":
        raise ConfigError("this checkpoint reads slots at the positions of their text (decoder_positions="
                          f"{model.icae_config.decoder_positions!r}); an engine fed input embeddings numbers them "
                          "0, 1, 2, ..., so decode with hicae (generate, hicae serve) instead")
    model.check_memory(mem)
    request = decode_request(model, mem, decoder_task, prompts)
    out = []
    with torch.no_grad():
        for slots, ex in zip(request.mem.slots, request.examples):
            ids = torch.tensor([ex.ids], dtype=torch.long, device=model.device)  # [1, T]
            out.append(model.decoder_inputs(ids, slots.to(model.device))[0])  # [T, D]
    return out
