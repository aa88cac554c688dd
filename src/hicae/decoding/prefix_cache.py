"""Compress once, ask many: the decoder's KV cache of a memory's prompt-independent prefix, computed once.

Every decoder sequence starts with a part that depends only on the memory (layout.py, tokens.py):

==============  ==================================  ==========================================
task            decoder input                       cached prefix (the rest is fed each time)
==============  ==================================  ==========================================
answer (FT)     ``before [slots] [FT] after``       ``before [slots] [FT]``; ``after`` = the
                                                    prompt and the template's generation prompt
reconstruct     ``[slots] [AE]``                    ``[slots]`` (shared with continue)
continue        ``[slots] [LM]``                    ``[slots]``
==============  ==================================  ==========================================

``before`` is the chat template's text ahead of the user message (Qwen: ``<|im_start|>user\\n``;
Qwen2.5 adds its default system prompt). It must not depend on the prompt: each call checks that
all its rows render the same ``before`` and otherwise decodes without the cache. Prefixes are
keyed by their exact layout ids, so a prefix is only ever reused for the identical input.

**Batches.** Row ``r`` has a cached prefix ``P_r`` (``p_r`` positions) and a rest ``R_r``
(``a_r >= 1`` positions). With ``P = max p_r`` and ``A = max a_r``, generation gets

- a ``DynamicCache`` whose row ``r`` is ``P - p_r`` zero key/value vectors, then ``KV(P_r)``
  (keys are stored after RoPE, computed at positions ``0 .. p_r-1``, so where they sit in the
  tensor does not matter);
- ``inputs_embeds`` of ``P + A`` positions: ``P`` unused ones (``generate`` slices a passed cache's
  length off its inputs), then ``R_r`` left-padded to ``A``;
- ``attention_mask`` ``[0]*(P-p_r) + [1]*p_r + [0]*(A-a_r) + [1]*a_r`` and ``position_ids`` =
  ``cumsum(mask) - 1``: ``R_r`` sits at ``p_r .. p_r+a_r-1`` and new tokens continue from there,
  exactly the positions of the uncached layout ``[pad] P_r R_r``.

Masked keys get zero attention weight, so each row's queries see the same keys at the same
positions as without the cache; the padding between prefix and rest is therefore harmless (its
positions are masked out and not counted). tests/test_prefix_cache.py checks greedy outputs and
per-step logits against the uncached path (fp32). The arithmetic is the same up to the order of
floating-point sums, as between a batch and one row at a time: in bf16 a greedy choice between
two near-tied tokens can differ, as it can between batched and unbatched uncached decoding. When every row shares one prefix (many questions
about one memory) the cache rows are expanded views, copied once by ``DynamicCache``.
Rows of several memories (``Memory.cat``; ``hicae serve`` batches questions about different
memories) take ``prefix_cache=[cache per row]``: each row's prefix comes from its own memory's
cache (``stack_prefixes``), and a missing one is computed into that cache.

Limits: plain (non-sliding) attention caches only; no beam search, ``num_return_sequences > 1``,
assisted decoding or ``cache_implementation`` (those calls decode without the cache); the cache
lives in memory only (never saved), and grows by ``layers * 2 * kv_heads * head_dim`` values per
prefix position and entry (``nbytes``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..batching import budget_chunks, pad_decoder
from ..errors import DataError
from ..layout import FT, SLOT, DecoderExample
from ..memory import Memory
from .static import generation_kwargs

Key = tuple[int, tuple[int, ...]]  # (memory entry, prefix layout ids)
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, H, p, d]

# generate() options under which a passed prefix cache cannot be used (the call decodes without it)
_UNSUPPORTED = {
    "num_beams": "beam search",
    "num_return_sequences": "num_return_sequences > 1",
}
_UNSUPPORTED_IF_SET = ("assistant_model", "prompt_lookup_num_tokens", "cache_implementation", "past_key_values",
                       "assistant_early_exit", "prefill_chunk_size")


class PrefixCache:
    """KV caches of one memory's decoder prefixes, computed once and reused by every generation call.

    Build it with ``ICAE.prefix_cache(mem)`` and pass it as ``prefix_cache=`` to ``generate``,
    ``reconstruct`` or ``continue_text`` (or their ``*_ids`` forms) with that memory or any
    selection of its entries (``mem[0]``, ``mem[[0, 0, 1]]``). Prefixes missing from it are
    computed on first use and kept. It is tied to the model that built it; a change of the
    model's task embeddings (training), dtype or device empties it.
    """

    def __init__(self, model: Any, mem: Memory, encoder_weights: str | None = None):
        """``encoder_weights``: the model's ``encoder_weights()`` if the caller has it. A server must pass it:
        computing it reads the adapter, which the worker thread may be running in another dtype meanwhile."""
        model.check_memory(mem, encoder_weights=encoder_weights)
        self.slots = list(mem.slots)  # references to the memory's tensors: identifies its entries
        self.fingerprint = mem.fingerprint
        self.placements = model.placements(mem)  # where each entry's slots sit: decoder positions may depend on it
        self._model = weakref.ref(model)
        self._kv: dict[Key, KV] = {}
        self._state: tuple | None = None
        self.prefix_passes = 0  # decoder forward passes that computed prefixes
        self.prefix_tokens = 0  # prefix positions computed in them
        probe = DynamicCache(config=model.decoder.config)
        # DynamicCache(config) builds its layers up front; a config-less cache builds DynamicLayers lazily
        self.supported = all(type(layer) is DynamicLayer for layer in probe.layers)

    def __len__(self) -> int:
        return len(self.slots)

    def __repr__(self) -> str:
        return f"PrefixCache(entries={len(self)}, prefixes={len(self._kv)}, nbytes={self.nbytes})"

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self._kv.values() for pair in kv for t in pair)

    def clear(self) -> None:
        self._kv.clear()

    def keys(self) -> list[Key]:
        return list(self._kv)

    # ---- bookkeeping -------------------------------------------------------------------------------

    def _check_model(self, model: Any) -> None:
        if self._model() is not model:
            raise DataError("this prefix cache was built by another model; build one with model.prefix_cache(mem)")
        task = model.task_embeddings.detach()
        w = model.decoder.get_input_embeddings().weight
        state = (w.dtype, w.device, task.dtype, task.device)
        if self._state is None or self._state[0] != state or not torch.equal(self._state[1], task):
            self._kv.clear()  # the model changed since the prefixes were computed
            self._state = (state, task.clone())

    def entries_of(self, mem: Memory) -> list[int]:
        """Index of each of ``mem``'s entries in this cache (the same slot tensor, or equal slots)."""
        if mem.fingerprint != self.fingerprint:
            raise DataError("this prefix cache was built for another memory (config fingerprints differ)")
        found: dict[int, int] = {}
        out = []
        for j, s in enumerate(mem.slots):
            if id(s) not in found:
                i = next((i for i, ref in enumerate(self.slots) if ref is s), None)
                if i is None:
                    i = next((i for i, ref in enumerate(self.slots) if ref.shape == s.shape
                              and torch.equal(ref, s.to(device=ref.device, dtype=ref.dtype))), None)
                if i is None:
                    raise DataError(
                        f"entry {j} of this memory is not in the prefix cache (it was built for another memory); "
                        "build one with model.prefix_cache(mem)"
                    )
                found[id(s)] = i
            out.append(found[id(s)])
        return out

    # ---- computing and batching prefixes ---------------------------------------------------------------

    def ensure(self, model: Any, keys: list[Key]) -> None:
        """Compute the prefixes among ``keys`` that are not cached: batched, right-padded, one pass per token-budget chunk."""
        self._check_model(model)
        missing = list(dict.fromkeys(k for k in keys if k not in self._kv))
        if not missing:
            return
        device = model.device
        lengths = [len(k[1]) for k in missing]
        for chunk in budget_chunks(lengths, model.icae_config.compress_batch_tokens):
            ks = [missing[i] for i in chunk]
            width = max(lengths[i] for i in chunk)
            ids = torch.full((len(ks), width), model.tokens.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ks), width), dtype=torch.long)
            for j, (_, pre) in enumerate(ks):
                ids[j, : len(pre)] = torch.tensor(pre, dtype=torch.long)
                mask[j, : len(pre)] = 1
            slots = torch.cat([self.slots[e].to(device) for e, _ in ks])
            embeds = model.decoder_inputs(ids.to(device), slots)
            # Right padding: causal attention keeps every real position exact; positions are 0..p-1 or, with
            # decoder_positions='follow', the layout's own (a prefix's positions do not depend on what follows).
            pos = model.batch_positions(ids, mask, None if self.placements is None else [self.placements[e] for e, _ in ks])
            out = model.decoder.model(inputs_embeds=embeds, attention_mask=mask.to(device), use_cache=True,
                                      position_ids=None if pos is None else pos.to(device),
                                      past_key_values=DynamicCache(config=model.decoder.config))
            layers = out.past_key_values.layers
            for j, key in enumerate(ks):
                p = len(key[1])
                whole = len(ks) == 1 and p == width
                self._kv[key] = [
                    (layer.keys, layer.values) if whole
                    else (layer.keys[j : j + 1, :, :p].clone(), layer.values[j : j + 1, :, :p].clone())
                    for layer in layers
                ]
            self.prefix_passes += 1
            self.prefix_tokens += sum(lengths[i] for i in chunk)

    def batch(self, model: Any, keys: list[Key]) -> tuple[DynamicCache, torch.Tensor]:
        """A fresh ``DynamicCache`` with row ``r`` holding prefix ``keys[r]`` left-padded, and its mask [B, P]."""
        return stack_prefixes(model, [self._kv[k] for k in keys])


def stack_prefixes(model: Any, kvs: list[KV]) -> tuple[DynamicCache, torch.Tensor]:
    """A fresh ``DynamicCache`` whose row ``r`` holds ``kvs[r]`` (a cached prefix, of any memory) left-padded
    to the longest, and its mask [B, P]. Rows holding the same prefix (the same ``KV`` object) share one copy."""
    B = len(kvs)
    lens = [kv[0][0].shape[2] for kv in kvs]
    P = max(lens)
    uniq = list({id(kv): kv for kv in kvs}.values())
    if len(uniq) == 1:  # many rows, one prefix: expanded views, copied once by DynamicCache
        data = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in uniq[0]]
    else:
        where = {id(kv): i for i, kv in enumerate(uniq)}
        row = torch.tensor([where[id(kv)] for kv in kvs], device=model.device)
        data = []
        for layer in range(len(uniq[0])):
            stacked = [
                torch.cat([F.pad(u[layer][t], (0, 0, P - u[layer][t].shape[2], 0)) for u in uniq]).index_select(0, row)
                for t in (0, 1)
            ]  # [B, H, P, d]
            data.append((stacked[0], stacked[1]))
    cache = DynamicCache(data, config=model.decoder.config)
    mask = torch.zeros((B, P), dtype=torch.long)
    for r, p in enumerate(lens):
        mask[r, P - p :] = 1
    return cache, mask


# ---- layouts: where the prompt-independent prefix ends ----------------------------------------------------


def chat_prefix_lengths(examples: list[DecoderExample]) -> list[int] | None:
    """Per example ``before [slots] [FT] after``: the length of ``before [slots] [FT]``.

    None when the chat template's ``before`` differs between the examples (it depends on the
    prompt), or a layout has no rest to feed: such calls decode without the cache.
    """
    befores, lens = set(), []
    for ex in examples:
        if SLOT not in ex.ids or FT not in ex.ids:
            return None
        befores.add(tuple(ex.ids[: ex.ids.index(SLOT)]))
        p = ex.ids.index(FT) + 1
        if p >= len(ex.ids):
            return None
        lens.append(p)
    return lens if len(befores) == 1 else None


def slot_prefix_lengths(examples: list[DecoderExample]) -> list[int] | None:
    """Per example ``[slots] [task]``: the number of slots.

    None when a layout ends with its slots (continuing without ``[LM]``, the reference's layout,
    ``add_special_token_for_lm=False``): nothing would follow the cached prefix to decode from, so
    such calls decode without the cache.
    """
    if any(not ex.ids or ex.ids[-1] == SLOT for ex in examples):
        return None
    return [len(ex.ids) - 1 for ex in examples]


# ---- generation -----------------------------------------------------------------------------------------


def unsupported_reason(model: Any, kwargs: dict[str, Any]) -> str | None:
    """Why generate() options rule out a prefix cache (None: they do not)."""
    gc = kwargs.get("generation_config") or getattr(model.decoder, "generation_config", None)

    def get(name: str, default: Any) -> Any:
        return kwargs[name] if name in kwargs else getattr(gc, name, default)

    for name, what in _UNSUPPORTED.items():
        if get(name, 1) not in (None, 1):
            return what
    if get("use_cache", True) is False:
        return "use_cache=False"
    for name in _UNSUPPORTED_IF_SET:
        if get(name, None) is not None:
            return name
    return None


def resolve(model: Any, mem: Memory, prefix_lens: list[int] | None, prefix_cache: Any,
            kwargs: dict[str, Any], encoder_weights: str | None = None) -> PrefixCache | None:
    """The cache a generation call uses, or None for the plain path.

    ``prefix_cache``: a ``PrefixCache`` (use it), a list of one per row of ``mem`` (rows joined
    from several memories, ``Memory.cat``: each row's prefix comes from, and is kept in, its own
    memory's cache), ``False`` (never), ``None`` (automatic: a temporary cache when several rows
    share one memory entry, e.g. many questions about one memory, so that the shared prefix is
    computed once). ``encoder_weights``: as for ``PrefixCache``, used by the temporary one.
    """
    if prefix_cache is False:
        return None
    explicit = prefix_cache is not None
    caches = prefix_cache if isinstance(prefix_cache, list) else [prefix_cache]
    if explicit and not all(isinstance(c, PrefixCache) for c in caches):
        bad = next(c for c in caches if not isinstance(c, PrefixCache))
        raise TypeError(f"prefix_cache must be a PrefixCache (from model.prefix_cache(mem)), a list of one per row, "
                        f"None or False, got {type(bad).__name__}")
    if isinstance(prefix_cache, list) and len(prefix_cache) != len(mem):
        raise DataError(f"prefix_cache: a list of {len(prefix_cache)} caches for {len(mem)} rows; give one per row")
    reason = None
    if prefix_lens is None:
        reason = ("the layout has no prompt-independent prefix to cache (the chat template's text before the "
                  "memory depends on the prompt, or nothing follows the slots)")
    else:
        reason = unsupported_reason(model, kwargs)
    if reason is None and explicit and not all(c.supported for c in caches):
        reason = "the model's attention cache is not a plain dynamic cache (sliding window?)"
    if reason is not None:
        if explicit:
            warnings.warn(f"prefix_cache not used: {reason}; decoding without it", stacklevel=4)
        return None
    if explicit:
        return prefix_cache
    if len({id(s) for s in mem.slots}) == len(mem):  # no entry is shared: nothing to reuse
        return None
    cache = PrefixCache(model, mem, encoder_weights)
    return cache if cache.supported else None


def generate_cached(model: Any, mem: Memory, examples: list[DecoderExample], prefix_lens: list[int],
                    cache: PrefixCache | list[PrefixCache], gen_kwargs: dict[str, Any]) -> torch.Tensor:
    """``model.decoder.generate`` continuing each row from its cached prefix (see the module docstring).

    ``cache``: one for all rows, or one per row (rows of several memories). Returns what
    ``generate`` returns: the new tokens only (its input was embeddings).
    """
    caches = cache if isinstance(cache, list) else [cache] * len(mem)
    kvs: list[KV | None] = [None] * len(mem)
    for c in {id(c): c for c in caches}.values():  # each cache computes (and keeps) its rows' missing prefixes
        rows = [r for r, x in enumerate(caches) if x is c]
        keys: list[Key] = [(e, tuple(examples[r].ids[: prefix_lens[r]])) for e, r in zip(c.entries_of(mem[rows]), rows)]
        c.ensure(model, keys)
        for r, key in zip(rows, keys):
            kvs[r] = c._kv[key]
    past, prefix_mask = stack_prefixes(model, kvs)  # type: ignore[arg-type]
    rests = [DecoderExample(ex.ids[p:], ex.labels[p:]) for ex, p in zip(examples, prefix_lens)]
    batch = pad_decoder(rests, model.tokens.pad_id, side="left")
    device = model.device
    embeds = model.decoder_inputs(batch.ids.to(device), torch.zeros(0, model.hidden_size, device=device))  # [B, A, D]
    B, _, D = embeds.shape
    P = prefix_mask.shape[1]
    inputs = torch.cat([embeds.new_zeros(B, P, D), embeds], dim=1)  # the first P positions are sliced off by generate
    mask = torch.cat([prefix_mask, batch.attention_mask], dim=1).to(device)  # [B, P + A]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() derives them from a mask
    if model.icae_config.decoder_positions == "follow":  # the rest's own positions (the layout's, after p_r)
        A = batch.ids.shape[1]
        placements = model.placements(mem)
        for r, (ex, p) in enumerate(zip(examples, prefix_lens)):
            rest = model.example_positions(ex.ids, placements[r])[p:]
            positions[r, P + A - len(rest):] = torch.tensor(rest, device=positions.device)
    # dynamic decoding: past as is; static/compiled: copied into a StaticCache (static.py)
    fast = generation_kwargs(model.decoding, model, inputs.shape[1] + gen_kwargs["max_new_tokens"], prefix=past)
    return model.decoder.generate(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, **fast, **gen_kwargs)
