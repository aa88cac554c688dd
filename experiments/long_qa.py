"""Long-document QA (issue 18): held-out documents of 2k to 100k+ tokens, checkable questions, every condition.

Long documents are held-out documents of the evaluation protocol (``experiments/protocol.py``'s
split) concatenated to each length, English and Chinese apart; questions are cloze spans from
``hicae build-qa``'s question maker, spread over each document. Conditions, same questions and
greedy decoding: memory (flat multi-span: --checkpoint; hierarchical with --max_slots:
--hier_checkpoint), the full text (where it fits the window, else n/a), the last N tokens and
BM25-retrieved chunks with N = the memory's slot count, no context. Writes long_qa.json,
long_qa.md and rows.jsonl into --out_dir; rerunning the same command continues an interrupted run.

    .venv/bin/python experiments/long_qa.py --checkpoint CKPT --hier_checkpoint HCKPT --lengths 2k,8k --threads 1
    .venv/bin/python experiments/long_qa.py --dry_run --checkpoint TINY --corpus docs.jsonl --out_dir /tmp/lq  # tests
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    from hicae.errors import HicaeError
    from hicae.longqa.settings import DRY, LongQASettings, parser

    p = parser()
    p.description = __doc__.split("\n\n")[0]
    a = vars(p.parse_args(argv))
    if a["dry_run"]:
        a.update({k: v for k, v in DRY.items() if a[k] == LongQASettings.__dataclass_fields__[k].default})
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[long_qa {time.time() - t0:6.0f}s] {msg}", flush=True)

    try:
        s = LongQASettings(**a)
        import torch
        from transformers.utils import logging as hf_logging

        from hicae.longqa.documents import build_long_docs, parse_lengths
        from hicae.longqa.load import held_out_docs, load_models
        from hicae.longqa.run import evaluate, seeded

        hf_logging.set_verbosity_error()
        if s.threads:
            torch.set_num_threads(s.threads)
        seeded(s.seed)
        lengths = parse_lengths(s.lengths)
        models, plain = load_models(s, max(lengths))
        docs, notes = [], []
        for lang in s.language_list:
            d, n = build_long_docs(held_out_docs(s, lang), lang, lengths, s.docs_per_length, plain.tokenizer, s.seed)
            docs += d
            notes += n
            log(f"{lang}: {len(d)} documents")
        command = " ".join(["experiments/long_qa.py", *(argv if argv is not None else sys.argv[1:])])
        with torch.no_grad():
            evaluate(docs, models, plain, s, notes, log, command)
        log(f"done -> {s.out_dir}/long_qa.md")
    except (HicaeError, ValueError) as e:
        print(f"long_qa: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
