"""Checkpoints: save/load gives the same model; loading is strict and says what does not fit."""

from __future__ import annotations

import builtins
import copy
import json
import pathlib

import pytest
import torch
from conftest import ARCHS, TEXTS, build_icae
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hicae import ICAE, CheckpointError, HicaeError, HierarchicalICAE, HierarchyConfig, ICAEConfig
from hicae.io.checkpoint import (ADAPTER_FILE, CONFIG_FILE, EMBED_FILE, CheckpointInfo, read_checkpoint,
                                 read_checkpoint_config)
from hicae.io.checkpoint_meta import check_adapter_config
from hicae.demo.tiny import tiny_model

VARIED = dict(initializer_range=0.3)
PROMPTS = ["What is this about?", "Why?", "Who", "Tell me more."]


def _outputs(model):
    mem = model.compress(TEXTS)
    return mem, {
        "reconstruct": model.reconstruct_ids(mem, max_new_tokens=6),
        "continue": model.continue_ids(mem, max_new_tokens=6),
        "generate": model.generate_ids(mem, PROMPTS, max_new_tokens=6),
    }


def _same(model_a, model_b):
    mem_a, out_a = _outputs(model_a)
    mem_b, out_b = _outputs(model_b)
    for x, y in zip(mem_a.slots, mem_b.slots):
        assert torch.equal(x, y)
    assert mem_a.fingerprint == mem_b.fingerprint and mem_a.base_model == mem_b.base_model
    assert out_a == out_b
    assert len({t for rows in out_a.values() for r in rows for t in r}) >= 10  # varied, not one token
    # memory made by one is accepted by the other
    assert model_b.reconstruct_ids(mem_a, max_new_tokens=6) == out_a["reconstruct"]
    ta, tb = model_a.trainable_parameters(), model_b.trainable_parameters()
    assert sorted(ta) == sorted(tb)
    for n in ta:
        assert torch.equal(ta[n], tb[n]), n


@pytest.fixture(params=ARCHS)
def trained(request, qwen3_tokenizer):
    arch = request.param
    model = build_icae(qwen3_tokenizer, arch, base_overrides=VARIED).model
    return arch, model


def test_save_load_with_base_model_passed(trained, qwen3_tokenizer, tmp_path):
    arch, model = trained
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # peft also writes a model card (README.md) beside its adapter
    assert set(files) - {"README.md"} == {CONFIG_FILE, ADAPTER_FILE, "adapter_config.json", EMBED_FILE}
    meta = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert meta["base_model"] == f"tiny-{arch}" and meta["has_base"] is False
    assert meta["icae"]["mem_size"] == 4 and meta["base_shape"]["model_type"] == arch
    # no base weights in a trained-only checkpoint
    assert sum(p.stat().st_size for p in (tmp_path / "ckpt").iterdir()) < 1_000_000

    base = tiny_model(arch, seed=0, **VARIED)  # the same random base, rebuilt
    loaded = ICAE.from_pretrained(tmp_path / "ckpt", base_model=base, tokenizer=qwen3_tokenizer)
    assert loaded.icae_config == model.icae_config
    _same(model, loaded)


def test_save_load_with_base_saved(trained, tmp_path):
    arch, model = trained
    model.save_pretrained(tmp_path / "ckpt", save_base=True)
    assert (tmp_path / "ckpt" / "base" / "config.json").is_file()
    loaded = ICAE.from_pretrained(tmp_path / "ckpt")  # base model and tokenizer from the checkpoint
    assert loaded.base_model_name == f"tiny-{arch}"
    assert loaded.dtype == torch.float32
    _same(model, loaded)
    # the loaded decoder is the saved base, bit for bit
    want = dict(model.decoder.named_parameters())
    for n, p in loaded.decoder.named_parameters():
        assert torch.equal(p, want[n]), n


def test_save_overwrites_atomically(trained, qwen3_tokenizer, tmp_path):
    arch, model = trained
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    with torch.no_grad():
        model.mem_embeddings.add_(1.0)
    model.save_pretrained(path)  # replaces the old checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old folder left
    loaded = ICAE.from_pretrained(path, base_model=tiny_model(arch, **VARIED), tokenizer=qwen3_tokenizer)
    assert torch.equal(loaded.mem_embeddings, model.mem_embeddings)


def test_load_with_base_model_only_takes_the_tokenizer_from_the_base(qwen3_tokenizer, tmp_path):
    """peft's habit: ``from_pretrained(ckpt, base_model=m)``; the tokenizer comes from the base's folder."""
    tiny_model("qwen3", seed=0, **VARIED).save_pretrained(tmp_path / "base")
    qwen3_tokenizer.save_pretrained(tmp_path / "base")
    model = build_icae(qwen3_tokenizer, "qwen3", base_overrides=VARIED).model
    model.base_model_name = str(tmp_path / "base")  # as load_base names a folder
    model.save_pretrained(tmp_path / "ckpt")
    assert not any((tmp_path / "ckpt").glob("tokenizer*"))  # checkpoints stay small: no tokenizer files
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    loaded = ICAE.from_pretrained(tmp_path / "ckpt", base_model=base)
    assert loaded.tokenizer.get_vocab() == qwen3_tokenizer.get_vocab()
    assert loaded.tokenizer.chat_template == qwen3_tokenizer.chat_template
    _same(model, loaded)
    # a base object whose own name leads nowhere: the checkpoint's recorded base name gives the tokenizer
    again = ICAE.from_pretrained(tmp_path / "ckpt", base_model=tiny_model("qwen3", seed=0, **VARIED))
    mem = model.compress(TEXTS)
    assert again.reconstruct_ids(mem, max_new_tokens=4) == model.reconstruct_ids(mem, max_new_tokens=4)
    # neither name leads to a tokenizer (folders gone; local paths, so no hub lookup): a clear error
    (tmp_path / "base").rename(tmp_path / "moved")
    lost = tiny_model("qwen3", seed=0, **VARIED)
    lost.config._name_or_path = str(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"no tokenizer given.*/base'.*/elsewhere'.*pass tokenizer="):
        ICAE.from_pretrained(tmp_path / "ckpt", base_model=lost)


@pytest.fixture
def saved(qwen3_tokenizer, tmp_path):
    model = build_icae(qwen3_tokenizer, "qwen3").model
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    return model, path


def _load(path, tokenizer, arch="qwen3", **overrides):
    return ICAE.from_pretrained(path, base_model=tiny_model(arch, **overrides), tokenizer=tokenizer)


def test_read_checkpoint_gives_the_typed_config_files(saved, qwen3_tokenizer, tmp_path):
    model, path = saved
    info = read_checkpoint(path)
    assert isinstance(info, CheckpointInfo) and info.path == path and info.config_file == path / CONFIG_FILE
    assert info.icae == model.icae_config and info.hierarchy is None and not info.hierarchical
    assert info.base_model == "tiny-qwen3" and info.base_shape["model_type"] == "qwen3" and info.has_base is False
    assert info.base_weights == model.base_weights and info.encoder_weights == model.encoder_weights()
    assert info.fingerprint == model.fingerprint and info.format_version == 1
    assert info.raw == read_checkpoint_config(path)  # the same file, the same checks
    with pytest.raises(AttributeError):  # one value: frozen
        info.has_base = True
    h = HierarchicalICAE(tiny_model("qwen3"), qwen3_tokenizer, model.icae_config, HierarchyConfig(levels=3, max_slots=8))
    h.save_pretrained(tmp_path / "hier", save_base=True)
    hinfo = read_checkpoint(tmp_path / "hier")
    assert hinfo.hierarchical and hinfo.hierarchy == h.hierarchy and hinfo.has_base is True


def test_one_load_reads_the_config_file_once(saved, qwen3_tokenizer, monkeypatch):
    """``from_pretrained`` reads and checks hicae_config.json once and passes what it read down (read_checkpoint)."""
    _, path = saved
    opened, depth = [], [0]

    def counting(original):  # every way a file is opened by name: Path's methods and open(), outermost call only
        def wrapper(*args, **kwargs):
            file = args[0] if args else kwargs.get("file", "")
            if not depth[0] and isinstance(file, (str, pathlib.Path)) and pathlib.Path(file).name == CONFIG_FILE:
                opened.append(file)
            depth[0] += 1  # Path.read_text opens through Path.open: one read
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    for meth in ("read_text", "read_bytes", "open"):
        monkeypatch.setattr(pathlib.Path, meth, counting(getattr(pathlib.Path, meth)))
    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    _load(path, qwen3_tokenizer)
    assert len(opened) == 1, opened
    # a caller that already read it (to fail early, or to ask what it is) passes the value on: no second read
    info = read_checkpoint(path)
    opened.clear()
    model = _load(info, qwen3_tokenizer)
    assert opened == [] and model.icae_config == info.icae and model.icae_config is not info.icae


def test_other_base_config_is_refused_naming_the_mismatch(saved, qwen3_tokenizer):
    _, path = saved
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer, hidden_size=32)
    assert "hidden_size: expected 64, got 32" in str(e.value) and "tiny-qwen3" in str(e.value)
    with pytest.raises(CheckpointError, match="num_hidden_layers: expected 2, got 3"):
        _load(path, qwen3_tokenizer, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="model_type: expected 'qwen3', got 'qwen2'"):
        _load(path, qwen3_tokenizer, arch="qwen2")
    with pytest.raises(CheckpointError, match="vocab_size"):
        _load(path, qwen3_tokenizer, vocab_size=151700)


def test_missing_key_is_an_error(saved, qwen3_tokenizer):
    _, path = saved
    f = path / ADAPTER_FILE
    tensors = load_file(str(f))
    gone = sorted(tensors)[0]
    assert "lora_" in gone
    save_file({k: v for k, v in tensors.items() if k != gone}, str(f))
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer)
    assert "missing 1" in str(e.value) and gone in str(e.value) and ADAPTER_FILE in str(e.value)


def test_unexpected_key_is_an_error(saved, qwen3_tokenizer):
    _, path = saved
    f = path / ADAPTER_FILE
    tensors = load_file(str(f))
    extra = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    tensors[extra] = torch.zeros(4, 64)
    save_file(tensors, str(f))
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer)
    assert "unexpected 1" in str(e.value) and extra in str(e.value)


def test_embedding_file_keys_and_shapes_are_checked(saved, qwen3_tokenizer):
    model, path = saved
    f = path / EMBED_FILE
    emb = load_file(str(f))
    save_file({"mem_embeddings": emb["mem_embeddings"]}, str(f))
    with pytest.raises(CheckpointError, match=r"missing 1 \(e\.g\. \['task_embeddings'\]\)"):
        _load(path, qwen3_tokenizer)
    save_file({**emb, "projection": torch.zeros(2)}, str(f))
    with pytest.raises(CheckpointError, match="unexpected 1.*projection"):
        _load(path, qwen3_tokenizer)
    save_file({**emb, "mem_embeddings": torch.zeros(8, 64)}, str(f))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*mem_embeddings: file \(8, 64\) vs model \(4, 64\)"):
        _load(path, qwen3_tokenizer)
    save_file(emb, str(f))
    loaded = _load(path, qwen3_tokenizer)  # restored: loads again
    assert torch.equal(loaded.mem_embeddings, model.mem_embeddings)


def test_lora_rank_mismatch_is_an_error(saved, qwen3_tokenizer):
    _, path = saved
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ICAE.from_pretrained(path, base_model=tiny_model("qwen3"), tokenizer=qwen3_tokenizer, config_overrides={"lora_r": 8})


def test_broken_checkpoints_are_errors(saved, qwen3_tokenizer, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="not a hicae checkpoint"):
        _load(tmp_path / "nowhere", qwen3_tokenizer)
    (path / EMBED_FILE).write_bytes(b"garbage" * 20)
    with pytest.raises(CheckpointError, match="cannot read"):
        _load(path, qwen3_tokenizer)
    (path / EMBED_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        _load(path, qwen3_tokenizer)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        _load(path, qwen3_tokenizer)


# ---- broken or inconsistent files -----------------------------------------------------------------------


@pytest.mark.parametrize("file", [ADAPTER_FILE, EMBED_FILE])
def test_non_finite_trained_weights_are_refused_naming_the_tensor(saved, qwen3_tokenizer, file):
    _, path = saved
    tensors = load_file(str(path / file))
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float("nan") if file == ADAPTER_FILE else float("inf")
    save_file(tensors, str(path / file))
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer)
    assert f"{file}: tensor {name} has non-finite values" in str(e.value)


def _edit_config(path, **changes):
    meta = json.loads((path / CONFIG_FILE).read_text())
    for key, value in changes.items():
        target, _, field = key.rpartition("__")
        where = meta[target] if target else meta
        if value is _DROP:
            del where[field]
        else:
            where[field] = value
    (path / CONFIG_FILE).write_text(json.dumps(meta))


_DROP = object()


@pytest.mark.parametrize("changes, message", [
    ({"icae__mem_size": "4"}, "field 'mem_size' must be int, got '4'"),
    ({"icae__lora_target_modules": "q_proj"}, "field 'lora_target_modules' must be list[str]"),
    ({"icae__lora_dropout": 2.0}, "lora_dropout must be in [0, 1)"),
    ({"base_shape": _DROP}, "missing 'base_shape'"),
    ({"icae": _DROP}, "missing 'icae'"),
    ({"base_model": 3}, "'base_model' must be str"),
    ({"has_base": "no"}, "'has_base' must be bool"),
    ({"format_version": "1"}, "'format_version' must be int"),
    ({"weights": {"base": 1}}, "'weights' must map"),
    ({"hierarchy": {"levels": "3"}}, "HierarchyConfig field 'levels' must be int"),
    ({"icae__colour": "red"}, "unknown ICAEConfig fields: ['colour']"),
])
def test_malformed_config_is_one_checkpoint_error(saved, qwen3_tokenizer, changes, message):
    _, path = saved
    _edit_config(path, **changes)
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer)
    assert message in str(e.value) and CONFIG_FILE in str(e.value)


def test_config_that_is_not_an_object_is_a_checkpoint_error(saved, qwen3_tokenizer):
    _, path = saved
    (path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        _load(path, qwen3_tokenizer)


@pytest.mark.parametrize("key, value, shown", [
    ("lora_alpha", 512, "lora_alpha: 512 vs 32"),
    ("r", 8, "r: 8 vs 4"),
    ("target_modules", ["q_proj"], 'target_modules: ["q_proj"] vs ["q_proj", "v_proj"]'),
    ("use_rslora", True, "use_rslora: true vs false"),
])
def test_adapter_config_must_agree_with_hicae_config(saved, qwen3_tokenizer, key, value, shown):
    _, path = saved
    f = path / "adapter_config.json"
    cfg = json.loads(f.read_text())
    cfg["target_modules"] = list(reversed(cfg["target_modules"]))  # order does not matter
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    _load(path, qwen3_tokenizer)
    cfg[key] = value
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        _load(path, qwen3_tokenizer)
    assert "adapter_config.json disagrees with hicae_config.json" in str(e.value) and shown in str(e.value)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**4) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=6)
_FIELDS = (["format_version", "icae", "base_model", "base_shape", "fingerprint", "has_base", "weights", "hierarchy"]
           + [f"icae__{f}" for f in ICAEConfig().to_dict()] + ["base_shape__hidden_size", "weights__encoder"]
           + [f"adapter:{f}" for f in ("r", "lora_alpha", "target_modules", "peft_type", "use_dora", "rank_pattern")])


def test_any_malformed_config_is_a_user_error_never_a_traceback(qwen3_tokenizer, tmp_path_factory):
    """Any field of hicae_config.json or adapter_config.json set to any JSON value: the checkpoint
    loads or is one HicaeError."""
    path = tmp_path_factory.mktemp("fuzz") / "ckpt"
    build_icae(qwen3_tokenizer, "qwen3").model.save_pretrained(path)
    good = (path / CONFIG_FILE).read_text()
    good_adapter = (path / "adapter_config.json").read_text()
    base = tiny_model("qwen3")

    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from(_FIELDS), _JSON)
    def check(field, value):
        (path / CONFIG_FILE).write_text(good)
        (path / "adapter_config.json").write_text(good_adapter)
        if field.startswith("adapter:"):
            (path / "adapter_config.json").write_text(json.dumps({**json.loads(good_adapter), field[8:]: value}))
        else:
            _edit_config(path, **{field: value})
        try:
            read_checkpoint_config(path)
            check_adapter_config(path, json.loads((path / CONFIG_FILE).read_text()))
        except HicaeError:
            return
        # the file passed the checks: loading it must not fail with anything but a user error either
        try:
            ICAE.from_pretrained(path, base_model=copy.deepcopy(base), tokenizer=qwen3_tokenizer, allow_other_weights=True)
        except HicaeError:
            pass

    check()
