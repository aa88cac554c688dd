"""Offline quality proxy (issue 4): ICAE on a small LM trained from scratch on a Debian-packaged corpus.

Everything runs on a CPU without the model hub:

1. corpus: ``apt-get download python3.11-doc fortunes-zh`` into a cache folder (not installed;
   ``dpkg-deb -x``), the reStructuredText sources of the Python 3.11 docs (~11 MB, English) and
   the Chinese fortunes (~2 MB; entries separated by lines holding only ``%``). Each ``.rst``
   file and each fortune is one document; the test split is held out BY DOCUMENT (seeded).
   Documents are then cut into passages.
2. tokenizer: byte-level BPE trained with ``tokenizers`` on the training split (Qwen's
   152k-token vocabulary would make the output layer dominate CPU training, so the proxy uses its
   own small vocabulary), saved as a ``PreTrainedTokenizerFast`` with EOS/PAD and a minimal chat
   template.
3. base LM: a small Qwen3-architecture model (``hicae.demo.tiny.tiny_config``) pretrained from scratch
   on the training passages (plain loop, packed blocks), then frozen and saved.
4. ICAE: ``hicae pretrain`` (AE + LM objectives) on the base folder, at 4x and 8x compression
   (memory slots k, compression rate r, texts of k*r tokens, so one segment per text).
5. evaluation on held-out passages with ``hicae.evaluation``: AE BLEU-4 / exact match / token
   accuracy, and continuation perplexity with no context / memory / full text / text truncated
   to as many tokens as slots.
6. HierarchicalICAE at 16x: the 4x ICAE upgraded to two levels, group size 4, trained briefly;
   AE on held-out texts of four segments, each compressed into one level-2 block.

``--quick`` (< 5 min on a 2-core CPU) is a smoke check: it asserts that memory beats no context
on perplexity at every ratio and exits non-zero otherwise. ``--full`` is the < 45-minute
configuration. Results: ``proxy.json`` and ``proxy.md`` in ``--out_dir`` (written atomically).

    python experiments/proxy.py --quick --out_dir outputs/proxy-quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PACKAGES = ("python3.11-doc", "fortunes-zh")
RST_DIR = "usr/share/doc/python3.11/html/_sources"
FORTUNE_FILE = "usr/share/games/fortunes/chinese"
from hicae.protocol.text import ANSI, parse_fortunes  # noqa: E402,F401  (one fortune parser)


# ---- corpus -------------------------------------------------------------------------------------

def split_documents(docs: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) by whole document: a seeded shuffle of document indices; at least one test document."""
    idx = list(range(len(docs)))
    random.Random(seed).shuffle(idx)
    n_test = max(1, round(len(docs) * test_fraction)) if len(docs) > 1 else 0
    test = set(idx[:n_test])
    return [d for i, d in enumerate(docs) if i not in test], [d for i, d in enumerate(docs) if i in test]


def passages(doc: str, max_chars: int, min_chars: int) -> list[str]:
    """Cut a document into passages of whole lines, each up to about ``max_chars`` characters."""
    out, cur, size = [], [], 0
    for line in doc.splitlines():
        line = line.rstrip()
        if not line and not cur:
            continue
        if size + len(line) > max_chars and cur:
            out.append("\n".join(cur).strip())
            cur, size = [], 0
        cur.append(line[:max_chars])
        size += len(line) + 1
    if cur:
        out.append("\n".join(cur).strip())
    return [p for p in out if len(p) >= min_chars]


def fetch_corpus(cache: Path) -> Path:
    """Download and unpack the two Debian packages once; returns the unpacked root."""
    root = cache / "unpacked"
    if (root / RST_DIR).is_dir() and (root / FORTUNE_FILE).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)

    def download() -> bool:
        r = subprocess.run(["apt-get", "download", *PACKAGES], cwd=cache, capture_output=True, text=True)
        return r.returncode == 0

    if not download():
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if not download():
            raise SystemExit(f"apt-get download {' '.join(PACKAGES)} failed in {cache}")
    for deb in sorted(cache.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def load_documents(root: Path) -> tuple[list[str], list[str]]:
    """(English rst documents, Chinese fortune documents)."""
    rst = []
    for f in sorted((root / RST_DIR).rglob("*.txt")):
        t = f.read_text(encoding="utf-8", errors="replace").strip()
        if t:
            rst.append(t)
    zh = parse_fortunes((root / FORTUNE_FILE).read_text(encoding="utf-8", errors="replace"))
    return rst, zh


@dataclass
class Sizes:
    vocab: int
    tok_train_chars: int  # characters of training text the tokenizer learns from
    hidden: int
    layers: int
    heads: int
    lm_steps: int
    lm_batch: int
    lm_block: int
    lm_lr: float
    ratios: tuple[tuple[int, int], ...]  # (mem_size k, compression_rate r)
    icae_steps: int
    icae_batch: int
    icae_lr: float
    lora_r: int
    continuation: int  # ppl continuation tokens
    n_ae: int  # held-out passages for AE
    n_ppl: int  # held-out passages for perplexity
    max_chars: int  # passage length in characters
    max_train_passages: int
    copy_fraction: float = 0.25  # base LM: share of training blocks whose second half repeats the first
    hier_steps: int = 0  # HierarchicalICAE (16x: the 4x ICAE, group 4, two levels) training steps; 0: skipped
    n_hier: int = 0  # held-out texts of 4 segments for the 16x AE


# Step costs measured with 1 torch thread on the 2-core CPU shared with other jobs: base LM step
# (batch 16 x 128 tokens) 0.25 s at hidden 128 / 2 layers / 4k vocab, 0.85 s at hidden 256 / 4 layers
# / 8k vocab; ICAE step (batch 8, 64-token texts) ~0.09 s in the quick setting.
QUICK = Sizes(vocab=4096, tok_train_chars=3_000_000, hidden=128, layers=2, heads=4, lm_steps=400, lm_batch=16,
              lm_block=128, lm_lr=3e-3, ratios=((16, 4), (8, 8)), icae_steps=300, icae_batch=8, icae_lr=5e-3,
              lora_r=16, continuation=32, n_ae=24, n_ppl=48, max_chars=600, max_train_passages=4000,
              hier_steps=100, n_hier=16)
# Sized from the step costs above to about 35-40 min (measured: 26 min): base LM ~16 min, each ICAE ~5 min.
# Half the base LM's blocks repeat (quick mode's 25% left a 2-layer base that does not copy at all).
FULL = Sizes(vocab=8192, tok_train_chars=11_000_000, hidden=256, layers=4, heads=4, lm_steps=1000, lm_batch=16,
             lm_block=128, lm_lr=2e-3, ratios=((32, 4), (16, 8)), icae_steps=400, icae_batch=8, icae_lr=3e-3,
             lora_r=32, continuation=64, n_ae=200, n_ppl=300, max_chars=1200, max_train_passages=40000,
             copy_fraction=0.5, hier_steps=300, n_hier=100)


# One call on a GPU lent for a few minutes (H100/H200; bf16): a deeper, wider base trained on many
# more tokens, so that it copies, and ICAE at 4x/8x on 256-token texts. Sized for ~4-5 minutes.
GPU = Sizes(vocab=8192, tok_train_chars=11_000_000, hidden=512, layers=8, heads=8, lm_steps=1500, lm_batch=64,
            lm_block=256, lm_lr=1e-3, ratios=((64, 4), (32, 8)), icae_steps=800, icae_batch=32, icae_lr=1e-3,
            lora_r=64, continuation=64, n_ae=200, n_ppl=300, max_chars=1600, max_train_passages=40000,
            copy_fraction=0.5, hier_steps=400, n_hier=100)


# ---- tokenizer ----------------------------------------------------------------------------------

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_tokenizer(texts: list[str], vocab: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


# ---- base LM ------------------------------------------------------------------------------------

def pretrain_base(tok, texts: list[str], z: Sizes, seed: int, log, device: str = "cpu") -> tuple[object, dict]:
    import contextlib

    import torch

    from hicae.demo.tiny import tiny_config
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("qwen3", vocab_size=len(tok), hidden_size=z.hidden, intermediate_size=3 * z.hidden,
                      num_hidden_layers=z.layers, num_attention_heads=z.heads, num_key_value_heads=max(1, z.heads // 2),
                      max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=None)
    # pad_token_id None: pad is EOS here, and nn.Embedding never updates its padding row
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(device)
    # bf16 autocast on a GPU (fp32 master weights); plain fp32 on a CPU
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    stream: list[int] = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tok.eos_token_id]
    n_blocks = len(stream) // z.lm_block
    blocks = torch.tensor(stream[: n_blocks * z.lm_block]).view(n_blocks, z.lm_block)
    opt = torch.optim.AdamW(model.parameters(), lr=z.lm_lr, weight_decay=0.01)
    warm = max(1, z.lm_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / z.lm_steps))))
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(z.lm_steps):
        x = blocks[torch.randint(0, n_blocks, (z.lm_batch,), generator=g)].clone()
        # Some blocks repeat their first half: a real Qwen can copy text from its context, which
        # ICAE's frozen decoder needs (reconstruction copies from the slots); a tiny LM trained
        # briefly on plain text does not learn to (copy_check shows it).
        rep = torch.rand(z.lm_batch, generator=g) < z.copy_fraction
        half = z.lm_block // 2
        x[rep, half : 2 * half] = x[rep, :half]
        x = x.to(device)
        with amp:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % max(1, z.lm_steps // 6) == 0 or step == z.lm_steps - 1:
            log(f"base LM step {step + 1}/{z.lm_steps} loss {losses[-1]:.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    info = {"copy_fraction": z.copy_fraction,"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "train_tokens": len(stream),
            "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]), "seconds": time.time() - t0}
    return model, info


def copy_check(model, tok, texts: list[str], n: int = 48) -> dict:
    """Mean NLL of ``n``-token held-out passages read once, then read again right after (``x x``).

    A model that copies from its context scores the second reading far lower; ICAE's frozen decoder
    must copy to reconstruct from memory slots.
    """
    import torch

    ids = [x[:n] for x in tok(texts, add_special_tokens=False)["input_ids"] if len(x) >= n][:32]
    if not ids:
        return {}
    x = torch.tensor([i + i for i in ids], device=model.device)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None])[..., 0]
    return {"nll_first_reading": float(-lp[:, : n - 1].mean()), "nll_second_reading": float(-lp[:, n:].mean())}


# ---- main ---------------------------------------------------------------------------------------

def _jsonl(path: Path, texts: list[str]) -> None:
    from hicae.io.fileio import write_text_atomic

    write_text_atomic(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke check, < 5 min on a 2-core CPU (default)")
    mode.add_argument("--full", action="store_true", help="the < 45-minute configuration")
    mode.add_argument("--gpu", action="store_true", help="the larger configuration for one GPU call (~5 min, bf16)")
    p.add_argument("--out_dir", default=None, help="default: outputs/proxy-{quick,full,gpu}")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --gpu, else cpu)")
    p.add_argument("--copy_fraction", type=float, default=None,
                   help="share of the base LM's training blocks that repeat their first half (default: the mode's)")
    p.add_argument("--dry_run", action="store_true",
                   help="the chosen mode's code path at toy sizes, to test it (e.g. --gpu --device cpu --dry_run)")
    p.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/hicae/proxy"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test_fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a small shared machine, spin-waiting OpenMP threads slow tiny models ~10x)")
    a = p.parse_args(argv)
    name = "full" if a.full else "gpu" if a.gpu else "quick"
    z = {"full": FULL, "gpu": GPU, "quick": QUICK}[name]
    device = a.device or ("cuda" if a.gpu else "cpu")
    if a.copy_fraction is not None:
        z = replace(z, copy_fraction=a.copy_fraction)
    if a.dry_run:
        z = replace(z, tok_train_chars=200_000, vocab=1024, hidden=64, layers=2, heads=4, lm_steps=10, lm_batch=4,
                    icae_steps=6, icae_batch=4, n_ae=4, n_ppl=4, max_train_passages=200, lora_r=4,
                    hier_steps=min(z.hier_steps, 4), n_hier=min(z.n_hier, 2))
    out = Path(a.out_dir or f"outputs/proxy-{name}")
    work = out / "work"
    t_start = time.time()

    import torch

    torch.set_num_threads(a.threads)
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    def log(msg: str) -> None:
        print(f"[proxy {time.time() - t_start:6.1f}s] {msg}", flush=True)

    timings: dict[str, float] = {}

    # 1. corpus
    t = time.time()
    root = fetch_corpus(Path(a.cache_dir))
    rst, zh = load_documents(root)
    rst_tr, rst_te = split_documents(rst, a.test_fraction, a.seed)
    zh_tr, zh_te = split_documents(zh, a.test_fraction, a.seed)
    min_chars = 40
    train_p = [q for d in rst_tr + zh_tr for q in passages(d, z.max_chars, min_chars)]
    test_p = [q for d in rst_te + zh_te for q in passages(d, z.max_chars, min_chars)]
    rng = random.Random(a.seed)
    rng.shuffle(train_p)
    rng.shuffle(test_p)
    corpus_info = {"rst_docs": len(rst), "fortune_docs": len(zh), "train_docs": len(rst_tr) + len(zh_tr),
                   "test_docs": len(rst_te) + len(zh_te), "train_passages": len(train_p), "test_passages": len(test_p),
                   "train_chars": sum(map(len, train_p)),
                   "test_doc_sha1": hashlib.sha1("\x00".join(rst_te + zh_te).encode()).hexdigest()[:12]}
    timings["corpus"] = time.time() - t
    log(f"corpus: {corpus_info}")

    # 2. tokenizer (on training passages only)
    t = time.time()
    tok_texts, n = [], 0
    for q in train_p:
        if n >= z.tok_train_chars:
            break
        tok_texts.append(q)
        n += len(q)
    base_dir = work / "base"
    tok = train_tokenizer(tok_texts, z.vocab, base_dir)
    from hicae.tokens import SpecialTokens

    st = SpecialTokens.from_tokenizer(tok)
    timings["tokenizer"] = time.time() - t
    log(f"tokenizer: byte-level BPE, {len(tok)} tokens, eos={st.eos_id} chat_end={st.chat_end_id} "
        f"({timings['tokenizer']:.0f} s)")

    # 3. base LM from scratch, frozen and saved
    t = time.time()
    set_seed(a.seed)
    lm_texts = train_p[: z.max_train_passages]
    base, base_info = pretrain_base(tok, lm_texts, z, a.seed, log, device)
    base.config._name_or_path = f"proxy-qwen3-{name}"
    base_info["copy_check"] = copy_check(base, tok, test_p[:200])
    log(f"base LM copy check (held-out passage read twice, NLL): {base_info['copy_check']}")
    base.to("cpu").save_pretrained(str(base_dir))
    timings["base_lm"] = time.time() - t

    # 4-5. ICAE per ratio, then evaluation
    from hicae.io.checkpoint import load_icae
    from hicae.cli.train import pretrain
    from hicae.evaluation import EvalSettings, TextRecord, run_ae, run_ppl
    from hicae.evaluation.report import markdown_table

    def common_args(steps: int, batch: int, lr: float) -> list[str]:
        return ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
                "--learning_rate", str(lr), "--lr_scheduler_type", "cosine", "--warmup_steps", str(steps // 20),
                "--logging_steps", str(max(1, steps // 10)), "--save_strategy", "no", "--seed", str(a.seed),
                "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
                *(["--bf16", "true", "--dtype", "bf16"] if device == "cuda" else ["--use_cpu", "true"])]

    test_ids = tok(test_p, add_special_tokens=False)["input_ids"]
    results: dict[str, dict] = {}
    failures: list[str] = []
    for k, r in z.ratios:
        key = f"{r}x"
        T = k * r
        t = time.time()
        train_texts = [q for q in train_p[: z.max_train_passages]]
        _jsonl(work / "data" / "train.jsonl", train_texts)
        ckpt = work / f"icae-{key}"
        log(f"ICAE {key}: k={k}, r={r}, texts of {T} tokens, {z.icae_steps} steps")
        pretrain([
            "--model_name_or_path", str(base_dir), "--output_dir", str(ckpt),
            "--train_file", str(work / "data" / "train.jsonl"),
            "--fixed_mem_size", str(k), "--mean_compression_rate", str(r), "--model_max_length", str(T),
            "--lora_r", str(z.lora_r), "--lora_alpha", str(2 * z.lora_r), "--lora_dropout", "0.0",
            "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
            "--lm_ratio", "0.5", "--min_tokens_for_lm", str(max(8, T // 4)), "--leave_tokens_for_lm", "1",
            *common_args(z.icae_steps, z.icae_batch, z.icae_lr),
        ])
        train_s = time.time() - t
        hist = json.loads((ckpt / "loss_history.json").read_text()) if (ckpt / "loss_history.json").exists() else {}
        t = time.time()
        model = load_icae(ckpt, config_overrides={"overlong": "truncate", "model_max_length": T}, device=device,
                          **({"dtype": "bf16"} if device == "cuda" else {}))
        torch.set_num_threads(a.threads)
        s = EvalSettings(batch_size=64 if device == "cuda" else 16, seed=a.seed, progress=False)
        # AE: held-out passages of at least T tokens, compressed as their first T tokens (one segment, ratio r)
        ae_recs = [TextRecord(f"test:{i}", q) for i, (q, ids) in enumerate(zip(test_p, test_ids)) if len(ids) >= T][: z.n_ae]
        ae = run_ae(model, ae_recs, s)
        # PPL: passages with at least T context tokens before the continuation; the context keeps its last T
        ppl_recs = [TextRecord(f"test:{i}", q) for i, (q, ids) in enumerate(zip(test_p, test_ids))
                    if len(ids) >= T + z.continuation][: z.n_ppl]
        ppl = run_ppl(model, ppl_recs, s, continuation_tokens=z.continuation, leave_tokens=1)
        eval_s = time.time() - t
        loss = hist.get("loss", [])
        res = {"mem_size": k, "compression_rate": r, "text_tokens": T,
               "ae": {kk: ae.summary[kk] for kk in ("n", "bleu", "sentence_bleu", "exact_match", "token_accuracy")},
               "ppl": {c: ppl.summary[c] for c in ("none", "memory", "full", "truncated")},
               "ppl_texts": ppl.summary["texts"], "mean_slots": ppl.summary.get("mean_slots"),
               "train_loss_first": loss[0][1] if loss else None, "train_loss_last": loss[-1][1] if loss else None,
               "train_seconds": train_s, "eval_seconds": eval_s,
               "examples": [{"reference": e["reference"], "prediction": e["prediction"]} for e in ae.examples[:3]],
               "tables_md": [markdown_table(tb) for tb in ae.tables[:1] + ppl.tables[:1]]}
        results[key] = res
        timings[f"icae_{key}"] = train_s + eval_s
        log(f"ICAE {key}: AE BLEU-4 {res['ae']['bleu']:.2f}, EM {res['ae']['exact_match']:.3f}; ppl " +
            ", ".join(f"{c} {res['ppl'][c]['ppl']:.2f}" for c in res["ppl"]))
        if not res["ppl"]["memory"]["ppl"] < res["ppl"]["none"]["ppl"]:
            failures.append(f"{key}: memory perplexity {res['ppl']['memory']['ppl']:.3f} does not beat "
                            f"no context {res['ppl']['none']['ppl']:.3f}")
        del model

    if z.hier_steps:
        results["16x-hier"] = hierarchical_16x(z, tok, train_p, test_p, work, pretrain, common_args, device, a.seed,
                                                 a.threads, log)
        timings["hier_16x"] = results["16x-hier"]["train_seconds"] + results["16x-hier"]["eval_seconds"]

    wall = time.time() - t_start
    report = {"mode": name, "seed": a.seed, "wall_seconds": wall, "timings": timings, "sizes": asdict(z),
              "corpus": corpus_info, "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab": len(tok),
                                                   "note": "own small vocabulary: Qwen's 152k vocabulary makes CPU training too slow"},
              "base_lm": base_info, "results": results, "checks": {"memory_beats_no_context": not failures,
                                                                     "failures": failures},
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                          "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                          "threads": a.threads, "platform": platform.platform()}}
    from hicae.io.fileio import write_text_atomic

    write_text_atomic(out / "proxy.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "proxy.md", render_markdown(report))
    log(f"done in {wall:.0f} s -> {out / 'proxy.json'}, {out / 'proxy.md'}")
    if failures:
        for f in failures:
            print(f"[proxy] CHECK FAILED: {f}", file=sys.stderr)
        return 1
    return 0


def _join_to_length(texts: list[str], tok, n_tokens: int, limit: int) -> list[str]:
    """Consecutive passages joined (blank line between) into texts of at least ``n_tokens`` tokens; at most ``limit``."""
    out, cur, n = [], [], 0
    for t, ids in zip(texts, tok(texts, add_special_tokens=False)["input_ids"]):
        cur.append(t)
        n += len(ids) + 2
        if n >= n_tokens:
            out.append("\n\n".join(cur))
            cur, n = [], 0
            if len(out) >= limit:
                break
    return out


def hierarchical_16x(z: Sizes, tok, train_p: list[str], test_p: list[str], work: Path, pretrain, common_args,
                     device: str, seed: int, threads: int, log) -> dict:
    """HierarchicalICAE at 16x: the 4x ICAE upgraded to two levels with group size 4, so that four
    4x segments (4*k*4 tokens) merge into one level-2 block of k slots; trained briefly (AE at both
    levels + LM), then held-out texts of exactly four segments are reconstructed from that block."""
    import torch

    from hicae import HierarchyConfig
    from hicae.io.checkpoint import load_icae
    from hicae.evaluation import EvalSettings, TextRecord, run_ae
    from hicae.evaluation.report import markdown_table

    k, r = next((k, r) for k, r in z.ratios if r == 4)
    T, g = k * r, 4
    W = T * g  # tokens under one level-2 block
    t = time.time()
    _jsonl(work / "data" / "long.jsonl", _join_to_length(train_p[: z.max_train_passages], tok, int(W * 1.5), 10**9))
    ckpt = work / "hier-16x"
    log(f"HierarchicalICAE 16x: restored from the 4x ICAE, levels 2, group {g}: {W} tokens -> {k} slots; {z.hier_steps} steps")
    pretrain(["--restore_from", str(work / "icae-4x"), "--hierarchical", "--levels", "2", "--group_size", str(g),
              "--max_slots", str(8 * k), "--max_text_tokens", str(2 * W), "--output_dir", str(ckpt),
              # model_max_length caps the decoder's AE target: W, or level-2 AE (W tokens) is never trained
              "--train_file", str(work / "data" / "long.jsonl"), "--model_max_length", str(W), "--lm_ratio", "0.3",
              *common_args(z.hier_steps, max(1, z.icae_batch // g), z.icae_lr)])
    train_s = time.time() - t
    hist = json.loads((ckpt / "loss_history.json").read_text()) if (ckpt / "loss_history.json").exists() else {}
    t = time.time()
    # texts cut to exactly W tokens (4 full segments: one level-2 block), as --overlong truncate does
    model = load_icae(ckpt, config_overrides={"overlong": "truncate"}, device=device,
                      hierarchy=HierarchyConfig(levels=2, group_size=g, max_slots=8 * k, max_text_tokens=W),
                      **({"dtype": "bf16"} if device == "cuda" else {}))
    torch.set_num_threads(threads)
    recs = [TextRecord(f"test-long:{i}", x) for i, x in enumerate(_join_to_length(test_p, tok, W + 8, z.n_hier))]
    ae = run_ae(model, recs, EvalSettings(batch_size=16, seed=seed, progress=False))
    levels = ae.breakdowns.get("by_level", {})
    loss = hist.get("loss", [])
    res = {"mem_size": k, "compression_rate": W // k, "text_tokens": W, "levels": 2, "group_size": g,
           "ae": {kk: ae.summary[kk] for kk in ("n", "bleu", "sentence_bleu", "exact_match", "token_accuracy")},
           "by_level": levels, "train_loss_first": loss[0][1] if loss else None, "train_loss_last": loss[-1][1] if loss else None,
           "train_seconds": train_s, "eval_seconds": time.time() - t,
           "examples": [{"reference": e["reference"], "prediction": e["prediction"]} for e in ae.examples[:3]],
           "tables_md": [markdown_table(tb) for tb in ae.tables[:2]]}
    log(f"HierarchicalICAE 16x: AE BLEU-4 {res['ae']['bleu']:.2f}, EM {res['ae']['exact_match']:.3f}; levels {list(levels)}")
    return res


def render_markdown(rep: dict) -> str:
    c, b = rep["corpus"], rep["base_lm"]
    lines = [f"# hicae offline quality proxy ({rep['mode']} mode)", "",
             f"Seed {rep['seed']}; wall time {rep['wall_seconds']:.0f} s; {rep['machine']['cpus']} CPUs, "
             f"{rep['machine']['threads']} torch threads; torch {rep['machine']['torch']}.", "",
             f"Corpus: {c['rst_docs']} Python 3.11 doc sources (rst) + {c['fortune_docs']} Chinese fortunes; "
             f"held out by document: {c['train_docs']} train / {c['test_docs']} test documents "
             f"({c['train_passages']} / {c['test_passages']} passages).", "",
             f"Tokenizer: {rep['tokenizer']['type']}, {rep['tokenizer']['vocab']} tokens ({rep['tokenizer']['note']}).",
             f"Base LM: Qwen3 architecture, {b['params_m']:.2f}M parameters, trained from scratch: loss "
             f"{b['loss_first']:.2f} -> {b['loss_last']:.2f} ({b['seconds']:.0f} s; {b['copy_fraction']:.0%} of blocks repeat "
             "their first half, to encourage copying), then frozen.",
             "Copy check (NLL of a held-out passage read once / read again right after): "
             + (f"{b['copy_check']['nll_first_reading']:.2f} / {b['copy_check']['nll_second_reading']:.2f}"
                if b.get('copy_check') else "-") + ".", "",
             "## Summary (held-out passages)", "",
             "| ratio | k | text tokens | AE BLEU-4 | exact match | token acc. | ppl: no context | memory | full text | truncated to #slots |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in rep["results"].items():
        a, p = r["ae"], r.get("ppl")
        ppl = (f"{p['none']['ppl']:.2f} | {p['memory']['ppl']:.2f} | {p['full']['ppl']:.2f} | {p['truncated']['ppl']:.2f}"
               if p else "- | - | - | -")
        lines.append(f"| {key} | {r['mem_size']} | {r['text_tokens']} | {a['bleu']:.2f} | {a['exact_match']:.3f} | "
                     f"{a['token_accuracy']:.3f} | {ppl} |")
    lines += ["", f"Check (memory perplexity < no context, every ratio): "
              f"{'PASS' if rep['checks']['memory_beats_no_context'] else 'FAIL: ' + '; '.join(rep['checks']['failures'])}", ""]
    for key, r in rep["results"].items():
        lines += [f"## {key} (k={r['mem_size']}, r={r['compression_rate']})", ""] + r["tables_md"]
        lines += ["Sample reconstructions:", ""]
        for e in r["examples"][:2]:
            lines += [f"- reference: `{e['reference'][:160]!r}`", f"  prediction: `{e['prediction'][:160]!r}`"]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
