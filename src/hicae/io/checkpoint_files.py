"""Loading base models, and a checkpoint's files written from and read into a model (the model classes' I/O).

Below the model classes: it imports none of them. ``ICAE.from_pretrained`` passes in how to build the model;
``ICAE.save_pretrained`` and ``ICAE.from_base`` call ``save_icae`` and ``load_base`` (model.py).

A checkpoint holds only what is trained:
- ``hicae_config.json``: the ICAEConfig, the base model's name (a local path made absolute) and
  shape, and the weights fingerprints of the base model and of the trained encoder;
- ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter in peft's format;
- ``icae_embeddings.safetensors``: memory and task embeddings;
- ``base/`` (optional, ``save_base=True``): the base model itself, for bases that exist nowhere
  else (the demo's tiny random model).
Loading is strict: a missing, unexpected, mis-shaped or non-finite tensor, a base model of another
shape or other weights (see ``fingerprint``), or config files that disagree is an error that names
it. ``allow_other_weights=True`` (``--allow_other_weights``) accepts other weights knowingly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from .base_resolve import load_recorded_base
from .checkpoint_meta import CONFIG_FILE, FORMAT_VERSION, CheckpointInfo, read_checkpoint
from ..config import HierarchyConfig, ICAEConfig, base_shape, shape_mismatches
from ..decoder_side import plain_state_dict
from ..errors import CheckpointError
from .fileio import staged_dir
from .fingerprint import SEP, check_finite, encoder_fingerprint, weights_match

EMBED_FILE = "icae_embeddings.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
BASE_DIR = "base"
OVERRIDE = "pass --allow_other_weights (allow_other_weights=True) if you mean it"
log = logging.getLogger("hicae")


def absolute_source(name_or_path: str) -> str:
    """A local path made absolute (a checkpoint must not name a folder relative to where it ran); a hub name as is."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if name_or_path and p.exists() else name_or_path


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


def _source(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Where transformers reads a base model from: ``(folder or hub name, from_pretrained kwargs)``."""
    src, kw = name_or_path, {}
    if str(name_or_path).endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise CheckpointError(f"cannot load base model {name_or_path!r}: no such GGUF file")
        if importlib.util.find_spec("gguf") is None:
            raise CheckpointError(f"{name_or_path}: reading a GGUF file needs the gguf package "
                                  "(pip install 'hicae[gguf]')")
        src, kw = str(gguf.resolve().parent), {"gguf_file": gguf.name}
    # Explicitly False: left unset, transformers asks on a terminal whether to run a model's own
    # code, and one "y" would run it.
    kw["trust_remote_code"] = False
    return src, kw


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a base model (hub name, local folder or ``.gguf`` file)."""
    from transformers import AutoTokenizer

    src, kw = _source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the tokenizer of {name_or_path!r}: {e}") from e


def load_base(name_or_path: str, dtype: str | torch.dtype | None = "auto", device: str | None = None,
              attn_implementation: str | None = "sdpa", local_files_only: bool = False) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by hub name, local folder, or a ``.gguf`` file.

    A GGUF file (llama.cpp's format, often how a Qwen is kept locally) is dequantized by
    transformers into ordinary tensors of ``dtype`` (``auto``: bf16); it needs the ``gguf``
    package (``pip install 'hicae[gguf]'``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, kw = _source(name_or_path)
    if local_files_only:  # offline: the Hugging Face cache only, no retries against an unreachable hub
        kw["local_files_only"] = True
    if "gguf_file" in kw:
        dtype = torch.bfloat16 if dtype in (None, "auto") else dtype
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
    # The name a checkpoint records: an absolute path (run elsewhere, 'tiny' would be another
    # folder), the .gguf file itself rather than its folder; a hub name stays a name.
    model.config._name_or_path = absolute_source(str(name_or_path))
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
            "base_model": absolute_source(model.base_model_name) if not save_base else model.base_model_name,
            "base_shape": base_shape(model.base_config),
            "fingerprint": model.fingerprint,
            "weights": {"base": model.base_weights, "encoder": model.encoder_weights()},
            "has_base": save_base,
        }
        if model.hierarchical:
            meta["hierarchy"] = model.hierarchy.to_dict()
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        model.encoder.save_pretrained(str(tmp))  # adapter_model.safetensors + adapter_config.json
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.trained_embeddings().items()},
            str(tmp / EMBED_FILE),
            metadata={"format": "hicae-embeddings"},
        )
        if save_base:
            # the base model itself: without the decoder-side adapter (stored with the embeddings) if any
            model.decoder.save_pretrained(str(tmp / BASE_DIR), state_dict=plain_state_dict(model.decoder))
            model.tokenizer.save_pretrained(str(tmp / BASE_DIR))


def load_checkpoint(path: str | Path | CheckpointInfo, build: Callable[[Any, Any, ICAEConfig, HierarchyConfig | None], Any],
                    base_model: Any = None, tokenizer: Any = None, config_overrides: dict | None = None,
                    hierarchy: Any = None, allow_other_weights: bool = False, **load_kwargs: Any) -> Any:
    """Load a checkpoint; the base model comes from ``base_model``, the checkpoint's ``base/``, or its saved name.

    ``build(base_model, tokenizer, config, hierarchy)`` makes the model (``ICAE.from_pretrained`` passes
    ``ICAE._for_checkpoint``): a hierarchical checkpoint loads as ``HierarchicalICAE``. Passing ``hierarchy`` (a
    ``HierarchyConfig``) loads any checkpoint as one: a Phase-1 ICAE checkpoint is upgraded, its
    level embeddings starting as copies of its memory tokens.

    A base model whose weights are not those the checkpoint was trained on is refused, unless
    ``allow_other_weights``; the loaded model then also decodes memories of other weights.

    ``path`` may be the ``CheckpointInfo`` a caller already read (``read_checkpoint``): it is not read again.
    """
    info = path if isinstance(path, CheckpointInfo) else read_checkpoint(path)  # read and checked once
    path = info.path
    if base_model is None:  # the checkpoint's base/, else its recorded base: a local copy first (base_resolve.py)
        if info.has_base:
            base_model, loaded_tok = load_base(str(path / BASE_DIR), **load_kwargs)
        else:
            base_model, loaded_tok = load_recorded_base(info, load_base, **load_kwargs)
        tokenizer = tokenizer or loaded_tok
    elif tokenizer is None:
        tokenizer = _base_tokenizer(info, base_model)
    mism = shape_mismatches(info.base_shape, base_shape(base_model.config))
    if mism:
        raise CheckpointError(
            f"{path}: checkpoint was trained on base model {info.base_model!r} of another shape: " + "; ".join(mism)
        )
    # fresh configs for the model (the configs are mutable; ``info`` stays what the files say)
    cfg = ICAEConfig.from_dict({**info.icae.to_dict(), **(config_overrides or {})})
    if hierarchy is None and info.hierarchy is not None:
        hierarchy = dataclasses.replace(info.hierarchy)
    model = build(base_model, tokenizer, cfg, hierarchy)
    if info.has_base or not model.base_model_name:
        model.base_model_name = info.base_model  # keep the original name, not the temporary folder
    model.allow_other_weights = allow_other_weights
    want = info.base_weights
    if want is None:
        log.warning("hicae: warning: %s records no weights fingerprint (an older hicae); its base and encoder "
                    "weights are not checked", path / CONFIG_FILE)
    elif not weights_match(want, model.base_weights) and not allow_other_weights:
        raise CheckpointError(
            f"{path}: checkpoint was trained on base weights {want} ({info.base_model!r}), but the base model "
            f"given has weights {model.base_weights} ({model.base_model_name!r}){_dtype_hint(want, model)}; {OVERRIDE}"
        )
    load_trained_weights(model, path, allow_other_weights=allow_other_weights, info=info)
    return model


def _dtype_hint(want: str, model: Any) -> str:
    """Why the same base in another dtype may not match (fingerprint.py): said only where it can be the cause."""
    if model.dtype != torch.float16:
        return ""
    if SEP not in want:
        return (" (this checkpoint predates fp16-proof fingerprints: if it is the same base, load it in bf16 or "
                "fp32, or re-save the checkpoint with this hicae)")
    return " (if it is the same base: a checkpoint trained on a bf16 cast of fp32 weights is checked in bf16 or fp32)"


def _base_tokenizer(info: CheckpointInfo, base_model: Any) -> Any:
    """The tokenizer of a checkpoint given only its base model (peft's habit): from where the base came.

    Checkpoints do not carry tokenizer files (Qwen's are ~11 MB, more than a typical adapter):
    hicae trains with the base model's own tokenizer, so the base's saved name (or the checkpoint's
    ``base/``, or the name the given model was loaded from) gives the same files back.
    """
    path = info.path
    sources = [str(path / BASE_DIR)] if info.has_base else []
    sources += [info.base_model, str(getattr(base_model.config, "_name_or_path", "") or "")]
    tried = []
    for src in dict.fromkeys(s for s in sources if s):  # in order, without repeats
        try:
            return load_tokenizer(src)
        except CheckpointError as e:
            tried.append(f"{src!r} ({str(e).splitlines()[0][-120:]})")
    raise CheckpointError(f"{path}: no tokenizer given and none could be loaded from the base model's name: "
                          f"tried {'; '.join(tried) or 'nothing (no name recorded)'}; pass tokenizer=")


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


def load_trained_weights(model: Any, path: str | Path, allow_other_weights: bool = False,
                         info: CheckpointInfo | None = None) -> None:
    """Strictly load the adapter and the embeddings of a checkpoint into ``model``.

    Every tensor must be there, of its shape and finite; and (when the checkpoint records one)
    their fingerprint must be the encoder fingerprint of ``hicae_config.json``: files of different
    checkpoints do not mix. ``info``: the checkpoint as ``load_checkpoint`` already read it (else read here).
    """
    path = Path(path)
    if info is None:
        info = read_checkpoint(path, check_adapter=False)
    emb = _read_safetensors(path / EMBED_FILE)
    expected_emb = model.trained_embeddings()
    upgrade = "level_embeddings" in expected_emb and "level_embeddings" not in emb and not info.hierarchical
    if upgrade:  # a Phase-1 ICAE checkpoint into a hierarchy: level tokens start as copies of level 1's
        expected_emb = {k: v for k, v in expected_emb.items() if k != "level_embeddings"}
    _check_keys(path / EMBED_FILE, emb, expected_emb)
    adapter = _read_safetensors(path / ADAPTER_FILE)
    _check_keys(path / ADAPTER_FILE, adapter, get_peft_model_state_dict(model.encoder))
    check_finite(emb, str(path / EMBED_FILE))
    check_finite(adapter, str(path / ADAPTER_FILE))
    want = info.encoder_weights
    if want is not None and not allow_other_weights:
        got = encoder_fingerprint({**adapter, **emb}, str(path))
        if got != want:
            raise CheckpointError(
                f"{path}: its adapter and embeddings have weights fingerprint {got}, but {CONFIG_FILE} records "
                f"{want}: the files come from different checkpoints or were changed; {OVERRIDE}"
            )
    with torch.no_grad():
        for name, param in expected_emb.items():
            param.copy_(emb[name])
        if upgrade:
            model.level_embeddings.copy_(model.mem_embeddings.unsqueeze(0).expand_as(model.level_embeddings))
    load_adapter(model, adapter, path / ADAPTER_FILE)


def load_adapter(model: Any, adapter: dict[str, torch.Tensor], where: str | Path) -> None:
    """Put LoRA tensors (peft's names, keys already checked) into ``model``'s encoder; refuse any peft did not load."""
    res = set_peft_model_state_dict(model.encoder, {k: v.to(model.device) for k, v in adapter.items()})
    bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise CheckpointError(f"{where}: peft did not load {bad[:3]}")

