"""Copy a trained ICAE checkpoint into ``src/hicae/demo/checkpoint`` (what ``hicae demo`` loads).

The adapter is stored in bf16 (it runs in the model's dtype at inference anyway; r=8 on all seven
projections of Qwen2.5-0.5B is 4.4M parameters: 8.8 MB instead of 17.6 MB), the memory and task
embeddings as they are. ``demo_info.json`` and ``TRAINING.md`` record how it was trained and what it
reaches, from ``experiments/real_quality.py``'s report.

    python scripts/export_demo_checkpoint.py outputs/real/work/4x --report outputs/real/real.json
    python scripts/export_demo_checkpoint.py outputs/qaft/run7/checkpoint-60 --finetune_record docs/real/qa_ft.json \
        --run curriculum64_lm --command "..."     # an adapter fine-tuned by `hicae finetune` (its record's run)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hicae.io.checkpoint import ADAPTER_FILE, CONFIG_FILE, EMBED_FILE, load_base, load_icae
from hicae.demo.real_model import qwen25_path
from hicae.io.fileio import staged_dir

DEST = Path(__file__).resolve().parent.parent / "src" / "hicae" / "demo" / "checkpoint"
BASE_NAME = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
BASE_DESCRIPTION = ("the real Qwen2.5-0.5B-Instruct of hicae.demo.real_model "
                    "(Qwen2.5-Coder-0.5B-Instruct AWQ, Q4_K_M GGUF, dequantized to bf16)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    src_of = p.add_mutually_exclusive_group(required=True)
    src_of.add_argument("--report", help="real.json of experiments/real_quality.py (a pretrained adapter)")
    src_of.add_argument("--finetune_record", help="a fine-tuning record (docs/real/qa_ft.json) whose --run "
                                                 "entry describes this checkpoint")
    p.add_argument("--run", help="with --finetune_record: the run's key in the record's 'runs'")
    p.add_argument("--stage", default="4x")
    p.add_argument("--dest", default=str(DEST))
    p.add_argument("--command", default="nohup .venv/bin/python experiments/real_quality.py --out_dir outputs/real "
                                        "--steps_4x 350 > outputs/real.log 2>&1 &")
    a = p.parse_args()
    src = Path(a.checkpoint)
    summary, info, training_md = _finetune_info(a) if a.finetune_record else _pretrain_info(a, src)
    meta = json.loads((src / CONFIG_FILE).read_text())
    # Weights fingerprints of the real base and of this encoder (bf16 rounding: the bf16 copy
    # written below has the same), so that `hicae demo` checks it runs on the weights it was trained on.
    base, tok = load_base(str(qwen25_path()), dtype="bf16")
    model = load_icae(src, base_model=base, tokenizer=tok)
    meta["weights"] = {"base": model.base_weights, "encoder": model.encoder_weights()}
    meta["base_model"] = BASE_NAME
    adapter_cfg = json.loads((src / "adapter_config.json").read_text())
    adapter_cfg["base_model_name_or_path"] = BASE_NAME
    with staged_dir(Path(a.dest)) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2) + "\n")
        adapter = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / ADAPTER_FILE)).items()}
        save_file(adapter, str(tmp / ADAPTER_FILE), metadata={"format": "pt", "note": "bf16 copy for hicae demo"})
        # learned embeddings as they are; a decoder-side adapter and a slot projector (stored beside them) in bf16
        emb = {k: (v if k in ("mem_embeddings", "task_embeddings", "level_embeddings") else v.to(torch.bfloat16)).contiguous()
               for k, v in load_file(str(src / EMBED_FILE)).items()}
        save_file(emb, str(tmp / EMBED_FILE), metadata={"format": "hicae-embeddings"})
        (tmp / "demo_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        (tmp / "TRAINING.md").write_text("# The demo's ICAE adapter\n\n" + summary + ".\n\n"
                                         + f"- Base: {BASE_DESCRIPTION}, frozen.\n" + training_md
                                         + "- Adapter stored in bf16 (trained in fp32); `hicae demo` runs it in the "
                                         "model's dtype.\n")
    total = sum(f.stat().st_size for f in Path(a.dest).iterdir())
    print(f"wrote {a.dest} ({total / 1e6:.1f} MB)")


def _finetune_info(a: argparse.Namespace) -> tuple[str, dict, str]:
    """Summary, demo_info and TRAINING.md lines of an adapter fine-tuned by ``hicae finetune``, from its record."""
    record = json.loads(Path(a.finetune_record).read_text())
    if a.run not in record.get("runs", {}):
        raise SystemExit(f"--run {a.run!r} is not a run of {a.finetune_record} (runs: {', '.join(record.get('runs', {}))})")
    run = record["runs"][a.run]
    summary = run["summary"]
    info = {"summary": summary, "objectives": run["objectives"], "stage": a.stage, "steps": run["steps"],
            "run": run, "record": a.finetune_record, "command": a.command, "base": BASE_DESCRIPTION}
    lines = (f"- Training: {record['what']}; this adapter is run `{a.run}` of {a.finetune_record} (data, steps, "
             "held-out numbers), built on the runs it names in `from`.\n"
             f"- Command: `{a.command}` (then `python scripts/export_demo_checkpoint.py {a.checkpoint} "
             f"--finetune_record {a.finetune_record} --run {a.run}`).\n")
    return summary, info, lines


def _pretrain_info(a: argparse.Namespace, src: Path) -> tuple[str, dict, str]:
    """Summary, demo_info and TRAINING.md lines of an adapter pretrained by ``experiments/real_quality.py``."""
    rep = json.loads(Path(a.report).read_text())
    st = rep["stages"][a.stage]
    last = st["curve"][-1]
    final = st.get("final", {})
    s = rep["settings"]
    k = s["mem_size"]
    summary = (f"{a.stage} (k={k}, texts of up to {k * int(a.stage.rstrip('x'))} tokens), AE + LM pretraining, "
               f"{last['step']} steps of batch {s['batch']} on this project's CPU; held-out AE BLEU-4 "
               + (f"(64 texts a language): en {final['en']['ae']['bleu']:.1f}, zh {final['zh']['ae']['bleu']:.1f}"
                  if final else f"(16 texts): en {last['en']['bleu']:.1f}, zh {last['zh']['bleu']:.1f}")
               + " (docs/results.md)")
    info = {"summary": summary, "objectives": "AE + LM", "stage": a.stage, "steps": last["step"], "settings": s,
            "corpus": rep["corpus"], "base": BASE_DESCRIPTION,
            "curve_last": last, "final": {l: {"ae": v["ae"], "ppl": {c: v["ppl"][c]["ppl"] for c in v["ppl"]}}
                                          for l, v in final.items()},
            "extra": rep.get("extra", ""), "command": a.command, "seed": rep["seed"], "machine": rep.get("machine")}
    lines = (f"- Data: {json.dumps(rep['corpus'])}: Debian python3.11-doc reST sources (English) and fortunes-zh "
             "(chinese, tang300, song100; Chinese), held out by document (seed "
             f"{rep['seed']}, 10%); passages cut by experiments/real_quality.py.\n"
             f"- Settings: {json.dumps(s)}; method options (`hicae pretrain` flags): `{rep.get('extra') or 'none'}`.\n"
             f"- Command: `{a.command}` (then `python scripts/export_demo_checkpoint.py {src} --report {a.report}`).\n"
             f"- Machine: {json.dumps(rep.get('machine'))}.\n")
    return summary, info, lines


if __name__ == "__main__":
    main()
