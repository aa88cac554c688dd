"""A checkpoint naming its base by hub id runs offline on the local copy with those weights, with no flags;
offline, a miss is one quick line naming --model_name_or_path and the cache folder; inference reads texts up
to the base's window, not the length the adapter was trained on."""

from __future__ import annotations

import json
import socket
import time

import pytest

from hicae import CheckpointError, ICAE, ICAEConfig, Memory
from hicae.io.base_resolve import hub_reachable, local_folders
from hicae.io.checkpoint import load_icae
from hicae.cli.main import main
from hicae.demo.tiny import tiny_model

from conftest import TEXTS, TINY_ICAE, perturb_trainable

HUB_ID = "Qwen/Tiny-Hicae-Test"  # a hub name, as the shipped checkpoint records 'Qwen/Qwen2.5-Coder-0.5B-Instruct'


def _save_base(folder, seed, tokenizer):
    base = tiny_model("qwen3", seed=seed, initializer_range=0.3)
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture
def hub_checkpoint(qwen3_tokenizer, tmp_path, monkeypatch):
    """A checkpoint trained on ``HUB_ID`` (model_max_length 16), and hicae's cache holding a decoy of the same
    shape with other weights, then the real weights under another folder name. Offline."""
    cache = tmp_path / "cache"
    _save_base(cache / "a-decoy", 1, qwen3_tokenizer)
    _save_base(cache / "b-tiny", 0, qwen3_tokenizer)
    base = tiny_model("qwen3", seed=0, initializer_range=0.3)
    base.config._name_or_path = HUB_ID
    model = ICAE(base, qwen3_tokenizer, ICAEConfig(**TINY_ICAE, model_max_length=16))
    perturb_trainable(model)
    model.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "hicae_config.json").read_text())["base_model"] == HUB_ID
    monkeypatch.setenv("HICAE_CACHE", str(cache))
    monkeypatch.delenv("HICAE_QWEN25", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "ck", cache, model


def test_hub_named_base_resolves_to_the_local_copy_with_its_weights(hub_checkpoint):
    ck, cache, trained = hub_checkpoint
    assert local_folders() == [cache / "a-decoy", cache / "b-tiny"]
    model = load_icae(ck)
    assert model.base_model_name == str(cache / "b-tiny") and model.base_weights == trained.base_weights
    assert model.reconstruct_ids(trained.compress(TEXTS[:1]), max_new_tokens=4)  # its memories are accepted


def test_offline_miss_is_one_quick_line(hub_checkpoint, tmp_path, monkeypatch):
    ck, _, _ = hub_checkpoint
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("HICAE_CACHE", str(empty))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        load_icae(ck)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and HUB_ID in msg and "--model_name_or_path" in msg and str(empty) in msg


def test_an_unreachable_hub_is_seen_in_seconds(monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert not hub_reachable()
    assert time.monotonic() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()


def test_cli_runs_the_checkpoint_with_no_flags_beyond_the_window_of_training(hub_checkpoint, tmp_path, capsys):
    """compress / generate / eval with only --checkpoint: the base is found offline, and a text far over the
    checkpoint's model_max_length (16) is compressed (the base's window is the limit)."""
    ck, _, _ = hub_checkpoint
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(TEXTS * 4))
    mem = tmp_path / "doc.mem.safetensors"
    assert main(["compress", "--checkpoint", str(ck), "--input", str(doc), "--output", str(mem)]) == 0, capsys.readouterr().err
    assert Memory.load(mem).num_tokens[0] > 16
    assert main(["generate", "--checkpoint", str(ck), "--memory", str(mem), "--prompt", "What?", "--max_new_tokens", "3"]) == 0
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": " ".join(TEXTS * 2)}) + "\n")
    assert main(["eval", "--task", "ae", "--checkpoint", str(ck), "--data", str(data), "--output_dir", str(tmp_path / "ev"),
                 "--max_new_tokens", "3", "--no_progress"]) == 0, capsys.readouterr().err
    # an explicit --model_max_length is still a limit
    assert main(["compress", "--checkpoint", str(ck), "--input", str(doc), "--output", str(tmp_path / "x.mem.safetensors"),
                 "--model_max_length", "16"]) == 1
    assert "over --model_max_length=16" in capsys.readouterr().err
