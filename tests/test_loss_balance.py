"""loss_balance: one loss from a mixed batch, as the mean over its tokens (the paper) or over its tasks."""

from __future__ import annotations

import pytest
import torch

from hicae import HierarchicalICAE, HierarchyConfig, ICAEConfig
from hicae.cli.train import build_parser
from hicae.errors import ConfigError
from hicae.demo.tiny import tiny_model
from hicae.training.data import Collator

from conftest import TEXTS, TINY_ICAE, build_icae

LM = dict(min_tokens_for_lm=4, leave_tokens_for_lm=2)
# the same passages at very different lengths: token counts per task differ a lot between batches
RECORDS = [{"text": (t + " ") * (1 + 3 * (i % 2)), "index": i} for i, t in enumerate(TEXTS)]


def model_and_collator(tok, **cfg):
    model = build_icae(tok, "qwen3", **LM, **cfg).model
    return model, Collator(model.tokenizer, model.tokens, model.icae_config, "pretrain", 0.5, seed=0)


def test_tasks_balance_equals_mean_of_each_tasks_own_batch(qwen3_tokenizer):
    """'tasks' on a mixed AE + LM batch equals, loss and gradients, the mean of two separate 'tokens' losses: the
    AE records alone and the LM records alone. The two task means weigh the same whatever their token counts."""
    model, col = model_and_collator(qwen3_tokenizer, loss_balance="tasks")
    batch = col(RECORDS)
    tasks = batch["task"].tolist()
    assert set(tasks) == {0, 1}
    params = list(model.trainable_parameters().values())
    out = model(**batch)
    assert int(out["ae_tokens"]) != int(out["lm_tokens"])
    grads = torch.autograd.grad(out["loss"], params, allow_unused=True)

    model.icae_config.loss_balance = "tokens"
    parts = [model(**col([r for r, t in zip(RECORDS, tasks) if t == j]))["loss"] for j in (0, 1)]
    want = (parts[0] + parts[1]) / 2
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)
    for g, h in zip(grads, want_grads):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    # and it is not the token mean, which the longer task dominates
    tokens_loss = model(**batch)["loss"]
    sums = {n: out[f"{n}_loss_sum"] for n in ("ae", "lm")}
    counts = {n: out[f"{n}_tokens"] for n in ("ae", "lm")}
    torch.testing.assert_close(tokens_loss, (sums["ae"] + sums["lm"]) / (counts["ae"] + counts["lm"]))
    assert not torch.allclose(tokens_loss, out["loss"])


def test_one_task_batch_is_the_same_either_way(qwen3_tokenizer):
    model, _ = model_and_collator(qwen3_tokenizer)
    col = Collator(model.tokenizer, model.tokens, model.icae_config, "pretrain", 0.0, seed=0)  # AE only
    batch = col(RECORDS)
    with torch.no_grad():
        tokens = model(**batch)["loss"]
        model.icae_config.loss_balance = "tasks"
        assert torch.equal(model(**batch)["loss"], tokens)


def test_hierarchical_model_balances_too(qwen3_tokenizer):
    torch.manual_seed(100)
    hcfg = HierarchyConfig(levels=2, group_size=2, max_slots=64)
    hier = HierarchicalICAE(tiny_model("qwen3", seed=0), qwen3_tokenizer,
                            ICAEConfig(**{**TINY_ICAE, **LM, "mem_size": 2, "compression_rate": 2,
                                          "loss_balance": "tasks"}), hcfg)
    col = Collator(hier.tokenizer, hier.tokens, hier.icae_config, "pretrain", 0.5, seed=0, hierarchy=hcfg)
    batch = col(RECORDS)
    out = hier(**batch)
    with torch.no_grad():
        means = [out[f"{n}_loss_sum"] / out[f"{n}_tokens"] for n in ("ae", "lm") if out[f"{n}_tokens"] > 0]
    assert len(means) == 2  # a mixed batch
    torch.testing.assert_close(out["loss"].detach(), torch.stack(means).mean(), rtol=1e-5, atol=1e-6)


def test_setting_checked_flagged_and_not_part_of_memory():
    with pytest.raises(ConfigError, match="loss_balance must be one of"):
        ICAEConfig(loss_balance="examples")
    assert "loss_balance" not in ICAEConfig._MEMORY_FIELDS  # a run may switch it on a restored adapter
    base = {"hidden_size": 8}
    assert ICAEConfig(loss_balance="tasks").memory_fingerprint(base) == ICAEConfig().memory_fingerprint(base)
    cfg = build_parser("finetune").parse(["--train_file", "x", "--output_dir", "o", "--loss_balance", "tasks"])[2]
    assert cfg.loss_balance == "tasks"
