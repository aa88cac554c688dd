"""The merge plan of hierarchical memory, as pure Python (no tensors), so it can be property-tested.

A text is a stream of level-1 blocks (one per full segment of ``S = k*r`` tokens). Blocks are
pushed oldest first; after each push:
1. *counter merges*: while the newest ``g`` blocks share a level ``l < max_levels``, they merge
   into one level-``l+1`` block (a base-``g`` counter, like a log-structured merge tree): at most
   ``g-1`` blocks per level below the top, so up to ``g^(max_levels-1)`` segments the number of
   blocks grows with the logarithm of the length, and each token is re-compressed once per level;
   past that, top-level blocks accumulate (one per ``g^(max_levels-1)`` segments);
2. *budget merges*: while the blocks exceed ``budget_blocks``, the oldest ``g`` blocks (the top
   levels; all of them if fewer) merge into one block a level above the highest of them, capped at
   ``max_levels``: old content gets coarser, recent content stays fine. With a budget of at least
   ``(g-1)*(max_levels-1) + g`` blocks only top-level blocks merge this way.
The state after a push depends only on the state before it, so compressing ``a + b`` and
appending ``b`` to the memory of ``a`` (at a segment boundary) give the same blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable


@dataclass(frozen=True)
class Block:
    """A memory block: ``k`` slots standing for level-1 segments ``[start, end)``."""

    level: int
    start: int  # first level-1 segment index covered
    end: int  # one past the last
    id: int  # unique within a plan: inputs of merges refer to it


@dataclass
class Merge:
    """``inputs`` (block ids, oldest first) are read by the encoder to make ``output``."""

    output: Block
    inputs: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)  # the inputs' (start, end) segment spans


@dataclass
class PlanState:
    """Running state of one text's memory: the retained blocks and every merge made so far."""

    blocks: list[Block] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    next_id: int = 0
    segments: int = 0  # level-1 segments pushed

    def copy(self) -> "PlanState":
        return PlanState(list(self.blocks), list(self.merges), self.next_id, self.segments)


def _merge(state: PlanState, at: int, n: int, level: int) -> None:
    """Replace blocks ``[at, at+n)`` by one block of ``level``."""
    group = state.blocks[at : at + n]
    out = Block(level, group[0].start, group[-1].end, state.next_id)
    state.next_id += 1
    state.merges.append(Merge(out, [b.id for b in group], [(b.start, b.end) for b in group]))
    state.blocks[at : at + n] = [out]


def push_segments(state: PlanState, count: int, group_size: int, max_levels: int, budget_blocks: int | None) -> list[int]:
    """Push ``count`` new level-1 blocks into ``state`` (in place), applying both merge rules after each.

    Returns the ids of the new level-1 blocks, in text order.
    """
    if budget_blocks is not None and budget_blocks < 1:
        raise ValueError("the budget must hold at least one block")
    g = group_size
    leaves = []
    for _ in range(count):
        b = Block(1, state.segments, state.segments + 1, state.next_id)
        leaves.append(b.id)
        state.next_id += 1
        state.segments += 1
        state.blocks.append(b)
        while len(state.blocks) >= g:
            tail = state.blocks[-g:]
            lvl = tail[0].level
            if lvl >= max_levels or any(x.level != lvl for x in tail):
                break
            _merge(state, len(state.blocks) - g, g, lvl + 1)
        fit_budget(state, g, max_levels, budget_blocks)
    return leaves


def fit_budget(state: PlanState, group_size: int, max_levels: int, budget_blocks: int | None) -> None:
    """The budget rule alone (in place): merge the oldest ``g`` blocks until at most ``budget_blocks`` remain.
    Also for a restored state given a smaller budget than it was made with (``append`` of a short text
    pushes no segment, yet must fit the new budget)."""
    while budget_blocks is not None and len(state.blocks) > budget_blocks:
        n = min(group_size, len(state.blocks))
        _merge(state, 0, n, min(max_levels, max(x.level for x in state.blocks[:n]) + 1))


def plan(num_segments: int, group_size: int, max_levels: int, budget_blocks: int | None) -> PlanState:
    state = PlanState()
    push_segments(state, num_segments, group_size, max_levels, budget_blocks)
    return state


def waves(deps: dict[Hashable, list[Hashable]], known: set[Hashable]) -> list[list[Hashable]]:
    """Order nodes (``node -> its inputs``) into waves whose inputs all come from ``known`` or earlier waves.

    All merges of a wave are independent, so a wave is one batched encoder call.
    """
    done = set(known)
    pending = list(deps)
    out: list[list[Hashable]] = []
    while pending:
        ready = [n for n in pending if all(i in done for i in deps[n])]
        if not ready:
            raise ValueError("merge plan has inputs that are never computed")
        out.append(ready)
        done.update(ready)
        ready_set = set(ready)
        pending = [n for n in pending if n not in ready_set]
    return out


def num_blocks(num_tokens: int, segment_tokens: int, group_size: int, max_levels: int, budget_blocks: int | None) -> int:
    """Blocks in the memory of a text of ``num_tokens`` tokens (a trailing partial segment adds one)."""
    state = plan(num_tokens // segment_tokens, group_size, max_levels, budget_blocks)
    return len(state.blocks) + (1 if num_tokens % segment_tokens else 0)


def budget_to_blocks(max_slots: int | None, mem_size: int) -> int | None:
    """Blocks the plan may retain under a budget of ``max_slots`` slots: one block is reserved for a
    trailing partial segment, so that the plan's state never depends on whether one exists."""
    if max_slots is None:
        return None
    from ..errors import ConfigError

    if max_slots < mem_size:
        raise ConfigError(f"max_slots={max_slots} is smaller than one block (mem_size={mem_size} slots)")
    if max_slots < 2 * mem_size:
        raise ConfigError(
            f"max_slots={max_slots} holds one block; the hierarchy needs two (2*mem_size={2 * mem_size}): "
            "one for the compressed past and one reserved for the trailing partial segment"
        )
    return max_slots // mem_size - 1
