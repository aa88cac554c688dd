"""hicae compress / generate / demo, and the CLI's handling of user errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hicae import Memory
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.demo.tiny import tiny_model

from .conftest import tiny_args


@pytest.fixture
def checkpoint(base_dir, pretrain_file, tmp_path, run_cli):
    out = tmp_path / "ck"
    assert run_cli("pretrain", *tiny_args(base_dir, out, pretrain_file, "--max_steps", "2"))[0] == 0
    return out


def test_compress_then_generate(checkpoint, tmp_path, run_cli):
    src = tmp_path / "doc.jsonl"
    src.write_text(json.dumps({"text": "A first document about foxes."}) + "\n" + json.dumps({"text": "Second, about dogs and cats."}) + "\n")
    mem_file = tmp_path / "doc.mem.safetensors"
    code, out, err = run_cli("compress", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(mem_file), "--device", "cpu")
    assert code == 0, err
    info = json.loads(out)
    mem = Memory.load(mem_file)
    assert info["texts"] == 2 == len(mem) and info["slots"] == mem.num_slots
    res = tmp_path / "answers.jsonl"
    code, _, err = run_cli("generate", "--checkpoint", str(checkpoint), "--memory", str(mem_file), "--prompt", "Which animal?",
                           "--max_new_tokens", "4", "--output", str(res), "--device", "cpu")
    assert code == 0, err
    rows = [json.loads(l) for l in res.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Which animal?"] * 2
    for flag in ("--reconstruct", "--continue"):
        code, out, err = run_cli("generate", "--checkpoint", str(checkpoint), "--memory", str(mem_file), flag,
                                 "--max_new_tokens", "3", "--device", "cpu")
        assert code == 0, err
        assert out.startswith("[0]")
    # the static-cache decoding path gives the same answers
    res2 = tmp_path / "answers_static.jsonl"
    code, _, err = run_cli("generate", "--checkpoint", str(checkpoint), "--memory", str(mem_file), "--prompt", "Which animal?",
                           "--max_new_tokens", "4", "--output", str(res2), "--device", "cpu", "--decoding", "static")
    assert code == 0, err
    assert res2.read_text() == res.read_text()


def test_compress_bad_input_leaves_no_output(checkpoint, tmp_path, run_cli):
    out = tmp_path / "x.mem.safetensors"
    cases = [
        (b"\xff\xfe not utf-8", "invalid UTF-8"),
        (b"   \n", "empty"),
        (("word " * 400).encode(), "model_max_length=64"),
    ]
    for i, (data, message) in enumerate(cases):
        src = tmp_path / f"in{i}.txt"
        src.write_bytes(data)
        code, _, err = run_cli("compress", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                               "--model_max_length", "64", "--device", "cpu")
        assert code == 1 and message in err, (i, err[-300:])
        assert not out.exists() and not list(tmp_path.glob(".x.mem*"))
    src = tmp_path / "long.txt"
    src.write_text("word " * 400)
    code, _, err = run_cli("compress", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                           "--model_max_length", "64", "--overlong", "truncate", "--device", "cpu")
    assert code == 0 and Memory.load(out).num_tokens == [64]


def test_generate_refuses_memory_of_another_config(checkpoint, base_dir, tmp_path, run_cli, pretrain_file):
    other = tmp_path / "other"
    assert run_cli("pretrain", *tiny_args(base_dir, other, pretrain_file, "--max_steps", "1", "--fixed_mem_size", "2"))[0] == 0
    src = tmp_path / "t.txt"
    src.write_text("Some text to compress.")
    mem_file = tmp_path / "t.mem.safetensors"
    assert run_cli("compress", "--checkpoint", str(other), "--input", str(src), "--output", str(mem_file), "--device", "cpu")[0] == 0
    code, _, err = run_cli("generate", "--checkpoint", str(checkpoint), "--memory", str(mem_file), "--reconstruct", "--device", "cpu")
    assert code == 1 and "fingerprint" in err and "Traceback" not in err


def test_console_script_user_error_exits_nonzero_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hicae.cli.main", "compress", "--checkpoint", str(tmp_path), "--input",
                        str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "missing.txt: no such file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "hicae.cli.main", "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command" in r.stderr


@pytest.mark.slow
def test_demo_runs(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--tiny", "--output_dir", str(tmp_path / "demo"), "--max_steps", "20")
    assert code == 0, err
    assert "reconstructed:" in out and (tmp_path / "demo" / "demo.mem.safetensors").exists()


def test_other_weights_are_refused_unless_allowed(checkpoint, base_dir, tmp_path, run_cli, pretrain_file):
    other_base = tmp_path / "other-base"  # the same shape and config as base_dir, other weights
    tiny_model("qwen3", initializer_range=0.5, seed=1).save_pretrained(other_base)
    load_qwen3_tokenizer().save_pretrained(other_base)
    src = tmp_path / "t.txt"
    src.write_text("Some text to compress.")
    mem_file = tmp_path / "t.mem.safetensors"
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(mem_file), "--device", "cpu",
            "--model_name_or_path", str(other_base)]
    code, _, err = run_cli("compress", *args)
    assert code == 1 and "base weights" in err and "--allow_other_weights" in err and "Traceback" not in err
    assert not mem_file.exists()
    assert run_cli("compress", *args, "--allow_other_weights")[0] == 0

    # a memory of another run's checkpoint (same config and base, other trained weights)
    other = tmp_path / "other"
    assert run_cli("pretrain", *tiny_args(base_dir, other, pretrain_file, "--max_steps", "1", "--seed", "7"))[0] == 0
    assert run_cli("compress", *args[:-2], "--checkpoint", str(other))[0] == 0
    gen = ["generate", "--checkpoint", str(checkpoint), "--memory", str(mem_file), "--reconstruct", "--device", "cpu",
           "--max_new_tokens", "2"]
    code, _, err = run_cli(*gen)
    assert code == 1 and "encoder weights" in err and "Traceback" not in err
    assert run_cli(*gen, "--allow_other_weights")[0] == 0


def test_broken_adapter_is_refused_and_writes_nothing(checkpoint, tmp_path, run_cli):
    f = checkpoint / "adapter_model.safetensors"
    tensors = load_file(str(f))
    name = sorted(tensors)[0]
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, str(f))
    src = tmp_path / "t.txt"
    src.write_text("Some text to compress.")
    out = tmp_path / "t.mem.safetensors"
    code, _, err = run_cli("compress", "--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out),
                           "--device", "cpu")
    assert code == 1 and f"tensor {name} has non-finite values" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flags,named", [
    (dict(temperature=0.7), "--temperature only apply"),
    (dict(top_p=0.9), "--top_p only apply"),
    (dict(temperature=0.7, top_p=0.9), "--temperature and --top_p only apply"),
])
def test_sampling_flags_without_do_sample_are_refused(flags, named):
    """Greedy decoding would silently ignore them: the user asked for sampling and would not get it."""
    from hicae.sampling import check_generation
    from hicae.errors import ConfigError

    with pytest.raises(ConfigError, match=named + ".*add --do_sample"):
        check_generation(8, do_sample=False, **flags)
    check_generation(8, do_sample=True, **flags)  # with --do_sample they are used
    check_generation(8)  # plain greedy
