"""The evaluation protocol of issue 17: one command, any ICAE checkpoint, held-out text of eight Debian-packaged domains.

English: Python docs, Linux kernel docs, the Debian reference, the King James Bible (narrative
prose), fortunes; Chinese: the Debian reference and man pages (modern technical Chinese), and the
classical poems and quotations of fortunes-zh, reported apart as the hard case. Documents are held
out whole (``hicae.protocol.split``); texts of ``--tokens`` tokens are reconstructed from their
memory and scored per domain and language: AE BLEU-4, token accuracy, exact match, degenerate
loops, grouped by the base model's own perplexity of each text; memory perplexity against the
truncated-to-#slots baseline on a few texts per language; a few reconstructions printed.
Writes ``protocol.json``, ``protocol.md`` and ``rows.jsonl`` (one line per text) in ``--out_dir``.

    .venv/bin/python experiments/protocol.py --checkpoint src/hicae/demo/checkpoint --out_dir outputs/protocol --threads 2
    .venv/bin/python experiments/protocol.py --write_train outputs/protocol-train.jsonl   # training side only

The Debian packages are downloaded with ``apt-get download`` into ``--cache_dir`` once
(``~/.cache/hicae/protocol``); ``--write_train`` writes every document that is not held out as
passages of at most ``--train_tokens`` tokens (JSONL ``{"text", "domain"}``), for training runs
that must not see the test documents.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    from hicae.errors import HicaeError
    from hicae.protocol.run import run
    from hicae.protocol.settings import ProtocolSettings, parser

    p = parser()
    p.description = __doc__.split("\n\n")[0]
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        s = ProtocolSettings(**vars(a))
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        command = " ".join(["experiments/protocol.py", *(argv if argv is not None else sys.argv[1:])])
        run(s, log=lambda msg: print(f"[protocol {time.time() - t0:6.0f}s] {msg}", flush=True), command=command)
    except HicaeError as e:
        print(f"protocol: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
