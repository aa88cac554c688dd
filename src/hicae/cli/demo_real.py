"""``hicae demo`` on real weights: the shipped ICAE adapter on the real Qwen2.5-0.5B-Instruct.

Compresses held-out passages, prints each beside its reconstruction with BLEU, answers a question
from memory and from the full text, and times both. The passages were written for the demo and are
in no training data; the adapter's training is recorded in ``hicae/demo/checkpoint/TRAINING.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..demo import DEMO_CHECKPOINT
from .demo_long import timed as _timed

# The first held-out passage of each language in experiments/real_quality.py's split (seed 0; the
# documents they come from were never trained on), cut to 60 tokens: a Python 3.11 HOWTO (urllib,
# Debian python3.11-doc) and the Debian Reference (Chinese, via fortunes-zh's corpus). Then a
# passage written for the demo, unlike anything in the training data (English prose).
PASSAGES = [
    "object that specifies the URL you want to fetch. Calling ``urlopen`` with this\nRequest object returns "
    "a response object for the URL requested. This response is\na file-like object, which means you can for "
    "example call ``.read()`` on the\nresponse::\n\n    import urllib.request\n\n",
    "相关说明位于 “/usr/share/doc/unattended-upgrades/README” 中。\n\n    unattended-upgrades 软件包主要用于 "
    "stable 系统的安全更新。如果自\n\xa0\xa0\xa0 动升级损坏 stable 系统的风险小于被入侵者利用已被安全更新修复的安\n",
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, "
    "trimmed the wick and polished the great lens until it shone. Ships passing the rocky cape at "
    "night steered by its steady white flash, once every ten seconds.",
]
LABELS = ["held-out, English docs", "held-out, Chinese docs", "out of domain: prose written for the demo"]
QUESTION = "What does calling urlopen with the Request object return?"


def answer_from_text(model: Any, text: str, question: str, max_new_tokens: int) -> str:
    """The frozen base model answering with the whole text in its prompt (the uncompressed baseline)."""
    from ..decoding.generation import generate

    tok = model.tokenizer
    ids = torch.tensor([model.tokens.chat_ids(f"{text}\n\n{question}")], device=model.device)  # [1, T]
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad(), model.plain_decoding():
        out = generate(model.decoder, model.tokens, max_new_tokens, **enc)  # greedy, as from memory
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def real_demo(args: Any) -> int:
    from ..io.checkpoint import load_base, load_icae, read_checkpoint
    from ..demo.real_model import qwen25_path
    from ..devices import pick_device
    from ..evaluation.metrics import sentence_bleu

    t0 = time.time()
    out = Path(args.output_dir)
    device = pick_device(args.device)
    ckpt = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    ck = read_checkpoint(ckpt)  # a clear error before loading the base when it is no checkpoint; read once
    base_path = args.model_name_or_path or str(qwen25_path())
    (base, tok), t_load = _timed(lambda: load_base(base_path, dtype=args.dtype, device=device))
    model = load_icae(ck, base_model=base, tokenizer=tok, allow_other_weights=args.allow_other_weights).eval()
    cfg = model.icae_config
    print(f"[demo] base {base_path} ({sum(p.numel() for p in base.parameters()) / 1e6:.0f}M params, {args.dtype}); "
          f"ICAE checkpoint {ckpt}: k={cfg.mem_size} slots per segment of up to {cfg.segment_tokens} tokens "
          f"({cfg.compression_rate}x); loaded in {t_load:.1f} s")
    info_file = ckpt / "demo_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if info.get("summary"):
        print(f"[demo] adapter: {info['summary']}")

    with torch.no_grad():
        mem, t_comp = _timed(lambda: model.compress(PASSAGES))
        # each text's own length + 8 tokens, as `hicae eval --task ae` allows
        recon, t_rec = _timed(lambda: model.reconstruct(mem, max_new_tokens=max(mem.num_tokens) + 8))
    print(f"\n[demo] compressed {len(PASSAGES)} held-out passages in {t_comp:.2f} s; reconstructed in {t_rec:.1f} s")
    for label, text, rec, n_tok, n_slots in zip(LABELS, PASSAGES, recon, mem.num_tokens, mem.num_slots):
        print(f"\n  [{label}] {n_tok} tokens -> {n_slots} memory slots; BLEU-4 of the reconstruction {sentence_bleu(rec, text):.1f}")
        print(f"    original:      {text}")
        print(f"    reconstructed: {rec}")

    question = args.question or QUESTION
    n = 32
    (ans_mem, t_mem) = _timed(lambda: model.generate(mem[0], question, max_new_tokens=n)[0])
    (ans_full, t_full) = _timed(lambda: answer_from_text(model, PASSAGES[0], question, n))
    t_mem += t_comp / len(PASSAGES)
    print(f"\n[demo] question about the first passage: {question!r}")
    print(f"  from memory ({mem.num_slots[0]} slots, {t_mem:.2f} s incl. compression): {ans_mem!r}")
    print(f"  from the full text ({mem.num_tokens[0]} tokens, {t_full:.2f} s): {ans_full!r}")
    if info.get("objectives") == "AE + LM":
        print("  (this adapter was pretrained on AE + LM only, without instruction fine-tuning: answers from memory"
              " use the untrained [FT] prompt; `hicae finetune` teaches them)")
    if not args.no_long_document:
        from .demo_long import long_document_part

        long_document_part(model, args.long_document, answer_from_text)
    out.mkdir(parents=True, exist_ok=True)
    mem.save(out / "demo.mem.safetensors")
    print(f"\n[demo] memory file: {out / 'demo.mem.safetensors'}; done in {time.time() - t0:.0f} s")
    return 0
