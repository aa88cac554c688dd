"""The hierarchical merge plan: coverage, budget, levels, streaming, as properties over many lengths."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hicae.errors import ConfigError
from hicae.hierarchy.plan import PlanState, budget_to_blocks, num_blocks, plan, push_segments, waves

params = st.tuples(
    st.integers(0, 300),  # level-1 segments
    st.integers(2, 4),  # g
    st.integers(1, 5),  # max levels
    st.one_of(st.none(), st.integers(1, 12)),  # budget in blocks
)


def check(state, n, g, L, budget):
    bl = state.blocks
    # every segment covered exactly once, in order
    assert [b.start for b in bl] == [0] + [b.end for b in bl[:-1]] if bl else n == 0
    if bl:
        assert bl[-1].end == n and all(b.end > b.start for b in bl)
    assert all(1 <= b.level <= L for b in bl)
    if budget is not None:
        assert len(bl) <= budget
    # merges: each output made once from existing inputs; waves put every input before its use
    deps = {m.output.id: m.inputs for m in state.merges}
    leaves = set(range(state.next_id)) - set(deps)
    order = [x for w in waves(deps, leaves) for x in w]
    assert sorted(order) == sorted(deps)
    for m in state.merges:  # an output spans exactly its inputs
        assert m.output.start < m.output.end


@given(params)
@settings(max_examples=300, deadline=None)
def test_plan_covers_every_segment_once_within_budget(p):
    n, g, L, budget = p
    state = plan(n, g, L, budget)
    check(state, n, g, L, budget)


@given(params, st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_pushing_in_parts_equals_pushing_at_once(p, cut):
    n, g, L, budget = p
    cut = min(cut, n)
    whole = plan(n, g, L, budget)
    parts = PlanState()
    push_segments(parts, cut, g, L, budget)
    push_segments(parts, n - cut, g, L, budget)
    assert [(b.level, b.start, b.end) for b in parts.blocks] == [(b.level, b.start, b.end) for b in whole.blocks]


@pytest.mark.parametrize("g", [2, 3, 4])
def test_counter_without_budget_is_logarithmic_and_spans_grow_by_g(g):
    for n in range(1, 400):
        state = plan(n, g, 20, None)
        # base-g digits of n: at most g-1 blocks per level
        digits = []
        x = n
        while x:
            digits.append(x % g)
            x //= g
        assert len(state.blocks) == sum(digits) <= (g - 1) * math.ceil(math.log(n + 1, g))
        for b in state.blocks:  # a level-l block stands for g^(l-1) segments
            assert b.end - b.start == g ** (b.level - 1)


def test_budget_merges_oldest_into_coarser_blocks():
    state = plan(64, 2, 3, 3)
    assert len(state.blocks) <= 3
    levels = [b.level for b in state.blocks]
    assert levels == sorted(levels, reverse=True)  # old content coarse, recent content fine
    assert state.blocks[0].end - state.blocks[0].start > 4  # the top level absorbed more than g^(L-1)


def test_budget_in_slots():
    assert budget_to_blocks(None, 4) is None
    assert budget_to_blocks(8, 4) == 1 and budget_to_blocks(13, 4) == 2
    with pytest.raises(ConfigError, match="smaller than one block"):
        budget_to_blocks(3, 4)
    with pytest.raises(ConfigError, match="needs two"):
        budget_to_blocks(7, 4)
    assert num_blocks(9, 4, 2, 3, None) == 1 + 1  # 2 segments merge into one level-2 block, plus the partial
    assert num_blocks(8, 4, 2, 1, None) == 2  # one level: no merges, no partial
