"""Loading base models and saving / loading ICAE checkpoints (the only module here that does model I/O).

A checkpoint holds only what is trained:
- ``hicae_config.json``: the ICAEConfig, the base model's name and shape;
- ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter in peft's format;
- ``icae_embeddings.safetensors``: memory and task embeddings;
- ``base/`` (optional, ``save_base=True``): the base model itself, for bases that exist nowhere
  else (the demo's tiny random model).
Loading is strict: a missing, unexpected or mis-shaped tensor, or a base model of another shape,
is an error that names it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ICAEConfig, base_shape, shape_mismatches
from .errors import CheckpointError
from .fileio import staged_dir

CONFIG_FILE = "hicae_config.json"
EMBED_FILE = "icae_embeddings.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
BASE_DIR = "base"
FORMAT_VERSION = 1


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[dtype]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r} (bf16, fp16, fp32, auto)") from None


def load_base(name_or_path: str, dtype: str | torch.dtype | None = "auto", device: str | None = None,
              attn_implementation: str | None = "sdpa") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by hub name, local folder, or a ``.gguf`` file.

    A GGUF file (llama.cpp's format, often how a Qwen is kept locally) is dequantized by
    transformers into ordinary tensors of ``dtype`` (``auto``: bf16); it needs the ``gguf``
    package (``pip install 'hicae[gguf]'``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, kw = name_or_path, {}
    if str(name_or_path).endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise CheckpointError(f"cannot load base model {name_or_path!r}: no such GGUF file")
        if importlib.util.find_spec("gguf") is None:
            raise CheckpointError(f"{name_or_path}: reading a GGUF file needs the gguf package "
                                  "(pip install 'hicae[gguf]')")
        src, kw = str(gguf.resolve().parent), {"gguf_file": gguf.name}
        dtype = torch.bfloat16 if dtype in (None, "auto") else dtype
    # Explicitly False: left unset, transformers asks on a terminal whether to run a model's own
    # code, and one "y" would run it.
    kw["trust_remote_code"] = False
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
        kw["dtype"] = _dtype(dtype)
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(src, **kw)
    except OSError as e:
        raise CheckpointError(f"cannot load base model {name_or_path!r}: {e}") from e
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise CheckpointError(
            f"cannot load base model {name_or_path!r}: it needs its own Python code (auto_map in its config), and "
            "hicae never runs code that comes with a model; transformers would with trust_remote_code=True, which "
            "hicae does not pass. Use a model transformers supports natively, or load it yourself and pass it to "
            "ICAE(base_model, tokenizer)"
        ) from None
    if device:
        model.to(device)
    return model.eval(), tok


def save_icae(model: Any, path: str | Path, save_base: bool = False) -> None:
    """Write a checkpoint into ``path`` (staged, so a failed save leaves the old files intact)."""
    path = Path(path)
    with staged_dir(path) as tmp:
        meta = {
            "format_version": FORMAT_VERSION,
            "icae": model.icae_config.to_dict(),
            "base_model": model.base_model_name,
            "base_shape": base_shape(model.base_config),
            "fingerprint": model.fingerprint,
            "has_base": save_base,
        }
        if getattr(model, "hierarchy", None) is not None:
            meta["hierarchy"] = model.hierarchy.to_dict()
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        model.encoder.save_pretrained(str(tmp))  # adapter_model.safetensors + adapter_config.json
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.trained_embeddings().items()},
            str(tmp / EMBED_FILE),
            metadata={"format": "hicae-embeddings"},
        )
        if save_base:
            model.decoder.save_pretrained(str(tmp / BASE_DIR))
            model.tokenizer.save_pretrained(str(tmp / BASE_DIR))


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{path}: not a hicae checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: invalid JSON: {e}") from e
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{f}: checkpoint format {meta['format_version']} is newer than this hicae reads")
    return meta


def load_icae(path: str | Path, base_model: Any = None, tokenizer: Any = None, config_overrides: dict | None = None,
              hierarchy: Any = None, **load_kwargs: Any) -> Any:
    """Load a checkpoint; the base model comes from ``base_model``, the checkpoint's ``base/``, or its saved name.

    A hierarchical checkpoint loads as ``HierarchicalICAE``. Passing ``hierarchy`` (a
    ``HierarchyConfig``) loads any checkpoint as one: a Phase-1 ICAE checkpoint is upgraded, its
    level embeddings starting as copies of its memory tokens.
    """
    from .config import HierarchyConfig
    from .hierarchy import HierarchicalICAE
    from .model import ICAE

    path = Path(path)
    meta = read_checkpoint_config(path)
    if base_model is None:
        src = str(path / BASE_DIR) if meta.get("has_base") else meta["base_model"]
        if not src:
            raise CheckpointError(f"{path}: the checkpoint names no base model; pass base_model and tokenizer")
        base_model, loaded_tok = load_base(src, **load_kwargs)
        tokenizer = tokenizer or loaded_tok
    elif tokenizer is None:
        raise CheckpointError("pass the tokenizer together with base_model")
    mism = shape_mismatches(meta["base_shape"], base_shape(base_model.config))
    if mism:
        raise CheckpointError(
            f"{path}: checkpoint was trained on base model {meta['base_model']!r} of another shape: " + "; ".join(mism)
        )
    cfg_dict = dict(meta["icae"])
    cfg_dict.update(config_overrides or {})
    cfg = ICAEConfig.from_dict(cfg_dict)
    if hierarchy is None and "hierarchy" in meta:
        hierarchy = HierarchyConfig.from_dict(meta["hierarchy"])
    model = ICAE(base_model, tokenizer, cfg) if hierarchy is None else HierarchicalICAE(base_model, tokenizer, cfg, hierarchy)
    if meta.get("has_base") or not model.base_model_name:
        model.base_model_name = meta["base_model"]  # keep the original name, not the temporary folder
    load_trained_weights(model, path)
    return model


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read: {e}") from e


def _check_keys(file: Path, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(got) & set(expected)) if got[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise CheckpointError(f"{file}: does not fit this model: " + "; ".join(parts))


def load_trained_weights(model: Any, path: str | Path) -> None:
    """Strictly load the adapter and the embeddings of a checkpoint into ``model``."""
    path = Path(path)
    emb = _read_safetensors(path / EMBED_FILE)
    expected = model.trained_embeddings()
    upgrade = "level_embeddings" in expected and "level_embeddings" not in emb and "hierarchy" not in read_checkpoint_config(path)
    if upgrade:  # a Phase-1 ICAE checkpoint into a hierarchy: level tokens start as copies of level 1's
        expected = {k: v for k, v in expected.items() if k != "level_embeddings"}
    _check_keys(path / EMBED_FILE, emb, expected)
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(emb[name])
        if upgrade:
            model.level_embeddings.copy_(model.mem_embeddings.unsqueeze(0).expand_as(model.level_embeddings))
    adapter = _read_safetensors(path / ADAPTER_FILE)
    expected = get_peft_model_state_dict(model.encoder)
    _check_keys(path / ADAPTER_FILE, adapter, expected)
    device = model.device
    res = set_peft_model_state_dict(model.encoder, {k: v.to(device) for k, v in adapter.items()})
    bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise CheckpointError(f"{path / ADAPTER_FILE}: peft did not load {bad[:3]}")
