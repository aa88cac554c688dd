"""The In-Context Autoencoder on a Qwen (or any decoder-only transformers) model.

Encoder: the LLM with a LoRA adapter reads ``segment + k memory tokens``; the final hidden states
(after the final norm) at the memory positions are that segment's slots. Decoder: the same LLM
without the adapter, reading ``slots + task embedding + tokens`` as input embeddings.

One copy of the weights: the decoder is a *twin* module tree whose parameters are the very
tensors of the base model (see ``twin_module``). It has no LoRA layers at all, so it is correct
under gradient checkpointing, where peft's ``disable_adapter()`` context would already have
exited when the backward pass recomputes the decoder's layers.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batching import EncoderBatch, budget_chunks, pad_decoder, pad_encoder
from .config import ICAEConfig, base_shape
from .decoder_side import PROJECTOR_PREFIX, SlotProjector, decoder_lora_parameters, inject_decoder_lora, plain_base
from .decoding.prefix_cache import PrefixCache
from .decoding.requests import decode_request
from .decoding.run import build_prefix_cache, decode
from .decoding.static import DecodingOptions, contiguous_head_input
from .errors import CheckpointError, ConfigError, DataError
from .io.fingerprint import base_fingerprints, encoder_fingerprint, weights_match
from .layout import (
    AE,
    FT,
    IGNORE,
    LM,
    MEM,
    SLOT,
    DecoderExample,
    Placement,
    ae_example,
    chunk_centres,
    encoder_position_ids,
    encoder_rows,
    follow_position_ids,
    lm_example,
    slot_text_positions,
    span_slot_positions,
)
from .lora_targets import check_lora_targets
from .memory import Memory
from .speed import adapter_in_dtype, compile_encoder
from .tasks import TASKS  # the task embeddings' rows, in this order
from .tokens import SpecialTokens, fit_length

LOGGED = TASKS + ("distill",)  # per-token losses the trainer logs: each task's CE, and the distillation KL
_CE_CHUNK = 2048  # labelled positions per cross-entropy chunk: bounds the [N, V] logits


def twin_module(module: nn.Module) -> nn.Module:
    """A second module tree that holds the *same* weights (zero copy).

    Containers (layers, attention, MLP...) are copied, so later in-place changes to ``module``'s
    structure (peft replacing ``q_proj`` by a LoRA wrapper) do not reach the twin; leaf modules
    (Linear, norms, embeddings: the ones holding weights) are the very same objects in both trees.
    Sharing leaves rather than only their tensors lets FSDP swap a leaf's sharded and gathered
    weights once for both trees (see training/fsdp.py).
    """
    if not module._modules:
        return module
    twin = copy.copy(module)
    for k, v in list(vars(module).items()):
        if isinstance(v, (dict, OrderedDict, set)):  # _parameters, _buffers, _modules, hook dicts
            setattr(twin, k, copy.copy(v))
    twin._modules = OrderedDict((k, twin_module(m) if m is not None else None) for k, m in module._modules.items())
    return twin


class ICAE(nn.Module):
    def __init__(self, base_model: nn.Module, tokenizer: Any, config: ICAEConfig | None = None, *, share_decoder: bool = True):
        """Wrap an already-built causal LM; no I/O. The base model is frozen and gets a LoRA adapter in place.

        ``share_decoder=False`` makes the decoder an independent deep copy (the reference's
        two-copies design); it exists as a baseline for tests and benchmarks.
        """
        super().__init__()
        self.icae_config = config or ICAEConfig()
        check_lora_targets(base_model, list(self.icae_config.lora_target_modules))  # before anything changes the base
        self.tokenizer = tokenizer
        self.base_model_name = str(getattr(base_model.config, "_name_or_path", "") or "")
        self.tokens = SpecialTokens.from_tokenizer(tokenizer, getattr(base_model, "generation_config", None),
                                                   bos=self.icae_config.bos)
        base_model.requires_grad_(False)
        self.decoder = twin_module(base_model) if share_decoder else copy.deepcopy(base_model)
        contiguous_head_input(self.decoder)  # generate's first step: mm, not a weight copy (decoding/static.py)
        cfg = self.icae_config
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            bias="none",
        )
        # Which base weights these are (a strided sample, see io/fingerprint.py): checkpoints and
        # memories record it, and loading one on other weights is refused unless allowed. Taken
        # before any adapter is added, so it is the plain base's.
        self.base_weights = base_fingerprints(self.decoder)  # "<bf16>/<fp16>": any cast of them matches
        self.encoder = get_peft_model(base_model, lora)
        emb = base_model.get_input_embeddings().weight
        D = emb.shape[1]
        if cfg.decoder_lora_r:  # decoder_side.py: adapters on the twin, on while it reads slots
            inject_decoder_lora(self.decoder, cfg.decoder_lora_r, cfg.decoder_lora_alpha, cfg.lora_dropout,
                                list(cfg.lora_target_modules))
            self.decoder.to(emb.device)
        self.slot_projector = SlotProjector(D).to(emb.device) if cfg.slot_projector == "mlp" else None
        # Scale of the vocabulary embeddings, from a strided sample (no fp32 copy of a 152k x D table).
        std = float(emb.detach()[:: max(1, emb.shape[0] // 4096)].float().std())
        g = torch.Generator().manual_seed(0)
        # Trainable embeddings live in fp32 (like peft's adapter weights) and are cast on use.
        self.mem_embeddings = nn.Parameter(torch.randn(cfg.mem_size, D, generator=g).mul_(std).to(emb.device))  # [k, D]
        self.task_embeddings = nn.Parameter(torch.randn(len(TASKS), D, generator=g).mul_(std).to(emb.device))  # [3, D]
        self.hidden_size = D
        self.fingerprint = cfg.memory_fingerprint(base_shape(base_model.config), self.fingerprint_extra())
        self.allow_other_weights = False  # runtime (not saved): decode memories of other weights
        # Runtime speed settings (not saved): see decoding/static.py, speed.py, set_decoding and compile_encoder.
        self.decoding = DecodingOptions()
        # Functions, not modules: state_dict keys stay the same.
        self._compiled_encoder: Any = None  # the encoder body compression runs: None (eager) or a compiled one
        self._compiled: dict[str | None, Any] = {}  # compiled bodies by torch.compile mode, kept when switched off

    def fingerprint_extra(self) -> dict[str, Any] | None:
        """What the memory fingerprint adds to the config: the BOS before each compressed text, when there
        is one (a Mistral base; none for Qwen, whose fingerprints stay as they were)."""
        return {"text_prefix": self.tokens.text_prefix} if self.tokens.text_prefix else None

    # ---- I/O: calls down into io/checkpoint_files.py, which imports no model class ---------------

    # The class a hierarchical checkpoint loads as: HierarchicalICAE registers itself when its class
    # statement runs (``loads_hierarchy = True``), so this module need not import hierarchy/.
    loads_hierarchy = False
    _hierarchy_class: "type[ICAE] | None" = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("loads_hierarchy"):
            ICAE._hierarchy_class = cls

    @staticmethod
    def _for_checkpoint(base_model: nn.Module, tokenizer: Any, config: ICAEConfig, hierarchy: Any) -> "ICAE":
        """The model a checkpoint's config builds: ICAE, or HierarchicalICAE when it records a hierarchy."""
        if hierarchy is None:
            return ICAE(base_model, tokenizer, config)
        if ICAE._hierarchy_class is None:  # hicae/__init__.py imports hierarchy/: only a bare import of model.py
            raise CheckpointError("a hierarchical checkpoint needs hicae.hierarchy imported (import hicae)")
        return ICAE._hierarchy_class(base_model, tokenizer, config, hierarchy)

    @classmethod
    def from_base(cls, name_or_path: str, config: ICAEConfig | None = None, **kwargs: Any) -> "ICAE":
        """A new model (untrained adapter) on a base model loaded by ``load_base`` (hub name, folder or .gguf)."""
        from .io.checkpoint_files import load_base

        base, tok = load_base(name_or_path, **kwargs)
        return cls(base, tok, config)

    @classmethod
    def from_pretrained(cls, path: Any, base_model: Any = None, tokenizer: Any = None, **kwargs: Any) -> "ICAE":
        """Load a checkpoint (``config_overrides``, ``hierarchy``, ``allow_other_weights``: see
        ``io.checkpoint_files.load_checkpoint``); a hierarchical one loads as ``HierarchicalICAE``."""
        from .io.checkpoint_files import load_checkpoint

        return load_checkpoint(path, ICAE._for_checkpoint, base_model=base_model, tokenizer=tokenizer, **kwargs)

    def save_pretrained(self, path: Any, save_base: bool = False) -> None:
        """Write a checkpoint (see ``io.checkpoint_files.save_icae``)."""
        from .io.checkpoint_files import save_icae

        save_icae(self, path, save_base=save_base)

    # ---- speed options (decoding/static.py, speed.py) ---------------------------------------------

    def set_decoding(self, mode: str = "dynamic", bucket: int = 256, compile_mode: str | None = None) -> "ICAE":
        """Decoding path of generate/reconstruct/continue: ``dynamic`` (default), ``static`` or ``compiled``."""
        self.decoding = DecodingOptions(mode, bucket, compile_mode)
        return self

    def compile_encoder(self, mode: str | None = None, enabled: bool = True) -> "ICAE":
        """Compress through ``torch.compile``'d encoder layers (inference only; training stays eager).

        ``enabled=False``: back to the eager encoder. The compiled function is kept, so enabling it again
        with the same ``mode`` compiles nothing new (a benchmark switches between the two).
        """
        if enabled and mode not in self._compiled:
            self._compiled[mode] = compile_encoder(self, mode)
        self._compiled_encoder = self._compiled[mode] if enabled else None
        return self

    # ---- properties ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.mem_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.get_input_embeddings().weight.dtype

    @property
    def base_config(self) -> Any:
        return self.decoder.config

    def trained_embeddings(self) -> dict[str, nn.Parameter]:
        """The learned tensors a checkpoint stores beside the encoder's adapter: the embeddings, and the
        decoder-side adapter and slot projector when the config has them (decoder_side.py)."""
        out = {"mem_embeddings": self.mem_embeddings, "task_embeddings": self.task_embeddings}
        if self.icae_config.decoder_lora_r:
            out.update(decoder_lora_parameters(self.decoder))
        if self.slot_projector is not None:
            out.update({PROJECTOR_PREFIX + n: p for n, p in self.slot_projector.named_parameters()})
        return out

    def plain_decoding(self) -> Any:
        """Context: the decoder as the frozen base model (no slot-side adapters), for the plain baselines."""
        return plain_base(self.decoder)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The trained encoder as a checkpoint stores it: the adapter (peft's names) and the learned embeddings."""
        return {**get_peft_model_state_dict(self.encoder), **self.trained_embeddings()}

    def encoder_weights(self) -> str:
        """Fingerprint of the trained encoder now (it changes as training goes; a few ms)."""
        return encoder_fingerprint(self.trained_tensors())

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options: Any) -> None:
        """``options``: transformers' further settings (the Trainer passes ``every_n_layers`` and ``offload``)."""
        # Non-reentrant checkpointing: the inputs (embeddings of a frozen table) need no grad.
        kw = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.encoder.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw, **options)
        self.decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw, **options)

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.get_base_model().gradient_checkpointing_disable()
        self.decoder.gradient_checkpointing_disable()

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Context: eval mode (no dropout) and no autograd, the training mode restored after (compression
        and decoding run in it)."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was)

    # ---- embeddings ------------------------------------------------------------------------------

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed vocabulary ids; placeholders get a zero row for now.  ids: [B, T] -> [B, T, D]"""
        return self.decoder.get_input_embeddings()(ids.clamp(min=0))

    def _encoder_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        x = self._embed(ids)  # [R, T, D]
        R = ids.shape[0]
        mem = self.mem_embeddings.to(x.dtype).unsqueeze(0).expand(R, -1, -1)  # [R, k, D]
        # Each row has exactly k MEM placeholders, in order: row-major scatter places mem j at the j-th.
        return x.masked_scatter((ids == MEM).unsqueeze(-1), mem)

    def decoder_inputs(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The decoder's input embeddings of a batch of layouts: the vocabulary's, the slots at the SLOT
        placeholders (row-major) and the learned task embeddings at the task placeholders.
        ids: [B, T] with SLOT and task placeholders; slots: [S, D], every example's slots in order -> [B, T, D]"""
        x = self._embed(ids)  # [B, T, D]
        n_slot = int((ids == SLOT).sum())
        if n_slot != slots.shape[0]:
            raise ValueError(f"decoder layout has {n_slot} slot positions but {slots.shape[0]} slots were given")
        x = x.masked_scatter((ids == SLOT).unsqueeze(-1), slots.to(x.dtype))
        task = self.task_embeddings.to(x.dtype)
        for j, tid in enumerate((AE, LM, FT)):
            x = torch.where((ids == tid).unsqueeze(-1), task[j], x)
        return x

    def placements(self, mem: Memory) -> list[Placement] | None:
        """Where each entry's slots sit in its text (``decoder_positions='follow'``), or None (sequential).
        A flat memory's slots are its segments' (``segmentation``); HierarchicalICAE places merged blocks."""
        cfg = self.icae_config
        if cfg.decoder_positions != "follow":
            return None
        return [Placement(slot_text_positions(n, cfg.mem_size, cfg.compression_rate, cfg.segmentation), n)
                for n in mem.num_tokens]

    def example_positions(self, ids: list[int], placement: Placement | None) -> list[int] | None:
        """Decoder position ids of one layout reading the slots of a memory entry placed as ``placement``;
        None when they are the plain 0, 1, 2, ... (``decoder_positions='sequential'``)."""
        if self.icae_config.decoder_positions != "follow":
            return None
        if placement is None:
            raise ValueError("decoder_positions='follow' needs where every row's slots sit in its text")
        return follow_position_ids(ids, placement.slots, placement.num_tokens)

    def batch_positions(self, ids: torch.Tensor, mask: torch.Tensor,
                        placements: list[Placement] | None) -> torch.Tensor | None:
        """Position ids [B, T] of a padded decoder batch (either side; pads get 0), or None for sequential ones.

        ``placements[b]``: where the slots row ``b`` reads sit in their text (``placements(mem)``).
        """
        if self.icae_config.decoder_positions != "follow":
            return None
        if placements is None:
            raise ValueError("decoder_positions='follow' needs where every row's slots sit in its text")
        out = torch.zeros_like(ids)
        for b, pl in enumerate(placements):
            real = mask[b].bool()
            out[b, real] = torch.tensor(self.example_positions(ids[b][real].tolist(), pl), device=ids.device)
        return out

    # ---- encoder ---------------------------------------------------------------------------------

    def _encoder_positions(self, seg_lens: torch.Tensor, width: int) -> torch.Tensor:
        k = self.icae_config.mem_size
        rows = []
        for n in seg_lens.tolist():
            p = encoder_position_ids(n, k, self.icae_config.position_layout)
            rows.append((p + [0] * width)[:width])  # pooled slots: the memory tokens' positions fall outside
        return torch.tensor(rows, dtype=torch.long)

    def encode_rows(self, batch: EncoderBatch) -> torch.Tensor:
        """Run the encoder on segment rows (tokens then k memory tokens) and return their slots: [R, k, D]."""
        k = self.icae_config.mem_size

        def make(idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids = batch.ids[idx, :width].to(self.device)  # [C, W]
            pos = self._encoder_positions(batch.seg_lens[idx], width).to(self.device)  # [C, W]
            return self._encoder_embeds(ids), pos

        # pooled slots read the text only: trailing memory placeholders fall outside each row's length
        extra = k if self.icae_config.slot_source == "memory_tokens" else 0
        return self.run_encoder((batch.seg_lens + extra).tolist(), make)

    def run_encoder(self, lengths: list[int], make: Any) -> torch.Tensor:
        """Encode rows whose last k real positions are memory tokens; returns their final states [R, k, D].

        ``lengths[i]`` is row i's real length (memory tokens included). Rows are packed into chunks
        of at most ``compress_batch_tokens`` tokens, longest first, each chunk right-padded to its
        own longest row; ``make(idx, width)`` builds a chunk's input embeddings [C, W, D] and
        position ids [C, W].
        """
        out: list[torch.Tensor | None] = [None] * len(lengths)
        body = self.encoder.get_base_model().model
        cast: Any = contextlib.nullcontext()
        if not torch.is_grad_enabled():  # inference (training: eager, adapter as stored)
            body = self._compiled_encoder or body
            cast = adapter_in_dtype(self.encoder, self.dtype)  # the adapter computes in the model's dtype
        with cast:
            for chunk in budget_chunks(lengths, self.icae_config.compress_batch_tokens):
                self._encode_chunk(body, chunk, lengths, make, out)
        slots = torch.stack(out)  # type: ignore[arg-type]  # [R, k, D]
        return slots if self.slot_projector is None else self.slot_projector(slots)

    def _encode_chunk(self, body: Any, chunk: list[int], lengths: list[int], make: Any, out: list) -> None:
        """One chunk of rows through the encoder ``body``; writes each row's slots [k, D] into ``out``."""
        k = self.icae_config.mem_size
        width = max(lengths[i] for i in chunk)
        idx = torch.tensor(chunk)
        embeds, pos = make(idx, width)
        n = torch.tensor([lengths[i] for i in chunk])  # [C]
        mask = (torch.arange(width).unsqueeze(0) < n.unsqueeze(1)).long().to(self.device)  # [C, W]
        hidden = body(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state  # [C, W, D], after the final norm
        if self.icae_config.slot_source == "pooled":
            weights = pooling_weights(n.tolist(), k, width).to(device=self.device, dtype=hidden.dtype)  # [C, k, W]
            slots = torch.bmm(weights, hidden)  # [C, k, D]: each slot the mean of its part's states
        else:
            gather = (n.unsqueeze(1) - k + torch.arange(k)).to(self.device)  # [C, k]
            slots = hidden.gather(1, gather.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [C, k, D]
        for j, i in enumerate(chunk):
            out[i] = slots[j]

    def prepare_texts(self, texts: list[str] | str) -> list[list[int]]:
        """Tokenize, rejecting empty texts and applying the over-length policy."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise DataError("no texts to compress")
        ids = self.tokens.text_ids(texts)  # BOS first where the tokenizer adds one (ICAEConfig.bos)
        return [self.check_length(x, where=f"text {i}") for i, x in enumerate(ids)]

    def length_limit(self) -> tuple[int, str]:
        """Longest text this model compresses, and the option that sets it."""
        return self.icae_config.model_max_length, "--model_max_length"

    def check_length(self, ids: list[int], where: str) -> list[int]:
        limit, option = self.length_limit()
        return fit_length(ids, limit, self.icae_config.overlong, where, option)

    def compress_ids(self, token_lists: list[list[int]], max_slots: int | None = None) -> Memory:
        """Slots of tokenized texts (training and evaluation use it as is; ``compress`` adds the checks)."""
        self.check_budget(token_lists, max_slots)
        cfg = self.icae_config
        rows = encoder_rows(token_lists, cfg.mem_size, cfg.compression_rate, cfg.segmentation)
        batch = pad_encoder(rows, self.tokens.pad_id)
        slots = self.encode_rows(batch)  # [R, k, D]
        per_text = list(torch.split(slots, rows.segments_per_text))
        return Memory(
            [s.reshape(-1, s.shape[-1]) for s in per_text],  # [n_i * k, D]
            [len(x) for x in token_lists],
            rows.segments_per_text,
            self.base_model_name,
            self.fingerprint,
            cfg.mem_size,
            cfg.compression_rate,
            base_weights=self.base_weights,
        )

    def compress(self, texts: list[str] | str, max_slots: int | None = None) -> Memory:
        """Compress texts (batched over all their segments) into memory slots (``max_slots``: see ``check_budget``)."""
        ids = self.prepare_texts(texts)
        with self.eval_mode():
            return self.finish_memory(self.compress_ids(ids, max_slots))

    def finish_memory(self, mem: Memory) -> Memory:
        """Record the encoder's weights fingerprint in a new memory, and refuse non-finite slots
        (broken weights, or an fp16 overflow) rather than hand them to a decoder."""
        mem.check_finite("compress")
        mem.encoder_weights = self.encoder_weights()
        return mem

    def check_memory(self, mem: Memory, encoder_weights: str | None = None) -> None:
        """Refuse a memory of another config or shape; and of other weights unless ``allow_other_weights``.

        ``encoder_weights``: this model's ``encoder_weights()`` if the caller already has it (a server
        whose weights do not change computes it once).
        """
        problems = []
        if mem.fingerprint != self.fingerprint:
            problems.append(f"config fingerprint {mem.fingerprint} != this model's {self.fingerprint}")
        if mem.hidden_size != self.hidden_size:
            problems.append(f"slot width {mem.hidden_size} != hidden size {self.hidden_size}")
        # Names are compared for an older memory (no weights fingerprint), else only reported.
        if (problems or not mem.base_weights) and mem.base_model != self.base_model_name:
            problems.append(f"base model {mem.base_model!r} != this model's {self.base_model_name!r}")
        if problems:
            raise CheckpointError(
                "this memory was made by another model or config (mem_size, compression_rate, "
                "LoRA or base shape differ): " + "; ".join(problems)
            )
        if self.allow_other_weights:
            return
        # The weights, not the name: one base is a different path on another machine.
        if mem.base_weights and not weights_match(mem.base_weights, self.base_weights):
            problems.append(f"base weights {mem.base_weights} ({mem.base_model!r}) != this model's "
                            f"{self.base_weights} ({self.base_model_name!r})")
        if mem.encoder_weights and mem.encoder_weights != (mine := encoder_weights or self.encoder_weights()):
            problems.append(f"encoder weights {mem.encoder_weights} != this model's {mine}")
        if problems:
            raise CheckpointError(
                "this memory was made with other weights: " + "; ".join(problems)
                + "; pass --allow_other_weights (allow_other_weights=True) if you mean it"
            )

    # ---- training forward ------------------------------------------------------------------------

    def forward(
        self,
        enc_ids: torch.Tensor,
        enc_seg_lens: torch.Tensor,
        dec_ids: torch.Tensor,
        dec_labels: torch.Tensor,
        dec_mask: torch.Tensor,
        task: torch.Tensor | None = None,
        segments_per_example: torch.Tensor | None = None,
        teacher_ids: torch.Tensor | None = None,
        teacher_labels: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """Loss of a collated batch (see ``data.Collator``): mean over all labelled tokens (or over tasks: ``loss_balance``).

        Also returns per-task token-loss sums and counts (``ae_loss_sum``, ``ae_tokens``, ...) so the
        trainer can log AE and LM losses separately. ``teacher_*`` (``lm_distill``, ``ft_distill``): the
        distilled examples' plain texts, labelled at their targets (see ``distill_losses``).
        """
        spe = segments_per_example.tolist() if segments_per_example is not None else []
        slots = self.encode_rows(EncoderBatch(enc_ids, enc_seg_lens.cpu(), spe))  # [R, k, D]
        placements = None
        if self.icae_config.decoder_positions == "follow":  # each example's slots at its segments' part centres
            per_row = enc_seg_lens.cpu()
            placements = [Placement(span_slot_positions(x.tolist(), self.icae_config.mem_size), int(x.sum()))
                          for x in torch.split(per_row, spe or [1] * len(per_row))]
        teacher = None if teacher_ids is None else (teacher_ids, teacher_labels, teacher_mask)
        return self.decoder_loss(slots.reshape(-1, slots.shape[-1]), dec_ids, dec_labels, dec_mask, task, placements,
                                 teacher)

    def decoder_loss(self, slots: torch.Tensor, dec_ids: torch.Tensor, dec_labels: torch.Tensor,
                     dec_mask: torch.Tensor, task: torch.Tensor | None = None,
                     placements: list[Placement] | None = None,
                     teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Decoder loss given every example's slots in order (slots: [S, D]); see ``forward``.
        ``placements``: where each example's slots sit in its text (needed by ``decoder_positions='follow'``).
        ``teacher``: ``(ids, labels, mask)`` of the distilled examples' plain texts (``lm_distill``, ``ft_distill``)."""
        hidden = self.decoder_hidden(dec_ids, dec_mask, slots, placements)  # [B, T, D]
        tok_loss, rows = self.labelled_losses(hidden, dec_labels)  # [N], [N]
        ex_task = task.to(rows.device)[rows] if task is not None else None  # [N]
        loss = tok_loss
        kl = None
        if teacher is not None and ex_task is not None and any(map(self.icae_config.distill_share, TASKS)):
            w = self.distill_weights(ex_task)  # [N]: each token's KL share, 0 where its task is not distilled
            taught = w > 0  # [N]
            kl = self.distill_losses(hidden, dec_labels, taught, *teacher)  # [N_taught]
            # taught tokens learn (1-w) * CE + w * KL; the mean stays over all labelled tokens, as without distillation
            wt = w[taught]
            loss = tok_loss.masked_scatter(taught, (1 - wt) * tok_loss[taught] + wt * kl)
        out: dict[str, torch.Tensor] = {"loss": self._reduce(loss, ex_task)}
        if ex_task is not None:
            for j, name in enumerate(TASKS):
                sel = ex_task == j
                out[f"{name}_loss_sum"] = tok_loss.detach()[sel].sum()  # the CE, with or without distillation
                out[f"{name}_tokens"] = sel.sum()
        if kl is not None:
            out["distill_loss_sum"] = kl.detach().sum()
            out["distill_tokens"] = torch.tensor(kl.numel(), device=kl.device)
        return out

    def _reduce(self, loss: torch.Tensor, ex_task: torch.Tensor | None) -> torch.Tensor:
        """One loss from the labelled tokens' losses [N] (``loss_balance``): their mean ('tokens'), or the mean
        over the tasks present of each task's token mean ('tasks'; ``ex_task`` [N] names each token's task)."""
        if self.icae_config.loss_balance == "tokens" or ex_task is None or loss.numel() == 0:
            return loss.sum() / max(1, loss.numel())
        present = torch.unique(ex_task)  # the tasks in this batch
        means = [loss[ex_task == j].mean() for j in present.tolist()]
        return torch.stack(means).mean()

    def distill_weights(self, ex_task: torch.Tensor) -> torch.Tensor:
        """Each labelled token's KL share [N] from its task [N] (``ICAEConfig.distill_share``: ``lm_distill`` on
        LM tokens, ``ft_distill`` on answer tokens, 0 on AE tokens)."""
        share = [self.icae_config.distill_share(t) for t in TASKS]  # by task index
        return torch.tensor(share, dtype=torch.float32, device=ex_task.device)[ex_task]

    def distill_losses(self, hidden: torch.Tensor, labels: torch.Tensor, taught: torch.Tensor,
                       teacher_ids: torch.Tensor, teacher_labels: torch.Tensor,
                       teacher_mask: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``T^2 * KL(teacher || student)`` at each taught labelled token (``lm_distill``, ``ft_distill``).

        Student: the decoder's states ``hidden`` [B, T, D] (it read ``[slots] [LM] continuation`` or
        ``[slots] [FT] prompt answer``) at the labelled positions that ``taught`` [N] marks. Teacher: the
        plain base model (no adapters, no grad) reading ``teacher_ids`` [B_t, T'] (the taught examples'
        plain-text versions: ``head + continuation``, or the chat turn ``input + prompt`` then the answer;
        right-padded, positions 0..n-1), at the positions ``teacher_labels`` marks: row-major, the same
        tokens in the same order. ``temperature``: T (default ``distill_temperature``; the held-out measure of
        ``hicae.longqa.answer_loss`` reads the plain KL, T = 1).  -> [N_taught]
        """
        with torch.no_grad():
            t_hidden = self.decoder_hidden(teacher_ids, teacher_mask, None, None)  # [B_t, T', D]: the plain base
        return self.distill_from_teacher(hidden, labels, taught, t_hidden, teacher_labels, temperature)

    def distill_from_teacher(self, hidden: torch.Tensor, labels: torch.Tensor, taught: torch.Tensor,
                             teacher_hidden: torch.Tensor, teacher_labels: torch.Tensor,
                             temperature: float | None = None) -> torch.Tensor:
        """``distill_losses`` from the teacher's final states ``teacher_hidden`` [B_t, T', D] already computed
        (the plain base's ``decoder_hidden`` of the teacher batch): a caller that scores several students
        against one teacher runs the teacher once.  -> [N_taught]"""
        target = labels[:, 1:]  # [B, T-1]; position i predicts token i+1
        student = hidden[:, :-1][target != IGNORE][taught]  # [N_taught, D]
        t_target = teacher_labels[:, 1:]
        t_sel = t_target != IGNORE  # [B_t, T'-1]
        if not torch.equal(target[target != IGNORE][taught], t_target[t_sel]):
            raise DataError("distillation: the teacher's labelled tokens are not the taught examples' targets "
                            "(teacher_ids must hold the distilled examples' plain texts, in batch order)")
        t_states = teacher_hidden.detach()[:, :-1][t_sel]  # [N_taught, D]: only these reach the 152k-wide output layer
        head = self.decoder.get_output_embeddings()
        T = self.icae_config.distill_temperature if temperature is None else temperature
        out = []
        for s in range(0, student.shape[0], _CE_CHUNK):  # chunks, as labelled_losses: never all [N, V] logits
            hs, ts = student[s : s + _CE_CHUNK], t_states[s : s + _CE_CHUNK]
            if torch.is_grad_enabled() and hs.requires_grad and hs.shape[0] * head.weight.shape[0] > (1 << 26):
                out.append(checkpoint(_kl, head, hs, ts, T, use_reentrant=False))
            else:
                out.append(_kl(head, hs, ts, T))
        return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)

    def token_losses(self, dec_ids: torch.Tensor, dec_labels: torch.Tensor, dec_mask: torch.Tensor,
                     slots: torch.Tensor | None = None,
                     placements: list[Placement] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every labelled token of a decoder batch, and the row each belongs to: [N], [N].

        ``slots`` [S, D] fill the SLOT placeholders (and task embeddings their ids); without slots
        the ids are plain vocabulary ids read by the frozen base model (a no-compression baseline).
        ``placements``: where each row's slots sit in its text (``decoder_positions='follow'``).
        """
        return self.labelled_losses(self.decoder_hidden(dec_ids, dec_mask, slots, placements), dec_labels)

    def decoder_hidden(self, dec_ids: torch.Tensor, dec_mask: torch.Tensor, slots: torch.Tensor | None,
                        placements: list[Placement] | None) -> torch.Tensor:
        """The decoder's final states of a batch (see ``token_losses``): what its labelled losses and
        distillation KL read.  -> [B, T, D]"""
        if slots is None:
            with self.plain_decoding():
                return self.decoder.model(input_ids=dec_ids, attention_mask=dec_mask, use_cache=False).last_hidden_state
        embeds = self.decoder_inputs(dec_ids, slots)
        pos = self.batch_positions(dec_ids, dec_mask, placements)  # None: 0, 1, 2, ...
        return self.decoder.model(inputs_embeds=embeds, attention_mask=dec_mask, position_ids=pos,
                                  use_cache=False).last_hidden_state

    def labelled_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token cross-entropy only at labelled positions.  hidden: [B, T, D] -> losses [N], example index [N].

        Logits are computed in chunks under checkpointing, so the [N, V] logits of Qwen's 152k
        vocabulary are never all alive, neither forward nor backward.
        """
        target = labels[:, 1:]  # position i predicts token i+1
        sel = target != IGNORE  # [B, T-1]
        h = hidden[:, :-1][sel]  # [N, D]
        y = target[sel]  # [N]
        rows = sel.nonzero()[:, 0]
        head = self.decoder.get_output_embeddings()
        vocab = head.weight.shape[0]
        losses = []
        for s in range(0, h.shape[0], _CE_CHUNK):
            hs, ys = h[s : s + _CE_CHUNK], y[s : s + _CE_CHUNK]
            # Recomputing logits in backward only pays when they are big (> 2^26 floats).
            if torch.is_grad_enabled() and hs.requires_grad and hs.shape[0] * vocab > (1 << 26):
                losses.append(checkpoint(_ce, head, hs, ys, use_reentrant=False))
            else:
                losses.append(_ce(head, hs, ys))
        if not losses:
            # no labelled token (LM continuations within leave_tokens_for_lm): an empty loss still on the graph,
            # so a batch of only such examples backpropagates a zero loss
            return h.float().sum(-1), rows
        return torch.cat(losses), rows

    # ---- decoding: the decoding wing (hicae.decoding) does the work -------------------------------------

    def prefix_cache(self, mem: Memory, tasks: tuple[str, ...] | list[str] = ("ft",)) -> PrefixCache:
        """Compute the decoder's KV cache of ``mem``'s prompt-independent prefixes once, for reuse.

        ``cache = model.prefix_cache(mem)``, then ``model.generate(mem, prompts, prefix_cache=cache)``
        as often as needed: each call runs only the prompts (and the new tokens) through the decoder.
        ``tasks``: which prefixes to compute now: ``"ft"`` (chat prompts: ``before [slots] [FT]``),
        ``"ae"`` / ``"lm"`` (reconstruct / continue: ``[slots]``); others are computed on first use.
        The cache lives in memory only. See ``hicae.decoding.prefix_cache``.
        """
        return build_prefix_cache(self, mem, tasks)

    def decoder_examples(self, mem: Memory, task: str = "ft",
                         prompts: list[str] | str | None = None) -> tuple[Memory, list[DecoderExample]]:
        """The decoder layouts ``generate`` (``ft``), ``reconstruct`` (``ae``) and ``continue_text``
        (``lm``) decode from, one per row, and the memory rows they read (``ft`` broadcasts prompts
        over ``mem`` as ``generate`` does; ``hicae.decoding.requests``)."""
        request = decode_request(self, mem, task, prompts)
        return request.mem, request.examples

    def generate_ids(self, mem: Memory, prompts: list[str] | str, max_new_tokens: int = 64, *,
                     prefix_cache: Any = None, **gen_kwargs: Any) -> list[list[int]]:
        return decode(self, decode_request(self, mem, "ft", prompts), max_new_tokens, prefix_cache=prefix_cache,
                      **gen_kwargs)

    def generate(self, mem: Memory, prompts: list[str] | str, max_new_tokens: int = 64, **gen_kwargs: Any) -> list[str]:
        """Answer prompts about compressed texts, in the base model's chat format.

        Many prompts about one memory compute its prefix once (automatic); ``prefix_cache=
        model.prefix_cache(mem)`` keeps it across calls, ``prefix_cache=False`` turns caching off.
        """
        return self._decode(self.generate_ids(mem, prompts, max_new_tokens, **gen_kwargs))

    def reconstruct_ids(self, mem: Memory, max_new_tokens: int | None = None, *, prefix_cache: Any = None,
                        **gen_kwargs: Any) -> list[list[int]]:
        limit = max_new_tokens or max(mem.num_tokens) + 8
        return decode(self, decode_request(self, mem, "ae"), limit, prefix_cache=prefix_cache, **gen_kwargs)

    def reconstruct(self, mem: Memory, max_new_tokens: int | None = None, **gen_kwargs: Any) -> list[str]:
        """[AE] decoding: the texts back from their memory."""
        return self._decode(self.reconstruct_ids(mem, max_new_tokens, **gen_kwargs))

    def continue_ids(self, mem: Memory, max_new_tokens: int = 64, *, prefix_cache: Any = None,
                     **gen_kwargs: Any) -> list[list[int]]:
        return decode(self, decode_request(self, mem, "lm"), max_new_tokens, prefix_cache=prefix_cache, **gen_kwargs)

    def continue_text(self, mem: Memory, max_new_tokens: int = 64, **gen_kwargs: Any) -> list[str]:
        """[LM] decoding: continue each text from its memory."""
        return self._decode(self.continue_ids(mem, max_new_tokens, **gen_kwargs))

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    # ---- layouts for training examples ---------------------------------------------------------------

    def ae_example(self, num_slots: int, text_ids: list[int]) -> DecoderExample:
        return ae_example(num_slots, text_ids, self.tokens.eos_id)

    def lm_example(self, num_slots: int, continuation: list[int]) -> DecoderExample:
        cfg = self.icae_config
        return lm_example(num_slots, continuation, cfg.leave_tokens_for_lm, cfg.add_special_token_for_lm)

    # ---- one interface with HierarchicalICAE: callers ask these rather than the class ------------------

    @property
    def hierarchical(self) -> bool:
        """False: a flat memory grows with its text (``HierarchicalICAE`` keeps it under a slot budget)."""
        return False

    def num_slots(self, num_tokens: int, max_slots: int | None = None) -> int:
        """Slots of the memory of a text of ``num_tokens`` tokens (as compressed): k per segment of k*r
        tokens, whatever ``max_slots`` (flat memory does not shrink; ``check_budget`` refuses it instead)."""
        cfg = self.icae_config
        return -(-num_tokens // cfg.segment_tokens) * cfg.mem_size

    def check_budget(self, token_lists: list[list[int]], max_slots: int | None) -> None:
        """Refuse a slot budget that a text's flat memory would exceed (None: no budget)."""
        if max_slots is None:
            return
        if max_slots < 1:
            raise ConfigError(f"max_slots must be >= 1, got {max_slots}")
        for i, ids in enumerate(token_lists):
            if (n := self.num_slots(len(ids))) > max_slots:
                raise DataError(f"text {i} needs {n} slots, over max_slots={max_slots}: a flat ICAE model cannot fit a "
                                "memory budget; use a hierarchical checkpoint (hicae pretrain --hierarchical)")


def pooling_weights(lengths: list[int], k: int, width: int) -> torch.Tensor:
    """Row i's j-th slot averages the states of part j of its ``lengths[i]`` tokens: positions
    ``[floor(j n / k), floor((j+1) n / k))``, or the part's centre token when a segment is shorter than
    k (layout.chunk_centres), so every slot reads at least one token.  -> [C, k, width]"""
    w = torch.zeros(len(lengths), k, width)
    for i, n in enumerate(lengths):
        for j, c in enumerate(chunk_centres(n, k)):
            lo, hi = j * n // k, (j + 1) * n // k
            if hi > lo:
                w[i, j, lo:hi] = 1.0 / (hi - lo)
            else:
                w[i, j, c] = 1.0
    return w


def _ce(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="none")


def _kl(head: nn.Module, h: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(head(t)/T) || softmax(head(h)/T))`` per row; t (the teacher's states) without grad.
    h, t: [n, D] -> [n]. The teacher's logits are computed here, not passed in, so under checkpointing
    only its [n, D] states are kept for backward, never [n, V] logits."""
    with torch.no_grad():
        p = F.log_softmax(head(t).float() / temperature, dim=-1)  # [n, V]
    q = F.log_softmax(head(h).float() / temperature, dim=-1)  # [n, V]
    return F.kl_div(q, p, log_target=True, reduction="none").sum(-1) * temperature**2
