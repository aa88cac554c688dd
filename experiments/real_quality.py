"""Quality on real weights (issue 9): ICAE on the real Qwen2.5-0.5B-Instruct, English and Chinese.

The base is the real Qwen2.5-0.5B-Instruct that ``scripts/setup.sh`` fetches (``hicae.demo.real_model``),
frozen, in bf16. The corpus is the quality proxy's (Debian ``python3.11-doc`` reST sources, English)
plus all of ``fortunes-zh`` (``chinese``, ``tang300``, ``song100``; Chinese), held out BY DOCUMENT.

Stages (each resumable; ``--stages`` picks them):
- ``4x``: ``hicae pretrain`` (AE + LM) from the base, k slots for texts of 4k tokens;
- ``8x``: the same from the base at 8x (k slots, 8k tokens);
- ``16x``: HierarchicalICAE, the 4x ICAE upgraded to two levels with group size 4, so that four
  4x segments merge into one level-2 block of k slots; trained briefly on longer texts.
Training runs in chunks of ``--eval_every`` steps: each chunk resumes from the newest complete
checkpoint (``checkpoint-N`` with its optimizer and trainer state), then a small held-out set is
reconstructed and its BLEU appended to ``curve.json`` (plot ``curve.png``). The learning rate is
constant after warm-up, so a run cut short (kill it any time) and re-run with the same or a larger
``--steps`` continues exactly where it stopped; a re-run with more steps carries training further.

At the end of a stage, evaluation through ``hicae.evaluation`` (what ``hicae eval`` runs) on
held-out passages: AE BLEU-4 (sacrebleu; Chinese with its ``zh`` tokeniser), exact match, token
accuracy; continuation perplexity with no context / memory / full text / text truncated to as
many tokens as slots; English and Chinese reported apart. Results: ``real.json`` and ``real.md``.

    nohup .venv/bin/python experiments/real_quality.py --out_dir outputs/real > outputs/real.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import (_join_to_length, _jsonl, fetch_corpus, load_documents, parse_fortunes,  # noqa: E402
                   passages, split_documents)

ZH_FILES = ("chinese", "tang300", "song100")
FORTUNE_DIR = "usr/share/games/fortunes"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Settings:
    mem_size: int = 16  # k
    lora_r: int = 8  # all seven projections; r=8 keeps the adapter under 10 MB in bf16 (the demo ships it)
    lora_alpha: int = 16
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 20
    lm_ratio: float = 0.25
    steps_4x: int = 400
    steps_8x: int = 100
    steps_16x: int = 60
    eval_every: int = 50  # steps between curve points (and the chunk size)
    save_every: int = 25
    n_curve: int = 16  # held-out texts per language for each curve point
    n_ae: int = 64  # per language, final evaluation
    n_ppl: int = 48  # per language
    continuation: int = 32  # tokens scored for perplexity
    n_hier: int = 24  # per language
    max_train: int = 20000


DRY = dict(steps_4x=4, steps_8x=2, steps_16x=2, eval_every=2, save_every=1, n_curve=2, n_ae=2, n_ppl=2, n_hier=1,
           continuation=8, max_train=64, batch=2, warmup=1)


def corpus(cache: Path, seed: int, test_fraction: float) -> tuple[dict, dict, dict]:
    """Held-out-by-document passages: ({'en': train, 'zh': train}, {'en': test, 'zh': test}, info)."""
    root = fetch_corpus(cache)
    rst, _ = load_documents(root)
    zh = [e for f in ZH_FILES for e in parse_fortunes((root / FORTUNE_DIR / f).read_text(encoding="utf-8", errors="replace"))]
    train, test, info = {}, {}, {}
    for lang, docs, max_chars, min_chars in (("en", rst, 700, 200), ("zh", zh, 260, 50)):
        tr, te = split_documents(docs, test_fraction, seed)
        train[lang] = [q for d in tr for q in passages(d, max_chars, min_chars)]
        test[lang] = [q for d in te for q in passages(d, max_chars, min_chars)]
        random.Random(seed).shuffle(train[lang])
        random.Random(seed + 1).shuffle(test[lang])
        info[lang] = {"docs": len(docs), "train_docs": len(tr), "test_docs": len(te),
                      "train_passages": len(train[lang]), "test_passages": len(test[lang])}
    return train, test, info


def complete_checkpoints(out: Path) -> list[Path]:
    """``checkpoint-N`` folders holding everything a resume needs, oldest first; incomplete ones are named and skipped."""
    from hicae.training.run_folder import complete_checkpoints as complete

    good, bad = complete(out)
    for d, why in bad:
        print(f"[real] skipping incomplete {d} ({why})", flush=True)
    return good


def trained_steps(out: Path) -> int:
    ck = complete_checkpoints(out)
    return json.loads((ck[-1] / "trainer_state.json").read_text())["global_step"] if ck else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="outputs/real")
    p.add_argument("--model", default=None, help="base model folder or .gguf (default: the fetched real Qwen2.5-0.5B)")
    p.add_argument("--stages", default="4x,16x,8x", help="comma-separated: 4x, 8x, 16x (16x needs 4x)")
    p.add_argument("--steps_4x", type=int, default=None)
    p.add_argument("--steps_8x", type=int, default=None)
    p.add_argument("--steps_16x", type=int, default=None)
    p.add_argument("--eval_every", type=int, default=None)
    p.add_argument("--skip_final_eval", action="store_true", help="train and draw the curve only")
    p.add_argument("--dry_run", action="store_true", help="every code path at toy sizes (tests; any base model)")
    p.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/hicae/proxy"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test_fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--extra", default="", help="more `hicae pretrain` flags for the 4x/8x stages, e.g. "
                   "'--decoder_lora_r 8 --lm_ratio 0' (an ablation on the same data in the same order; the last "
                   "of a repeated flag wins)")
    p.add_argument("--train_jsonl", default=None, help="train the 4x/8x stages on this JSONL's texts (field 'text'; e.g. "
                   "experiments/mix_corpus.py's balanced mix of the protocol's training side) instead of the proxy corpus; "
                   "the held-out curve texts stay the proxy corpus's")
    p.add_argument("--warm_start", default=None, help="a 4x ICAE checkpoint (e.g. src/hicae/demo/checkpoint) the 4x stage "
                   "starts from when its folder holds no checkpoint yet, instead of from the base model: a new "
                   "machine without the last run's folder carries the best committed adapter on")
    a = p.parse_args(argv)
    z = Settings(**(DRY if a.dry_run else {}))
    z = replace(z, **{k: getattr(a, k) for k in ("steps_4x", "steps_8x", "steps_16x", "eval_every") if getattr(a, k)})
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    out = Path(a.out_dir)
    work = out / "work"
    t0 = time.time()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from hicae.io.checkpoint import load_icae
    from hicae.cli.train import pretrain
    from hicae.config import HierarchyConfig
    from hicae.training.data import iter_jsonl
    from hicae.evaluation import EvalSettings, TextRecord, run_ae, run_ppl
    from hicae.io.fileio import write_text_atomic
    from hicae.demo.real_model import qwen25_path

    def log(msg: str) -> None:
        print(f"[real {time.time() - t0:7.0f}s] {msg}", flush=True)

    base = a.model or str(qwen25_path())
    train, test, info = corpus(Path(a.cache_dir), a.seed, a.test_fraction)
    log(f"corpus: {info}; base {base}")
    report_path = out / "real.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update({"settings": asdict(z), "corpus": info, "base": base, "seed": a.seed, "extra": a.extra,
                   "train_jsonl": a.train_jsonl})
    report.setdefault("stages", {})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base if not base.endswith(".gguf") else str(Path(base).parent),
                                        **({"gguf_file": Path(base).name} if base.endswith(".gguf") else {}))

    def ntok(texts: list[str]) -> list[int]:
        return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]

    def held_out(lang: str, min_tokens: int, n: int) -> list[TextRecord]:
        texts = test[lang][: max(400, 8 * n)]
        return [TextRecord(f"test-{lang}:{i}", t) for i, (t, m) in enumerate(zip(texts, ntok(texts))) if m >= min_tokens][:n]

    def save_report() -> None:
        report["wall_seconds_last_run"] = time.time() - t0
        report["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                             "threads": torch.get_num_threads(), "platform": platform.platform(),
                             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        write_text_atomic(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(out / "real.md", render_markdown(report))

    def common(steps: int, batch: int) -> list[str]:
        return ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--learning_rate", str(z.lr),
                "--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", str(z.warmup),
                "--logging_steps", str(max(1, min(10, z.eval_every // 5))), "--save_strategy", "steps",
                "--save_steps", str(z.save_every), "--save_total_limit", "2", "--seed", str(a.seed),
                "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--dtype", "bf16",
                *(["--use_cpu", "true"] if not torch.cuda.is_available() else ["--bf16", "true"])]

    def curve_point(ckpt: Path, step: int, recs: dict, **load_kw) -> dict:
        model = load_icae(ckpt, config_overrides={"overlong": "truncate"}, dtype="bf16", **load_kw)
        s = EvalSettings(batch_size=32, seed=a.seed, progress=False)
        pt = {"step": step}
        for lang, rs in recs.items():
            r = run_ae(model, rs, s).summary
            pt[lang] = {"bleu": r["bleu"], "token_accuracy": r["token_accuracy"], "exact_match": r["exact_match"]}
        del model
        return pt

    def train_stage(stage: str, target: int, args: list[str], batch: int, recs: dict, warm: str | None = None,
                    **load_kw) -> dict:
        """Train ``stage`` to ``target`` steps in chunks of eval_every, a curve point after each."""
        sdir = work / stage
        rep = report["stages"].setdefault(stage, {})
        curve = rep.setdefault("curve", [])
        done = trained_steps(sdir)
        log(f"{stage}: {done} of {target} steps done" + (f", resuming from {complete_checkpoints(sdir)[-1]}" if done else ""))
        while done < target:
            nxt = min(target, (done // z.eval_every + 1) * z.eval_every)
            t = time.time()
            resume = complete_checkpoints(sdir)
            if not resume and warm:
                log(f"{stage}: warm start from {warm}")
            pretrain([*args, "--output_dir", str(sdir), *common(nxt, batch),
                      # no complete checkpoint: what an interrupted first chunk left is removed
                      *(["--resume_from_checkpoint", str(resume[-1])] if resume else ["--overwrite_output_dir", "true"]),
                      *(["--restore_from", warm] if warm and not resume else [])])
            rep["train_seconds"] = rep.get("train_seconds", 0.0) + time.time() - t
            done = nxt
            hist = json.loads((sdir / "loss_history.json").read_text()) if (sdir / "loss_history.json").exists() else {}
            t = time.time()
            pt = curve_point(sdir, done, recs, **load_kw)
            pt["train_loss"] = hist.get("loss", [[0, None]])[-1][1]
            pt["elapsed_train_seconds"] = rep["train_seconds"]
            curve[:] = [c for c in curve if c["step"] < done] + [pt]
            rep["curve_eval_seconds"] = rep.get("curve_eval_seconds", 0.0) + time.time() - t
            rep["steps"] = done
            rep["loss_history"] = hist
            log(f"{stage} step {done}: loss {pt['train_loss']}, held-out BLEU " +
                ", ".join(f"{l} {pt[l]['bleu']:.1f}" for l in recs))
            save_report()
            plot_curve(report, out / "curve.png")
        return rep

    k = z.mem_size
    for stage in stages:
        if stage in ("4x", "8x"):
            r = int(stage[:-1])
            T = k * r
            if a.train_jsonl:
                texts = [r["text"] for _, r in iter_jsonl(a.train_jsonl, ("text",))]
            else:
                texts = [t for lang in ("en", "zh") for t in train[lang][: z.max_train]]
            random.Random(a.seed).shuffle(texts)
            n = ntok(texts[: 4 * z.max_train])
            texts = [t for t, m in zip(texts, n) if m >= T * 3 // 4]
            _jsonl(work / "data" / f"train-{stage}.jsonl", texts)
            curve_recs = {lang: held_out(lang, T, z.n_curve) for lang in ("en", "zh")}
            args = ["--model_name_or_path", base, "--train_file", str(work / "data" / f"train-{stage}.jsonl"),
                    "--fixed_mem_size", str(k), "--mean_compression_rate", str(r), "--model_max_length", str(T),
                    "--lora_r", str(z.lora_r), "--lora_alpha", str(z.lora_alpha), "--lora_dropout", "0.0",
                    "--lora_target_modules", *PROJECTIONS, "--lm_ratio", str(z.lm_ratio),
                    "--min_tokens_for_lm", str(T // 4), "--leave_tokens_for_lm", "1", *shlex.split(a.extra)]
            rep = train_stage(stage, getattr(z, f"steps_{stage}"), args, z.batch, curve_recs,
                              warm=a.warm_start if stage == "4x" else None)
            if a.warm_start and stage == "4x":
                rep["warm_start"] = a.warm_start
            rep.update({"mem_size": k, "compression_rate": r, "text_tokens": T, "train_texts": len(texts)})
            if not a.skip_final_eval and rep.get("final_step") != rep["steps"]:
                t = time.time()
                model = load_icae(work / stage, config_overrides={"overlong": "truncate", "model_max_length": T},
                                  dtype="bf16")
                s = EvalSettings(batch_size=32, seed=a.seed, progress=False)
                rep["final"] = {}
                for lang in ("en", "zh"):
                    ae = run_ae(model, held_out(lang, T, z.n_ae), s)
                    ppl = run_ppl(model, held_out(lang, T + z.continuation, z.n_ppl), s,
                                  continuation_tokens=z.continuation, leave_tokens=1)
                    rep["final"][lang] = {
                        "ae": {kk: ae.summary[kk] for kk in ("n", "bleu", "sentence_bleu", "exact_match", "token_accuracy")},
                        "ppl": {c: ppl.summary[c] for c in ("none", "memory", "full", "truncated")},
                        "ppl_texts": ppl.summary["texts"],
                        "examples": [{"reference": e["reference"], "prediction": e["prediction"]} for e in ae.examples[:3]]}
                rep["final_step"] = rep["steps"]
                rep["eval_seconds"] = time.time() - t
                del model
                log(f"{stage} final: " + "; ".join(
                    f"{l} BLEU {v['ae']['bleu']:.2f}, ppl memory {v['ppl']['memory']['ppl']:.2f} / truncated "
                    f"{v['ppl']['truncated']['ppl']:.2f}" for l, v in rep["final"].items()))
                save_report()
        elif stage == "16x":
            if trained_steps(work / "4x") == 0 and not (work / "4x" / "hicae_config.json").exists():
                raise SystemExit("stage 16x needs the 4x stage's checkpoint: run --stages 4x first")
            g, T = 4, k * 4
            W = T * g
            hier = HierarchyConfig(levels=2, group_size=g, max_slots=8 * k, max_text_tokens=W)
            long_train = _join_to_length([t for lang in ("en", "zh") for t in train[lang][: z.max_train]], tok, int(W * 1.5), 10**9)
            _jsonl(work / "data" / "train-16x.jsonl", long_train)

            def long_recs(lang: str, n: int) -> list[TextRecord]:
                return [TextRecord(f"test-{lang}-long:{i}", x)
                        for i, x in enumerate(_join_to_length(test[lang][: 40 * n + 40], tok, W + 8, n))]

            args = ["--restore_from", str(work / "4x"), "--hierarchical", "--levels", "2", "--group_size", str(g),
                    "--max_slots", str(8 * k), "--max_text_tokens", str(2 * W), "--train_file",
                    # model_max_length caps the decoder's target: W, so that AE at level 2 (W tokens) is trained
                    str(work / "data" / "train-16x.jsonl"), "--model_max_length", str(W), "--lm_ratio", "0.3"]
            load_kw = {"hierarchy": hier}
            rep = train_stage("16x", z.steps_16x, args, max(1, z.batch // g), {l: long_recs(l, z.n_curve) for l in ("en", "zh")},
                              **load_kw)
            rep.update({"mem_size": k, "compression_rate": W // k, "text_tokens": W, "levels": 2, "group_size": g})
            if not a.skip_final_eval and rep.get("final_step") != rep["steps"]:
                t = time.time()
                model = load_icae(work / "16x", config_overrides={"overlong": "truncate"}, dtype="bf16", hierarchy=hier)
                s = EvalSettings(batch_size=16, seed=a.seed, progress=False)
                rep["final"] = {}
                for lang in ("en", "zh"):
                    ae = run_ae(model, long_recs(lang, z.n_hier), s)
                    rep["final"][lang] = {"ae": {kk: ae.summary[kk] for kk in ("n", "bleu", "sentence_bleu", "exact_match",
                                                                               "token_accuracy")},
                                          "examples": [{"reference": e["reference"], "prediction": e["prediction"]}
                                                       for e in ae.examples[:2]]}
                rep["final_step"] = rep["steps"]
                rep["eval_seconds"] = time.time() - t
                del model
                log("16x final: " + "; ".join(f"{l} BLEU {v['ae']['bleu']:.2f}" for l, v in rep["final"].items()))
                save_report()
        else:
            raise SystemExit(f"unknown stage {stage!r} (4x, 8x, 16x)")
    save_report()
    log(f"done -> {report_path}, {out / 'real.md'}, {out / 'curve.png'}")
    return 0


def plot_curve(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for stage, rep in report["stages"].items():
        c = rep.get("curve", [])
        for lang, style in (("en", "-o"), ("zh", "--s")):
            pts = [(p["step"], p[lang]["bleu"]) for p in c if lang in p]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{stage} {lang}", markersize=3)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out AE BLEU-4")
    ax.set_title("hicae on Qwen2.5-0.5B-Instruct (CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from hicae.io.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def render_markdown(rep: dict) -> str:
    m = rep.get("machine", {})
    lines = ["# hicae on a real Qwen2.5-0.5B-Instruct", "",
             f"Base: {rep['base']} (frozen, bf16). Seed {rep['seed']}. Machine: {m.get('cpus')} CPUs, "
             f"{m.get('threads')} torch threads, torch {m.get('torch')}, GPU {m.get('gpu')}.",
             f"Corpus (held out by document): {rep['corpus']}.", f"Settings: {rep['settings']}.", "",
             "| stage | steps | lang | AE BLEU-4 | exact match | token acc. | ppl: no context | memory | full text | truncated to #slots |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for stage, r in rep["stages"].items():
        for lang, v in r.get("final", {}).items():
            a, p = v["ae"], v.get("ppl")
            ppl = (" | ".join(f"{p[c]['ppl']:.2f}" for c in ("none", "memory", "full", "truncated")) if p else "- | - | - | -")
            lines.append(f"| {stage} (k={r.get('mem_size')}, {r.get('text_tokens')} tokens) | {r.get('final_step')} | {lang} | "
                         f"{a['bleu']:.2f} | {a['exact_match']:.3f} | {a['token_accuracy']:.3f} | {ppl} |")
    lines += ["", "## Held-out BLEU during training", "", "| stage | step | train loss | BLEU en | BLEU zh | token acc. en | token acc. zh |",
              "|---|---|---|---|---|---|---|"]
    for stage, r in rep["stages"].items():
        for c in r.get("curve", []):
            loss = f"{c['train_loss']:.3f}" if isinstance(c.get("train_loss"), float) else "-"
            lines.append(f"| {stage} | {c['step']} | {loss} | {c['en']['bleu']:.2f} | {c['zh']['bleu']:.2f} | "
                         f"{c['en']['token_accuracy']:.3f} | {c['zh']['token_accuracy']:.3f} |")
    lines.append("")
    for stage, r in rep["stages"].items():
        for lang, v in r.get("final", {}).items():
            lines += [f"### {stage} {lang}: sample reconstructions", ""]
            for e in v.get("examples", [])[:2]:
                lines += [f"- reference: `{e['reference'][:200]!r}`", f"  prediction: `{e['prediction'][:200]!r}`"]
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
