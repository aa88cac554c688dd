"""``hicae eval``: run one evaluation task on a checkpoint and write JSON, markdown and PNG results."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..checkpoint import read_checkpoint_config
from ..errors import ConfigError
from ..evaluation import EvalSettings, write_report
from ..evaluation.registry import REGISTRY, TASKS
from ..evaluation.report import report_paths
from ..evaluation.runtime import check_max_slots, model_info, seed_everything
from ..devices import pick_device
from .infer import LENGTH_HELP, _load, _model_args, length_args, length_overrides, model_inputs
from .outputs import check_writable, refuse_overwriting_inputs

DESCRIPTION = "Evaluate a checkpoint (ICAE or hierarchical) on one task:\n" + "\n".join(
    f"  {t.name:<8} {t.summary}" for t in REGISTRY.values()) + """
Writes <task>.json, <task>_examples.jsonl, <task>.md and <task>_*.png into --output_dir."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hicae eval", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", default=None, help="ae, ppl: JSONL {'text'}; qa: JSONL {'input','prompt','answer'} (PwC) "
                                                "or {'context','input','answers'} (LongBench)")
    p.add_argument("--output_dir", required=True, help="folder for the results (created if missing)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records (passkey/needle: N samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic haystacks and of torch")
    p.add_argument("--batch_size", type=int, default=8, help="texts (questions, samples) per batch")
    p.add_argument("--max_slots", type=int, default=None, help="hierarchical checkpoints: memory budget per text, in slots")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="generation limit (default: ae each text's length + 8, qa 64, passkey/needle 16)")
    length_args(p, "a text over the limit: refuse (default) or truncate (ae/qa keep its head, which the qa full-text "
                   "baseline then reads too; ppl its tail)", length_help="ICAE: " + LENGTH_HELP)
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--bleu_tokenize", default="auto", choices=["auto", "13a", "zh", "intl", "char", "none"],
                   help="ae: sacrebleu's tokenisation (auto: zh, one token per CJK character, for groups holding Chinese; else 13a)")
    for add_flags in dict.fromkeys(t.add_flags for t in REGISTRY.values() if t.add_flags):  # shared groups once
        add_flags(p)
    return p


def evaluate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = EvalSettings(args.batch_size, args.limit, args.seed, args.max_slots, args.max_new_tokens, not args.no_progress,
                            args.bleu_tokenize)
    # Everything that can be checked without the model is checked first: bad data fails in seconds.
    task = REGISTRY[args.task]
    check_writable("--output_dir", args.output_dir, folder=True)
    check_writable("--judge_file", args.judge_file)
    outputs = [("--output_dir", f) for f in report_paths(task.name, args.output_dir).values()] + [("--judge_file", args.judge_file)]
    refuse_overwriting_inputs(outputs, [("--data", args.data), ("--prompt_templates", args.prompt_templates), *model_inputs(args)])
    pick_device(args.device)
    if task.name != "qa" and (args.prompt_templates or args.prompt_template is not None):
        raise ConfigError("--prompt_templates / --prompt_template are for --task qa")
    if task.reads_data and not args.data:
        raise ConfigError(f"--task {task.name} needs --data")
    if not task.reads_data and args.data:
        raise ConfigError(f"--task {task.name} makes its own data: drop --data")
    prepared = task.prepare(args)
    if args.max_slots is not None and "hierarchy" not in read_checkpoint_config(args.checkpoint):
        raise ConfigError("--max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")
    t0 = time.time()
    model = _load(args, length_overrides(args))
    model.eval()
    check_max_slots(model, args.max_slots)
    seed_everything(args.seed)
    result = task.run(model, settings, args, prepared)
    meta = {"checkpoint": str(args.checkpoint), "data": args.data, "model": model_info(model, args.max_slots),
            "settings": {k: v for k, v in settings.to_dict().items() if k != "progress"}}
    files = write_report(result, args.output_dir, meta)
    print(json.dumps({"task": task.name, "summary": {k: v for k, v in result.summary.items() if k not in ("grid",)},
                      "files": files, "seconds": round(time.time() - t0, 1)}, default=str))
    print(f"hicae eval: {task.name} done; report in {files['markdown']}", file=sys.stderr)
    return 0
