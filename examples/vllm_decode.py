"""Decode a hicae memory with vLLM, through prompt embeddings. AN EXAMPLE, NOT A TESTED BACKEND.

vLLM cannot run on the machines hicae is developed and tested on (CPU-only, no CUDA), so this file
has never been run there; what *is* tested is its input: ``hicae.decoding.handoff.decoder_input_embeddings``
returns exactly the embeddings hicae's own ``generate`` feeds the decoder (tests/test_handoff.py).

Why it works: hicae's decoder is the frozen base model (the LoRA adapter only encodes). Everything
hicae adds (chat prefix, memory slots, task embedding, prompt) is in the decoder's *input
embeddings*, so any engine that accepts prompt embeddings can decode a memory with the plain base
weights. vLLM >= 0.11 does, with ``enable_prompt_embeds=True`` (its EmbedsPrompt: a
``[sequence_length, hidden_size]`` tensor per prompt). vLLM decodes in its own kernels: in bf16 a
greedy answer may differ from transformers' where two tokens nearly tie.

    pip install 'vllm>=0.11'   # on a CUDA machine
    python examples/vllm_decode.py --checkpoint ./ft --text report.txt --prompt "Who signed it?"
"""

from __future__ import annotations

import argparse
from pathlib import Path


def hicae_inputs(checkpoint: str, text: str, prompts: list[str], device: str = "cpu"):
    """The memory's decoder inputs ([T, D] per prompt), the base model's path and the stop ids."""
    from hicae.io.checkpoint import BASE_DIR, load_icae
    from hicae.decoding.handoff import decoder_input_embeddings

    model = load_icae(checkpoint, device=device)
    mem = model.compress(text)
    embeds = decoder_input_embeddings(model, mem, prompts)  # what model.generate(mem, prompts) decodes from
    base = Path(checkpoint) / BASE_DIR
    base_path = str(base) if base.is_dir() else model.base_model_name  # the weights vLLM must load
    hf_answers = model.generate(mem, prompts, max_new_tokens=64)  # transformers' answers, to compare
    return embeds, base_path, model.tokens.stop_ids, hf_answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", required=True, help="a text file to compress")
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from vllm import LLM, SamplingParams  # imported here: the rest of the file needs no vLLM

    embeds, base_path, stop_ids, hf_answers = hicae_inputs(args.checkpoint, Path(args.text).read_text(),
                                                           args.prompt, args.device)
    llm = LLM(model=base_path, enable_prompt_embeds=True, dtype="bfloat16")
    params = SamplingParams(temperature=0.0, max_tokens=64, stop_token_ids=stop_ids)
    outputs = llm.generate([{"prompt_embeds": e.to("cpu", copy=True)} for e in embeds], params)
    for prompt, out, hf in zip(args.prompt, outputs, hf_answers):
        print(f"{prompt}\n  vLLM:         {out.outputs[0].text}\n  transformers: {hf}")


if __name__ == "__main__":
    main()
