"""The command line never destroys its input and never shows a traceback (issue 13).

Each case runs the real ``hicae`` entry point in a subprocess, as a user would, and checks the exit
status, the one-line message naming the option or file, and that every input is byte-for-byte
unchanged. Faults that a test cannot cause for real everywhere (a read-only folder when running as
root, who may write anywhere; a full disk) are injected into the subprocess before hicae starts.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hicae.cli.main import main

from .conftest import PASSAGES, tiny_args

# What the `hicae` console script does, after running the fault (Python code) the test injects.
BOOT = "import os, sys; exec(os.environ.get('HICAE_TEST_FAULT', '')); from hicae.cli.main import main; sys.exit(main())"

# A folder hicae may not create files in, as a non-root user sees it (root ignores permission bits).
READ_ONLY = """
import errno as _errno
_open, _ro = os.open, {folder!r}
def _guarded(path, flags, *args, **kwargs):
    if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == _ro:
        raise PermissionError(_errno.EACCES, os.strerror(_errno.EACCES), path)
    return _open(path, flags, *args, **kwargs)
os.open = _guarded
"""

# A full disk as safetensors meets it: a partial file, then its error (the message it gives for ENOSPC).
DISK_FULL = """
import safetensors.torch as _st
from safetensors import SafetensorError as _E
def _save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"partial")
    raise _E("Error while serializing: I/O error: No space left on device (os error 28)")
_st.save_file = _save_file
"""


def hicae(*argv, fault: str = "", pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HICAE_TEST_FAULT": fault, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", BOOT, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=600)


def assert_one_line_error(r: subprocess.CompletedProcess, cmd: str, *needles: str) -> None:
    tail = r.stderr[-3000:]
    assert r.returncode == 1, tail
    assert "Traceback" not in r.stderr, tail
    lines = [line for line in r.stderr.splitlines() if line.startswith(f"hicae {cmd}: error: ")]
    assert len(lines) == 1, tail
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under ``paths``, by path, with its bytes."""
    out = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f)] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def work(base_dir, tmp_path_factory):
    """A trained ICAE checkpoint, a hierarchical one, and a memory file of each (built in-process)."""
    d = tmp_path_factory.mktemp("hostile")
    train = d / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
    assert main(["pretrain", *tiny_args(base_dir, d / "ck", train, "--max_steps", "1")]) == 0
    assert main(["pretrain", *tiny_args(base_dir, d / "hck", train, "--max_steps", "1", "--restore_from", str(d / "ck"),
                                        "--hierarchical", "--levels", "3", "--group_size", "2", "--max_slots", "16",
                                        "--save_strategy", "no")]) == 0
    (d / "t.txt").write_text(PASSAGES[0])
    (d / "long.txt").write_text(" ".join(PASSAGES))
    assert main(["compress", "--checkpoint", str(d / "ck"), "--input", str(d / "t.txt"), "--output", str(d / "m.mem"),
                 "--device", "cpu"]) == 0
    assert main(["compress", "--checkpoint", str(d / "hck"), "--input", str(d / "long.txt"), "--output",
                 str(d / "h.mem"), "--device", "cpu"]) == 0
    return d


# ---- data lost ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "hard link", "checkpoint file"])
def test_compress_refuses_an_output_that_is_an_input(work, tmp_path, how):
    src = tmp_path / "t.txt"
    shutil.copy(work / "t.txt", src)
    if how == "same path":
        out, named = src, str(src)
    elif how == "hard link":
        out, named = tmp_path / "link.mem", str(src)
        os.link(src, out)
    else:
        out, named = work / "ck" / "adapter_model.safetensors", str(work / "ck")
    before = snapshot(src, work / "ck")
    r = hicae("compress", "--checkpoint", work / "ck", "--input", src, "--output", out, "--device", "cpu")
    assert_one_line_error(r, "compress", f"--output {out}", named)
    assert snapshot(src, work / "ck") == before


def test_generate_refuses_to_write_over_the_memory_file(work, tmp_path):
    mem = tmp_path / "m.mem"
    shutil.copy(work / "m.mem", mem)
    before = snapshot(mem)
    r = hicae("generate", "--checkpoint", work / "ck", "--memory", mem, "--reconstruct", "--output", mem, "--device", "cpu")
    assert_one_line_error(r, "generate", f"--output {mem}", f"--memory {mem}")
    assert snapshot(mem) == before


def test_training_and_eval_refuse_outputs_over_inputs(work, tmp_path, run_cli):
    """The same rule in the other commands (in-process: the entry point is the one tested above)."""
    ck = tmp_path / "ck"
    shutil.copytree(work / "ck", ck)
    data = tmp_path / "data.jsonl"
    shutil.copy(work / "train.jsonl", data)
    before = snapshot(ck, data)
    code, _, err = run_cli("pretrain", "--restore_from", str(ck), "--output_dir", str(ck), "--train_file", str(data),
                           "--use_cpu", "true", "--report_to", "none")
    assert code == 1 and f"--output_dir {ck} is the same folder as --restore_from" in err and "Traceback" not in err
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", str(ck), "--data", str(data), "--output_dir",
                           str(tmp_path / "ev"), "--judge_file", str(data), "--device", "cpu")
    assert code == 1 and f"--judge_file {data} is the same file as --data" in err
    assert snapshot(ck, data) == before


# ---- one-line errors instead of tracebacks --------------------------------------------------------


@pytest.mark.parametrize("what", [("--prompt", "Which animal?"), ("--reconstruct",)])
def test_max_new_tokens_below_one_is_refused(work, what):
    before = snapshot(work / "m.mem")
    r = hicae("generate", "--checkpoint", work / "ck", "--memory", work / "m.mem", *what, "--max_new_tokens", "0",
              "--device", "cpu")
    assert_one_line_error(r, "generate", "--max_new_tokens must be >= 1, got 0")
    assert snapshot(work / "m.mem") == before


def test_negative_max_new_tokens_is_refused(work, run_cli):
    code, _, err = run_cli("generate", "--checkpoint", str(work / "ck"), "--memory", str(work / "m.mem"), "--prompt", "q",
                           "--max_new_tokens", "-1", "--device", "cpu")
    assert code == 1 and "--max_new_tokens must be >= 1, got -1" in err


def test_sampling_at_temperature_zero_says_how_to_decode_greedily(work):
    r = hicae("generate", "--checkpoint", work / "ck", "--memory", work / "m.mem", "--prompt", "Which animal?",
              "--do_sample", "--temperature", "0", "--device", "cpu")
    assert_one_line_error(r, "generate", "--temperature", "drop --do_sample")


def test_mistyped_device_is_named(work):
    r = hicae("generate", "--checkpoint", work / "ck", "--memory", work / "m.mem", "--reconstruct", "--device", "cdua")
    assert_one_line_error(r, "generate", "--device cdua: not a device")


def test_output_in_a_read_only_folder(work, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = hicae("compress", "--checkpoint", work / "ck", "--input", work / "t.txt", "--output", ro / "x.mem",
                  "--device", "cpu", fault=READ_ONLY.format(folder=str(ro)))
        assert_one_line_error(r, "compress", str(ro / "x.mem"), "Permission denied")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_output_whose_parent_is_a_file(work, tmp_path):
    src = tmp_path / "t.txt"
    shutil.copy(work / "t.txt", src)
    before = snapshot(src)
    r = hicae("compress", "--checkpoint", work / "ck", "--input", src, "--output", src / "x.mem", "--device", "cpu")
    assert_one_line_error(r, "compress", f"{src / 'x.mem'}", f"{src} is a file, not a folder")
    assert snapshot(src) == before


def test_full_disk_keeps_the_old_output_and_leaves_no_temporary_file(work, tmp_path):
    out = tmp_path / "x.mem"
    out.write_bytes(b"the previous memory file")
    r = hicae("compress", "--checkpoint", work / "ck", "--input", work / "t.txt", "--output", out, "--device", "cpu",
              fault=DISK_FULL)
    assert_one_line_error(r, "compress", f"cannot write {out}", "No space left on device", "unchanged")
    assert out.read_bytes() == b"the previous memory file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mem"]


def _edit_memory(src: Path, dst: Path, **meta: object) -> None:
    with safe_open(str(src), "pt") as f:
        metadata = {**f.metadata(), **{k: json.dumps(v) for k, v in meta.items()}}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata=metadata)


def test_hierarchical_memory_with_tail_ids_outside_the_vocabulary(work, tmp_path):
    bad = tmp_path / "bad.mem"
    _edit_memory(work / "h.mem", bad, tails=[[1, 2, 10**9]])
    before = snapshot(bad)
    r = hicae("compress", "--checkpoint", work / "hck", "--input", work / "t.txt", "--append_to", bad,
              "--output", tmp_path / "out.mem", "--device", "cpu")
    assert_one_line_error(r, "compress", str(bad), "outside this model's vocabulary")
    assert snapshot(bad) == before and not (tmp_path / "out.mem").exists()


def test_hierarchical_memory_naming_an_impossible_level(work, tmp_path, run_cli):
    with safe_open(str(work / "h.mem"), "pt") as f:
        blocks = json.loads(f.metadata()["blocks"])
    assert len(blocks[0]) >= 2  # a merged block and more
    blocks[0][0][0] = 9
    bad = tmp_path / "bad.mem"
    _edit_memory(work / "h.mem", bad, blocks=blocks)
    before = snapshot(bad)
    r = hicae("generate", "--checkpoint", work / "hck", "--memory", bad, "--reconstruct", "--device", "cpu")
    assert_one_line_error(r, "generate", str(bad), "level 9")
    assert snapshot(bad) == before
    # the file's level count raised to match: the file is consistent, but not for this 3-level model
    _edit_memory(work / "h.mem", bad, blocks=blocks, levels=9)
    code, _, err = run_cli("generate", "--checkpoint", str(work / "hck"), "--memory", str(bad), "--reconstruct",
                           "--device", "cpu")
    assert code == 1 and f"{bad}: " in err and "level 9, but this model has 3 levels" in err


def test_resume_from_a_checkpoint_holding_a_refused_pickle(work, base_dir, tmp_path):
    resume = tmp_path / "checkpoint-1"
    shutil.copytree(work / "ck" / "checkpoint-1", resume)
    torch.save({"python": argparse.Namespace(state=1)}, resume / "rng_state.pth")  # not plain data: refused
    before = snapshot(resume, work / "train.jsonl")
    r = hicae("pretrain", *tiny_args(base_dir, tmp_path / "out", work / "train.jsonl", "--max_steps", "2",
                                     "--resume_from_checkpoint", str(resume)))
    assert_one_line_error(r, "pretrain", str(resume / "rng_state.pth"), "safe loader refused", "never loads")
    assert snapshot(resume, work / "train.jsonl") == before


def test_base_model_with_custom_code_is_not_run(work, base_dir, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(base_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="custom_qwen", auto_map={"AutoConfig": "modeling_custom.Config",
                                                      "AutoModelForCausalLM": "modeling_custom.Model"})
    (custom / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (custom / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    before = snapshot(custom)
    r = hicae("pretrain", *tiny_args(custom, tmp_path / "out", work / "train.jsonl", "--max_steps", "1"))
    assert_one_line_error(r, "pretrain", str(custom), "never runs code", "trust_remote_code=True")
    assert not marker.exists() and snapshot(custom) == before


# ---- silently less than asked --------------------------------------------------------------------


def test_eval_ae_without_sacrebleu_fails_at_start(work, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sacrebleu.py").write_text("raise ImportError('No module named sacrebleu')\n")
    r = hicae("eval", "--task", "ae", "--checkpoint", work / "ck", "--data", work / "train.jsonl",
              "--output_dir", tmp_path / "ev", "--device", "cpu", pythonpath=str(shim))
    assert_one_line_error(r, "eval", "sacrebleu", "pip install 'hicae[eval]'")
    assert not (tmp_path / "ev").exists()
