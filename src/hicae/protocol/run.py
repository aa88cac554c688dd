"""The protocol's run: corpus -> held-out split -> (training JSONL) -> AE / perplexity scores -> report.

``evaluate`` takes a loaded model and the held-out documents (tests pass a tiny model and a small
in-test corpus); ``main`` fetches the corpus, loads the checkpoint and writes the files.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import scores
from .scores import GROUPS
from .passages import EvalText, document_passages, eval_texts, token_counter
from .sources import DOMAINS, Document, load_domain, package_versions
from .settings import ProtocolSettings
from .split import split_documents

def group_of(domain: str) -> str:
    d = DOMAINS[domain]
    return "zh_classical" if d.group == "hard" else d.language


def bleu_tokenize(domain: str) -> str:
    return "zh" if DOMAINS[domain].language == "zh" else "13a"


def load_corpus(s: ProtocolSettings, log=print) -> tuple[dict[str, list[Document]], dict[str, list[Document]], dict]:
    """``(train, test, info)`` per domain, held out by document."""
    train, test, info = {}, {}, {}
    for name in s.domain_list:
        t = time.time()
        docs = load_domain(name, Path(s.cache_dir))
        train[name], test[name] = split_documents(docs, s.seed, s.holdout_fraction)
        info[name] = {"language": DOMAINS[name].language, "group": group_of(name), "packages": list(DOMAINS[name].packages),
                      "split": DOMAINS[name].split, "docs": len(docs), "train_docs": len(train[name]),
                      "test_docs": len(test[name]), "note": DOMAINS[name].note}
        log(f"{name}: {len(docs)} documents, {len(test[name])} held out ({time.time() - t:.1f} s)")
    return train, test, info


def write_train(train: dict[str, list[Document]], tokenizer: Any, path: Path, max_tokens: int, min_tokens: int,
                seed: int) -> dict[str, dict[str, int]]:
    """Every training-side document's passages, all domains interleaved in a seeded order, as JSONL."""
    from ..io.fileio import write_text_atomic

    count = token_counter(tokenizer)
    recs, stats = [], {}
    for name, docs in train.items():
        ps = [pc for d in docs for pc in document_passages(d.text, count, max_tokens, min_tokens)]
        n = [c for _, c in ps]
        stats[name] = {"docs": len(docs), "passages": len(ps), "tokens": sum(n), "max_tokens": max(n, default=0)}
        recs += [{"text": p, "domain": name} for p, _ in ps]
    random.Random(seed).shuffle(recs)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    write_text_atomic(Path(str(path) + ".stats.json"), json.dumps(
        {"max_tokens": max_tokens, "min_tokens": min_tokens, "seed": seed, "domains": stats}, indent=2) + "\n")
    return stats


def base_nll(model: Any, texts: list[EvalText], batch_size: int) -> None:
    """Each text's mean NLL per token under the base model reading it plainly (first token not scored)."""
    from ..evaluation.decoding import example_nll
    from ..layout import with_target

    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        ids = model.tokens.text_ids([t.text for t in chunk])
        sums, counts = example_nll(model, [with_target([], x, loss_from=1) for x in ids])
        for t, s_, c in zip(chunk, sums, counts):
            t.base_nll = s_ / max(1, c)


def evaluate(model: Any, test: dict[str, list[Document]], s: ProtocolSettings, log=print) -> dict[str, Any]:
    from ..evaluation import EvalSettings, TextRecord, run_ae

    tok = model.tokenizer
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for name, docs in test.items():
        t = time.time()
        texts = eval_texts(docs, tok, s.tokens, s.texts_per_domain, s.seed, s.per_doc)
        if not texts:
            log(f"{name}: no held-out text of {s.tokens} tokens; skipped")
            continue
        base_nll(model, texts, s.batch_size)
        es = EvalSettings(batch_size=s.batch_size, seed=s.seed, progress=False, bleu_tokenize=bleu_tokenize(name))
        res = run_ae(model, [TextRecord(f"{name}:{'+'.join(x.doc_ids)}", x.text) for x in texts], es)
        for x, r in zip(texts, res.examples):  # run_ae keeps the records' order
            pred_ids = tok(r["prediction"], add_special_tokens=False)["input_ids"]
            rows.append({"domain": name, "language": DOMAINS[name].language, "group": group_of(name),
                         "docs": x.doc_ids, "base_nll": x.base_nll, "loop_share": scores.top_ngram_share(pred_ids),
                         "loop": scores.is_loop(pred_ids, s.loop_share), "tokens": r["tokens"], "slots": r["slots"],
                         **{k: r[k] for k in ("bleu", "exact_match", "token_accuracy", "ref_tokens", "reference", "prediction")}})
        timing[name] = time.time() - t
        d = scores.summarize([r for r in rows if r["domain"] == name], bleu_tokenize(name))
        log(f"{name}: BLEU {d['bleu']:.2f}, token acc {d['token_accuracy']:.3f}, loops {d['loops']:.2f} "
            f"({len(texts)} texts, {timing[name]:.0f} s)")

    report: dict[str, Any] = {**summaries(rows, list(test)), "seconds": {"ae_by_domain": timing}}
    if s.ppl_texts:
        t = time.time()
        report["ppl"] = perplexity(model, test, s)
        report["seconds"]["ppl"] = time.time() - t
    report["examples"] = {n: [{k: r[k] for k in ("docs", "bleu", "base_nll", "loop", "reference", "prediction")}
                              for r in rows if r["domain"] == n][: s.examples_per_domain] for n in report["by_domain"]}
    report["rows"] = rows
    return report


def summaries(rows: list[dict[str, Any]], domains: list[str]) -> dict[str, Any]:
    """Per domain, per group, and per group by terciles of the base model's NLL, from the texts' rows
    (``rows.jsonl`` holds them, so a report can be recomputed, e.g. on the first N texts per domain)."""
    by_domain = {n: scores.summarize([r for r in rows if r["domain"] == n], bleu_tokenize(n)) for n in domains
                 if any(r["domain"] == n for r in rows)}
    by_group, by_tercile = {}, {}
    for g in GROUPS:
        rs = [r for r in rows if r["group"] == g]
        if not rs:
            continue
        tk = "13a" if g == "en" else "zh"
        by_group[g] = scores.summarize(rs, tk)
        # terciles of the base model's own NLL within the group: does memory fail where the base is surprised?
        cuts = scores.tercile_cuts([r["base_nll"] for r in rs])
        for r in rs:
            r["nll_tercile"] = scores.tercile_of(r["base_nll"], cuts)
        by_tercile[g] = {"cuts": list(cuts), **{t: scores.summarize([r for r in rs if r["nll_tercile"] == t], tk)
                                                for t in scores.TERCILES}}
    return {"by_domain": by_domain, "by_group": by_group, "by_base_nll_tercile": by_tercile}


def perplexity(model: Any, test: dict[str, list[Document]], s: ProtocolSettings) -> dict[str, Any]:
    """run_ppl per language group on texts of tokens + continuation tokens, spread over the group's domains."""
    from ..evaluation import EvalSettings, TextRecord, run_ppl

    out = {}
    for g in GROUPS:
        names = [n for n in test if group_of(n) == g]
        if not names:
            continue
        per = max(1, -(-s.ppl_texts // len(names)))
        recs = []
        for n in names:
            ts = eval_texts(test[n], model.tokenizer, s.tokens + s.continuation, per, s.seed + 1, s.per_doc)
            recs += [TextRecord(f"{n}:{'+'.join(x.doc_ids)}", x.text) for x in ts]
        recs = recs[: s.ppl_texts]
        if not recs:
            continue
        res = run_ppl(model, recs, EvalSettings(batch_size=s.batch_size, seed=s.seed, progress=False),
                      continuation_tokens=s.continuation, leave_tokens=1)
        out[g] = {k: res.summary[k] for k in ("texts", "mean_context_tokens", "mean_slots", "none", "memory", "full", "truncated")
                  if k in res.summary}
    return out


def machine(threads: int) -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_report(report: dict[str, Any], out: Path) -> None:
    from ..io.fileio import write_text_atomic
    from .render import render_markdown

    write_text_atomic(out / "protocol.json", json.dumps({k: v for k, v in report.items() if k != "rows"},
                                                        indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "rows.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in report.get("rows", [])))
    write_text_atomic(out / "protocol.md", render_markdown(report))


def run(s: ProtocolSettings, model: Any = None, tokenizer: Any = None, log=print, command: str | None = None) -> dict[str, Any]:
    """The whole protocol. ``model`` (a loaded ICAE) and ``tokenizer`` may be passed in (tests);
    otherwise ``s.checkpoint`` is loaded on ``s.base``. ``command``: the command line, for the report."""
    import torch

    t0 = time.time()
    if s.threads:
        torch.set_num_threads(s.threads)
    train, test, info = load_corpus(s, log)
    report: dict[str, Any] = {"command": command, "settings": asdict(s), "corpus": info,
                              "packages": package_versions(Path(s.cache_dir))}
    if s.checkpoint or model is not None:
        if model is None:
            model = load_model(s)
        tokenizer = model.tokenizer
    elif tokenizer is None:
        tokenizer = load_tokenizer(s.base)
    if s.write_train:
        t = time.time()
        report["train_jsonl"] = {"path": s.write_train, "domains": write_train(
            train, tokenizer, Path(s.write_train), s.train_tokens or s.tokens, s.train_min_tokens, s.seed)}
        log(f"training passages -> {s.write_train} ({time.time() - t:.0f} s): {report['train_jsonl']['domains']}")
    if model is not None:
        from ..evaluation.runtime import model_info

        model.eval()
        report["model"] = {"checkpoint": s.checkpoint, **model_info(model, None)}
        with torch.no_grad():
            report.update(evaluate(model, test, s, log))
        report["machine"] = machine(torch.get_num_threads())
        report["wall_seconds"] = time.time() - t0
        write_report(report, Path(s.out_dir))
        log(f"done in {report['wall_seconds']:.0f} s -> {Path(s.out_dir) / 'protocol.md'}")
    return report


def load_tokenizer(base: str | None) -> Any:
    from transformers import AutoTokenizer

    from ..demo.real_model import qwen25_path

    path = base or str(qwen25_path())
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    return AutoTokenizer.from_pretrained(path)


def load_model(s: ProtocolSettings) -> Any:
    from ..io.checkpoint import load_base, load_icae
    from ..demo.real_model import qwen25_path
    from ..devices import pick_device

    base, tok = load_base(s.base or str(qwen25_path()), dtype=s.dtype, device=pick_device(None))
    # every held-out text is s.tokens long: the checkpoint's length limit follows it
    return load_icae(s.checkpoint, base_model=base, tokenizer=tok,
                     config_overrides={"overlong": "truncate", "model_max_length": s.tokens}).eval()
