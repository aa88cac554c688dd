"""The contract every ``hicae eval`` task keeps: registered once, described in ``--help``, its data rule
enforced before the model loads, and a run through the CLI that writes its report files.

A new task joins ``SMOKE`` below (the fastest arguments that run it on the tiny checkpoint)."""

import json

import pytest

from hicae.cli.eval import DESCRIPTION, build_parser
from hicae.evaluation.registry import REGISTRY, TASKS

from .conftest import TEXTS, write_jsonl

QUICK = ("--device", "cpu", "--limit", "2", "--max_new_tokens", "3", "--no_progress")
SMOKE = {  # task -> (data it reads: None, "texts" or "qa"; its own arguments)
    "ae": ("texts", ()),
    "ppl": ("texts", ("--continuation_tokens", "2", "--conditions", "none,memory")),
    "qa": ("qa", ("--skip_fulltext",)),
    "passkey": (None, ("--lengths", "48", "--depths", "0.5", "--samples", "1")),
    "needle": (None, ("--lengths", "48", "--depths", "0.5", "--samples", "1")),
}


def test_every_task_is_registered_once_and_described():
    assert set(SMOKE) == set(REGISTRY) and TASKS == tuple(REGISTRY)
    assert all(name == t.name for name, t in REGISTRY.items())
    for t in REGISTRY.values():
        assert f"  {t.name:<8} {t.summary}" in DESCRIPTION
        assert (SMOKE[t.name][0] is not None) == t.reads_data
    build_parser()  # the tasks' flags do not clash


def _data(tmp_path, kind):
    if kind == "texts":
        return write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS[:2]])
    return write_jsonl(tmp_path / "q.jsonl", [{"input": t, "prompt": "What is it about?", "answer": t.split()[1]}
                                               for t in TEXTS[:2]])


@pytest.mark.parametrize("name", TASKS)
def test_each_task_refuses_the_wrong_data_before_loading(tmp_path, run_cli, name):
    kind = SMOKE[name][0]
    args = () if kind else ("--data", _data(tmp_path, "texts"))
    code, _, err = run_cli("eval", "--task", name, "--checkpoint", tmp_path / "no-ckpt", "--output_dir", tmp_path / "o", *args)
    assert code == 1 and ("needs --data" if kind else "makes its own data") in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", TASKS)
def test_each_task_runs_and_writes_its_report(icae_ckpt, tmp_path, run_cli, name):
    kind, own = SMOKE[name]
    data = ("--data", _data(tmp_path, kind)) if kind else ()
    out = tmp_path / "out"
    code, stdout, err = run_cli("eval", "--task", name, "--checkpoint", icae_ckpt, "--output_dir", out, *data, *QUICK, *own)
    assert code == 0, err
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["task"] == name and isinstance(line["summary"], dict)
    assert all((out / f).exists() for f in (f"{name}.json", f"{name}_examples.jsonl", f"{name}.md"))
    assert json.loads((out / f"{name}.json").read_text())["task"] == name


FOREIGN = [(name, other) for name in TASKS for other in TASKS
           if REGISTRY[other].flags is not REGISTRY[name].flags and SMOKE[other][1]]


@pytest.mark.parametrize("name,other", FOREIGN)
def test_a_flag_of_another_task_is_refused_not_ignored(tmp_path, run_cli, name, other):
    # One parser holds every task's flags: --task qa --conditions memory used to run qa as if it were not there.
    kind = SMOKE[name][0]
    data = ("--data", _data(tmp_path, kind)) if kind else ()
    flag = SMOKE[other][1][0]
    code, _, err = run_cli("eval", "--task", name, "--checkpoint", tmp_path / "no-ckpt", "--output_dir", tmp_path / "o",
                           *data, *SMOKE[other][1])
    assert code == 1 and f"does not read {flag} (read by --task " in err and other in err, err
    assert not (tmp_path / "o").exists()
