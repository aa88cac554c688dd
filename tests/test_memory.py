"""Memory files: round trip, refusal by another model or config, corrupted files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEXTS
from safetensors.torch import load_file, save_file

from hicae import CheckpointError, ICAEConfig, Memory
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


# ---- non-finite slots and inconsistent files --------------------------------------------------------------


def test_memory_file_with_nan_slots_is_refused_naming_the_tensor(qwen3_memory, tmp_path):
    _, mem = qwen3_memory
    tensors = load_file(str(_saved(mem, tmp_path)))
    tensors["slots.2"][1, 5] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=mem.metadata())
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: slots\.2 \(text 2\) has non-finite values"):
        Memory.load(bad)


def test_compress_refuses_non_finite_slots(make_icae, tmp_path):
    model = make_icae("qwen3")
    lora_b = next(p for n, p in model.encoder.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.fill_(float("nan"))  # a broken adapter (loading one is refused: tests/test_checkpoint.py)
    with pytest.raises(CheckpointError, match=r"compress: slots\.0 \(text 0\) has non-finite values"):
        model.compress(TEXTS[:2])


def _saved(mem, tmp_path):
    f = tmp_path / "good.safetensors"
    mem.save(f)
    return f


def _with_meta(mem, tmp_path, tensors=None, **meta):
    f = tmp_path / "edited.safetensors"
    tensors = tensors if tensors is not None else load_file(str(_saved(mem, tmp_path)))
    save_file(tensors, str(f), metadata={**mem.metadata(), **meta})
    return f


def test_segment_and_slot_counts_must_match_the_metadata(qwen3_memory, tmp_path):
    _, mem = qwen3_memory
    nseg, ntok = mem.num_segments, mem.num_tokens
    assert nseg[0] >= 2
    # metadata says 7 segments where the text's tokens make nseg[0]
    f = _with_meta(mem, tmp_path, num_segments=json.dumps([7] + nseg[1:]))
    with pytest.raises(CheckpointError, match=rf"text 0 has {ntok[0]} tokens, which make {nseg[0]} segments .* says 7"):
        Memory.load(f)
    # metadata consistent with itself (7 segments' worth of tokens), slots of the real count
    f = _with_meta(mem, tmp_path, num_segments=json.dumps([7] + nseg[1:]), num_tokens=json.dumps([7 * 8] + ntok[1:]))
    with pytest.raises(CheckpointError, match=rf"slots\.0 holds {4 * nseg[0]} slots, but the metadata's 7 segments of 4"):
        Memory.load(f)
    f = _with_meta(mem, tmp_path, num_segments=json.dumps(nseg[:-1]))
    with pytest.raises(CheckpointError, match="4 num_tokens but 3 num_segments"):
        Memory.load(f)


@pytest.mark.parametrize("key, value, message", [
    ("mem_size", "four", "'mem_size' is not valid JSON"),
    ("mem_size", "4.5", "'mem_size' must be an integer >= 1"),
    ("compression_rate", "0", "'compression_rate' must be an integer >= 1"),
    ("levels", "true", "'levels' must be an integer >= 1"),
    ("num_tokens", '{"a": 1}', "'num_tokens' must be a list of integers >= 1"),
    ("num_segments", '[1, "2", 3, 4]', "'num_segments' must be a list of integers >= 1"),
    ("extra", "[]", "'extra' must be a JSON object"),
    ("blocks", "[]", "one of 'blocks' and 'tails' without the other"),
])
def test_malformed_memory_metadata_is_one_error(qwen3_memory, tmp_path, key, value, message):
    _, mem = qwen3_memory
    with pytest.raises(CheckpointError) as e:
        Memory.load(_with_meta(mem, tmp_path, **{key: value}))
    assert message in str(e.value) and "edited.safetensors" in str(e.value)


def test_missing_metadata_and_bad_slot_tensors_are_errors(qwen3_memory, tmp_path):
    _, mem = qwen3_memory
    tensors = load_file(str(_saved(mem, tmp_path)))
    meta = {k: v for k, v in mem.metadata().items() if k != "num_segments"}
    f = tmp_path / "no_seg.safetensors"
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(CheckpointError, match="metadata has no 'num_segments'"):
        Memory.load(f)
    for bad, message in [
        ({**tensors, "slots.1": tensors["slots.1"].to(torch.int32)}, r"slots\.1 must be a 2-D float tensor"),
        ({**tensors, "slots.1": tensors["slots.1"].reshape(-1)}, r"slots\.1 must be a 2-D float tensor"),
        ({**tensors, "slots.3": tensors["slots.3"][:, :32].contiguous()}, r"slots\.3 is 32 wide, slots\.0 is 64"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            Memory.load(_with_meta(mem, tmp_path, tensors=bad))


def test_hierarchical_memory_slot_count_is_checked_against_blocks(make_icae, qwen3_tokenizer, tmp_path):
    from conftest import TINY_ICAE
    from hicae import HierarchicalICAE, HierarchyConfig
    from hicae.demo.tiny import tiny_model

    model = HierarchicalICAE(tiny_model("qwen3"), qwen3_tokenizer, ICAEConfig(**TINY_ICAE),
                             HierarchyConfig(levels=3, max_slots=16))
    mem = model.compress([" ".join(["word"] * 60), "short text"])
    f = _saved(mem, tmp_path)
    back = Memory.load(f)  # a good hierarchical memory passes every check
    assert back.blocks == mem.blocks and back.num_segments == mem.num_segments
    blocks = [mem.blocks[0][:-1]] + mem.blocks[1:]  # one block fewer than the slots hold
    with pytest.raises(CheckpointError, match=rf"slots\.0 holds {mem.num_slots[0]} slots, but the metadata's"):
        Memory.load(_with_meta(mem, tmp_path, blocks=json.dumps(blocks)))
    with pytest.raises(CheckpointError, match="'blocks' must hold"):
        Memory.load(_with_meta(mem, tmp_path, blocks=json.dumps([[[1, 0]]] * 2)))
