"""hicae pretrain / finetune end to end on a tiny model (CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_args


def trained(d):
    return {**load_file(d / "adapter_model.safetensors"), **load_file(d / "icae_embeddings.safetensors")}


def test_pretrain_writes_trained_only_checkpoint_and_logs(base_dir, pretrain_file, tmp_path, run_cli):
    out = tmp_path / "run"
    code, stdout, _ = run_cli("pretrain", *tiny_args(base_dir, out, pretrain_file, "--max_steps", "6", "--lm_ratio", "0.5",
                                                     "--min_tokens_for_lm", "4", "--leave_tokens_for_lm", "1"))
    assert code == 0
    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "icae_embeddings.safetensors", "hicae_config.json",
            "training_args.json", "loss_history.json"} <= files
    assert not any(n.endswith((".bin", ".pt")) and "training_args" in n for n in files)  # no pickled args
    assert "model.safetensors" not in files  # the base model is not copied
    hist = json.loads((out / "loss_history.json").read_text())
    assert len(hist["loss"]) == 6 and "ae_loss" in hist and "lm_loss" in hist
    cfg = json.loads((out / "hicae_config.json").read_text())
    assert cfg["icae"]["mem_size"] == 4 and cfg["base_model"] == str(base_dir)


def test_resume_reproduces_uninterrupted_run(base_dir, pretrain_file, tmp_path, run_cli):
    full, part = tmp_path / "full", tmp_path / "part"
    args = ("--max_steps", "4", "--save_steps", "2", "--seed", "3")
    assert run_cli("pretrain", *tiny_args(base_dir, full, pretrain_file, *args))[0] == 0
    assert run_cli("pretrain", *tiny_args(base_dir, part, pretrain_file, *args))[0] == 0
    # pretend the second run died after step 2: drop everything later, then resume
    import shutil

    shutil.rmtree(part / "checkpoint-4")
    for f in ("adapter_model.safetensors", "icae_embeddings.safetensors"):
        (part / f).unlink()
    ck = part / "checkpoint-2"
    assert run_cli("pretrain", *tiny_args(base_dir, part, pretrain_file, *args, "--resume_from_checkpoint", str(ck)))[0] == 0
    a, b = trained(full), trained(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not all(torch.equal(a[k], trained(ck)[k]) for k in a)  # training went on after step 2


def test_finetune_restores_pretrained_checkpoint(base_dir, pretrain_file, finetune_file, tmp_path, run_cli):
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_args(base_dir, pre, pretrain_file, "--max_steps", "2"))[0] == 0
    ft = tmp_path / "ft"
    code, _, err = run_cli("finetune", "--restore_from", str(pre), "--output_dir", str(ft), "--train_file",
                           str(finetune_file), "--max_steps", "3", "--report_to", "none", "--use_cpu", "true",
                           "--disable_tqdm", "true", "--learning_rate", "1e-2", "--logging_steps", "1")
    assert code == 0, err
    hist = json.loads((ft / "loss_history.json").read_text())
    assert "ft_loss" in hist and "ae_loss" not in hist
    before, after = trained(pre), trained(ft)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # memory-defining settings come from the restored checkpoint: a conflicting one is refused
    code, _, err = run_cli("finetune", "--restore_from", str(pre), "--output_dir", str(tmp_path / "x"),
                           "--train_file", str(finetune_file), "--fixed_mem_size", "8", "--use_cpu", "true")
    assert code == 1 and "--mem_size 8 differs" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "fine"}\n{"text": broken}\n', ":2: malformed JSON"),
        ('{"text": "fine"}\n{"txt": "x"}\n', ":2: missing field 'text'"),
    ],
)
def test_bad_data_fails_before_training_without_traceback(base_dir, tmp_path, run_cli, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    out = tmp_path / "run"
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, f, "--max_steps", "2"))
    assert code == 1
    assert f"{f}{message}" in err and "Traceback" not in err
    assert not (out / "adapter_model.safetensors").exists()


def test_unknown_flag_and_missing_file_are_user_errors(base_dir, tmp_path, run_cli):
    code, _, err = run_cli("pretrain", "--model_name_or_path", str(base_dir), "--train_file", str(tmp_path / "no.jsonl"))
    assert code == 1 and "no such file" in err
    code, _, err = run_cli("pretrain", "--train_file", "x.jsonl", "--no_such_flag", "1")
    assert code == 1 and "no_such_flag" in err
    code, _, err = run_cli("pretrain", "--train_file", "x.jsonl", "--position_layout", "diagonal")
    assert code == 1 and "position_layout" in err
