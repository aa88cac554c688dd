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


def test_pretrain_lm_distill_logs_distill_loss(base_dir, pretrain_file, tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, pretrain_file, "--max_steps", "3", "--lm_ratio", "1",
                                                  "--min_tokens_for_lm", "4", "--leave_tokens_for_lm", "1",
                                                  "--lm_distill", "0.5", "--distill_temperature", "2"))
    assert code == 0, err
    hist = json.loads((out / "loss_history.json").read_text())
    assert "distill_loss" in hist and "lm_loss" in hist
    cfg = json.loads((out / "hicae_config.json").read_text())
    assert (cfg["icae"]["lm_distill"], cfg["icae"]["distill_temperature"]) == (0.5, 2.0)


def test_finetune_ft_distill_and_distillation_not_inherited(base_dir, pretrain_file, finetune_file, tmp_path, run_cli):
    """--ft_distill trains instruction records against the teacher (distill_loss logged beside ft_loss); a run
    started from a distilled checkpoint distils only when its own command asks (lm_distill and its temperature
    are not carried over by --restore_from). The pretraining's LM continuations (over 4 tokens) can be shorter than
    leave_tokens_for_lm (8): such examples carry no loss, and a batch of only them still trains (a zero loss)."""
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_args(base_dir, pre, pretrain_file, "--max_steps", "1", "--lm_ratio", "1",
                                          "--min_tokens_for_lm", "4", "--lm_distill", "0.5",
                                          "--distill_temperature", "2"))[0] == 0
    args = ("--restore_from", str(pre), "--train_file", str(finetune_file), "--max_steps", "2", "--report_to", "none",
            "--use_cpu", "true", "--disable_tqdm", "true", "--logging_steps", "1", "--overlong", "truncate")
    code, _, err = run_cli("finetune", *args, "--output_dir", str(tmp_path / "plain"))
    assert code == 0, err
    icae = json.loads((tmp_path / "plain" / "hicae_config.json").read_text())["icae"]
    assert (icae["lm_distill"], icae["ft_distill"], icae["distill_temperature"]) == (0.0, 0.0, 1.0)
    assert "distill_loss" not in json.loads((tmp_path / "plain" / "loss_history.json").read_text())
    code, _, err = run_cli("finetune", *args, "--ft_distill", "0.5", "--output_dir", str(tmp_path / "kd"))
    assert code == 0, err
    hist = json.loads((tmp_path / "kd" / "loss_history.json").read_text())
    assert "distill_loss" in hist and "ft_loss" in hist and len(hist["distill_loss"]) == 2
    assert json.loads((tmp_path / "kd" / "hicae_config.json").read_text())["icae"]["ft_distill"] == 0.5
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, tmp_path / "p2", pretrain_file, "--ft_distill", "0.5"))
    assert code == 1 and "--ft_distill" in err and "--lm_distill" in err, err


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


def test_finetune_with_rehearsal_trains_answers_and_reconstruction(base_dir, pretrain_file, finetune_file, tmp_path,
                                                                    run_cli):
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_args(base_dir, pre, pretrain_file, "--max_steps", "1"))[0] == 0
    args = ("--restore_from", str(pre), "--train_file", str(finetune_file), "--max_steps", "4", "--report_to", "none",
            "--use_cpu", "true", "--disable_tqdm", "true", "--logging_steps", "1",
            "--per_device_train_batch_size", "4")
    code, _, err = run_cli("finetune", *args, "--output_dir", str(tmp_path / "ft"), "--rehearsal_file",
                           str(pretrain_file), "--rehearsal_ratio", "0.5")
    assert code == 0, err
    hist = json.loads((tmp_path / "ft" / "loss_history.json").read_text())
    assert "ft_loss" in hist and "ae_loss" in hist  # both kinds of example were trained
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, tmp_path / "p2", pretrain_file, "--max_steps", "1",
                                                  "--rehearsal_file", str(pretrain_file)))
    assert code == 1 and "--rehearsal_file" in err


def test_finetune_does_not_inherit_pretraining_truncation(base_dir, pretrain_file, finetune_file, tmp_path, run_cli):
    """A pretraining checkpoint records overlong=truncate (pretraining's default); fine-tuning from it still
    refuses an over-long input (its answer may need the cut part) unless --overlong truncate is given."""
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_args(base_dir, pre, pretrain_file, "--max_steps", "1", "--model_max_length", "8"))[0] == 0
    assert json.loads((pre / "hicae_config.json").read_text())["icae"]["overlong"] == "truncate"
    args = ("--restore_from", str(pre), "--train_file", str(finetune_file), "--max_steps", "1", "--report_to", "none",
            "--use_cpu", "true", "--disable_tqdm", "true")
    code, _, err = run_cli("finetune", *args, "--output_dir", str(tmp_path / "ft"))
    assert code == 1 and "over --model_max_length=8" in err and "--overlong" in err, err
    code, _, err = run_cli("finetune", *args, "--output_dir", str(tmp_path / "ft2"), "--overlong", "truncate")
    assert code == 0, err


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


@pytest.mark.parametrize("flag", ["--max_train_samples", "--max_eval_samples"])
def test_zero_samples_is_refused(base_dir, pretrain_file, tmp_path, run_cli, flag):
    out = tmp_path / "run"
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, pretrain_file, "--max_steps", "1",
                                                  "--validation_file", str(pretrain_file), flag, "0"))
    assert code == 1 and f"{flag} 0: must be at least 1" in err and "Traceback" not in err
    assert not (out / "adapter_model.safetensors").exists()


def test_unknown_flag_and_missing_file_are_user_errors(base_dir, tmp_path, run_cli):
    code, _, err = run_cli("pretrain", "--model_name_or_path", str(base_dir), "--train_file", str(tmp_path / "no.jsonl"))
    assert code == 1 and "no such file" in err
    code, _, err = run_cli("pretrain", "--train_file", "x.jsonl", "--no_such_flag", "1")
    assert code == 1 and "no_such_flag" in err
    code, _, err = run_cli("pretrain", "--train_file", "x.jsonl", "--position_layout", "diagonal")
    assert code == 1 and "position_layout" in err


def test_hierarchical_pretrain_upgrade_and_streaming_compress(base_dir, tmp_path, run_cli):
    long_texts = [" ".join(f"w{(i * 7 + j) % 40}" for i in range(60)) for j in range(4)]
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in long_texts))
    out = tmp_path / "hier"
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, f, "--max_steps", "3", "--hierarchical", "--levels", "3",
                                                  "--group_size", "2", "--max_slots", "16", "--model_max_length", "32",
                                                  "--lm_ratio", "0.5", "--min_tokens_for_lm", "4"))
    assert code == 0, err
    cfg = json.loads((out / "hicae_config.json").read_text())
    assert cfg["hierarchy"]["levels"] == 3 and cfg["icae"]["segmentation"] == "fixed"
    assert "level_embeddings" in load_file(out / "icae_embeddings.safetensors")
    hist = json.loads((out / "loss_history.json").read_text())
    assert len(hist["loss"]) == 3

    # stream: compress the first half, append the second; equals compressing the whole
    cut = long_texts[0].index(" ", 100)  # at a word boundary, so the two parts tokenize as the whole
    half = tmp_path / "a.txt"
    half.write_text(long_texts[0][:cut])
    rest = tmp_path / "b.txt"
    rest.write_text(long_texts[0][cut:])
    whole = tmp_path / "ab.txt"
    whole.write_text(long_texts[0])
    common = ("--checkpoint", str(out), "--device", "cpu", "--max_slots", "16")
    assert run_cli("compress", *common, "--input", str(whole), "--output", str(tmp_path / "w.mem"))[0] == 0
    assert run_cli("compress", *common, "--input", str(half), "--output", str(tmp_path / "a.mem"))[0] == 0
    code, out_s, err = run_cli("compress", *common, "--input", str(rest), "--append_to", str(tmp_path / "a.mem"),
                               "--output", str(tmp_path / "ab.mem"))
    assert code == 0, err
    from hicae import Memory

    w, ab = Memory.load(tmp_path / "w.mem"), Memory.load(tmp_path / "ab.mem")
    assert w.num_slots[0] <= 16 and w.levels >= 2
    assert w.num_tokens == ab.num_tokens and w.blocks == ab.blocks and w.tails == ab.tails
    assert torch.allclose(w.slots[0], ab.slots[0], atol=1e-5)

    # a Phase-1 checkpoint upgrades to a hierarchy when fine-tuned with --hierarchical
    pre = tmp_path / "flat"
    assert run_cli("pretrain", *tiny_args(base_dir, pre, f, "--max_steps", "1", "--segmentation", "fixed",
                                          "--model_max_length", "256"))[0] == 0
    ft = tmp_path / "ft.jsonl"
    ft.write_text("".join(json.dumps({"input": t, "prompt": "Which words?", "answer": t[:10]}) + "\n" for t in long_texts))
    code, _, err = run_cli("finetune", "--restore_from", str(pre), "--hierarchical", "--levels", "2", "--output_dir",
                           str(tmp_path / "ftout"), "--train_file", str(ft), "--max_steps", "2", "--report_to", "none",
                           "--use_cpu", "true", "--disable_tqdm", "true")
    assert code == 0, err
    assert json.loads((tmp_path / "ftout" / "hicae_config.json").read_text())["hierarchy"]["levels"] == 2
