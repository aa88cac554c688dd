"""Memory files: round trip, refusal by another model or config, corrupted files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEXTS
from safetensors.torch import load_file, save_file

from hicae import CheckpointError, Memory
from hicae.memory import FORMAT

VARIED = dict(base_overrides=dict(initializer_range=0.3))


def assert_same_memory(a: Memory, b: Memory) -> None:
    assert len(a) == len(b)
    for x, y in zip(a.slots, b.slots):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert a.metadata() == b.metadata()
    assert (a.num_tokens, a.num_segments, a.base_model, a.fingerprint) == (b.num_tokens, b.num_segments, b.base_model, b.fingerprint)
    assert (a.mem_size, a.compression_rate, a.levels, a.extra) == (b.mem_size, b.compression_rate, b.levels, b.extra)


@pytest.fixture(scope="module")
def qwen3_memory(qwen3_tokenizer):
    from conftest import build_icae

    model = build_icae(qwen3_tokenizer, "qwen3", **VARIED).model
    return model, model.compress(TEXTS)


def test_memory_round_trip(qwen3_memory, tmp_path):
    model, mem = qwen3_memory
    assert mem.base_model == "tiny-qwen3"
    assert mem.fingerprint == model.fingerprint and mem.mem_size == 4 and mem.compression_rate == 2
    mem.extra["note"] = {"source": "unit test", "n": 3}
    try:
        f = tmp_path / "m.safetensors"
        mem.save(f)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left behind
        back = Memory.load(f)
        assert_same_memory(mem, back)
        meta = json.loads(back.metadata()["num_tokens"])
        assert meta == mem.num_tokens
        # what the model makes of it is the same too
        assert model.reconstruct_ids(back, max_new_tokens=6) == model.reconstruct_ids(mem, max_new_tokens=6)
        assert model.generate_ids(back, "Why?", max_new_tokens=6) == model.generate_ids(mem, "Why?", max_new_tokens=6)
    finally:
        mem.extra.pop("note")


def test_memory_subsets_round_trip(qwen3_memory, tmp_path):
    _, mem = qwen3_memory
    sub = mem[[3, 1]]
    assert sub.num_tokens == [mem.num_tokens[3], mem.num_tokens[1]]
    assert torch.equal(sub.slots[0], mem.slots[3])
    sub.save(tmp_path / "s.safetensors")
    assert_same_memory(sub, Memory.load(tmp_path / "s.safetensors"))
    assert mem[1:3].num_segments == mem.num_segments[1:3]
    assert mem[-1].num_tokens == [mem.num_tokens[-1]]
    half = mem.to(dtype=torch.bfloat16)
    half.save(tmp_path / "h.safetensors")
    back = Memory.load(tmp_path / "h.safetensors")
    assert back.slots[0].dtype == torch.bfloat16 and torch.equal(back.slots[2], half.slots[2])


def test_memory_of_another_config_is_refused(qwen3_memory, make_icae):
    _, mem = qwen3_memory
    for other, what in [
        (make_icae("qwen3", mem_size=8, **VARIED), "fingerprint"),
        (make_icae("qwen3", compression_rate=4, **VARIED), "fingerprint"),
        (make_icae("qwen3", lora_r=8, **VARIED), "fingerprint"),
        (make_icae("qwen3", position_layout="spread", **VARIED), "fingerprint"),
        (make_icae("qwen2", **VARIED), "base model 'tiny-qwen3' != this model's 'tiny-qwen2'"),
        (make_icae("qwen3", base_overrides=dict(hidden_size=32, initializer_range=0.3)), "slot width 64 != hidden size 32"),
    ]:
        for call in (
            lambda: other.generate(mem, "Why?", max_new_tokens=2),
            lambda: other.reconstruct(mem, max_new_tokens=2),
            lambda: other.continue_text(mem, max_new_tokens=2),
            lambda: other.generate_ids(mem[0], "Why?", max_new_tokens=2),
        ):
            with pytest.raises(CheckpointError) as e:
                call()
            assert "another model or config" in str(e.value) and what in str(e.value)


def test_memory_survives_runtime_knobs(qwen3_memory, make_icae):
    """Settings that do not change what a slot means (batch budget, length policy) accept the memory."""
    model, mem = qwen3_memory
    other = make_icae("qwen3", compress_batch_tokens=24, model_max_length=100, overlong="truncate", **VARIED)
    assert other.fingerprint == model.fingerprint
    assert other.reconstruct_ids(mem, max_new_tokens=4) == model.reconstruct_ids(mem, max_new_tokens=4)


def test_corrupted_and_foreign_files_are_checkpoint_errors(qwen3_memory, tmp_path):
    _, mem = qwen3_memory
    good = tmp_path / "good.safetensors"
    mem.save(good)

    with pytest.raises(CheckpointError, match="no such memory file"):
        Memory.load(tmp_path / "missing.safetensors")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError, match="cannot read memory file"):
        Memory.load(garbage)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        Memory.load(truncated)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))  # a safetensors file, but not memory
    with pytest.raises(CheckpointError, match="not a hicae memory file"):
        Memory.load(foreign)

    tensors = load_file(str(good))
    meta = mem.metadata()

    extra = tmp_path / "extra.safetensors"
    save_file({**tensors, "slots.99": torch.zeros(1, 64)}, str(extra), metadata=meta)
    with pytest.raises(CheckpointError, match=r"slots\.99"):
        Memory.load(extra)

    missing = tmp_path / "missing_tensor.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "slots.2"}, str(missing), metadata=meta)
    with pytest.raises(CheckpointError, match=r"slots\.2"):
        Memory.load(missing)

    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**meta, "format_version": "99"})
    with pytest.raises(CheckpointError, match="newer"):
        Memory.load(newer)

    bad_json = tmp_path / "bad_json.safetensors"
    save_file(tensors, str(bad_json), metadata={**meta, "num_tokens": "[1, 2"})
    with pytest.raises(CheckpointError, match="cannot read memory file"):
        Memory.load(bad_json)

    assert meta["format"] == FORMAT
    assert_same_memory(mem, Memory.load(good))  # the good one is still fine


def test_failed_save_leaves_no_file(tmp_path):
    bad = Memory([torch.zeros(2, 4), torch.zeros(3, 4)], [1, 2], [1, 1], "x", "f", 4, 2)
    bad.base_model = 123  # type: ignore[assignment]  # safetensors refuses non-string metadata mid-write
    target = tmp_path / "out.safetensors"
    with pytest.raises(Exception):
        bad.save(target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        Memory([torch.zeros(2, 4)], [1, 2], [1], "x", "f", 4, 2)
