"""``ppl``: each condition equals a direct computation; files; bad inputs."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from hicae import ConfigError, DataError
from hicae.evaluation import EvalSettings, TextRecord, run_ppl
from hicae.evaluation.ppl import parse_conditions, split_text
from hicae.layout import lm_example
from hicae.tokens import tokenize

from .conftest import TEXTS

QUIET = EvalSettings(batch_size=3, progress=False)
CONT, LEAVE = 6, 2


@pytest.fixture(scope="module")
def pristine(icae_ckpt):
    """The base model as plain transformers loads it (no ICAE wrapping, no shared-weight twin)."""
    return AutoModelForCausalLM.from_pretrained(icae_ckpt / "base", dtype=torch.float32).eval()


def direct_nll(base, prefix, cont, leave):
    """Summed NLL of cont[leave:] after prefix + cont[:leave], from the model's full logits."""
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        logits = base(input_ids=ids).logits[0].double()
    start = len(prefix) + leave  # position of the first scored token
    return float(F.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="sum"))


def test_plain_conditions_equal_direct_base_model_computation(icae_model, pristine):
    records = [TextRecord(f"t:{i}", t) for i, t in enumerate(TEXTS[:4])]
    res = run_ppl(icae_model, records, QUIET, continuation_tokens=CONT, leave_tokens=LEAVE)
    ids = tokenize(icae_model.tokenizer, TEXTS[:4])
    for row, x in zip(res.examples, ids):
        ctx, cont = x[:-CONT], x[-CONT:]
        n = row["slots"]
        assert n < len(ctx) or row is res.examples[-1]  # most contexts are longer than their memory: truncation matters
        assert row["scored_tokens"] == CONT - LEAVE
        assert row["full_nll_sum"] == pytest.approx(direct_nll(pristine, ctx, cont, LEAVE), rel=1e-5)
        assert row["truncated_nll_sum"] == pytest.approx(direct_nll(pristine, ctx[-n:], cont, LEAVE), rel=1e-5)
        assert row["none_nll_sum"] == pytest.approx(direct_nll(pristine, [], cont, LEAVE), rel=1e-5)
        assert row["full_ppl"] == pytest.approx(math.exp(row["full_nll_sum"] / (CONT - LEAVE)))
    total = sum(r["full_nll_sum"] for r in res.examples)
    assert res.summary["full"]["ppl"] == pytest.approx(math.exp(total / (4 * (CONT - LEAVE))))


def test_memory_condition_is_the_training_lm_objective(icae_model):
    """With leave_tokens = the model's leave_tokens_for_lm, the memory NLL is ICAE's LM loss."""
    leave = icae_model.icae_config.leave_tokens_for_lm
    text = " ".join(TEXTS)
    res = run_ppl(icae_model, [TextRecord("t:1", text)], QUIET, continuation_tokens=leave + 5, leave_tokens=leave,
                  conditions=["memory"])
    x = tokenize(icae_model.tokenizer, [text])[0]
    ctx, cont = x[: -(leave + 5)], x[-(leave + 5):]
    mem = icae_model.compress_ids([ctx])
    ex = lm_example(mem.num_slots[0], cont, leave)
    with torch.no_grad():
        out = icae_model.decoder_loss(mem.slots[0], torch.tensor([ex.ids]), torch.tensor([ex.labels]),
                                      torch.ones(1, len(ex.ids), dtype=torch.long))
    assert res.examples[0]["memory_nll_sum"] == pytest.approx(float(out["loss"]) * 5, rel=1e-5)
    assert set(res.summary) >= {"memory"} and "full" not in res.summary


def test_hierarchical_memory_within_budget(hier_model):
    text = " ".join(TEXTS)
    res = run_ppl(hier_model, [TextRecord("t:1", text)], EvalSettings(max_slots=6, progress=False), continuation_tokens=8)
    row = res.examples[0]
    assert row["slots"] <= 6 and all(math.isfinite(row[f"{c}_ppl"]) for c in ("none", "memory", "full", "truncated"))


def test_split_text_and_overlong_context_keeps_its_tail(icae_model, monkeypatch):
    ids = list(range(100, 120))
    assert split_text(icae_model, ids, "f:1", 5) == (ids[:15], ids[15:])
    with pytest.raises(DataError, match="f:3: the text has 5 tokens"):
        split_text(icae_model, ids[:5], "f:3", 5)
    cfg = icae_model.icae_config
    monkeypatch.setattr(icae_model, "icae_config", dataclasses.replace(cfg, model_max_length=10))
    with pytest.raises(DataError, match="f:1: the context has 15 tokens"):
        split_text(icae_model, ids, "f:1", 5)
    monkeypatch.setattr(icae_model, "icae_config", dataclasses.replace(cfg, model_max_length=10, overlong="truncate"))
    assert split_text(icae_model, ids, "f:1", 5) == (ids[5:15], ids[15:])


def test_bad_settings():
    assert parse_conditions("full, memory,full") == ["full", "memory"]
    with pytest.raises(ConfigError, match="unknown"):
        parse_conditions("full,bogus")
    with pytest.raises(ConfigError, match="leave_tokens"):
        run_ppl(None, [], QUIET, continuation_tokens=4, leave_tokens=0)
    with pytest.raises(ConfigError, match="must exceed"):
        run_ppl(None, [], QUIET, continuation_tokens=2, leave_tokens=2)


def test_cli_end_to_end(icae_ckpt, text_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "ppl", "--checkpoint", icae_ckpt, "--data", text_file, "--output_dir", out,
                           "--device", "cpu", "--continuation_tokens", "2", "--no_progress")
    assert code == 0, err
    res = json.loads((out / "ppl.json").read_text())
    for c in ("none", "memory", "full", "truncated"):
        assert res["summary"][c]["scored_tokens"] == 5 * 1 and res["summary"][c]["ppl"] > 1
    assert (out / "ppl_perplexity.png").exists() and "| full text |" in (out / "ppl.md").read_text()
    code, _, err = run_cli("eval", "--task", "ppl", "--checkpoint", icae_ckpt, "--data", text_file, "--output_dir", out,
                           "--device", "cpu", "--continuation_tokens", "3")
    assert code == 1 and f"{text_file}:5: the text has 3 tokens" in err and "Traceback" not in err
