"""``hicae compress`` (texts -> memory file) and ``hicae generate`` (memory file -> answers)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..checkpoint import load_base, load_icae
from ..config import inference_max_length
from ..data import PRETRAIN_FIELDS, decode_utf8, iter_jsonl
from ..errors import CheckpointError, DataError
from ..fileio import write_text_atomic
from ..memory import Memory
from ..decoding.static import DECODING_MODES
from .common import check_generation, pick_device
from .outputs import check_writable, refuse_overwriting_inputs


LENGTH_HELP = ("longest text in tokens (default: the base model's window, max_position_embeddings; the length the "
               "checkpoint was trained on does not limit inference)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="hicae checkpoint directory (from pretrain/finetune)")
    p.add_argument("--model_name_or_path", default=None, help="base model to use instead of the one the checkpoint names")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto, bf16, fp16, fp32")
    p.add_argument("--decoding", choices=DECODING_MODES, default="dynamic",
                   help="KV cache of decoding: dynamic (default), static, or compiled (static + torch.compile; "
                        "CUDA graphs on a GPU; the first call compiles)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder for compression (the first call compiles)")
    p.add_argument("--allow_other_weights", action="store_true",
                   help="use a base model whose weights differ from the checkpoint's, and decode memories made "
                        "by other weights (refused otherwise)")


def length_args(p: argparse.ArgumentParser, overlong_help: str = "refuse (default) or truncate texts over the limit",
                length_help: str = LENGTH_HELP) -> None:
    """``--model_max_length`` and ``--overlong``: the length policy of the commands that load a checkpoint to
    read texts (compress, eval, serve); ``length_overrides`` turns them into config overrides for ``_load``."""
    p.add_argument("--model_max_length", type=int, default=None, help=length_help)
    p.add_argument("--overlong", choices=["error", "truncate"], default="error", help=overlong_help)


def length_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {"model_max_length": args.model_max_length, "overlong": args.overlong}.items() if v is not None}


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None):
    device = pick_device(args.device)
    base = tok = None
    if args.model_name_or_path:
        base, tok = load_base(args.model_name_or_path, dtype=args.dtype, device=device)
    model = load_icae(args.checkpoint, base_model=base, tokenizer=tok, config_overrides=overrides,
                      allow_other_weights=args.allow_other_weights, dtype=args.dtype, device=device)
    if not (overrides or {}).get("model_max_length"):  # the checkpoint's training length does not limit inference
        model.icae_config = dataclasses.replace(model.icae_config,
                                                model_max_length=inference_max_length(model.base_config))
    model.set_decoding(args.decoding)
    if args.compile:
        model.compile_encoder()
    return model


def model_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The model's files, which no output may replace."""
    return [("--checkpoint", args.checkpoint), ("--model_name_or_path", args.model_name_or_path)]


def load_memory(model, path: str) -> Memory:
    """A memory file, checked against ``model`` at once (not midway through decoding)."""
    mem = Memory.load(path, device=model.device)
    try:
        model.check_memory(mem)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return mem


def read_texts(path: str) -> list[str]:
    """A ``.jsonl`` file gives one text per record (field ``text``); any other file is one text."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix == ".jsonl":
        return [rec["text"] for _, rec in iter_jsonl(p, PRETRAIN_FIELDS)]
    text = decode_utf8(p.read_bytes(), str(p))
    if not text.strip():
        raise DataError(f"{p}: the file is empty: there is nothing to compress")
    return [text]


def compress(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hicae compress", description="Compress texts into a memory file.")
    _model_args(p)
    p.add_argument("--input", required=True, help="a text file (one text) or a .jsonl file of {'text': ...}")
    p.add_argument("--output", required=True, help="memory file to write (.mem.safetensors)")
    length_args(p, "refuse (default) or truncate texts over the limit, whatever the checkpoint was trained with")
    p.add_argument("--max_slots", type=int, default=None, help="hierarchical checkpoints: memory budget per text, in slots")
    p.add_argument("--append_to", default=None,
                   help="hierarchical checkpoints: a memory file to extend (streaming); only the new text is compressed")
    args = p.parse_args(argv)
    check_writable("--output", args.output)
    refuse_overwriting_inputs([("--output", args.output)],
                              [("--input", args.input), ("--append_to", args.append_to), *model_inputs(args)])
    pick_device(args.device)
    texts = read_texts(args.input)
    model = _load(args, length_overrides(args))
    if (args.max_slots is not None or args.append_to) and not model.hierarchical:
        raise DataError("--max_slots and --append_to need a hierarchical checkpoint (hicae pretrain --hierarchical)")
    if args.append_to:
        mem = model.append(load_memory(model, args.append_to), texts, max_slots=args.max_slots)
    else:
        mem = model.compress(texts, max_slots=args.max_slots)
    mem.save(args.output)
    print(json.dumps({"output": args.output, "texts": len(mem), "tokens": mem.num_tokens, "slots": mem.num_slots,
                      "levels": mem.levels}))
    return 0


def generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hicae generate", description="Decode from a memory file.")
    _model_args(p)
    p.add_argument("--memory", required=True, help="memory file written by `hicae compress`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="a question about the text(s); repeat for several")
    what.add_argument("--reconstruct", action="store_true", help="[AE]: decode the texts back")
    what.add_argument("--continue", dest="continue_", action="store_true", help="[LM]: continue the texts")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (needs --do_sample)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass (needs --do_sample)")
    p.add_argument("--output", default=None, help="write JSON lines here instead of printing text")
    args = p.parse_args(argv)
    check_generation(args.max_new_tokens, args.do_sample, args.temperature, args.top_p)
    if args.output:
        check_writable("--output", args.output)
        refuse_overwriting_inputs([("--output", args.output)], [("--memory", args.memory), *model_inputs(args)])
    pick_device(args.device)
    model = _load(args)
    mem = load_memory(model, args.memory)
    gen: dict[str, Any] = {"do_sample": args.do_sample}
    if args.do_sample:
        gen.update({k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p}.items() if v is not None})
    if args.reconstruct:
        outs, prompts = model.reconstruct(mem, max_new_tokens=args.max_new_tokens, **gen), [None] * len(mem)
    elif args.continue_:
        outs, prompts = model.continue_text(mem, max_new_tokens=args.max_new_tokens, **gen), [None] * len(mem)
    else:
        outs = model.generate(mem, args.prompt, max_new_tokens=args.max_new_tokens, **gen)
        prompts = args.prompt * len(outs) if len(args.prompt) == 1 else args.prompt
    rows = [{"index": i, "prompt": pr, "output": o} for i, (pr, o) in enumerate(zip(prompts, outs))]
    if args.output:
        write_text_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        for r in rows:
            head = f"[{r['index']}]" + (f" {r['prompt']}" if r["prompt"] else "")
            print(f"{head}\n{r['output']}\n", file=sys.stdout)
    return 0
