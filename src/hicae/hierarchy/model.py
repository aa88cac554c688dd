"""HierarchicalICAE: recursive compression into a bounded memory, with streaming ``append``.

Level 1 is ICAE: each segment of ``S = k*r`` tokens (fixed segmentation) becomes a block of k
slots. A level-``l+1`` block is made by the same LoRA encoder reading ``g`` consecutive blocks'
slots (``g*k`` embeddings, positions ``0..g*k-1``) followed by that level's k memory tokens. Which
blocks merge, and when, is decided by ``plan.py`` (a base-g counter plus a budget rule). The
decoder reads the retained blocks in text order, exactly as it reads ICAE slots. See
docs/hierarchy.md.

With ``decoder_positions='follow'`` every block stands for a span of the text (segments ``start`` to
``end``; the tail block ends with the text) and its k slots sit at the centres of the span's k parts,
in the decoder as in a flat memory. A merge reads its input slots at those positions (relative to the
merged span's start) and its memory tokens at the merged span's part centres (``spread``) or after it
(``contiguous``): the encoder of every level sees the layout level 1 sees.

With ``slot_source='pooled'`` a merge reads its inputs only and slot j of the merged block is the mean of
the final states of the j-th of k equal parts of them, as level 1 pools its tokens' states.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..batching import pad_encoder
from ..config import HierarchyConfig, ICAEConfig, base_shape
from ..errors import CheckpointError, ConfigError, DataError
from .plan import Block, Merge, PlanState, budget_to_blocks, fit_budget, num_blocks, push_segments, waves
from ..layout import MEM, EncoderRows, Placement, encoder_position_ids, span_slot_positions
from ..memory import Memory
from ..model import ICAE
from ..tokens import tokenize


@dataclasses.dataclass
class _Stream:
    """One text being compressed: plan state, slots of retained (and pending) blocks, and its tokens."""

    state: PlanState
    slots: dict[int, torch.Tensor]  # block id -> [k, D]
    tokens: list[int]  # the tail of earlier input plus new input; tokens[pos:] are not yet pushed
    total_tokens: int  # tokens covered so far, pushed or not
    pos: int = 0


def _fitted(st: _Stream, hier: HierarchyConfig, budget: int | None) -> list[Merge]:
    """The budget merges that make a stream's restored blocks fit ``budget`` (applied to its state)."""
    before = len(st.state.merges)
    fit_budget(st.state, hier.group_size, hier.levels, budget)
    return st.state.merges[before:]


class HierarchicalICAE(ICAE):
    loads_hierarchy = True  # registers this class as what hierarchical checkpoints load as (ICAE._for_checkpoint)

    def __init__(self, base_model: nn.Module, tokenizer: Any, config: ICAEConfig | None = None,
                 hierarchy: HierarchyConfig | None = None, *, share_decoder: bool = True):
        """Like ``ICAE``; segmentation is always 'fixed' (segment boundaries must not depend on what follows)."""
        config = dataclasses.replace(config or ICAEConfig(), segmentation="fixed")
        for name in ICAEConfig.DISTILL_FIELDS.values():  # its texts run to max_text_tokens: no teacher reads them whole
            if getattr(config, name):
                raise ConfigError(f"HierarchicalICAE has no distillation teacher; {name}={getattr(config, name)} is "
                                  "for flat ICAE only")
        super().__init__(base_model, tokenizer, config, share_decoder=share_decoder)
        self.hierarchy = hierarchy or HierarchyConfig()
        L = self.hierarchy.levels
        # Memory tokens of levels 2..L, one set per level: a level-l merge reads slots that stand
        # for r*g^(l-2) tokens each, a different input distribution at every level, so each level
        # gets its own queries. They start as copies of level 1's (what an ICAE checkpoint knows).
        self.level_embeddings = nn.Parameter(self.mem_embeddings.detach().clone().unsqueeze(0).repeat(L - 1, 1, 1))  # [L-1, k, D]
        self.fingerprint = self.icae_config.memory_fingerprint(
            base_shape(base_model.config), extra={**(self.fingerprint_extra() or {}), "hierarchy": self.hierarchy.memory_fields()}
        )

    def trained_embeddings(self) -> dict[str, nn.Parameter]:
        return {**super().trained_embeddings(), "level_embeddings": self.level_embeddings}

    def check_memory(self, mem: Memory, encoder_weights: str | None = None) -> None:
        """As ICAE's, and a hierarchical memory's blocks and tail must fit this model: ``append``
        indexes the level embeddings with its levels and the vocabulary with its tail ids."""
        super().check_memory(mem, encoder_weights)
        if not mem.hierarchical:
            return
        problem = mem.hierarchy_problem()
        if problem is None:
            levels = max((b[0] for bl in mem.blocks for b in bl), default=1)
            vocab = self.decoder.get_input_embeddings().num_embeddings
            bad = sorted({t for tail in mem.tails for t in tail if t >= vocab})
            if levels > self.hierarchy.levels:
                problem = f"a block of level {levels}, but this model has {self.hierarchy.levels} levels"
            elif bad:
                problem = f"its tail holds token ids {bad[:3]} outside this model's vocabulary of {vocab}"
        if problem:
            raise CheckpointError(f"not a valid hierarchical memory for this model: {problem}")

    def length_limit(self) -> tuple[int, str]:
        return self.hierarchy.max_text_tokens, "--max_text_tokens"

    # ---- budget -------------------------------------------------------------------------------

    @property
    def hierarchical(self) -> bool:
        """True: memory is kept under a slot budget by merging blocks (see ``ICAE.hierarchical``)."""
        return True

    def num_slots(self, num_tokens: int, max_slots: int | None = None) -> int:
        """Slots of the memory of a text of ``num_tokens`` tokens under ``max_slots`` (default: the config's budget)."""
        h, k = self.hierarchy, self.icae_config.mem_size
        return k * num_blocks(num_tokens, self.icae_config.segment_tokens, h.group_size, h.levels,
                              self.budget_blocks(max_slots))

    def budget_blocks(self, max_slots: int | None) -> int | None:
        """Blocks the plan may retain (the budget less one block reserved for a trailing partial segment)."""
        return budget_to_blocks(self.hierarchy.max_slots if max_slots is None else max_slots, self.icae_config.mem_size)

    # ---- encoding -------------------------------------------------------------------------------

    def placements(self, mem: Memory) -> list[Placement] | None:
        """As ICAE's; a hierarchical entry's slots sit block by block at the part centres of each block's span."""
        if self.icae_config.decoder_positions != "follow" or not mem.hierarchical:
            return super().placements(mem)
        S, k = self.icae_config.segment_tokens, self.icae_config.mem_size
        # blocks cover the text's segments in order, from the first; the tail block's span ends with the text
        return [Placement(span_slot_positions([min(b * S, n) - a * S for _, a, b in blocks], k), n)
                for blocks, n in zip(mem.blocks, mem.num_tokens)]

    def _merge_positions(self, merges: list[Merge]) -> list[list[int]] | None:
        """Encoder positions of merges (inputs, then any memory tokens) under ``decoder_positions='follow'``;
        None (``0..width-1``) otherwise. Merges read only full segments."""
        cfg = self.icae_config
        if cfg.decoder_positions != "follow":
            return None
        S, k = cfg.segment_tokens, cfg.mem_size
        out = []
        for m in merges:
            width = (m.output.end - m.output.start) * S  # tokens the merged block stands for
            pos = span_slot_positions([(b - a) * S for a, b in m.spans], k)
            if cfg.slot_source == "memory_tokens":  # placed as level 1 places them after a segment of `width` tokens
                pos += encoder_position_ids(width, k, cfg.position_layout)[width:]
            out.append(pos)
        return out

    def encode_blocks(self, inputs: list[torch.Tensor], levels: list[int],
                      positions: list[list[int]] | None = None) -> torch.Tensor:
        """One merge per row: ``inputs[i]`` [n_i, D] slots, then level ``levels[i]``'s memory tokens -> [R, k, D].
        ``positions[i]``: row i's encoder positions (inputs, then memory tokens); default ``0..n_i+k-1``."""
        k = self.icae_config.mem_size
        stop = self.hierarchy.stop_gradient and self.training
        # slot_source='pooled': a merge pools the states of its inputs as level 1 pools its tokens' (no memory tokens)
        extra = 0 if self.icae_config.slot_source == "pooled" else k

        def make(idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = []
            for i in idx.tolist():
                x = inputs[i].detach() if stop else inputs[i]
                mem = self.level_embeddings[levels[i] - 2].to(x.dtype)[:extra]  # [k, D] (or none)
                pad = x.new_zeros(width - x.shape[0] - extra, x.shape[1])
                rows.append(torch.cat([x, mem, pad]))
            if positions is None:
                pos = torch.arange(width, device=self.device).unsqueeze(0).expand(len(rows), -1)  # [C, W]
            else:  # pads (masked out) continue after the row's last position
                rp = [positions[i] for i in idx.tolist()]
                pos = torch.tensor([p + list(range(max(p) + 1, max(p) + 1 + width - len(p))) for p in rp],
                                   device=self.device)  # [C, W]
            return torch.stack(rows).to(self.dtype), pos

        return self.run_encoder([x.shape[0] + extra for x in inputs], make)

    def _encode_segments(self, segs: list[list[int]]) -> torch.Tensor:
        k = self.icae_config.mem_size
        rows = EncoderRows([s + [MEM] * k for s in segs], [len(s) for s in segs], [len(segs)])
        return self.encode_rows(pad_encoder(rows, self.tokens.pad_id))  # [R, k, D]

    # ---- streaming compression ---------------------------------------------------------------------

    def _advance(self, streams: list[_Stream], budget: int | None, final: bool) -> list[torch.Tensor | None]:
        """Push every stream's full segments (a bounded round at a time), run the merges, and
        (``final``) encode each trailing partial segment. Returns the partial blocks' slots."""
        cfg, hier = self.icae_config, self.hierarchy
        k, S = cfg.mem_size, cfg.segment_tokens
        per_round = max(1, cfg.compress_batch_tokens // (S + k))
        # a restored memory (append) may hold more blocks than this call's budget: fit it first
        fit = [(i, m) for i, st in enumerate(streams) for m in _fitted(st, hier, budget)]
        if fit:
            self._run_merges(streams, fit)
            self._retain(streams)
        while True:
            segs, owners = [], []
            for i, st in enumerate(streams):
                n = min(per_round, (len(st.tokens) - st.pos) // S)
                for j in range(n):
                    segs.append(st.tokens[st.pos + j * S : st.pos + (j + 1) * S])
                    owners.append(i)
            if not segs:
                break
            slots = self._encode_segments(segs)  # [R, k, D]
            merges: list[tuple[int, Merge]] = []
            r = 0
            for i, st in enumerate(streams):
                n = owners.count(i)
                if not n:
                    continue
                before = len(st.state.merges)
                for leaf in push_segments(st.state, n, hier.group_size, hier.levels, budget):
                    st.slots[leaf] = slots[r]
                    r += 1
                merges += [(i, m) for m in st.state.merges[before:]]
                st.pos += n * S
            self._run_merges(streams, merges)
            self._retain(streams)
        partial: list[torch.Tensor | None] = [None] * len(streams)
        for st in streams:  # drop what is pushed; only the partial segment (< S tokens) remains
            st.tokens, st.pos = st.tokens[st.pos :], 0
        if final:
            tails = [(i, st.tokens) for i, st in enumerate(streams) if st.tokens]
            if tails:
                out = self._encode_segments([t for _, t in tails])
                for (i, _), s in zip(tails, out):
                    partial[i] = s
        return partial

    @staticmethod
    def _retain(streams: list[_Stream]) -> None:
        """Keep only the slots of retained blocks (memory stays bounded) and forget the merges run."""
        for st in streams:
            keep = {b.id for b in st.state.blocks}
            st.slots = {b: v for b, v in st.slots.items() if b in keep}
            st.state.merges.clear()

    def _run_merges(self, streams: list[_Stream], merges: list[tuple[int, Merge]]) -> None:
        """Run all streams' new merges, one batched encoder call per wave of independent merges."""
        by_key = {(i, m.output.id): m for i, m in merges}
        deps = {key: [(key[0], x) for x in m.inputs] for key, m in by_key.items()}
        known = {(i, b) for i, st in enumerate(streams) for b in st.slots}
        for wave in waves(deps, known):
            rows = [torch.cat([streams[i].slots[x] for x in by_key[(i, b)].inputs]) for i, b in wave]  # [n*k, D] each
            out = self.encode_blocks(rows, [by_key[key].output.level for key in wave],
                                     self._merge_positions([by_key[key] for key in wave]))
            for (i, b), s in zip(wave, out):
                streams[i].slots[b] = s

    def _to_memory(self, streams: list[_Stream], partial: list[torch.Tensor | None]) -> Memory:
        S = self.icae_config.segment_tokens
        slots, blocks, tails, nseg = [], [], [], []
        for st, p in zip(streams, partial):
            bl = [[b.level, b.start, b.end] for b in st.state.blocks]
            parts = [st.slots[b.id] for b in st.state.blocks]
            if p is not None:
                bl.append([1, st.state.segments, st.state.segments + 1])
                parts.append(p)
            slots.append(torch.cat(parts))  # [blocks * k, D]
            blocks.append(bl)
            tails.append(list(st.tokens))
            nseg.append(st.state.segments + (1 if p is not None else 0))
        levels = max((b[0] for bl in blocks for b in bl), default=1)
        cfg = self.icae_config
        return Memory(slots, [st.total_tokens for st in streams], nseg, self.base_model_name, self.fingerprint,
                      cfg.mem_size, cfg.compression_rate, levels, {"segment_tokens": S}, blocks, tails,
                      base_weights=self.base_weights)

    def forward(self, contexts: list[list[int]], dec_ids: torch.Tensor, dec_labels: torch.Tensor, dec_mask: torch.Tensor,
                task: torch.Tensor | None = None, max_slots: int | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """Training loss: compress each context hierarchically (gradient through the whole tree, or
        stopped at level boundaries with ``stop_gradient``), then the decoder loss as in ICAE."""
        mem = self.compress_ids(contexts, max_slots)  # compress_ids copies the lists into its streams
        return self.decoder_loss(torch.cat(mem.slots), dec_ids, dec_labels, dec_mask, task, self.placements(mem))

    def compress_ids(self, token_lists: list[list[int]], max_slots: int | None = None) -> Memory:
        budget = self.budget_blocks(max_slots)
        streams = [_Stream(PlanState(), {}, list(t), len(t)) for t in token_lists]
        return self._to_memory(streams, self._advance(streams, budget, final=True))

    def compress(self, texts: list[str] | str, max_slots: int | None = None) -> Memory:
        """Compress texts of any length into at most ``max_slots`` slots each (default: the config's budget)."""
        ids = self.prepare_texts(texts)
        with self.eval_mode():
            return self.finish_memory(self.compress_ids(ids, max_slots))

    def _streams_from(self, mem: Memory) -> list[_Stream]:
        self.check_memory(mem)
        if not mem.hierarchical:
            raise DataError("this memory is not hierarchical: compress with HierarchicalICAE to append to it")
        k = self.icae_config.mem_size
        streams = []
        for slots, bl, tail, ntok in zip(mem.slots, mem.blocks, mem.tails, mem.num_tokens):
            done = bl[:-1] if tail else bl  # the provisional block of the tail is recomputed
            blocks = [Block(lv, a, b, i) for i, (lv, a, b) in enumerate(done)]
            state = PlanState(blocks, [], len(blocks), blocks[-1].end if blocks else 0)
            table = {i: slots[i * k : (i + 1) * k].to(self.device) for i in range(len(blocks))}
            streams.append(_Stream(state, table, list(tail), ntok))
        return streams

    def append_ids(self, mem: Memory, token_lists: list[list[int]], max_slots: int | None = None) -> Memory:
        if len(token_lists) != len(mem):
            raise DataError(f"{len(token_lists)} texts to append to {len(mem)} memories: give one per memory")
        budget = self.budget_blocks(max_slots)
        streams = self._streams_from(mem)
        for st, t in zip(streams, token_lists):
            st.tokens += t
            st.total_tokens += len(t)
        return self._to_memory(streams, self._advance(streams, budget, final=True))

    def append(self, mem: Memory, more_text: list[str] | str, max_slots: int | None = None) -> Memory:
        """Compress only what is new (the kept partial segment plus ``more_text``) and merge it in."""
        if isinstance(more_text, str):
            more_text = [more_text]
        ids = tokenize(self.tokenizer, list(more_text))
        for i, x in enumerate(ids):
            if not x:
                raise DataError(f"text {i} to append is empty: there is nothing to compress")
        with self.eval_mode():
            return self.finish_memory(self.append_ids(mem, ids, max_slots))
