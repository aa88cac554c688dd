"""Tiny checkpoints (ICAE and hierarchical, made in-process) and data files for the evaluation tests."""

import json

import pytest
import torch

from hicae import HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.cli.main import main
from hicae.demo.tiny import tiny_model

from conftest import perturb_trainable

# Larger random weights give varied greedy outputs (the default init emits one token forever).
BASE = dict(initializer_range=0.5)
ICAE_CFG = dict(mem_size=4, compression_rate=2, lora_r=4, lora_dropout=0.0, model_max_length=512)
HIER_CFG = dict(mem_size=2, compression_rate=2, lora_r=4, lora_dropout=0.0)  # S = 4 tokens: levels from short texts


def _save(model, path):
    perturb_trainable(model, seed=1)
    model.save_pretrained(path, save_base=True)
    return path


@pytest.fixture(scope="session")
def icae_ckpt(tmp_path_factory):
    """A tiny random ICAE checkpoint that carries its base model (``save_base=True``)."""
    torch.manual_seed(100)
    model = ICAE(tiny_model("qwen3", seed=0, **BASE), load_qwen3_tokenizer(), ICAEConfig(**ICAE_CFG))
    return _save(model, tmp_path_factory.mktemp("icae-ckpt"))


@pytest.fixture(scope="session")
def hier_ckpt(tmp_path_factory):
    torch.manual_seed(100)
    model = HierarchicalICAE(tiny_model("qwen3", seed=0, **BASE), load_qwen3_tokenizer(), ICAEConfig(**HIER_CFG),
                             HierarchyConfig(levels=3, group_size=2))
    return _save(model, tmp_path_factory.mktemp("hier-ckpt"))


TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Python is a programming language that lets you work quickly and integrate systems more effectively.",
    "Qwen models are large language models trained by Alibaba Cloud on many languages and tasks.",
    "Memory slots compress a long text into a few vectors that a frozen model reads instead of the text.",
    "Short one.",
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def text_file(tmp_path):
    return write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])


@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def icae_model(icae_ckpt):
    """The ICAE checkpoint loaded once (tests must not change it; monkeypatch methods if needed)."""
    from hicae.io.checkpoint import load_icae

    return load_icae(icae_ckpt).eval()


@pytest.fixture(scope="session")
def hier_model(hier_ckpt):
    from hicae.io.checkpoint import load_icae

    return load_icae(hier_ckpt).eval()
