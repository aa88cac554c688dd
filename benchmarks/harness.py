"""What every benchmark here shares: model flags and building, timing, memory, environment, reports.

``run.py`` drives the benchmarks; each ``bench_*.py`` (and ``probes/probe_compress_gap.py``) also runs on
its own through ``main_single``: its flags plus the model flags below, its result printed as
markdown, written as JSON (``--out``) and appended to a markdown file (``--append-md``).
"""

from __future__ import annotations

import argparse
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
from types import ModuleType
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks, next to this file
try:  # run from a checkout without installing
    import hicae  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hicae import ICAE, ICAEConfig  # noqa: E402
from hicae.shapes import MODEL_SHAPES  # noqa: E402

# --------------------------------------------------------------------------------------------
# shapes

# The tiny model and real shapes of Qwen2.5 (hicae.shapes, the one table of shapes); weights are random.
SHAPES = ("tiny", "qwen2.5-0.5b", "qwen2.5-7b")
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
        from hicae.demo.tiny import tiny_config

        cfg = tiny_config("qwen3")
        name = "tiny-qwen3"
    else:
        cfg = Qwen2Config(
            **MODEL_SHAPES[shape],
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
    from hicae.demo.assets import load_qwen3_tokenizer

    try:
        return load_qwen3_tokenizer(), "qwen3"
    except Exception as e:  # no npm / no network (e.g. on a GPU box): ids are all we need
        print(f"warning: Qwen3 tokenizer unavailable ({type(e).__name__}: {e}); using stub special-token ids", file=sys.stderr)
        return StubTokenizer(), "stub"


def model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model settings a result records."""
    return {k: getattr(args, k) for k in ("shape", "dtype", "device", "mem_size", "compression_rate", "lora_r")}


def icae_config(args: argparse.Namespace, **overrides: Any) -> ICAEConfig:
    """The ICAE settings of ``add_model_args``' flags (k, r, LoRA rank), plus per-benchmark ``overrides``."""
    return ICAEConfig(mem_size=args.mem_size, compression_rate=args.compression_rate, lora_r=args.lora_r, **overrides)


def build_icae(args: argparse.Namespace, tokenizer: Any, share_decoder: bool = True, *, cls: type = ICAE,
               random_lora_b: bool = True, max_length: int = 0, **kwargs: Any) -> ICAE:
    """An ``ICAE`` (or ``cls``, e.g. ``HierarchicalICAE``) on a random base of ``args.shape``.

    ``random_lora_b``: peft starts lora_B at zero, which would make the adapter a no-op (and a
    comparison of slots blind to it); small random values make the encoder really differ from the base.
    """
    base = build_base(args.shape, args.device, DTYPES[args.dtype], args.seed)
    cfg = icae_config(args, compress_batch_tokens=getattr(args, "compress_batch_tokens", None) or ICAEConfig.compress_batch_tokens,
                      model_max_length=max(5120, getattr(args, "train_tokens", 0) or 0, max_length))
    torch.manual_seed(args.seed + 1)  # LoRA init
    model = cls(base, tokenizer, cfg, share_decoder=share_decoder, **kwargs)
    if random_lora_b:
        with torch.no_grad():
            for name, p in model.encoder.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
    return model


# --------------------------------------------------------------------------------------------
# timing

def sync(device: str) -> None:
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
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            results[i] = None  # free the previous result before the next run
            sync(device)
            t0 = time.perf_counter()
            results[i] = fn()
            sync(device)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times, results


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> tuple[float, Any]:
    """Median ms of ``repeats`` runs of ``fn`` after ``warmup`` runs, and the last result."""
    (times,), (out,) = time_fns([fn], device, warmup, repeats)
    return statistics.median(times), out


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
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    dt = (time.perf_counter() - t0) / 10
    del a, b
    return 2 * n**3 / dt / 1e12



def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# memory



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


# --------------------------------------------------------------------------------------------
# environment and reports

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


def _load_note(env: dict[str, Any]) -> str:
    """On a CPU the timings depend on what else runs: say how busy the machine was."""
    if env["device"] == "cpu":
        return f"; {env['torch_threads']} torch threads, load average {env['loadavg_1min_at_start']:.2f} at start"
    return ""


def append_md(path: str, env: dict[str, Any], text: str, title: str = "") -> None:
    """Append ``text`` under a heading with the date, ``title`` and device, the command, versions and load."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    end = env.get("loadavg_1min_at_end")
    seconds = "" if env.get("seconds") is None else f"; {env['seconds']:.0f} s in all"
    with p.open("a") as f:
        if new:
            f.write(f"# hicae benchmarks\n\nAppended by the benchmarks' --append-md (see benchmarks/README.md).\n")
        f.write(
            f"\n## {env['date']}: {title + ', ' if title else ''}{env['device_name']}\n\n"
            f"`{env['command']}`\n\n"
            f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
            f"Python {env['python']}; random weights, random token ids; tokenizer: {env['tokenizer']}"
            f"{_load_note(env)}{'' if end is None else f', {end:.2f} at the end'}"
            f"{seconds}.\n\n"
            f"{text}\n"
        )


# --------------------------------------------------------------------------------------------
# flags

# --------------------------------------------------------------------------------------------


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """Flags of the model under test, shared by the benchmarks in this folder."""
    ap.add_argument("--shape", choices=SHAPES, default="tiny")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu for tiny, cuda otherwise)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: fp32 for tiny, bf16 otherwise")
    ap.add_argument("--mem_size", "--mem-size", type=int, default=None, help="k (default 16 tiny, 128 otherwise)")
    ap.add_argument("--compression_rate", "--compression-rate", type=int, default=None, help="r (default 4)")
    ap.add_argument("--lora_r", "--lora-r", type=int, default=None, help="LoRA rank (default 4 tiny, 128 otherwise)")
    ap.add_argument("--tokenizer", default="auto", help="'auto' (hicae.demo.assets' Qwen3 tokenizer, stub ids if missing), 'stub', or a folder")
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



def parse_single(bench: ModuleType, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of one benchmark module: the model flags, ``--out``/``--append-md``/``--threads`` and
    the module's ``add_args``, with every default resolved (``resolve_model_defaults``, ``bench.resolve``)."""
    ap = argparse.ArgumentParser(description=(bench.__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--append-md", "--append_md", dest="append_md", default=None,
                    help="append the table, command, device and versions to this markdown file")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    bench.add_args(ap)
    args = ap.parse_args(argv)
    resolve_model_defaults(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    bench.resolve(args, ap)
    return args


def main_single(bench: ModuleType, argv: list[str] | None = None) -> int:
    """One benchmark on its own (``parse_single``'s flags): ``bench.run`` (a dict), its ``markdown``
    printed, written as JSON (``{"env": ..., **result}``, ``--out``) and appended (``--append-md``);
    exit code 1 when ``bench.problem`` names one.

    A benchmark module provides ``TITLE``, ``add_args(ap)``, ``resolve(args, ap)``, ``run(args,
    tokenizer)``, ``markdown(result, args)``, ``problem(result)`` and optionally ``after(args, env,
    result)`` (extra outputs such as a plot).
    """
    args = parse_single(bench, argv)
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, kind = load_tokenizer(args.tokenizer)
    env = environment(args, kind)
    print(f"# {env['device_name']}, {env['torch_threads']} threads | torch {env['torch']} | transformers "
          f"{env['transformers']} | {args.shape} {args.dtype}", flush=True)
    t0 = time.perf_counter()
    result = bench.run(args, tokenizer)
    env["seconds"] = time.perf_counter() - t0
    env["loadavg_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    text = bench.markdown(result, args)
    print()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"env": env, **result}, indent=2, default=str) + "\n")
    if args.append_md:
        append_md(args.append_md, env, text, bench.TITLE)
    if hasattr(bench, "after"):
        bench.after(args, env, result)
    problem = bench.problem(result)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0
