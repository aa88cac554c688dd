#!/usr/bin/env python
"""Benchmark ICAE compression (batched vs the reference's per-segment loop) and training memory.

Random weights of a real Qwen shape (or a tiny Qwen3 on the CPU), random token ids. Measures:

* ``compress``: ``ICAE.compress_ids`` (all segments of all texts flattened into token-budget
  batches, last hidden state only) against a re-creation of the reference code's loop: one segment
  at a time, ``segment + k memory embeddings`` through the LoRA'd model as a full causal-LM
  forward with ``output_hidden_states=True`` and full-vocabulary logits, slots read off
  ``hidden_states[-1]``. Both run on the same model and input; their slots are compared.
* ``train`` (``--train-memory``): peak memory of one training step (forward + backward of
  ``ICAE.forward`` on one AE example, gradient checkpointing on) with the decoder sharing the
  base weights (hicae's default) vs a second copy (``share_decoder=False``, the reference's
  design). On CUDA: ``torch.cuda.max_memory_allocated``; on the CPU: the process's peak RSS
  (a rough stand-in that keeps the code path testable).

Examples::

    .venv/bin/python benchmarks/bench_compress.py                       # tiny Qwen3, CPU, fp32
    python3 benchmarks/bench_compress.py --shape qwen2.5-7b --device cuda --dtype bf16 \\
        --out results.json --append-md docs/benchmarks.md
    python3 benchmarks/bench_compress.py --shape qwen2.5-0.5b --train-memory --skip-compress
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

try:  # run from a checkout without installing
    import hicae  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hicae import ICAE, ICAEConfig  # noqa: E402
from hicae.batching import pad_decoder, pad_encoder  # noqa: E402
from hicae.layout import encoder_rows, segment_lengths  # noqa: E402
from hicae.speed import compile_encoder  # noqa: E402

# --------------------------------------------------------------------------------------------
# shapes

# Real shapes of Qwen2.5 (config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-7B); weights are random.
QWEN25 = {
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
SHAPES = ("tiny", *QWEN25)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TEXT_VOCAB = 151643  # ids 0..151642 are ordinary Qwen tokens (151643.. are special)

# ICAE settings per shape: the released ones (k=128, r=4) with LoRA r=128 for the real shapes.
ICAE_DEFAULTS = {
    "tiny": dict(mem_size=16, compression_rate=4, lora_r=4),
    "gpu": dict(mem_size=128, compression_rate=4, lora_r=128),
}


def build_base(shape: str, device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A random causal LM of ``shape``, created directly on ``device`` in ``dtype``, SDPA attention."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    if shape == "tiny":
        from hicae.tiny import tiny_config

        cfg = tiny_config("qwen3")
        name = "tiny-qwen3"
    else:
        cfg = Qwen2Config(
            **QWEN25[shape],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            bos_token_id=151643,
            eos_token_id=151643,
        )
        name = f"random-{shape}"
    cfg._attn_implementation = "sdpa"
    # Built under the device context: a 7B model is never materialised on the CPU.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.config._name_or_path = name
    return model.eval()


class StubTokenizer:
    """Stand-in when the Qwen3 tokenizer cannot be loaded: ICAE needs only EOS/pad ids here."""

    eos_token_id = 151643
    pad_token_id = 151643
    chat_template = None
    all_special_ids = [151643]


def load_tokenizer(spec: str) -> tuple[Any, str]:
    if spec == "stub":
        return StubTokenizer(), "stub"
    if spec != "auto":
        os.environ["HICAE_TOKENIZER"] = spec
    from hicae.assets import load_qwen3_tokenizer

    try:
        return load_qwen3_tokenizer(), "qwen3"
    except Exception as e:  # no npm / no network (e.g. on a GPU box): ids are all we need
        print(f"warning: Qwen3 tokenizer unavailable ({type(e).__name__}: {e}); using stub special-token ids", file=sys.stderr)
        return StubTokenizer(), "stub"


def icae_config(args: argparse.Namespace, **overrides: Any) -> ICAEConfig:
    """The ICAE settings of ``add_model_args``' flags (k, r, LoRA rank), plus per-benchmark ``overrides``."""
    return ICAEConfig(mem_size=args.mem_size, compression_rate=args.compression_rate, lora_r=args.lora_r, **overrides)


def build_icae(args: argparse.Namespace, tokenizer: Any, share_decoder: bool = True) -> ICAE:
    base = build_base(args.shape, args.device, DTYPES[args.dtype], args.seed)
    cfg = icae_config(args, compress_batch_tokens=args.compress_batch_tokens, model_max_length=max(5120, args.train_tokens))
    torch.manual_seed(args.seed + 1)  # LoRA init
    model = ICAE(base, tokenizer, cfg, share_decoder=share_decoder)
    # peft starts lora_B at zero, which would make the adapter a no-op and the slot comparison blind
    # to it; give B small random values so the encoder really differs from the base model.
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    return model


# --------------------------------------------------------------------------------------------
# inputs


def make_texts(args: argparse.Namespace) -> list[list[int]]:
    """``--segments`` segments of k*r tokens as ``--texts`` texts (ragged: each text a bit shorter)."""
    seg = args.mem_size * args.compression_rate
    if args.segments % args.texts:
        raise SystemExit(f"--segments {args.segments} must be a multiple of --texts {args.texts}")
    per = args.segments // args.texts
    g = torch.Generator().manual_seed(args.seed)
    texts = []
    for i in range(args.texts):
        n = per * seg
        if args.ragged:  # same segment count, uneven segment sizes: text i drops (i+1)/texts of half a segment
            n -= (seg // 2) * (i + 1) // args.texts
        texts.append(torch.randint(0, TEXT_VOCAB, (n,), generator=g).tolist())
    got = sum(len(segment_lengths(len(t), args.mem_size, args.compression_rate)) for t in texts)
    assert got == args.segments, (got, args.segments)
    return texts


# --------------------------------------------------------------------------------------------
# the reference's loop, re-created


def reference_compress(model: ICAE, token_lists: list[list[int]]) -> list[torch.Tensor]:
    """What the reference code's ``_compress`` does, one text and one segment at a time.

    Each ``segment + k memory embeddings`` runs through the LoRA'd LLM as a full causal-LM forward
    (no attention mask, no position ids, default ``use_cache``), with ``output_hidden_states=True``
    and logits over the whole vocabulary at every position; the slots are ``hidden_states[-1]`` at
    the memory positions. (The reference also calls ``torch.cuda.empty_cache()`` after each
    segment; that is left out here, which only flatters the loop; ``--loop-empty-cache`` adds it.)
    """
    cfg = model.icae_config
    k = cfg.mem_size
    emb = model.encoder.get_base_model().get_input_embeddings()
    mem = model.mem_embeddings  # [k, D]
    out = []
    for ids in token_lists:
        ids_t = torch.tensor(ids, dtype=torch.long, device=model.device).unsqueeze(0)  # [1, L]
        slots = []
        start = 0
        for n in segment_lengths(len(ids), k, cfg.compression_rate):
            seg = emb(ids_t[:, start : start + n])  # [1, n, D]
            x = torch.cat([seg, mem.to(seg.dtype).unsqueeze(0)], dim=1)  # [1, n+k, D]
            res = model.encoder(inputs_embeds=x, output_hidden_states=True)  # logits: [1, n+k, V]
            slots.append(res.hidden_states[-1][0, n : n + k])  # [k, D]
            del res
            if _LOOP_EMPTY_CACHE and x.is_cuda:
                torch.cuda.empty_cache()
            start += n
        out.append(torch.cat(slots))  # [n_seg*k, D]
    return out


_LOOP_EMPTY_CACHE = False


# --------------------------------------------------------------------------------------------
# timing helpers


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fns(fns: list[Callable[[], Any]], device: str, warmup: int, repeats: int) -> tuple[list[list[float]], list[Any]]:
    """Warm each function up, then time them in turns (``repeats`` rounds), so that load from
    elsewhere on a shared machine hits all of them alike. Returns ms per run and the last results.
    """
    results: list[Any] = [None] * len(fns)
    for i, fn in enumerate(fns):
        for _ in range(warmup):
            results[i] = fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            results[i] = None  # free the previous result before the next run
            _sync(device)
            t0 = time.perf_counter()
            results[i] = fn()
            _sync(device)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times, results


def encoder_flops(model: ICAE, seg_lens: list[int]) -> float:
    """Approximate FLOPs of the encoder over segments (no LM head): 2*params*tokens + causal attention.

    Linear weights of the decoder layers (LoRA adapters included) count 2 FLOPs per token each;
    causal attention counts 2*T^2*(heads*head_dim) per layer and row (QK^T and AV, half of each).
    """
    c = model.base_config
    k = model.icae_config.mem_size
    lin = sum(p.numel() for n, p in model.encoder.named_parameters() if ".layers." in n and p.dim() == 2)
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    tokens = sum(n + k for n in seg_lens)
    attn = sum(2 * (n + k) ** 2 * c.num_attention_heads * hd for n in seg_lens) * c.num_hidden_layers
    return 2.0 * lin * tokens + attn


def layer_flops_per_token(model: ICAE, seq: int) -> float:
    """Forward FLOPs per token of the transformer layers (2 per weight + causal attention over ``seq``), no LM head."""
    c = model.base_config
    lin = sum(p.numel() for n, p in model.encoder.named_parameters() if ".layers." in n and p.dim() == 2)
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2.0 * lin + 2.0 * seq * c.num_attention_heads * hd * c.num_hidden_layers


def measure_roofline(device: str, n: int = 8192) -> float:
    """bf16 matmul TFLOP/s of an n^3 product (mean of 10 after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    dt = (time.perf_counter() - t0) / 10
    del a, b
    return 2 * n**3 / dt / 1e12


# --------------------------------------------------------------------------------------------
# compression benchmark


def bench_compress(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    model = build_icae(args, tokenizer)
    model.eval()
    texts = make_texts(args)
    seg_lens = encoder_rows(texts, args.mem_size, args.compression_rate).text_lengths
    n_tokens = sum(len(t) for t in texts)

    fns = [lambda: model.compress_ids(texts), lambda: reference_compress(model, texts)]
    compiled = None
    if getattr(args, "compile", False):  # a third contender: the same batched path, encoder torch.compile'd
        compiled = compile_encoder(model)

        def run_compiled() -> Any:
            model._compiled_encoder = compiled
            try:
                return model.compress_ids(texts)
            finally:
                model._compiled_encoder = None

        t = time.perf_counter()
        with torch.no_grad():
            run_compiled()  # compiles (not timed with the others: a one-off cost, reported apart)
        _sync(args.device)
        compile_s = time.perf_counter() - t
        fns.append(run_compiled)
    with torch.no_grad():
        times, outs = time_fns(fns, args.device, args.warmup, args.repeats)
    (t_batched, t_loop), (mem, ref) = times[:2], outs[:2]

    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(mem.slots, ref)]
    mean_diff = statistics.fmean((a.float() - b.float()).abs().mean().item() for a, b in zip(mem.slots, ref))
    scale = max(b.float().abs().max().item() for b in ref)
    max_diff = max(diffs)
    rel = max_diff / scale if scale else float("inf")
    tol = 1e-4 if args.dtype == "fp32" else 5e-2  # relative to the largest slot value
    ms_b, ms_l = statistics.median(t_batched), statistics.median(t_loop)
    flops = encoder_flops(model, seg_lens)
    c = model.base_config
    head_flops = 2.0 * c.vocab_size * c.hidden_size * (n_tokens + len(seg_lens) * args.mem_size)  # the loop's full logits
    res = {
        "kind": "compress",
        "shape": args.shape,
        "dtype": args.dtype,
        "device": args.device,
        "mem_size": args.mem_size,
        "compression_rate": args.compression_rate,
        "lora_r": args.lora_r,
        "compress_batch_tokens": args.compress_batch_tokens,
        "texts": args.texts,
        "segments": len(seg_lens),
        "ragged": args.ragged,
        "segment_lengths": sorted(set(seg_lens)),
        "text_tokens": n_tokens,
        "encoder_tokens": n_tokens + len(seg_lens) * args.mem_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "batched_ms": ms_b,
        "loop_ms": ms_l,
        "batched_ms_min": min(t_batched),
        "loop_ms_min": min(t_loop),
        "batched_ms_all": t_batched,
        "loop_ms_all": t_loop,
        "batched_tokens_per_s": n_tokens / ms_b * 1e3,
        "loop_tokens_per_s": n_tokens / ms_l * 1e3,
        "ratio_loop_over_batched": ms_l / ms_b,
        "encoder_tflop": flops / 1e12,
        "batched_tflops": flops / ms_b / 1e9,
        "loop_lm_head_flop_share": head_flops / (head_flops + flops),
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "max_abs_slot": scale,
        "rel_diff": rel,
        "rel_tol": tol,
        "slots_match": bool(rel <= tol),
        "loop_empty_cache": _LOOP_EMPTY_CACHE,
    }
    if compiled is not None:
        ms_c = statistics.median(times[2])
        cd = max((a.float() - b.float()).abs().max().item() for a, b in zip(outs[2].slots, mem.slots))
        res.update(compiled_ms=ms_c, compiled_ms_all=times[2], compile_seconds=compile_s,
                   compiled_tokens_per_s=n_tokens / ms_c * 1e3, compiled_tflops=flops / ms_c / 1e9,
                   ratio_eager_over_compiled=ms_b / ms_c, compiled_rel_diff=cd / scale if scale else float("inf"))
    del model, mem, ref, outs
    release(args.device)
    return res


# --------------------------------------------------------------------------------------------
# training memory


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:
    _LIBC: Any = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover (not glibc)
    _LIBC = None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def trim_heap() -> None:
    """Collect garbage and hand freed heap back to the OS, so the RSS baseline is what is live."""
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:  # pragma: no cover
            pass


class PeakMemory:
    """Peak memory of a block above the memory in use when it starts.

    CPU: RSS; the kernel's high-water mark is reset (``/proc/self/clear_refs``, 5) when allowed and
    read afterwards (exact), and a thread samples ``/proc/self/statm`` every ``interval`` s (a
    fallback, and a cross-check). CUDA: ``torch.cuda.max_memory_allocated`` above
    ``memory_allocated`` at the start.
    """

    def __init__(self, device: str, interval: float = 0.004):
        self.cuda = device.startswith("cuda")
        self.interval = interval
        self.method = ""
        self.baseline = self.peak = self.sampled_peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        trim_heap()
        self.hwm_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_ok = True
        except OSError:
            pass
        self.baseline = rss_bytes()
        self.sampled_peak = self.baseline
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        self.method = "RSS high-water mark (clear_refs) + statm sampling" if self.hwm_ok else "RSS sampling (statm)"
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_bytes()
            if r > self.sampled_peak:
                self.sampled_peak = r

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            self.sampled_peak = self.peak
            return
        self._stop.set()
        self._t.join()
        self.sampled_peak = max(self.sampled_peak, rss_bytes())
        self.peak = max(self.sampled_peak, _status_kb("VmHWM") * 1024 if self.hwm_ok else 0)

    @property
    def increase(self) -> int:
        return self.peak - self.baseline


def train_batch(model: ICAE, ids: list[int], device: str) -> dict[str, torch.Tensor]:
    """One AE example, laid out exactly as training does (layout + batching)."""
    cfg = model.icae_config
    rows = encoder_rows([ids], cfg.mem_size, cfg.compression_rate)
    enc = pad_encoder(rows, model.tokens.pad_id)
    ex = model.ae_example(len(rows.rows) * cfg.mem_size, ids)
    dec = pad_decoder([ex], model.tokens.pad_id)
    return dict(
        enc_ids=enc.ids.to(device),
        enc_seg_lens=enc.seg_lens,
        dec_ids=dec.ids.to(device),
        dec_labels=dec.labels.to(device),
        dec_mask=dec.attention_mask.to(device),
        task=torch.tensor([0]),
        segments_per_example=torch.tensor(rows.segments_per_text),
    )


def train_step_memory(args: argparse.Namespace, tokenizer: Any, share: bool) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    release(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_icae(args, tokenizer, share_decoder=share)
    model.train()
    model.gradient_checkpointing_enable()
    g = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(0, TEXT_VOCAB, (args.train_tokens,), generator=g).tolist()
    batch = train_batch(model, ids, args.device)
    params = list(model.trainable_parameters().values())
    _sync(args.device)
    weights = torch.cuda.memory_allocated() if cuda else 0
    build_peak = torch.cuda.max_memory_allocated() if cuda else 0

    def step() -> tuple[float, float]:
        torch.manual_seed(args.seed + 3)  # same LoRA dropout masks in both runs
        out = model(**batch)
        out["loss"].backward()
        gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)).item()
        loss = out["loss"].item()
        for p in params:
            p.grad = None
        return loss, gn

    step()  # warm-up (allocator, kernels); its peak is the same as the timed one's
    _sync(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = PeakMemory("cpu")
    with contextlib.nullcontext() if cuda else rss:  # no polling thread competing with a GPU step
        t0 = time.perf_counter()
        loss, gn = step()
        _sync(args.device)
        ms = (time.perf_counter() - t0) * 1e3
    enc_tokens = int(batch["enc_ids"].shape[0] * batch["enc_ids"].shape[1])
    dec_tokens = int(batch["dec_ids"].shape[1])
    res: dict[str, Any] = {
        "share_decoder": share,
        "step_ms": ms,
        # model FLOPs of the step: forward (2 per weight and token) + backward to the activations (2 more);
        # the base weights are frozen, so no weight gradients beyond LoRA's (counted with the weights).
        # Gradient checkpointing's recomputed forward is not counted (hardware FLOPs would add ~2 per weight and token).
        "model_flop": 2 * (layer_flops_per_token(model, int(batch["enc_ids"].shape[1])) * enc_tokens
                           + layer_flops_per_token(model, dec_tokens) * dec_tokens),
        "encoder_tokens": enc_tokens,
        "decoder_tokens": dec_tokens,
        "loss": loss,
        "grad_norm": gn,
        "trainable_params": sum(p.numel() for p in params),
        "encoder_rows": int(batch["enc_ids"].shape[0]),
        "decoder_len": int(batch["dec_ids"].shape[1]),
    }
    if cuda:
        res.update(
            weights_bytes=weights,
            build_peak_bytes=build_peak,
            peak_bytes=torch.cuda.max_memory_allocated(),
            metric="torch.cuda.max_memory_allocated",
        )
    else:
        res.update(weights_bytes=rss.baseline, peak_bytes=rss.peak, metric="process peak RSS (CPU stand-in)")
    del model, batch, params
    release(args.device)
    if cuda:  # should be ~0: the next model is built only after this one is gone
        res["allocated_after_release_bytes"] = torch.cuda.memory_allocated()
    return res


def bench_train(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    runs = {}
    for share in (True, False):  # the first model is released before the second is built
        runs["shared" if share else "two_copies"] = train_step_memory(args, tokenizer, share)
    s, t = runs["shared"], runs["two_copies"]
    return {
        "kind": "train",
        "shape": args.shape,
        "dtype": args.dtype,
        "device": args.device,
        "mem_size": args.mem_size,
        "compression_rate": args.compression_rate,
        "lora_r": args.lora_r,
        "train_tokens": args.train_tokens,
        "gradient_checkpointing": True,
        **runs,
        "peak_ratio_two_copies_over_shared": t["peak_bytes"] / s["peak_bytes"] if s["peak_bytes"] else None,
        "loss_equal": s["loss"] == t["loss"],
        "grad_norm_rel_diff": abs(s["grad_norm"] - t["grad_norm"]) / max(abs(t["grad_norm"]), 1e-30),
    }


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# reporting


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu or 'CPU'}, {os.cpu_count()} cores"


def _python_name() -> str:
    rel = os.path.relpath(sys.executable)
    return rel if not rel.startswith("..") else Path(sys.executable).name


def environment(args: argparse.Namespace, tokenizer_kind: str) -> dict[str, Any]:
    import peft
    import transformers

    return {
        "command": " ".join(shlex.quote(a) for a in [_python_name(), *sys.argv]),
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "tokenizer": tokenizer_kind,
        "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
    }


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def markdown(results: list[dict[str, Any]]) -> str:
    parts = []
    comp = [r for r in results if r["kind"] == "compress"]
    if comp:
        parts.append(
            "| shape | dtype | device | k, r, LoRA r | segments (texts) | text tokens | loop ms | batched ms "
            "| loop tok/s | batched tok/s | loop / batched | batched TFLOP/s | max abs diff (rel) | slots match |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for r in comp:
            parts[-1] += (
                f"\n| {r['shape']} | {r['dtype']} | {r['device']} | {r['mem_size']}, {r['compression_rate']}, {r['lora_r']} "
                f"| {r['segments']} ({r['texts']}{', ragged' if r['ragged'] else ''}) | {r['text_tokens']:,} "
                f"| {r['loop_ms']:.1f} | {r['batched_ms']:.1f} | {r['loop_tokens_per_s']:,.0f} "
                f"| {r['batched_tokens_per_s']:,.0f} | **{r['ratio_loop_over_batched']:.2f}x** "
                f"| {r['batched_tflops']:.2f} | {r['max_abs_diff']:.2e} ({r['rel_diff']:.1e}) "
                f"| {'yes' if r['slots_match'] else '**NO**'} |"
            )
    train = [r for r in results if r["kind"] == "train"]
    if train:
        cuda = train[0]["device"].startswith("cuda")
        what = "peak GPU memory (max_memory_allocated), GiB" if cuda else "peak process RSS, GiB (CPU stand-in)"
        rest = "at rest" if cuda else "RSS before"
        parts.append(
            f"Training step (forward+backward, one AE example, gradient checkpointing); {what}:\n\n"
            f"| shape | dtype | tokens | shared: {rest} / peak | two copies: {rest} / peak | two copies / shared "
            "| step ms shared / two copies | same loss and grads |\n|---|---|---|---|---|---|---|---|"
        )
        for r in train:
            s, t = r["shared"], r["two_copies"]
            ratio = r["peak_ratio_two_copies_over_shared"]
            same = r["loss_equal"] and r["grad_norm_rel_diff"] < 1e-3
            parts[-1] += (
                f"\n| {r['shape']} | {r['dtype']} | {r['train_tokens']:,} | {gib(s['weights_bytes'])} / {gib(s['peak_bytes'])} "
                f"| {gib(t['weights_bytes'])} / {gib(t['peak_bytes'])} | {ratio:.2f}x "
                f"| {s['step_ms']:.0f} / {t['step_ms']:.0f} | {'yes' if same else 'no (grad norm rel diff %.1e)' % r['grad_norm_rel_diff']} |"
            )
    return "\n\n".join(parts)


def _load_note(env: dict[str, Any]) -> str:
    """On a CPU the timings depend on what else runs: say how busy the machine was."""
    if env["device"] == "cpu":
        return f"; {env['torch_threads']} torch threads, load average {env['loadavg_1min_at_start']:.2f} at start"
    return ""


def append_md(path: str, env: dict[str, Any], table: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    with p.open("a") as f:
        if new:
            f.write("# hicae benchmarks\n\nAppended by `benchmarks/bench_compress.py --append-md` (see benchmarks/README.md).\n")
        f.write(
            f"\n## {env['date']}: {env['device_name']}\n\n"
            f"`{env['command']}`\n\n"
            f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
            f"Python {env['python']}; random weights, random token ids; tokenizer: {env['tokenizer']}"
            f"{_load_note(env)}.\n\n"
            f"{table}\n"
        )


# --------------------------------------------------------------------------------------------


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """Flags of the model under test, shared by the benchmarks in this folder."""
    ap.add_argument("--shape", choices=SHAPES, default="tiny")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu for tiny, cuda otherwise)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: fp32 for tiny, bf16 otherwise")
    ap.add_argument("--mem-size", type=int, default=None, help="k (default 16 tiny, 128 otherwise)")
    ap.add_argument("--compression-rate", type=int, default=None, help="r (default 4)")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 4 tiny, 128 otherwise)")
    ap.add_argument("--tokenizer", default="auto", help="'auto' (hicae.assets' Qwen3 tokenizer, stub ids if missing), 'stub', or a folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")


def resolve_model_defaults(args: argparse.Namespace) -> None:
    """Fill the shape-dependent defaults of ``add_model_args``' flags."""
    gpu_shape = args.shape != "tiny"
    d = ICAE_DEFAULTS["gpu" if gpu_shape else "tiny"]
    args.device = args.device or ("cuda" if gpu_shape else "cpu")
    args.dtype = args.dtype or ("bf16" if gpu_shape else "fp32")
    args.mem_size = args.mem_size or d["mem_size"]
    args.compression_rate = args.compression_rate or d["compression_rate"]
    args.lora_r = args.lora_r or d["lora_r"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--segments", type=int, default=32, help="segments of k*r tokens in all")
    ap.add_argument("--texts", type=int, default=4, help="texts the segments are split into")
    ap.add_argument("--ragged", action="store_true", help="texts shorter than whole segments (uneven segment sizes)")
    ap.add_argument("--compress-batch-tokens", type=int, default=ICAEConfig.compress_batch_tokens)
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs (default 1 on cpu, 2 on cuda)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 5)")
    ap.add_argument("--loop-empty-cache", action="store_true", help="the loop calls torch.cuda.empty_cache() per segment, as the reference does")
    ap.add_argument("--skip-compress", action="store_true", help="only the training-memory measurement")
    ap.add_argument("--train-memory", action="store_true", help="peak memory of a training step, shared weights vs two copies")
    ap.add_argument("--train-tokens", type=int, default=None, help="AE example length (default 5120 on cuda, 512 on cpu)")
    ap.add_argument("--roofline", action="store_true", help="also measure an 8192^3 bf16 matmul (cuda only)")
    ap.add_argument("--compile", action="store_true", help="also time the batched path with the encoder torch.compile'd")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--append-md", default=None, help="append the table, command, device and versions to this markdown file")
    args = ap.parse_args(argv)
    resolve_model_defaults(args)
    cuda = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.repeats = args.repeats or 5
    args.train_tokens = args.train_tokens or (5120 if cuda else 512)
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    if args.skip_compress and not args.train_memory:
        ap.error("--skip-compress leaves nothing to do without --train-memory")
    return args


def main(argv: list[str] | None = None) -> int:
    global _LOOP_EMPTY_CACHE
    args = parse_args(argv)
    _LOOP_EMPTY_CACHE = args.loop_empty_cache
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, tok_kind = load_tokenizer(args.tokenizer)
    env = environment(args, tok_kind)
    print(f"# {env['device_name']}, {env['torch_threads']} threads | torch {env['torch']} | transformers {env['transformers']} | {args.shape} {args.dtype}", flush=True)

    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.roofline and args.device.startswith("cuda"):
        extra["roofline_bf16_tflops"] = measure_roofline(args.device)
        print(f"bf16 matmul roofline: {extra['roofline_bf16_tflops']:.0f} TFLOP/s", flush=True)
    if not args.skip_compress:
        r = bench_compress(args, tokenizer)
        if "roofline_bf16_tflops" in extra:
            r["batched_share_of_roofline"] = r["batched_tflops"] / extra["roofline_bf16_tflops"]
        results.append(r)
        print(
            f"compress: loop {r['loop_ms']:.1f} ms, batched {r['batched_ms']:.1f} ms, "
            f"ratio {r['ratio_loop_over_batched']:.2f}x, max abs diff {r['max_abs_diff']:.2e} (rel {r['rel_diff']:.1e}); "
            f"full logits are {r['loop_lm_head_flop_share']:.0%} of the loop's FLOPs",
            flush=True,
        )
    if args.train_memory:
        r = bench_train(args, tokenizer)
        results.append(r)
        print(
            f"train: peak shared {gib(r['shared']['peak_bytes'])} GiB, two copies {gib(r['two_copies']['peak_bytes'])} GiB "
            f"({r['shared']['metric']})",
            flush=True,
        )
    env["seconds"] = time.perf_counter() - t0

    table = markdown(results)
    print()
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"env": env, **extra, "results": results}, indent=2) + "\n")
    if args.append_md:
        append_md(args.append_md, env, table)
    bad = [r for r in results if r["kind"] == "compress" and not r["slots_match"]]
    if bad:
        print("error: batched and loop slots differ beyond tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
