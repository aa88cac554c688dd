"""Weights fingerprints: a checkpoint or a memory knows which weights made it, and other weights are refused."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from conftest import TEXTS, TINY_ICAE, build_icae
from safetensors.torch import load_file, save_file

from hicae import ICAE, CheckpointError, ICAEConfig, Memory
from hicae.io.checkpoint import ADAPTER_FILE, CONFIG_FILE, EMBED_FILE, load_base, load_icae
from hicae.io.fingerprint import SAMPLE, base_fingerprint, base_fingerprints, encoder_fingerprint, weights_match
from hicae.demo.tiny import tiny_model


def test_base_fingerprint_is_the_weights_not_the_path_or_dtype(qwen3_tokenizer, tmp_path):
    a = tiny_model("qwen3", seed=0)
    assert base_fingerprint(a) == base_fingerprint(tiny_model("qwen3", seed=0))
    assert base_fingerprint(a) != base_fingerprint(tiny_model("qwen3", seed=1))  # same shape, other weights
    # the same weights saved in bf16 in two folders, loaded in bf16 and in fp32: one fingerprint
    half = tiny_model("qwen3", seed=0, dtype=torch.bfloat16)
    for d in ("one", "two"):
        half.save_pretrained(tmp_path / d)
        qwen3_tokenizer.save_pretrained(tmp_path / d)
    fps = {base_fingerprint(load_base(str(tmp_path / d), dtype=dt)[0]) for d in ("one", "two") for dt in ("bf16", "fp32")}
    assert fps == {base_fingerprint(half)} == {base_fingerprint(a)}  # fp32 weights, bf16-rounded sample


def test_fingerprint_reads_a_sample_and_sees_a_changed_sampled_value():
    m = tiny_model("qwen3", seed=0)
    before = base_fingerprint(m)
    w = m.model.layers[1].mlp.down_proj.weight  # [64, 128]: 8192 elements, SAMPLE of them read
    assert w.numel() > SAMPLE
    with torch.no_grad():
        w.view(-1)[-1] += 0.5  # the last element is always in the sample
    assert base_fingerprint(m) != before


def test_base_with_nan_is_refused_naming_the_tensor(qwen3_tokenizer):
    base = tiny_model("qwen3", seed=0)
    with torch.no_grad():
        base.model.layers[0].self_attn.q_proj.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight has non-finite"):
        ICAE(base, qwen3_tokenizer)


@pytest.fixture
def saved(qwen3_tokenizer, tmp_path):
    model = build_icae(qwen3_tokenizer, "qwen3", seed=0).model
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_checkpoint_records_fingerprints(saved):
    model, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["weights"] == {"base": model.base_weights, "encoder": model.encoder_weights()}
    files = {**load_file(str(path / ADAPTER_FILE)), **load_file(str(path / EMBED_FILE))}
    assert encoder_fingerprint(files) == model.encoder_weights()


def test_checkpoint_on_other_base_weights_is_refused(saved, qwen3_tokenizer):
    model, path = saved
    other = tiny_model("qwen3", seed=1)  # same shape and config, other weights
    other_fp = base_fingerprint(other)  # before load_icae wraps it with LoRA layers
    with pytest.raises(CheckpointError) as e:
        load_icae(path, base_model=other, tokenizer=qwen3_tokenizer)
    msg = str(e.value)
    assert model.base_weights in msg and other_fp in msg and "--allow_other_weights" in msg
    loaded = load_icae(path, base_model=tiny_model("qwen3", seed=1), tokenizer=qwen3_tokenizer, allow_other_weights=True)
    assert loaded.encoder_weights() == model.encoder_weights()
    same = load_icae(path, base_model=tiny_model("qwen3", seed=0), tokenizer=qwen3_tokenizer)
    assert same.base_weights == model.base_weights


def test_adapter_of_another_checkpoint_is_refused(saved, qwen3_tokenizer, tmp_path):
    _, path = saved
    other = build_icae(qwen3_tokenizer, "qwen3", seed=0, perturb=False).model  # same config, other adapter
    other.save_pretrained(tmp_path / "other")
    (path / ADAPTER_FILE).write_bytes((tmp_path / "other" / ADAPTER_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="different checkpoints"):
        load_icae(path, base_model=tiny_model("qwen3", seed=0), tokenizer=qwen3_tokenizer)


def test_bf16_export_of_the_adapter_keeps_the_encoder_fingerprint(saved, qwen3_tokenizer):
    model, path = saved
    adapter = {k: v.to(torch.bfloat16) for k, v in load_file(str(path / ADAPTER_FILE)).items()}
    save_file(adapter, str(path / ADAPTER_FILE))  # what scripts/export_demo_checkpoint.py ships
    loaded = load_icae(path, base_model=tiny_model("qwen3", seed=0), tokenizer=qwen3_tokenizer)
    assert loaded.encoder_weights() == model.encoder_weights()
    loaded.reconstruct(model.compress(TEXTS[:1]), max_new_tokens=2)  # its memories are accepted both ways
    model.reconstruct(loaded.compress(TEXTS[:1]), max_new_tokens=2)


def test_old_checkpoint_without_fingerprints_loads_with_a_warning(saved, qwen3_tokenizer, caplog):
    _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    del meta["weights"]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="hicae"):
        load_icae(path, base_model=tiny_model("qwen3", seed=1), tokenizer=qwen3_tokenizer)  # nothing to check against
    assert "records no weights fingerprint" in caplog.text and len(caplog.records) == 1


def test_relative_base_path_is_saved_absolute(qwen3_tokenizer, tmp_path, monkeypatch):
    for d, seed in (("a", 0), ("b", 1)):  # two folders, each with a different 'tiny'
        (tmp_path / d).mkdir()
        tiny_model("qwen3", seed=seed).save_pretrained(tmp_path / d / "tiny")
        qwen3_tokenizer.save_pretrained(tmp_path / d / "tiny")
    monkeypatch.chdir(tmp_path / "a")
    model = ICAE.from_base("tiny", ICAEConfig(**TINY_ICAE))
    model.save_pretrained(tmp_path / "ckpt")
    mem = model.compress(TEXTS[:1])
    meta = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert meta["base_model"] == str(tmp_path / "a" / "tiny")
    monkeypatch.chdir(tmp_path / "b")  # run elsewhere: its own 'tiny' is not the base
    loaded = load_icae(tmp_path / "ckpt")
    assert loaded.base_weights == model.base_weights
    assert loaded.reconstruct_ids(mem, max_new_tokens=3) == model.reconstruct_ids(mem, max_new_tokens=3)
    other, tok = load_base("tiny")
    with pytest.raises(CheckpointError, match="base weights"):
        load_icae(tmp_path / "ckpt", base_model=other, tokenizer=tok)


# ---- memories ---------------------------------------------------------------------------------------


def test_memory_records_and_keeps_fingerprints(make_icae, tmp_path):
    model = make_icae("qwen3")
    mem = model.compress(TEXTS[:2])
    assert mem.base_weights == model.base_weights and mem.encoder_weights == model.encoder_weights()
    mem.save(tmp_path / "m.safetensors")
    back = Memory.load(tmp_path / "m.safetensors")
    assert (back.base_weights, back.encoder_weights) == (mem.base_weights, mem.encoder_weights)
    assert back[1].encoder_weights == mem.encoder_weights


def test_memory_of_another_encoder_is_refused(make_icae, tmp_path):
    a = make_icae("qwen3", seed=0)
    b = make_icae("qwen3", seed=0, perturb=False)  # same base, same config: another trained encoder
    assert a.fingerprint == b.fingerprint and a.base_weights == b.base_weights
    mem = a.compress(TEXTS[:2])
    mem.save(tmp_path / "m.safetensors")
    mem = Memory.load(tmp_path / "m.safetensors")
    for call in (lambda: b.reconstruct(mem, max_new_tokens=2), lambda: b.generate(mem, "Why?", max_new_tokens=2)):
        with pytest.raises(CheckpointError) as e:
            call()
        assert f"encoder weights {a.encoder_weights()} != this model's {b.encoder_weights()}" in str(e.value)
        assert "--allow_other_weights" in str(e.value)
    b.allow_other_weights = True
    assert len(b.reconstruct(mem, max_new_tokens=2)) == 2


def test_memory_of_other_base_weights_is_refused(make_icae):
    a = make_icae("qwen3", seed=0)
    b = make_icae("qwen3", seed=0, base_overrides=dict(initializer_range=0.03))  # same config and name
    assert a.fingerprint == b.fingerprint and a.base_model_name == b.base_model_name
    mem = a.compress(TEXTS[:1])
    mem.encoder_weights = b.encoder_weights()  # only the base differs
    with pytest.raises(CheckpointError, match=f"base weights {a.base_weights} .* != this model's {b.base_weights}"):
        b.reconstruct(mem, max_new_tokens=2)


def test_trained_model_refuses_its_own_older_memory(make_icae):
    """The encoder fingerprint follows training: a memory made before an update is another encoder's."""
    model = make_icae("qwen3")
    mem = model.compress(TEXTS[:1])
    with torch.no_grad():
        model.mem_embeddings.add_(0.01)
    with pytest.raises(CheckpointError, match="encoder weights"):
        model.reconstruct(mem, max_new_tokens=2)


def test_old_memory_without_fingerprints_loads_with_a_warning(make_icae, tmp_path, caplog):
    model = make_icae("qwen3")
    mem = model.compress(TEXTS[:1])
    mem.base_weights = mem.encoder_weights = ""
    mem.save(tmp_path / "old.safetensors")
    with caplog.at_level(logging.WARNING, logger="hicae"):
        back = Memory.load(tmp_path / "old.safetensors")
    assert "records no weights fingerprint" in caplog.text
    assert model.reconstruct_ids(back, max_new_tokens=3) == model.reconstruct_ids(mem, max_new_tokens=3)


def test_hub_names_stay_names(tmp_path, monkeypatch):
    from hicae.io.checkpoint import absolute_source

    monkeypatch.chdir(tmp_path)
    assert absolute_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    (tmp_path / "Qwen" / "Qwen2.5-0.5B-Instruct").mkdir(parents=True)  # a local folder of that name is a path
    assert absolute_source("Qwen/Qwen2.5-0.5B-Instruct") == str(tmp_path / "Qwen" / "Qwen2.5-0.5B-Instruct")


# ---- casts a user makes (fp32, bf16, fp16): one base, one fingerprint; other weights still differ -------------

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _views(base):
    """The same base cast to each dtype (a user's --dtype)."""
    return {dt: copy.deepcopy(base).to(dt) for dt in DTYPES}


def _perturbed(base):
    other = copy.deepcopy(base).float()
    with torch.no_grad():
        w = other.model.layers[0].mlp.up_proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 1e-2)
    return other.to(base.dtype)


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])  # as kept on disk: Qwen releases are bf16
def test_fingerprint_survives_fp32_bf16_fp16_casts(stored):
    base = tiny_model("qwen3", seed=0).to(stored)
    fps = {dt: base_fingerprints(m) for dt, m in _views(base).items()}
    if stored == torch.bfloat16:  # every cast of bf16 weights matches every other
        assert all(weights_match(a, b) for a in fps.values() for b in fps.values())
    else:  # fp32 weights: the fp32 view matches both casts (a checkpoint trained in fp32, used in bf16 or fp16)
        assert weights_match(fps[torch.float32], fps[torch.bfloat16])
        assert weights_match(fps[torch.float32], fps[torch.float16])
        # bf16 rounding of the fp16 values is not that of the originals: the old fingerprint refused them
        assert base_fingerprint(_views(base)[torch.float16]) != base_fingerprint(base)
    other = {dt: base_fingerprints(m) for dt, m in _views(_perturbed(base)).items()}
    assert not any(weights_match(a, b) for a in fps.values() for b in other.values())  # other weights: no match


def test_checkpoint_and_memories_of_an_fp32_base_work_in_fp16(saved, qwen3_tokenizer):
    """`hicae generate --checkpoint ck --dtype fp16` on the base the checkpoint was trained on (in fp32)."""
    model, path = saved
    half = load_icae(path, base_model=tiny_model("qwen3", seed=0).half(), tokenizer=qwen3_tokenizer)
    assert half.dtype == torch.float16
    mem = model.compress(TEXTS[:1])
    half.check_memory(mem)  # an fp32 model's memory is accepted by the fp16 one
    with pytest.raises(CheckpointError, match="trained on base weights"):  # a perturbed base in fp16 is still refused
        load_icae(path, base_model=_perturbed(tiny_model("qwen3", seed=0)).half(), tokenizer=qwen3_tokenizer)


def test_old_fingerprints_still_match(saved, qwen3_tokenizer):
    """Checkpoints and memories recorded before the fp16 alias (bf16 rounding only) load as before."""
    model, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["weights"]["base"] = base_fingerprint(tiny_model("qwen3", seed=0))  # what an older hicae recorded
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_icae(path, base_model=tiny_model("qwen3", seed=0).bfloat16(), tokenizer=qwen3_tokenizer)
    mem = model.compress(TEXTS[:1])
    mem.base_weights = meta["weights"]["base"]
    loaded.check_memory(mem)
