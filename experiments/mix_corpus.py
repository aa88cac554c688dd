"""A domain-balanced training mix from the evaluation protocol's training side.

``experiments/protocol.py --write_train FILE`` writes every passage of the documents the protocol does not
hold out (JSONL ``{"text", "domain"}``): 201k passages, half of them Linux kernel docs. Training on that
as it is would spend half the steps on one domain; this keeps at most ``--per_domain`` passages of each
(a seeded sample), so every domain (English: Python docs, kernel docs, the Debian reference, the KJV
bible, fortunes; Chinese: the Debian reference, manpages, classical poetry) is seen about equally, and
writes them shuffled (JSONL ``{"text", "domain"}``) for ``experiments/real_quality.py --train_jsonl``.

    .venv/bin/python experiments/protocol.py --write_train outputs/protocol-train.jsonl
    .venv/bin/python experiments/mix_corpus.py outputs/protocol-train.jsonl outputs/mix.jsonl --per_domain 6000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def mix(records: list[dict], per_domain: int, seed: int) -> list[dict]:
    """At most ``per_domain`` records of each domain (seeded sample, file order kept within a domain), shuffled."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_domain[r["domain"]].append(r)
    rng = random.Random(seed)
    out = []
    for name in sorted(by_domain):
        rs = by_domain[name]
        keep = sorted(rng.sample(range(len(rs)), per_domain)) if len(rs) > per_domain else range(len(rs))
        out += [rs[i] for i in keep]
    rng.shuffle(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", help="JSONL written by experiments/protocol.py --write_train")
    p.add_argument("output", help="JSONL to write")
    p.add_argument("--per_domain", type=int, default=6000, help="passages kept per domain at most")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hicae.training.data import iter_jsonl
    from hicae.io.fileio import write_text_atomic

    records = [r for _, r in iter_jsonl(a.source, ("text", "domain"))]
    out = mix(records, a.per_domain, a.seed)
    write_text_atomic(Path(a.output), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    counts: dict[str, int] = defaultdict(int)
    for r in out:
        counts[r["domain"]] += 1
    print(json.dumps({"passages": len(out), "domains": dict(sorted(counts.items()))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
