#!/usr/bin/env python
"""Throughput of one ICAE training step on the CPU against its floor (issue 17, point 2).

The step is the real-model recipe of ``experiments/real_quality.py``: ICAE with k=16 slots per 64-token text
(r=4), LoRA r=8 (alpha 16, no dropout) on all seven projections, a batch of 8 texts (AE and, with
``--lm-ratio``, LM examples laid out as the Collator does), bf16 base weights, fp32 trainable tensors
and torch's AdamW on them (fused on the CPU, as the Trainer's default ``adamw_torch_fused``); no
gradient checkpointing. One step = forward + backward + optimizer step.

The **floor** is a plain forward + backward of the same LoRA'd base model (so the same trainable
set) over as many tokens as the ICAE step feeds through the transformer (encoder rows + padded
decoder rows, packed into ``batch`` rows), with the output layer only at as many positions as the
ICAE step has labels, plus the same optimizer step: what any training step over those tokens costs.

Every variant runs in turns (A B C A B C ...) after a warm-up; each ratio is the median of the
per-round ratios against the floor of the same round, so load from other jobs hits all alike.

Variants (``--variants``, comma-separated; ``floor`` and ``icae`` always run):

* ``icae``: the library path the Trainer runs (``model(**batch)``, ``loss.backward()``, ``opt.step()``).
* ``phases``: the same step cut at the encoder / decoder / output layer boundaries, each phase timed
  (backward too: the output layer's, then the decoder's, then the encoder's). Same gradients.
* ``bf16_adapter``: the step under ``hicae.speed.bf16_adapter_training`` (the LoRA products in bf16 from
  fp32 master weights, fused into the base projection: ``x W^T + b + (x A^T)(s B)^T`` as two matmuls),
  and the floor likewise (``floor_bf16_adapter``).
* ``bf16_autocast``: the same products by autocast bf16 with peft's fp32 input cast off
  (``bf16_adapter_training(fused=False)``).
* ``trainer_bf16``: autocast bf16 alone (what the Trainer's ``--bf16`` does on a CPU), peft still casting.
* ``no_ce_ckpt``: the output layer without checkpointing (logits kept for backward, not recomputed).
* ``decoder_lora``: a second model with ``decoder_lora_r=8``; ``pooled``: one with ``slot_source=pooled``
  (on the same frozen weights); with ``bf16_adapter`` measured, they run the fused bf16 adapter too.
* ``threads2``: the library step with 2 torch threads (others run with ``--threads``).
* ``compile``: a second model whose transformer layers (encoder and decoder) are ``torch.compile``'d
  (static shapes), stepped with ``bf16_adapter``; the first step's time (compilation) is reported apart.

    .venv/bin/python benchmarks/bench_step.py                 # real Qwen2.5-0.5B-Instruct, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_step.py --tiny          # tiny random Qwen3 (a test), seconds
    .venv/bin/python benchmarks/bench_step.py --variants phases,bf16_adapter,decoder_lora,pooled \
        --out /tmp/step.json --append-md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_md, environment  # noqa: E402

from hicae import ICAE, ICAEConfig  # noqa: E402
from hicae.batching import EncoderBatch, pad_decoder, pad_encoder  # noqa: E402
from hicae.layout import IGNORE, encoder_rows  # noqa: E402
from hicae.model import _ce, twin_module  # noqa: E402

TITLE = "training step vs floor"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_VOCAB = 151643
ALL_VARIANTS = ("phases", "bf16_adapter", "bf16_autocast", "trainer_bf16", "no_ce_ckpt", "decoder_lora", "pooled",
                "threads2", "compile")


def bf16_context(model: ICAE, how: str) -> Any:
    """The step's forward with the LoRA products in bf16 (fp32 master weights): ``fused`` and ``autocast``
    are ``hicae.speed.bf16_adapter_training``'s two ways; ``trainer_bf16`` is autocast alone (what the
    Trainer's ``--bf16`` does on a CPU: peft still casts each projection's input to fp32)."""
    from hicae.speed import bf16_adapter_training

    if how == "trainer_bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return bf16_adapter_training(model, fused=how == "fused")


# ---------------------------------------------------------------------------------------------
# model and batch


_SPARE: dict[str, Any] = {}


def build(args: argparse.Namespace, **overrides: Any) -> ICAE:
    """The recipe's ICAE (``overrides``: other ICAEConfig fields). The first call loads the base; later
    calls in the same process build on a twin of it (``model.twin_module``: the very same frozen tensors)."""
    cfg = ICAEConfig(mem_size=args.mem_size, compression_rate=args.compression_rate, lora_r=args.lora_r,
                     lora_alpha=args.lora_alpha, lora_dropout=0.0, lora_target_modules=list(PROJECTIONS),
                     model_max_length=args.mem_size * args.compression_rate,
                     min_tokens_for_lm=args.mem_size * args.compression_rate // 4, leave_tokens_for_lm=1, **overrides)
    if _SPARE.get("base") is not None and _SPARE.get("args") == vars(args):
        base, tok = twin_module(_SPARE["base"]), _SPARE["tok"]
    elif args.tiny:
        from hicae.demo.tiny import tiny_model

        from hicae.demo.assets import load_qwen3_tokenizer

        base, tok = tiny_model("qwen3", seed=args.seed, dtype=torch.bfloat16), load_qwen3_tokenizer()
    else:
        from hicae.io.checkpoint import load_base
        from hicae.demo.real_model import qwen25_path

        base, tok = load_base(str(qwen25_path(fetch=False)), dtype="bf16")
    torch.manual_seed(args.seed + 1)
    if _SPARE.get("args") != vars(args):  # later models share the frozen weights (twin trees): no second copy
        _SPARE.update(base=twin_module(base), tok=tok, args=dict(vars(args)))
    model = ICAE(base, tok, cfg)
    with torch.no_grad():  # peft starts lora_B at 0: give it values, so every gradient path is live
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.01)
    model.train()
    return model


def make_batch(model: ICAE, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``batch`` texts of k*r random ids, each AE or (with probability ``lm_ratio``) LM as the Collator
    lays them out (``second_half`` cut, ``min_tokens_for_lm`` = T/4, ``leave_tokens_for_lm`` = 1)."""
    from hicae.training.data import Collator

    cfg, T = model.icae_config, args.mem_size * args.compression_rate
    g = torch.Generator().manual_seed(args.seed)
    texts = [torch.randint(0, TEXT_VOCAB, (T,), generator=g).tolist() for _ in range(args.batch)]
    col = Collator(model.tokenizer, model.tokens, cfg, lm_ratio=args.lm_ratio, seed=args.seed)
    splits = [col.split(ids, i) for i, ids in enumerate(texts)]
    contexts = [c for _, c, _ in splits]
    rows = encoder_rows(contexts, cfg.mem_size, cfg.compression_rate, cfg.segmentation)
    exs = []
    for (task, _, tgt), n in zip(splits, rows.segments_per_text):
        exs.append(model.ae_example(n * cfg.mem_size, tgt) if task == "ae" else model.lm_example(n * cfg.mem_size, tgt))
    enc = pad_encoder(rows, model.tokens.pad_id)
    dec = pad_decoder(exs, model.tokens.pad_id, side="right")
    return dict(enc_ids=enc.ids, enc_seg_lens=enc.seg_lens, dec_ids=dec.ids, dec_labels=dec.labels,
                dec_mask=dec.attention_mask, task=torch.tensor([0 if t == "ae" else 1 for t, _, _ in splits]),
                segments_per_example=torch.tensor(rows.segments_per_text))


def counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    enc = int(batch["enc_ids"].numel())
    dec = int(batch["dec_ids"].numel())
    labels = int((batch["dec_labels"][:, 1:] != IGNORE).sum())
    text = int(batch["enc_seg_lens"].sum())
    return {"encoder_tokens": enc, "decoder_tokens": dec, "tokens": enc + dec, "labelled": labels, "text_tokens": text}


def optimizer(model: ICAE) -> torch.optim.Optimizer:
    params = list(model.trainable_parameters().values())
    try:
        return torch.optim.AdamW(params, lr=1e-5, fused=True)  # the Trainer's default (adamw_torch_fused)
    except (RuntimeError, TypeError):  # pragma: no cover (a build without the fused CPU kernel)
        return torch.optim.AdamW(params, lr=1e-5)


# ---------------------------------------------------------------------------------------------
# steps


class Clock:
    """Wall time per phase of one step."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + (now - self.t) * 1e3
        self.t = now


def backward_and_step(c: Clock, loss: torch.Tensor, opt: torch.optim.Optimizer) -> dict:
    """What every timed step ends with after its forward: backward and the optimizer step, each a phase."""
    c.lap("forward")
    loss.backward()
    c.lap("backward")
    opt.step()
    opt.zero_grad(set_to_none=True)
    c.lap("optimizer")
    return {"loss": loss.item(), "phases": c.phases}


def icae_step(model: ICAE, opt: torch.optim.Optimizer, batch: dict, ctx: Callable[[], Any] = contextlib.nullcontext) -> dict:
    """The Trainer's step: ``model(**batch)``, backward, optimizer step."""
    c = Clock()
    with ctx():
        loss = model(**batch)["loss"]
    return backward_and_step(c, loss, opt)


def phases_step(model: ICAE, opt: torch.optim.Optimizer, batch: dict, ctx: Callable[[], Any] = contextlib.nullcontext,
                grads: bool = False) -> dict:
    """``ICAE.forward`` cut at its seams (slots, decoder states), each part's forward and backward timed.

    Detached leaves at the seams: the output layer's backward gives d(loss)/d(states), the
    decoder's then d/d(slots) (and its own trainable tensors), the encoder's the rest; the gradients
    accumulate into the same leaves as one backward would.
    """
    c = Clock()
    with ctx():
        spe = batch["segments_per_example"].tolist()
        slots = model.encode_rows(EncoderBatch(batch["enc_ids"], batch["enc_seg_lens"], spe))  # [R, k, D]
        c.lap("encoder_forward")
        s = slots.detach().reshape(-1, slots.shape[-1]).requires_grad_()
        embeds = model.decoder_inputs(batch["dec_ids"], s)
        pos = model.batch_positions(batch["dec_ids"], batch["dec_mask"], None)
        hidden = model.decoder.model(inputs_embeds=embeds, attention_mask=batch["dec_mask"], position_ids=pos,
                                     use_cache=False).last_hidden_state
        c.lap("decoder_forward")
        h = hidden.detach().requires_grad_()
        tok_loss, _ = model.labelled_losses(h, batch["dec_labels"])
        loss = tok_loss.sum() / max(1, tok_loss.numel())
        c.lap("head_ce_forward")
    loss.backward()
    c.lap("head_ce_backward")
    hidden.backward(h.grad)
    c.lap("decoder_backward")
    slots.backward(s.grad.reshape(slots.shape))
    c.lap("encoder_backward")
    out: dict[str, Any] = {"loss": loss.item()}
    if grads:
        out["grads"] = {n: p.grad.detach().clone() for n, p in model.trainable_parameters().items() if p.grad is not None}
    opt.step()
    opt.zero_grad(set_to_none=True)
    c.lap("optimizer")
    out["phases"] = c.phases
    return out


class Floor:
    """A plain LoRA'd forward + backward over ``rows`` x ``width`` tokens with the output layer at ``labelled``
    positions (the last ones of each row), and the same optimizer step."""

    def __init__(self, model: ICAE, n: dict[str, int], rows: int, seed: int):
        width = -(-n["tokens"] // rows)
        g = torch.Generator().manual_seed(seed + 7)
        self.ids = torch.randint(0, TEXT_VOCAB, (rows, width), generator=g)
        self.mask = torch.ones_like(self.ids)
        labels = torch.full_like(self.ids, IGNORE)
        per_row = [n["labelled"] // rows + (1 if i < n["labelled"] % rows else 0) for i in range(rows)]
        for i, m in enumerate(per_row):
            if m:
                labels[i, width - m:] = self.ids[i, width - m:]
        self.labels = labels
        self.tokens = rows * width

    def step(self, model: ICAE, opt: torch.optim.Optimizer, ctx: Callable[[], Any] = contextlib.nullcontext) -> dict:
        c = Clock()
        body = model.encoder.get_base_model().model  # the LoRA'd transformer: the same trainable adapter
        with ctx():
            hidden = body(input_ids=self.ids, attention_mask=self.mask, use_cache=False).last_hidden_state
            target = self.labels[:, 1:]
            sel = target != IGNORE
            head = model.decoder.get_output_embeddings()
            loss = _ce(head, hidden[:, :-1][sel], target[sel]).mean()
        return backward_and_step(c, loss, opt)


@contextlib.contextmanager
def threads(n: int):
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


@contextlib.contextmanager
def no_ce_checkpoint():
    """The output layer without checkpointing: its logits stay alive for backward (no recompute)."""
    import hicae.model as m

    saved = m.checkpoint
    m.checkpoint = lambda fn, *a, **kw: fn(*a)
    try:
        yield
    finally:
        m.checkpoint = saved


# ---------------------------------------------------------------------------------------------
# the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_build = time.perf_counter()
    model = build(args)
    opt = optimizer(model)
    batch = make_batch(model, args)
    n = counts(batch)
    floor = Floor(model, n, args.batch, args.seed)
    others: dict[str, tuple[ICAE, torch.optim.Optimizer, dict]] = {}
    if "decoder_lora" in args.variants:
        m = build(args, decoder_lora_r=8)
        others["decoder_lora"] = (m, optimizer(m), make_batch(m, args))
    if "pooled" in args.variants:
        m = build(args, slot_source="pooled")
        others["pooled"] = (m, optimizer(m), make_batch(m, args))
    compile_s = None
    if "compile" in args.variants:
        m = build(args)
        o, b = optimizer(m), make_batch(m, args)
        for layer in [*m.encoder.get_base_model().model.layers, *m.decoder.model.layers]:
            layer.compile(dynamic=False)
        t = time.perf_counter()
        icae_step(m, o, b, lambda: bf16_context(m, "fused"))  # compiles forward and backward graphs
        compile_s = time.perf_counter() - t
        others["compile"] = (m, o, b)
        print(f"compile: first step {compile_s:.0f} s", flush=True)
    build_s = time.perf_counter() - t_build
    print(f"built in {build_s:.0f} s; step: {n['encoder_tokens']} encoder + {n['decoder_tokens']} decoder tokens, "
          f"{n['labelled']} labelled; floor: {floor.tokens} tokens", flush=True)

    bf16 = lambda: bf16_context(model, "fused")  # noqa: E731
    plain = bf16 if args.bf16_adapter else contextlib.nullcontext  # the library's step (ICAETrainer on a CPU: fused)
    fns: dict[str, Callable[[], dict]] = {
        "floor": lambda: floor.step(model, opt, plain),
        "icae": lambda: icae_step(model, opt, batch, plain),
    }
    if "phases" in args.variants:
        fns["phases"] = lambda: phases_step(model, opt, batch, plain)
    if "bf16_adapter" in args.variants and not args.bf16_adapter:
        fns["floor_bf16_adapter"] = lambda: floor.step(model, opt, bf16)
        fns["bf16_adapter"] = lambda: icae_step(model, opt, batch, bf16)
        if "phases" in args.variants:
            fns["phases_bf16_adapter"] = lambda: phases_step(model, opt, batch, bf16)
    if "bf16_autocast" in args.variants:
        fns["bf16_autocast"] = lambda: icae_step(model, opt, batch, lambda: bf16_context(model, "autocast"))
    if "trainer_bf16" in args.variants:
        fns["trainer_bf16"] = lambda: icae_step(model, opt, batch, lambda: bf16_context(model, "trainer_bf16"))
    if "no_ce_ckpt" in args.variants:
        fns["no_ce_ckpt"] = lambda: icae_step(model, opt, batch, no_ce_checkpoint)
    for name, (m, o, b) in others.items():
        if name == "compile":
            fns[name] = lambda m=m, o=o, b=b: icae_step(m, o, b, lambda: bf16_context(m, "fused"))
        else:  # the options run the fused bf16 adapter when it is measured (the trainer's path on a CPU)
            fused = args.bf16_adapter or "bf16_adapter" in args.variants
            fns[name] = lambda m=m, o=o, b=b, f=fused: icae_step(m, o, b, (lambda: bf16_context(m, "fused")) if f
                                                                 else contextlib.nullcontext)
    if "threads2" in args.variants:
        fns["floor_threads2"] = lambda: _with(threads(2), lambda: floor.step(model, opt, plain))
        fns["threads2"] = lambda: _with(threads(2), lambda: icae_step(model, opt, batch, plain))

    for name, fn in fns.items():  # warm-up
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}  # process CPU time: with 1 thread, what other jobs disturb least
    phase_times: dict[str, dict[str, list[float]]] = {k: {} for k in fns}
    order = list(fns)
    for rnd in range(args.repeats):
        for name in order if rnd % 2 == 0 else order[::-1]:  # A B C, C B A, ...: no variant always follows another
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            r = fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
            for ph, ms in r["phases"].items():
                phase_times[name].setdefault(ph, []).append(ms)
        print(f"round {rnd + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}/{cpu[k][-1]:.0f}" for k, v in times.items())
              + " ms (wall/CPU)", flush=True)

    def ratio(a: str, b: str, t: dict[str, list[float]] = times) -> float:
        return statistics.median(x / y for x, y in zip(t[a], t[b]))

    res: dict[str, Any] = {"model": "tiny-qwen3 (random)" if args.tiny else "Qwen2.5-0.5B-Instruct",
                           "settings": {k: getattr(args, k) for k in ("batch", "mem_size", "compression_rate", "lora_r",
                                                                      "lora_alpha", "lm_ratio", "threads", "repeats",
                                                                      "bf16_adapter")},
                           "counts": n, "floor_tokens": floor.tokens, "build_seconds": build_s, "compile_first_step_seconds": compile_s,
                           "variants": {}}
    for name in fns:
        ms = statistics.median(times[name])
        base = "floor_threads2" if name == "threads2" else "floor_bf16_adapter" if name == "phases_bf16_adapter" else "floor"
        tok = floor.tokens if name.startswith("floor") else n["tokens"]
        cms = statistics.median(cpu[name])
        v = {"ms": ms, "ms_all": times[name], "cpu_ms": cms, "cpu_ms_all": cpu[name], "tokens_per_s": tok / ms * 1e3,
             "tokens_per_cpu_s": tok / cms * 1e3,
             "text_tokens_per_s": n["text_tokens"] / ms * 1e3,
             "phases_ms": {ph: statistics.median(x) for ph, x in phase_times[name].items()}}
        if name != "floor":
            v["cpu_over_floor"] = ratio(name, "floor", cpu)
            if name != "icae" and not name.startswith("floor"):
                v["cpu_over_icae"] = ratio(name, "icae", cpu)
        if not name.startswith("floor"):
            v["over_floor"] = ratio(name, "floor")
            if base != "floor":
                v["over_own_floor"] = ratio(name, base)
            if name != "icae":
                v["over_icae"] = ratio(name, "icae")
            if name in ("decoder_lora", "pooled") and "bf16_adapter" in times:
                v["over_bf16_adapter"] = ratio(name, "bf16_adapter")
                v["cpu_over_bf16_adapter"] = ratio(name, "bf16_adapter", cpu)
            if name == "compile" and "bf16_adapter" in times:
                v["over_bf16_adapter"] = ratio(name, "bf16_adapter")
                v["cpu_over_bf16_adapter"] = ratio(name, "bf16_adapter", cpu)
        elif name != "floor":
            v["over_floor"] = ratio(name, "floor")
        res["variants"][name] = v
    return res


def _with(cm: Any, fn: Callable[[], dict]) -> dict:
    with cm:
        return fn()


def markdown(res: dict[str, Any]) -> str:
    n, v = res["counts"], res["variants"]
    lines = [f"{res['model']}, batch {res['settings']['batch']} texts of {res['settings']['mem_size'] * res['settings']['compression_rate']} "
             f"tokens (k={res['settings']['mem_size']}, r={res['settings']['compression_rate']}, LoRA r={res['settings']['lora_r']} "
             f"on 7 projections, lm_ratio {res['settings']['lm_ratio']}): {n['encoder_tokens']} encoder + {n['decoder_tokens']} "
             f"decoder tokens, {n['labelled']} labelled; the floor: {res['floor_tokens']} tokens, {n['labelled']} labelled. "
             + ("Every row with the fused bf16 adapter (`--bf16-adapter`). " if res['settings'].get('bf16_adapter') else "")
             + 
             f"Median of {res['settings']['repeats']} interleaved rounds; ratios are medians of per-round ratios."
             + (f" `compile`: first step (compilation) {res['compile_first_step_seconds']:.0f} s"
                + (f", {v['compile']['over_bf16_adapter']:.2f}x the bf16_adapter step"
                   if 'over_bf16_adapter' in v['compile'] else "") + "." if res.get("compile_first_step_seconds") else ""), "",
             "Wall time is what a run waits; CPU time (1 thread) is what other jobs on the machine disturb least.", "",
             "| variant | step ms wall / CPU | tokens/s wall / CPU | text tokens/s (wall) | / floor wall / CPU | / icae wall / CPU "
             "| / bf16_adapter wall / CPU |", "|---|---|---|---|---|---|---|"]

    def pair(r: dict, a: str, b: str, one: str = "") -> str:
        return one if r.get(a) is None else f"{r[a]:.2f} / {r[b]:.2f}"

    for name, r in v.items():
        lines.append(f"| {name} | {r['ms']:.0f} / {r['cpu_ms']:.0f} | {r['tokens_per_s']:.0f} / {r['tokens_per_cpu_s']:.0f} | "
                     f"{r['text_tokens_per_s']:.0f} | {pair(r, 'over_floor', 'cpu_over_floor', '1.00')} | "
                     f"{pair(r, 'over_icae', 'cpu_over_icae')} | {pair(r, 'over_bf16_adapter', 'cpu_over_bf16_adapter')} |")
    for name in ("phases", "phases_bf16_adapter", "icae", "floor"):
        if name in v:
            ph = v[name]["phases_ms"]
            tot = sum(ph.values())
            lines += ["", f"Phases of `{name}` (median ms, share of their sum):", "",
                      "| " + " | ".join(ph) + " |", "|" + "---|" * len(ph),
                      "| " + " | ".join(f"{x:.0f} ({x / tot:.0%})" for x in ph.values()) + " |"]
    return "\n".join(lines)


def compare_env(args: argparse.Namespace, passthrough: list[str]) -> dict[str, Any]:
    """The plain step (``floor`` and ``icae``) in child processes, in turns: the environment as it is, then
    with each ``--compare-env`` setting (variables read once at process start: OpenMP's spin-wait, the
    allocator's). Each round runs every setting once; ratios are medians of per-round ratios."""
    import subprocess
    import tempfile

    settings: list[tuple[str, dict[str, str]]] = [("as is", {})]
    for spec in args.compare_env:
        settings.append((spec, dict(kv.split("=", 1) for kv in spec.split(","))))
    ms: dict[str, dict[str, list[float]]] = {name: {"icae": [], "floor": [], "icae_cpu": [], "floor_cpu": []}
                                         for name, _ in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name, extra in settings if rnd % 2 == 0 else settings[::-1]:
                out = Path(tmp) / "child.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--variants", "", "--out", str(out)]
                subprocess.run(cmd, env={**os.environ, **extra}, check=True, stdout=subprocess.DEVNULL)
                res = json.loads(out.read_text())
                for k in ("icae", "floor"):
                    ms[name][k].append(res["variants"][k]["ms"])
                    ms[name][k + "_cpu"].append(res["variants"][k]["cpu_ms"])
            print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{n}: icae {v['icae'][-1]:.0f} ms" for n, v in ms.items()),
                  flush=True)
    base = ms["as is"]
    table = {}
    for name, v in ms.items():
        table[name] = {"icae_ms": statistics.median(v["icae"]), "floor_ms": statistics.median(v["floor"]),
                       "icae_over_as_is": statistics.median(a / b for a, b in zip(v["icae"], base["icae"])),
                       "floor_over_as_is": statistics.median(a / b for a, b in zip(v["floor"], base["floor"])),
                       "icae_over_own_floor": statistics.median(a / b for a, b in zip(v["icae"], v["floor"])),
                       "icae_cpu_ms": statistics.median(v["icae_cpu"]),
                       "icae_cpu_over_as_is": statistics.median(a / b for a, b in zip(v["icae_cpu"], base["icae_cpu"]))}
    return {"compare_env": table, "rounds": args.rounds}


def compare_markdown(res: dict[str, Any]) -> str:
    lines = [f"Environment settings, each in its own process, {res['rounds']} rounds in turns (medians):", "",
             "| setting | icae step ms wall / CPU | floor ms | icae / as is, wall / CPU | floor / as is | icae / its floor |",
             "|---|---|---|---|---|---|"]
    for name, r in res["compare_env"].items():
        lines.append(f"| `{name}` | {r['icae_ms']:.0f} / {r['icae_cpu_ms']:.0f} | {r['floor_ms']:.0f} | {r['icae_over_as_is']:.2f} / "
                     f"{r['icae_cpu_over_as_is']:.2f} | {r['floor_over_as_is']:.2f} | {r['icae_over_own_floor']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random Qwen3 (bf16) instead of the real Qwen2.5-0.5B")
    ap.add_argument("--variants", default="phases", help=f"comma-separated, of {', '.join(ALL_VARIANTS)}, or 'all'")
    ap.add_argument("--bf16-adapter", action="store_true",
                    help="every row (floor, icae, the options) with hicae.speed.bf16_adapter_training, as ICAETrainer "
                         "trains a bf16 model on a CPU; without it the rows run peft's fp32-adapter path")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mem_size", "--mem-size", type=int, default=16)
    ap.add_argument("--compression_rate", "--compression-rate", type=int, default=4)
    ap.add_argument("--lora_r", "--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--lm-ratio", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared 2-core machine; 0: torch's default, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--append-md", default=None, help="append the tables, command and machine to this markdown file")
    ap.add_argument("--compare-env", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE...]",
                    help="compare the plain step in child processes with these environment settings against the "
                         "environment as it is (repeatable); e.g. OMP_WAIT_POLICY=PASSIVE, THP_MEM_ALLOC_ENABLE=1")
    ap.add_argument("--rounds", type=int, default=3, help="--compare-env: rounds of child processes")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    args.variants = ALL_VARIANTS if args.variants == "all" else tuple(x for x in args.variants.split(",") if x)
    bad = set(args.variants) - set(ALL_VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)} (choose from {', '.join(ALL_VARIANTS)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    env_args = argparse.Namespace(device="cpu")
    env = environment(env_args, "qwen3" if args.tiny else "qwen2.5")
    env["omp"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                  if k in os.environ}
    print(f"# {env['device_name']}, {torch.get_num_threads()} threads | torch {env['torch']} | load {env['loadavg_1min_at_start']:.2f}",
          flush=True)
    t0 = time.perf_counter()
    if args.compare_env:
        drop = {"--compare-env", "--rounds", "--out", "--append-md", "--variants"}  # the children's other flags stay
        passthrough = [a for i, a in enumerate(argv) if a not in drop and (i == 0 or argv[i - 1] not in drop)
                       and a.split("=")[0] not in drop]
        res = compare_env(args, passthrough)
        text = compare_markdown(res)
    else:
        res = run(args)
        text = markdown(res)
    env["seconds"] = time.perf_counter() - t0
    env["loadavg_1min_at_end"] = os.getloadavg()[0]
    print()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"env": env, **res}, indent=2) + "\n")
    if args.append_md:
        append_md(args.append_md, env, text, TITLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
