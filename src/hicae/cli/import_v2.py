"""``hicae import-icae-v2``: convert an ICAE v2 checkpoint (getao/icae) into a hicae checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..checkpoint import CONFIG_FILE, load_base, save_icae
from ..config import BOS_MODES
from ..errors import ConfigError
from ..migration import REFERENCE_LORA_ALPHA, import_icae_v2, refuse_pickle
from .outputs import check_writable, refuse_overwriting_inputs

DESCRIPTION = """Convert an ICAE v2 checkpoint (the reference code's safetensors file, e.g. the released
mistral_7b_pretrained_icae.safetensors or mistral_7b_ft_icae.safetensors) into a hicae checkpoint:
memory_token_embed rows -> k memory tokens, then [AE] [LM] [FT]; the icae.* LoRA tensors -> peft's
adapter (rank from the file). The file does not name its base model: give it (the released ones:
mistralai/Mistral-7B-Instruct-v0.2). Pickle files (.bin, .pt) are refused; the message says how to
convert one yourself."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hicae import-icae-v2", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--icae_v2", required=True, help="the ICAE v2 checkpoint file (.safetensors)")
    p.add_argument("--model_name_or_path", required=True, help="its base model: hub name, local folder or .gguf file")
    p.add_argument("--output_dir", required=True, help="folder for the hicae checkpoint (must not hold one)")
    p.add_argument("--dtype", default="auto", help="base model dtype while converting: auto, bf16, fp16, fp32")
    p.add_argument("--mean_compression_rate", type=int, default=4, help="r the checkpoint was trained with (reference: 4)")
    p.add_argument("--lora_alpha", type=int, default=REFERENCE_LORA_ALPHA,
                   help=f"LoRA alpha it was trained with (not stored in the file; the reference: {REFERENCE_LORA_ALPHA})")
    p.add_argument("--model_max_length", type=int, default=5120, help="longest text in tokens (reference: 5120)")
    p.add_argument("--add_special_token_for_lm", action="store_true",
                   help="it was pretrained with [LM] after the slots (the reference's default is without)")
    p.add_argument("--bos", default="auto", choices=BOS_MODES,
                   help="BOS before each compressed text: auto (where the tokenizer adds one, as the reference "
                        "tokenises: Mistral's <s>), always, never (the text alone, as the reference's fine-tuning "
                        "script compresses 'input')")
    return p


def import_v2(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    src, out = Path(args.icae_v2), Path(args.output_dir)
    refuse_pickle(src)  # before loading a base model of many GB
    if not src.is_file():
        raise ConfigError(f"--icae_v2 {src}: no such file")
    check_writable("--output_dir", args.output_dir, folder=True)
    refuse_overwriting_inputs([("--output_dir", args.output_dir)], [("--icae_v2", args.icae_v2)])
    if (out / CONFIG_FILE).exists():
        raise ConfigError(f"--output_dir {out} already holds a hicae checkpoint; choose another folder")
    base, tok = load_base(args.model_name_or_path, dtype=args.dtype)
    model = import_icae_v2(src, base, tok, compression_rate=args.mean_compression_rate, lora_alpha=args.lora_alpha,
                           model_max_length=args.model_max_length, add_special_token_for_lm=args.add_special_token_for_lm,
                           bos=args.bos)
    save_icae(model, out)
    cfg = model.icae_config
    print(json.dumps({"checkpoint": str(out), "mem_size": cfg.mem_size, "lora_r": cfg.lora_r,
                      "lora_alpha": cfg.lora_alpha, "lora_target_modules": cfg.lora_target_modules,
                      "base_model": model.base_model_name}))
    print(f"hicae import-icae-v2: wrote {out}", file=sys.stderr)
    return 0
