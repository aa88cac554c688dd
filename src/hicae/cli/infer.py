"""``hicae compress`` (texts -> memory file) and ``hicae generate`` (memory file -> answers)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.checkpoint import load_base, load_icae
from ..config import inference_max_length
from ..training.data import PRETRAIN_FIELDS, decode_utf8, iter_jsonl
from ..devices import pick_device
from ..errors import CheckpointError, ConfigError, DataError
from ..io.fileio import write_text_atomic
from ..memory import Memory
from ..decoding.static import DECODING_MODES
from ..sampling import SamplingOptions
from .flags import Flags
from .outputs import check_writable, refuse_overwriting_inputs


LENGTH_HELP = ("longest text in tokens (default: the base model's window, max_position_embeddings; the length the "
               "checkpoint was trained on does not limit inference)")


@dataclass
class LoadSettings:
    """The checkpoint a command loads (compress, generate, eval, serve) and how it runs."""

    checkpoint: str = field(metadata={"help": "hicae checkpoint directory (from pretrain/finetune)"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "base model to use instead of the one the checkpoint names"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if available)"})
    dtype: str = field(default="auto", metadata={"help": "auto, bf16, fp16, fp32"})
    decoding: str = field(default="dynamic", metadata={
        "choices": DECODING_MODES, "help": "KV cache of decoding: dynamic (default), static, or compiled (static + "
                                           "torch.compile; CUDA graphs on a GPU; the first call compiles)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the encoder for compression (the first call compiles)"})
    allow_other_weights: bool = field(default=False, metadata={
        "help": "use a base model whose weights differ from the checkpoint's, and decode memories made by other "
                "weights (refused otherwise)"})

    def inputs(self) -> list[tuple[str, str | None]]:
        """The model's files, which no output may replace."""
        return [("--checkpoint", self.checkpoint), ("--model_name_or_path", self.model_name_or_path)]


@dataclass
class LengthSettings:
    """The length policy of the commands that load a checkpoint to read texts (compress, eval, serve)."""

    model_max_length: int | None = field(default=None, metadata={"help": LENGTH_HELP})
    overlong: str = field(default="error", metadata={
        "choices": ["error", "truncate"], "help": "refuse (default) or truncate texts over the limit"})

    def overrides(self) -> dict[str, Any]:
        """The config overrides of ``_load``."""
        return {k: v for k, v in {"model_max_length": self.model_max_length, "overlong": self.overlong}.items()
                if v is not None}


def _load(args: LoadSettings, overrides: dict[str, Any] | None = None):
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


@dataclass
class CompressSettings:
    input: str = field(metadata={"help": "a text file (one text) or a .jsonl file of {'text': ...}"})
    output: str = field(metadata={"help": "memory file to write (.mem.safetensors)"})
    max_slots: int | None = field(
        default=None, metadata={"help": "hierarchical checkpoints: memory budget per text, in slots"})
    append_to: str | None = field(default=None, metadata={
        "help": "hierarchical checkpoints: a memory file to extend (streaming); only the new text is compressed"})


@dataclass
class GenerateSettings:
    memory: str = field(metadata={"help": "memory file written by `hicae compress`"})
    prompt: list[str] | None = field(default=None, metadata={
        "repeat": True, "help": "a question about the text(s); repeat for several"})
    reconstruct: bool = field(default=False, metadata={"help": "[AE]: decode the texts back"})
    continue_text: bool = field(default=False, metadata={"aliases": ["--continue"], "help": "[LM]: continue the texts"})
    output: str | None = field(default=None, metadata={"help": "write JSON lines here instead of printing text"})

    def __post_init__(self) -> None:
        asked = [flag for flag, v in (("--prompt", self.prompt), ("--reconstruct", self.reconstruct),
                                      ("--continue_text", self.continue_text)) if v]
        if len(asked) != 1:
            raise ConfigError(f"give one of --prompt, --reconstruct and --continue_text (--continue), got "
                              f"{', '.join(asked) or 'none'}")


def compress_parser() -> Flags:
    return Flags("compress", (LoadSettings, CompressSettings, LengthSettings), "Compress texts into a memory file.",
                 helps={"overlong": "refuse (default) or truncate texts over the limit, whatever the checkpoint was "
                                    "trained with"})


def generate_parser() -> Flags:
    return Flags("generate", (LoadSettings, GenerateSettings, SamplingOptions), "Decode from a memory file.",
                 max_new_tokens=128)


def compress(argv: list[str]) -> int:
    load, args, length = compress_parser().parse(argv)
    check_writable("--output", args.output)
    refuse_overwriting_inputs([("--output", args.output)],
                              [("--input", args.input), ("--append_to", args.append_to), *load.inputs()])
    pick_device(load.device)
    texts = read_texts(args.input)
    model = _load(load, length.overrides())
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
    load, args, sampling = generate_parser().parse(argv)
    sampling.check()
    if args.output:
        check_writable("--output", args.output)
        refuse_overwriting_inputs([("--output", args.output)], [("--memory", args.memory), *load.inputs()])
    pick_device(load.device)
    model = _load(load)
    mem = load_memory(model, args.memory)
    gen, n = sampling.generate_kwargs(), sampling.max_new_tokens
    sampling.seed_torch()
    if args.reconstruct:
        outs, prompts = model.reconstruct(mem, max_new_tokens=n, **gen), [None] * len(mem)
    elif args.continue_text:
        outs, prompts = model.continue_text(mem, max_new_tokens=n, **gen), [None] * len(mem)
    else:
        outs = model.generate(mem, args.prompt, max_new_tokens=n, **gen)
        prompts = args.prompt * len(outs) if len(args.prompt) == 1 else args.prompt
    rows = [{"index": i, "prompt": pr, "output": o} for i, (pr, o) in enumerate(zip(prompts, outs))]
    if args.output:
        write_text_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        for r in rows:
            head = f"[{r['index']}]" + (f" {r['prompt']}" if r["prompt"] else "")
            print(f"{head}\n{r['output']}\n", file=sys.stdout)
    return 0
