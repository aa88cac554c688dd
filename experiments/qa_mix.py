"""A domain- and language-balanced fine-tuning mix from `hicae build-qa` outputs.

Kernel docs are most of the protocol's training side; capping each (language, domain) keeps English
prose, Python docs and the Chinese manpages from drowning. Seeded, deterministic.

    .venv/bin/python experiments/qa_mix.py outputs/qaft/train.jsonl --out outputs/qaft/mix.jsonl --cap_en 450 --cap_zh 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="build-qa JSONL files; --cap_* apply to each file alone")
    p.add_argument("--out", required=True)
    p.add_argument("--cap_en", type=int, default=450, help="records per English domain and file")
    p.add_argument("--cap_zh", type=int, default=500, help="records per Chinese domain and file")
    p.add_argument("--match_first", action="store_true",
                   help="take from the second and later files only as many records as the first gave")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    out: list[dict] = []
    first = None
    for path in a.inputs:
        recs = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        rng.shuffle(recs)
        counts: dict[tuple[str, str], int] = {}
        taken = []
        for r in recs:
            key = (r["lang"], r["source"].split(":")[0])
            if counts.get(key, 0) < (a.cap_en if r["lang"] == "en" else a.cap_zh):
                taken.append(r)
                counts[key] = counts.get(key, 0) + 1
        if a.match_first and first is not None:
            taken = taken[:first]
        first = len(taken) if first is None else first
        out += taken
        print(f"{path}: {len(taken)} records {dict(sorted(counts.items()))}", file=sys.stderr)
    rng.shuffle(out)
    with open(a.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    print(f"{a.out}: {len(out)} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
