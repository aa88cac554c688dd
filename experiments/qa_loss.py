"""Held-out answer loss of QA records (``hicae build-qa``'s JSONL) per condition: memory, full text, none.

Teacher-forced mean cross-entropy of the gold answer's tokens (hicae/longqa/answer_loss.py): a smooth
held-out measure beside exact-match accuracy, for comparing checkpoints of a fine-tuning run.

    .venv/bin/python experiments/qa_loss.py --checkpoint outputs/qaft/run/checkpoint-100 \\
        --records outputs/qaft/test.jsonl --per_lang 40 --out outputs/qaft/loss-100.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="ICAE checkpoint (memory condition)")
    p.add_argument("--records", required=True, help="JSONL {'input','prompt','answer','lang'}")
    p.add_argument("--per_lang", type=int, default=40, help="records per language (a seeded sample)")
    p.add_argument("--conditions", default="memory,full,none")
    p.add_argument("--kl", action="store_true",
                   help="also KL(full text || condition) per answer token, kl_<condition> (what --ft_distill trains)")
    p.add_argument("--base", default=None, help="base model (default: the real Qwen2.5-0.5B-Instruct)")
    p.add_argument("--max_tokens", type=int, default=1024, help="the ICAE's length limit for the inputs")
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    from hicae.longqa.answer_loss import answer_losses
    from hicae.longqa.load import load_checkpoint

    hf_logging.set_verbosity_error()
    if a.threads:
        torch.set_num_threads(a.threads)
    recs = [json.loads(line) for line in open(a.records, encoding="utf-8") if line.strip()]
    by_lang: dict[str, list] = {}
    for r in recs:
        by_lang.setdefault(r.get("lang", "all"), []).append(r)
    picked = []
    for lang, rs in sorted(by_lang.items()):
        picked += random.Random(f"{a.seed}:{lang}").sample(rs, min(a.per_lang, len(rs)))
    t = time.time()
    model = load_checkpoint(a.checkpoint, argparse.Namespace(base=a.base, dtype="bf16"), a.max_tokens)
    out = {"checkpoint": a.checkpoint, "records": a.records, "per_lang": a.per_lang,
           "loss": answer_losses(model, picked, tuple(a.conditions.split(",")), kl=a.kl), "seconds": round(time.time() - t)}
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
