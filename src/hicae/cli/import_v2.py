"""``hicae import-icae-v2``: convert an ICAE v2 checkpoint (getao/icae) into a hicae checkpoint."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..io.checkpoint import CONFIG_FILE, load_base, save_icae
from ..config import BOS_MODES
from ..errors import ConfigError
from ..io.migration import REFERENCE_LORA_ALPHA, import_icae_v2, refuse_pickle
from .flags import Flags
from .outputs import check_writable, refuse_overwriting_inputs

DESCRIPTION = """Convert an ICAE v2 checkpoint (the reference code's safetensors file, e.g. the released
mistral_7b_pretrained_icae.safetensors or mistral_7b_ft_icae.safetensors) into a hicae checkpoint:
memory_token_embed rows -> k memory tokens, then [AE] [LM] [FT]; the icae.* LoRA tensors -> peft's
adapter (rank from the file). The file does not name its base model: give it (the released ones:
mistralai/Mistral-7B-Instruct-v0.2). Pickle files (.bin, .pt) are refused; the message says how to
convert one yourself."""


@dataclass
class ImportSettings:
    icae_v2: str = field(metadata={"help": "the ICAE v2 checkpoint file (.safetensors)"})
    model_name_or_path: str = field(metadata={"help": "its base model: hub name, local folder or .gguf file"})
    output_dir: str = field(metadata={"help": "folder for the hicae checkpoint (must not hold one)"})
    dtype: str = field(default="auto", metadata={"help": "base model dtype while converting: auto, bf16, fp16, fp32"})
    compression_rate: int = field(default=4, metadata={
        "aliases": ["--mean_compression_rate"], "help": "r the checkpoint was trained with (reference: 4)"})
    lora_alpha: int = field(default=REFERENCE_LORA_ALPHA, metadata={
        "help": f"LoRA alpha it was trained with (not stored in the file; the reference: {REFERENCE_LORA_ALPHA})"})
    model_max_length: int = field(default=5120, metadata={"help": "longest text in tokens (reference: 5120)"})
    add_special_token_for_lm: bool = field(default=False, metadata={
        "help": "it was pretrained with [LM] after the slots (the reference's default is without)"})
    bos: str = field(default="auto", metadata={
        "choices": BOS_MODES, "help": "BOS before each compressed text: auto (where the tokenizer adds one, as the "
                                      "reference tokenises: Mistral's <s>), always, never (the text alone, as the "
                                      "reference's fine-tuning script compresses 'input')"})


def build_parser() -> Flags:
    return Flags("import-icae-v2", (ImportSettings,), DESCRIPTION)


def import_v2(argv: list[str]) -> int:
    (args,) = build_parser().parse(argv)
    src, out = Path(args.icae_v2), Path(args.output_dir)
    refuse_pickle(src)  # before loading a base model of many GB
    if not src.is_file():
        raise ConfigError(f"--icae_v2 {src}: no such file")
    check_writable("--output_dir", args.output_dir, folder=True)
    refuse_overwriting_inputs([("--output_dir", args.output_dir)], [("--icae_v2", args.icae_v2)])
    if (out / CONFIG_FILE).exists():
        raise ConfigError(f"--output_dir {out} already holds a hicae checkpoint; choose another folder")
    base, tok = load_base(args.model_name_or_path, dtype=args.dtype)
    model = import_icae_v2(src, base, tok, compression_rate=args.compression_rate, lora_alpha=args.lora_alpha,
                           model_max_length=args.model_max_length, add_special_token_for_lm=args.add_special_token_for_lm,
                           bos=args.bos)
    save_icae(model, out)
    cfg = model.icae_config
    print(json.dumps({"checkpoint": str(out), "mem_size": cfg.mem_size, "lora_r": cfg.lora_r,
                      "lora_alpha": cfg.lora_alpha, "lora_target_modules": cfg.lora_target_modules,
                      "base_model": model.base_model_name}))
    print(f"hicae import-icae-v2: wrote {out}", file=sys.stderr)
    return 0
