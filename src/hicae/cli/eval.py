"""``hicae eval``: run one evaluation task on a checkpoint and write JSON, markdown and PNG results."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import MISSING, dataclass, field, fields

from ..io.checkpoint import read_checkpoint
from ..devices import pick_device
from ..errors import ConfigError
from ..evaluation import EvalSettings, write_report
from ..evaluation.registry import REGISTRY, TASKS
from ..evaluation.report import report_paths
from ..evaluation.runtime import check_max_slots, model_info, seed_everything
from .flags import Flags
from .infer import LENGTH_HELP, LengthSettings, LoadSettings, _load
from .outputs import check_writable, refuse_overwriting_inputs

DESCRIPTION = "Evaluate a checkpoint (ICAE or hierarchical) on one task:\n" + "\n".join(
    f"  {t.name:<8} {t.summary}" for t in REGISTRY.values()) + """
Writes <task>.json, <task>_examples.jsonl, <task>.md and <task>_*.png into --output_dir."""


@dataclass
class EvalCommand:
    task: str = field(metadata={"choices": TASKS, "help": "the task (see above)"})
    output_dir: str = field(metadata={"help": "folder for the results (created if missing)"})
    data: str | None = field(default=None, metadata={
        "help": "ae, ppl: JSONL {'text'}; qa: JSONL {'input','prompt','answer'} (PwC) or {'context','input','answers'} "
                "(LongBench)"})


def build_parser() -> Flags:
    tasks = tuple(dict.fromkeys(t.flags for t in REGISTRY.values() if t.flags))  # shared groups once
    return Flags("eval", (LoadSettings, EvalCommand, EvalSettings, LengthSettings, *tasks), DESCRIPTION, helps={
        "overlong": "a text over the limit: refuse (default) or truncate (ae/qa keep its head, which the qa full-text "
                    "baseline then reads too; ppl its tail)", "model_max_length": "ICAE: " + LENGTH_HELP})


def foreign_flags(task_name: str, args) -> list[str]:
    """Flags of other tasks set away from their defaults: one parser holds every task's flags, and a flag the
    chosen task does not read would otherwise be ignored without a word (``--task qa --conditions memory``)."""
    own = REGISTRY[task_name].flags
    own_names = {f.name for f in fields(own)} if own else set()
    found: dict[str, list[str]] = {}
    for t in REGISTRY.values():
        if t.flags is None or t.flags is own:
            continue
        for f in fields(t.flags):
            default = f.default if f.default is not MISSING else None
            if f.name not in own_names and getattr(args, f.name, default) != default:
                found.setdefault(f"--{f.name}", []).append(t.name)
    return [f"{flag} (read by --task {'/'.join(names)})" for flag, names in found.items()]


def evaluate(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.namespace(argv)  # the tasks read their own flags from it
    load, cmd, settings, length, *_ = parser.settings(args)
    # Everything that can be checked without the model is checked first: bad data fails in seconds.
    task = REGISTRY[cmd.task]
    check_writable("--output_dir", cmd.output_dir, folder=True)
    check_writable("--judge_file", args.judge_file)
    outputs = [("--output_dir", f) for f in report_paths(task.name, cmd.output_dir).values()] + [("--judge_file", args.judge_file)]
    refuse_overwriting_inputs(outputs, [("--data", cmd.data), ("--prompt_templates", args.prompt_templates), *load.inputs()])
    pick_device(load.device)
    if stray := foreign_flags(task.name, args):
        raise ConfigError(f"--task {task.name} does not read {', '.join(stray)}: drop "
                          f"{'it' if len(stray) == 1 else 'them'} or change --task")
    if task.reads_data and not cmd.data:
        raise ConfigError(f"--task {task.name} needs --data")
    if not task.reads_data and cmd.data:
        raise ConfigError(f"--task {task.name} makes its own data: drop --data")
    prepared = task.prepare(args)
    if settings.max_slots is not None and not read_checkpoint(load.checkpoint).hierarchical:
        raise ConfigError("--max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")
    t0 = time.time()
    model = _load(load, length.overrides())
    model.eval()
    check_max_slots(model, settings.max_slots)
    seed_everything(settings.seed)
    result = task.run(model, settings, args, prepared)
    meta = {"checkpoint": str(load.checkpoint), "data": cmd.data, "model": model_info(model, settings.max_slots),
            "settings": {k: v for k, v in settings.to_dict().items() if k != "progress"}}
    files = write_report(result, cmd.output_dir, meta)
    print(json.dumps({"task": task.name, "summary": {k: v for k, v in result.summary.items() if k not in ("grid",)},
                      "files": files, "seconds": round(time.time() - t0, 1)}, default=str))
    print(f"hicae eval: {task.name} done; report in {files['markdown']}", file=sys.stderr)
    return 0
