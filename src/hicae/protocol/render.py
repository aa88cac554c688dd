"""The protocol's markdown report: domain table, language groups, base-perplexity terciles, perplexity, examples."""

from __future__ import annotations

from typing import Any

from .scores import GROUPS


def _n(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _cell(text: str, limit: int = 400) -> str:
    text = text[:limit] + ("..." if len(text) > limit else "")
    return "`" + repr(text)[1:-1].replace("`", "'").replace("|", "\\|") + "`"


def render_markdown(rep: dict[str, Any]) -> str:
    s, m = rep["settings"], rep.get("model", {})
    mach = rep.get("machine", {})
    lines = ["# hicae evaluation protocol (issue 17)", "",
             f"Checkpoint `{s.get('checkpoint')}` on base `{m.get('base_model')}` ({m.get('dtype')}); k = {m.get('mem_size')} "
             f"slots per segment, {m.get('compression_rate')}x. Held-out texts of {s['tokens']} tokens, up to "
             f"{s['texts_per_domain']} per domain ({s['per_doc']} per document at most), held out by document "
             f"({s['holdout_fraction']:.0%}, seed {s['seed']}). Wall time {_n(rep.get('wall_seconds'), '.0f')} s on "
             f"{mach.get('cpus')} CPUs, {mach.get('threads')} torch threads (torch {mach.get('torch')}, GPU {mach.get('gpu')}).",
             "", *([f"Command: `{rep['command']}`", ""] if rep.get("command") else []),
             *([rep["note"], ""] if rep.get("note") else []),
             "BLEU-4: sacrebleu corpus BLEU per group (zh tokeniser for Chinese, 13a for English). Token acc.: reference "
             "positions reproduced at the same position. Loops: share of reconstructions whose most frequent 3-gram "
             f"covers more than {s['loop_share']:.0%} of their tokens. Base NLL: the base model's mean NLL per token "
             "reading the text plainly (how surprising the text is to it).", "",
             "| domain | lang | texts | AE BLEU-4 | token acc. | exact match | loops | base NLL |", "|---|---|---|---|---|---|---|---|"]
    for name, d in rep.get("by_domain", {}).items():
        c = rep["corpus"][name]
        lines.append(f"| {name} | {c['language']}{' (hard)' if c['group'] == 'zh_classical' else ''} | {d['n']} | "
                     f"{d['bleu']:.2f} | {d['token_accuracy']:.3f} | {d['exact_match']:.3f} | {d['loops']:.2f} | {d['base_nll']:.2f} |")
    for g, d in rep.get("by_group", {}).items():
        lines.append(f"| **{GROUPS[g]}** | {g} | {d['n']} | **{d['bleu']:.2f}** | {d['token_accuracy']:.3f} | "
                     f"{d['exact_match']:.3f} | {d['loops']:.2f} | {d['base_nll']:.2f} |")
    lines += ["", "## By the base model's own perplexity of the text (terciles within each group)", "",
              "| group | tercile | base NLL range | texts | AE BLEU-4 | token acc. | loops |", "|---|---|---|---|---|---|---|"]
    for g, t in rep.get("by_base_nll_tercile", {}).items():
        lo, hi = t["cuts"]
        ranges = {"low": f"<= {lo:.2f}", "mid": f"{lo:.2f} - {hi:.2f}", "high": f"> {hi:.2f}"}
        for k in ("low", "mid", "high"):
            d = t[k]
            if d.get("n"):
                lines.append(f"| {g} | {k} | {ranges[k]} | {d['n']} | {d['bleu']:.2f} | {d['token_accuracy']:.3f} | {d['loops']:.2f} |")
    if rep.get("ppl"):
        lines += ["", f"## Continuation perplexity ({s['continuation']} tokens after a {s['tokens']}-token context)", "",
                  "| group | texts | no context | memory | full text | truncated to #slots |", "|---|---|---|---|---|---|"]
        for g, p in rep["ppl"].items():
            lines.append(f"| {g} | {p['texts']} | " + " | ".join(f"{p[c]['ppl']:.2f}" for c in ("none", "memory", "full", "truncated")) + " |")
    lines += ["", "## Reconstructions (the first texts of each domain, fixed by the seed)", ""]
    for name, exs in rep.get("examples", {}).items():
        lines += [f"### {name}", ""]
        for e in exs:
            lines += [f"- sentence BLEU {e['bleu']:.1f}, base NLL {e['base_nll']:.2f}{', LOOP' if e['loop'] else ''}",
                      f"  - reference: {_cell(e['reference'])}", f"  - reconstruction: {_cell(e['prediction'])}"]
        lines.append("")
    lines += ["## Corpus", "", "| domain | packages | split | documents | held out |", "|---|---|---|---|---|"]
    for name, c in rep["corpus"].items():
        lines.append(f"| {name} | {', '.join(c['packages'])} | {c['split']} | {c['docs']} | {c['test_docs']} |")
    lines += ["", "Debian files: " + ", ".join(f"`{p}`" for p in rep.get("packages", [])), ""]
    return "\n".join(lines) + "\n"
