"""benchmarks/bench_step.py (issue 17, point 2): the training-step benchmark runs on a tiny model, its
phase split computes the library step's gradients, and ``speed.bf16_adapter_training`` equals the
fp32-adapter step within bf16 rounding."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_step  # noqa: E402

from hicae.speed import bf16_adapter_training  # noqa: E402


def tiny_args(**kw) -> argparse.Namespace:
    a = dict(tiny=True, batch=2, mem_size=16, compression_rate=4, lora_r=8, lora_alpha=16, lm_ratio=0.5, seed=0)
    a.update(kw)
    return argparse.Namespace(**a)


def grads_of(model, step) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one step, without the optimizer update."""
    opt = argparse.Namespace(step=lambda: None, zero_grad=lambda set_to_none=True: None)
    out = step(model, opt)
    g = {n: p.grad.detach().float().clone() for n, p in model.trainable_parameters().items() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out["loss"], g


def test_bench_step_tiny_runs_and_reports(tmp_path):
    out = tmp_path / "step.json"
    md = tmp_path / "bench.md"
    rc = bench_step.main(["--tiny", "--batch", "2", "--repeats", "1", "--warmup", "0",
                          "--variants", "phases,bf16_adapter,decoder_lora,pooled", "--out", str(out), "--append-md", str(md)])
    assert rc == 0
    res = json.loads(out.read_text())
    v = res["variants"]
    assert {"floor", "icae", "phases", "bf16_adapter", "floor_bf16_adapter", "decoder_lora", "pooled"} <= set(v)
    assert res["floor_tokens"] >= res["counts"]["tokens"] and res["counts"]["labelled"] > 0
    assert all(r["tokens_per_s"] > 0 for r in v.values()) and v["icae"]["over_floor"] > 0
    assert set(v["phases"]["phases_ms"]) == {"encoder_forward", "decoder_forward", "head_ce_forward", "head_ce_backward",
                                             "decoder_backward", "encoder_backward", "optimizer"}
    assert "| icae |" in md.read_text() and "training step vs floor" in md.read_text()


def test_phase_split_gives_the_library_gradients():
    """The timed phases are the library step cut at its seams: same loss, same gradients."""
    args = tiny_args()
    model = bench_step.build(args)
    batch = bench_step.make_batch(model, args)
    assert set(batch["task"].tolist()) == {0, 1}  # AE and LM examples both
    ref_loss, ref = grads_of(model, lambda m, o: bench_step.icae_step(m, o, batch))
    loss, got = grads_of(model, lambda m, o: bench_step.phases_step(m, o, batch))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert set(got) == set(ref) and any("mem_embeddings" in n for n in got)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("overrides", [{}, {"decoder_lora_r": 8}])
def test_bf16_adapter_training_equals_fp32_adapter_within_bf16_rounding(overrides, fused, monkeypatch):
    """Loss and gradients with the LoRA products in bf16 (fp32 master weights) against peft's fp32
    products, on a bf16 tiny model: equal within bf16 rounding; the trained tensors stay fp32."""
    from peft.tuners.lora import Linear as LoraLinear

    args = tiny_args()
    model = bench_step.build(args, **overrides)
    batch = bench_step.make_batch(model, args)
    ref_loss, ref = grads_of(model, lambda m, o: bench_step.icae_step(m, o, batch))
    peft_calls = []
    peft_forward = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda self, *a, **kw: peft_calls.append(1) or peft_forward(self, *a, **kw))
    loss, got = grads_of(model, lambda m, o: bench_step.icae_step(m, o, batch,
                                                                  lambda: bf16_adapter_training(m, fused=fused)))
    assert bool(peft_calls) is not fused  # fused: no layer fell back to peft's forward
    assert not any("forward" in vars(m) for m in model.modules())  # the layers' own forward is back
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    assert set(got) == set(ref)
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters().values())
    for n in ref:
        a, b = got[n].flatten(), ref[n].flatten()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
        assert cos > 0.99, (n, float(cos))
        assert (a.norm() - b.norm()).abs() <= 3e-2 * b.norm() + 1e-8, n
    # the block leaves peft's input cast on and autocast off
    assert not torch.is_autocast_enabled("cpu")
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)


def test_compare_env_passes_the_other_flags(monkeypatch):
    seen = []

    def fake(args, passthrough):
        seen.append(passthrough)
        return {"compare_env": {"as is": dict(icae_ms=1.0, floor_ms=1.0, icae_over_as_is=1.0, floor_over_as_is=1.0,
                                              icae_over_own_floor=1.0, icae_cpu_ms=1.0,
                                              icae_cpu_over_as_is=1.0)}, "rounds": 1}

    monkeypatch.setattr(bench_step, "compare_env", fake)
    assert bench_step.main(["--tiny", "--batch", "2", "--compare-env", "OMP_WAIT_POLICY=PASSIVE", "--rounds", "1",
                            "--variants", "phases"]) == 0
    assert seen == [["--tiny", "--batch", "2"]]


def test_trainer_uses_bf16_adapter_only_where_it_applies(tmp_path):
    """ICAETrainer trains a bf16 model on the CPU with the fused bf16 adapter; not with gradient
    checkpointing, not when turned off, not in evaluation; the loss is the plain one within bf16 rounding."""
    import contextlib

    from transformers import TrainingArguments

    from hicae.training.trainer import ICAETrainer

    args = tiny_args()
    model = bench_step.build(args)
    batch = bench_step.make_batch(model, args)

    def trainer(bf16_adapter: bool = True, **kw) -> ICAETrainer:
        targs = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], **kw)
        return ICAETrainer(model=model, args=targs, bf16_adapter=bf16_adapter)

    on, off = trainer(), trainer(bf16_adapter=False)
    model.train()
    assert not isinstance(on.adapter_speed(model), contextlib.nullcontext)
    assert isinstance(off.adapter_speed(model), contextlib.nullcontext)
    assert isinstance(trainer(gradient_checkpointing=True).adapter_speed(model), contextlib.nullcontext)
    fast = on.compute_loss(model, dict(batch)).detach()
    plain = off.compute_loss(model, dict(batch)).detach()
    fast, plain = fast.item(), plain.item()
    assert fast == pytest.approx(plain, rel=2e-2) and fast != plain
    model.eval()
    assert isinstance(on.adapter_speed(model), contextlib.nullcontext)
