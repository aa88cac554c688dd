"""``hicae eval``: registration, help, and user errors (exit 1, one line, no traceback)."""

import pytest

from .conftest import write_jsonl


def test_registered_and_help(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "eval" in out
    with pytest.raises(SystemExit) as e:
        run_cli("eval", "--help")
    assert e.value.code == 0


@pytest.mark.parametrize("args, message", [
    (("--task", "ae"), "--task ae needs --data"),
    (("--task", "passkey", "--data", "x.jsonl"), "makes its own data"),
    (("--task", "passkey", "--lengths", "4q"), "--lengths: cannot read '4q'"),
    (("--task", "needle", "--depths", "0,2"), "--depths must be fractions in [0, 1]"),
    (("--task", "ppl", "--data", "DATA", "--conditions", "full,nope"), "--conditions: unknown ['nope']"),
    (("--task", "qa", "--data", "DATA"), "DATA:2: missing field 'prompt'"),
    (("--task", "ae", "--data", "DATA", "--batch_size", "0"), "--batch_size must be >= 1"),
    (("--task", "ae", "--data", "missing.jsonl"), "missing.jsonl: no such file"),
    (("--task", "ppl", "--data", "DATA", "--continuation_tokens", "1"), "must exceed --leave_tokens (1)"),
    (("--task", "needle", "--distractors", "50"), "--distractors must be in [0, 19]"),
    (("--task", "passkey", "--samples", "0"), "--samples must be >= 1"),
])
def test_user_errors_before_loading_the_model(tmp_path, run_cli, args, message):
    data = write_jsonl(tmp_path / "d.jsonl", [{"input": "c", "prompt": "q", "answer": "a"}, {"input": "c", "answer": "a"}])
    args = [str(data) if a == "DATA" else a for a in args]
    message = message.replace("DATA", str(data))
    # the checkpoint does not exist: these errors must come before any model is loaded
    code, _, err = run_cli("eval", "--checkpoint", tmp_path / "no-ckpt", "--output_dir", tmp_path / "o", *args)
    assert code == 1 and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_missing_checkpoint(tmp_path, run_cli):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello there"}])
    code, _, err = run_cli("eval", "--task", "ae", "--checkpoint", tmp_path / "nope", "--data", data, "--output_dir", tmp_path)
    assert code == 1 and "not a hicae checkpoint" in err
