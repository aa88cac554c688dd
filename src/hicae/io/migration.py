"""Import an ICAE v2 checkpoint (getao/icae, code/icae_v2: the released Mistral-7B ICAE) as a hicae model.

The reference saves its ``ICAE`` module's state dict as one safetensors file. What is trained there:

- ``memory_token_embed.weight``, ``[k + 3, D]``: rows ``0..k-1`` are the k memory tokens (the
  reference appends ids ``vocab+0 .. vocab+k-1`` after each segment, looked up as rows ``0..k-1``),
  then ``[AE]``, ``[LM]``, ``[FT]`` (ids ``vocab+k+0/1/2``, rows ``k, k+1, k+2``). hicae keeps the
  same order: ``mem_embeddings`` = rows ``0..k-1``, ``task_embeddings`` = rows ``k..k+2`` (ae, lm, ft).
- ``icae.<peft name>.lora_A.default.weight`` / ``lora_B``: peft's LoRA on the encoder; hicae's
  adapter file uses peft's saved names, the same without the ``icae.`` prefix and the adapter
  name ``default``. The rank is ``lora_A``'s first dimension; the wrapped modules are the names
  before ``.lora_A``. LoRA's alpha is not stored in a state dict: the reference's scripts all use 32.

Anything else in the file is the frozen base model (``icae.base_model.model.*`` without LoRA, and
``decoder.*`` when saved during training): ignored, since hicae takes the base model by name.
Files in pickle form (``.bin``, ``.pt``) are refused: hicae never unpickles.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict

from .checkpoint_files import _check_keys, _read_safetensors, load_adapter
from ..config import ICAEConfig
from ..errors import CheckpointError
from .fingerprint import check_finite
from ..model import ICAE
from ..tasks import TASKS

log = logging.getLogger("hicae")

MEMORY_KEY = "memory_token_embed.weight"
REFERENCE_LORA_ALPHA = 32  # every ICAE v2 script builds LoraConfig(lora_alpha=32)
_LORA = re.compile(r"^icae\.(base_model\.model\..+\.(\w+))\.lora_([AB])(?:\.default)?\.weight$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class ICAEv2Weights:
    """The trained tensors of an ICAE v2 file, in hicae's names."""

    mem_embeddings: torch.Tensor  # [k, D]
    task_embeddings: torch.Tensor  # [3, D]: [AE], [LM], [FT]
    adapter: dict[str, torch.Tensor]  # peft's saved names (as adapter_model.safetensors)
    lora_r: int
    target_modules: list[str]
    ignored: int  # base-model tensors in the file (not needed: the base comes by name)

    @property
    def mem_size(self) -> int:
        return self.mem_embeddings.shape[0]


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: a pickle file; hicae never unpickles (loading one can run code). Convert it yourself, where you "
            "trust the file: python -c \"import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v "
            f"in torch.load('{path}', weights_only=True).items()}}, '{path.with_suffix('.safetensors')}')\""
        )


def read_icae_v2(path: str | Path) -> ICAEv2Weights:
    """Read and convert an ICAE v2 safetensors file (no model needed); every problem names the file."""
    path = Path(path)
    refuse_pickle(path)
    state = _read_safetensors(path)
    if MEMORY_KEY not in state:
        raise CheckpointError(f"{path}: not an ICAE v2 checkpoint: it has no {MEMORY_KEY!r} "
                              f"(its keys begin {sorted(state)[:3]})")
    rows = state.pop(MEMORY_KEY).float()
    k = rows.shape[0] - len(TASKS)
    if rows.dim() != 2 or k < 1:
        raise CheckpointError(f"{path}: {MEMORY_KEY} has shape {tuple(rows.shape)}; expected [k + 3, hidden size]")
    adapter, ranks, targets, ignored, odd = {}, set(), set(), 0, []
    for key, t in state.items():
        m = _LORA.match(key)
        if m:
            adapter[f"{m.group(1)}.lora_{m.group(3)}.weight"] = t.float()
            targets.add(m.group(2))
            if m.group(3) == "A":
                ranks.add(t.shape[0])
        elif "lora" in key.lower() or not (key.startswith("icae.base_model.model.") or key.startswith("decoder.")):
            odd.append(key)  # DoRA magnitudes, biases, another adapter name: not ICAE v2's layout
        else:
            ignored += 1
    if odd:
        raise CheckpointError(f"{path}: {len(odd)} tensor(s) of no known ICAE v2 role (e.g. {odd[:3]}); expected "
                              f"{MEMORY_KEY}, icae.*.lora_A/B[.default].weight and base-model weights")
    if not adapter:
        raise CheckpointError(f"{path}: no LoRA tensors (icae.*.lora_A.default.weight): nothing trained to import")
    if len(ranks) != 1:
        raise CheckpointError(f"{path}: LoRA ranks differ between modules ({sorted(ranks)}); hicae uses one rank")
    check_finite({"memory_token_embed": rows, **adapter}, str(path))
    return ICAEv2Weights(rows[:k].clone(), rows[k:].clone(), adapter, ranks.pop(), sorted(targets), ignored)


def import_icae_v2(path: str | Path, base_model: Any, tokenizer: Any, *, compression_rate: int = 4,
                   lora_alpha: int = REFERENCE_LORA_ALPHA, model_max_length: int = 5120,
                   add_special_token_for_lm: bool = False, bos: str = "auto") -> ICAE:
    """An ICAE on ``base_model`` holding an ICAE v2 file's trained weights (save it with ``save_pretrained``).

    What the file does not hold comes from the reference's defaults (overridable): mean
    compression rate 4, LoRA alpha 32, inputs up to 5120 tokens, no ``[LM]`` token after the slots
    (``add_special_token_for_lm=False``), BOS before each compressed text where the tokenizer adds
    one (``bos='auto'``: the reference tokenises with ``tokenizer(text)``, so Mistral's ``<s>``
    leads every text). The segment rule and memory positions are hicae's defaults, which equal
    the reference's (``even``, ``contiguous``).
    """
    w = read_icae_v2(path)
    D = base_model.config.hidden_size
    if w.mem_embeddings.shape[1] != D:
        raise CheckpointError(f"{path}: its embeddings have width {w.mem_embeddings.shape[1]} but the base model's "
                              f"hidden size is {D}: another base model (the released ICAE v2 files use "
                              "mistralai/Mistral-7B-Instruct-v0.2)")
    cfg = ICAEConfig(mem_size=w.mem_size, compression_rate=compression_rate, lora_r=w.lora_r, lora_alpha=lora_alpha,
                     lora_target_modules=w.target_modules, model_max_length=model_max_length,
                     add_special_token_for_lm=add_special_token_for_lm, bos=bos)
    model = ICAE(base_model, tokenizer, cfg)
    _check_keys(Path(path), w.adapter, get_peft_model_state_dict(model.encoder))
    with torch.no_grad():
        model.mem_embeddings.copy_(w.mem_embeddings)
        model.task_embeddings.copy_(w.task_embeddings)
    load_adapter(model, w.adapter, path)
    log.info("hicae: imported %s: k=%d, LoRA r=%d alpha=%d on %s; %d base-model tensors ignored", path, w.mem_size,
             w.lora_r, lora_alpha, ",".join(w.target_modules), w.ignored)
    return model
