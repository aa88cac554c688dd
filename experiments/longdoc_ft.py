"""Long-document fine-tuning on cached memories: the decoder side learns to answer from many segments' slots.

Starts from a flat ICAE checkpoint with a decoder-side adapter (the shipped one has it); the encoder
stays frozen, so each training document (the protocol's training side, concatenated to --lengths) is
compressed once, and every step asks one document's memory fresh cloze questions (one shared prefix
pass for all of them) beside a few segment reconstructions. See hicae/longqa/finetune.py.

    .venv/bin/python experiments/longdoc_ft.py --checkpoint src/hicae/demo/checkpoint --out_dir outputs/longdoc_ft \
        --lengths 1k,2k,4k --docs_per_length 8 --steps 300 --threads 1
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    from hicae.errors import HicaeError
    from hicae.longqa.ft_settings import LongDocFTSettings
    from hicae.longqa.settings import parser

    p = parser(LongDocFTSettings)
    p.description = __doc__.split("\n\n")[0]
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[longdoc_ft {time.time() - t0:6.0f}s] {msg}", flush=True)

    try:
        s = LongDocFTSettings(**vars(p.parse_args(argv)))
        import torch
        from transformers.utils import logging as hf_logging

        from hicae.longqa.ft_run import train

        hf_logging.set_verbosity_error()
        if s.threads:
            torch.set_num_threads(s.threads)
        torch.manual_seed(s.seed)
        command = " ".join(["experiments/longdoc_ft.py", *(argv if argv is not None else sys.argv[1:])])
        train(s, log, command)
        log(f"done -> {s.out_dir}")
    except (HicaeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
