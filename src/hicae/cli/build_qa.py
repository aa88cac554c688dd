"""``hicae build-qa``: instruction records from any corpus, answered by the base model reading the text."""

from __future__ import annotations

import json
import sys
import time

from ..instruct.build import BuildSettings, build, protocol_sources, read_sources
from ..instruct.teacher import PlainBase, teacher_answers
from .flags import Flags

DRY = dict(max_texts=3, max_new_tokens=8, text_tokens=256)  # --dry_run: toy sizes, a tiny random teacher


def build_parser() -> Flags:
    return Flags("build-qa", (BuildSettings,), (
        "Make {'input','prompt','answer'} records (hicae finetune / eval --task qa) from a corpus: questions from "
        "templates and the text (cloze spans, named things, summary, next step), English and Chinese; extractive "
        "ones answered by their span, the rest by the base model reading the whole text (greedy). Resumable: "
        "rerun the same command to continue."))


def load_teacher(s: BuildSettings):
    if s.dry_run:
        from ..demo.assets import load_qwen3_tokenizer
        from ..demo.tiny import tiny_model

        return PlainBase.wrap(tiny_model("qwen3", initializer_range=0.5).eval(), load_qwen3_tokenizer())
    from ..demo.real_model import qwen25_path

    return PlainBase.load(s.model_name_or_path or str(qwen25_path()), dtype=s.dtype)


def build_qa(argv: list[str]) -> int:
    p = build_parser()
    ns = p.namespace(argv)
    if ns.dry_run:
        vars(ns).update({k: v for k, v in DRY.items() if getattr(ns, k) == BuildSettings.__dataclass_fields__[k].default})
    (s,) = p.settings(ns)
    t0 = time.time()
    import torch

    if s.threads:
        torch.set_num_threads(s.threads)
    teacher = load_teacher(s)
    sources = read_sources(s.input) if s.input else protocol_sources(s, teacher.tokenizer)

    def answer(text: str, prompts: list[str]) -> list[str]:
        return teacher_answers(teacher, text, prompts, s.max_new_tokens, s.batch_size)

    log = lambda m: print(f"[build-qa {time.time() - t0:6.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    with torch.no_grad():
        stats = build(sources, s, answer, log)
    print(json.dumps({"output": s.output, **stats, "seconds": round(time.time() - t0, 1)}, ensure_ascii=False))
    return 0
