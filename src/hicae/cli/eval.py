"""``hicae eval``: run one evaluation task on a checkpoint and write JSON, markdown and PNG results."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..checkpoint import read_checkpoint_config
from ..errors import ConfigError
from ..evaluation import TASKS, EvalSettings, read_qa, read_texts, run_ae, run_ppl, run_qa, run_retrieval, write_report
from ..evaluation.metrics import require_bleu
from ..evaluation.ppl import check_settings as check_ppl_settings
from ..evaluation.ppl import parse_conditions
from ..evaluation.prompts import assign_templates, load_templates
from ..evaluation.prompts import parse as parse_template
from ..evaluation.retrieval import check_settings as check_retrieval_settings
from ..evaluation.retrieval import parse_depths, parse_lengths
from ..evaluation.report import report_paths
from ..evaluation.runtime import check_max_slots, model_info, seed_everything
from .common import pick_device
from .infer import LENGTH_HELP, _load, _model_args, model_inputs
from .outputs import check_writable, refuse_overwriting_inputs

DESCRIPTION = """Evaluate a checkpoint (ICAE or hierarchical) on one task:
  ae       reconstruct texts from memory: BLEU-4, exact match, token accuracy (by compression ratio, by level)
  ppl      perplexity of a continuation: no context / memory / full text / text truncated to as many tokens as slots
  qa       answers from memory vs from the full text: ROUGE-L, token F1, exact match (PwC or LongBench JSONL)
  passkey  find a 5-digit pass key in a filler haystack, over --lengths x --depths
  needle   find a keyed 7-digit number (optionally among --distractors), over --lengths x --depths
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
    p.add_argument("--model_max_length", type=int, default=None, help="ICAE: " + LENGTH_HELP)
    p.add_argument("--overlong", choices=["error", "truncate"], default="error",
                   help="a text over the limit: refuse (default) or truncate (ae/qa keep its head, which the qa full-text "
                        "baseline then reads too; ppl its tail)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--bleu_tokenize", default="auto", choices=["auto", "13a", "zh", "intl", "char", "none"],
                   help="ae: sacrebleu's tokenisation (auto: zh, one token per CJK character, for groups holding Chinese; else 13a)")
    g = p.add_argument_group("ppl")
    g.add_argument("--continuation_tokens", type=int, default=64, help="the last N tokens of each text are the continuation")
    g.add_argument("--leave_tokens", type=int, default=1, help="the first N continuation tokens are read but not scored (>= 1)")
    g.add_argument("--conditions", default="none,memory,full,truncated", help="comma-separated subset of none,memory,full,truncated")
    g = p.add_argument_group("qa")
    g.add_argument("--format", default="auto", choices=["auto", "pwc", "longbench"], help="QA data format (auto: from the first record)")
    g.add_argument("--longbench_dataset", default=None,
                   help="LongBench data: the dataset whose official metric scores the answers (default: each record's "
                        "'dataset' field), e.g. hotpotqa, multifieldqa_zh, dureader, trec")
    g.add_argument("--prompt_templates", default=None, metavar="FILE.json",
                   help="JSON object dataset -> template with {context} and {input} (LongBench's "
                        "config/dataset2prompt.json): each record's prompt from its dataset's template; memory gets "
                        "the template without {context}; a record whose dataset has none is refused")
    g.add_argument("--prompt_template", default=None, metavar="TEXT",
                   help="one template with {context} and {input} for every record (instead of --prompt_templates)")
    g.add_argument("--skip_fulltext", action="store_true", help="qa: no full-text baseline")
    g.add_argument("--judge_file", default=None, help="qa: write a pairwise-judging JSONL (question, reference, both answers)")
    g = p.add_argument_group("passkey / needle")
    g.add_argument("--lengths", default="1k,4k,16k", help="context lengths in tokens (k = 1024), e.g. 1k,4k,16k,128k")
    g.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths as fractions of the haystack")
    g.add_argument("--samples", type=int, default=5, help="samples per (length, depth) cell")
    g.add_argument("--distractors", type=int, default=0, help="needle: other keyed numbers in the haystack")
    g.add_argument("--fulltext", action="store_true", help="passkey/needle: also ask the base model with the haystack inline")
    return p


def _assign_templates(args: argparse.Namespace, records: list) -> None:
    if args.prompt_templates and args.prompt_template is not None:
        raise ConfigError("give --prompt_templates (per dataset) or --prompt_template (one for all), not both")
    if args.prompt_templates:
        assign_templates(records, load_templates(args.prompt_templates), f"--prompt_templates {args.prompt_templates}")
    elif args.prompt_template is not None:
        assign_templates(records, parse_template(args.prompt_template, "--prompt_template"), "--prompt_template")


def evaluate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = EvalSettings(args.batch_size, args.limit, args.seed, args.max_slots, args.max_new_tokens, not args.no_progress,
                            args.bleu_tokenize)
    # Everything that can be checked without the model is checked first: bad data fails in seconds.
    task = args.task
    check_writable("--output_dir", args.output_dir, folder=True)
    check_writable("--judge_file", args.judge_file)
    outputs = [("--output_dir", f) for f in report_paths(task, args.output_dir).values()] + [("--judge_file", args.judge_file)]
    refuse_overwriting_inputs(outputs, [("--data", args.data), ("--prompt_templates", args.prompt_templates), *model_inputs(args)])
    pick_device(args.device)
    if task != "qa" and (args.prompt_templates or args.prompt_template is not None):
        raise ConfigError("--prompt_templates / --prompt_template are for --task qa")
    if task in ("ae", "ppl", "qa") and not args.data:
        raise ConfigError(f"--task {task} needs --data")
    if task in ("passkey", "needle") and args.data:
        raise ConfigError(f"--task {task} makes its own data: drop --data")
    if task == "ae":
        require_bleu()
        records = read_texts(args.data, args.limit)
    elif task == "ppl":
        conditions = parse_conditions(args.conditions)
        check_ppl_settings(args.continuation_tokens, args.leave_tokens)
        records = read_texts(args.data, args.limit)
    elif task == "qa":
        records = read_qa(args.data, args.limit, args.format, args.longbench_dataset)
        _assign_templates(args, records)
        if args.judge_file and args.skip_fulltext:
            raise ConfigError("--judge_file compares memory and full-text answers: it cannot be used with --skip_fulltext")
    else:
        lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
        check_retrieval_settings(args.samples, args.distractors)
    if args.max_slots is not None and "hierarchy" not in read_checkpoint_config(args.checkpoint):
        raise ConfigError("--max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")
    overrides = {k: v for k, v in {"model_max_length": args.model_max_length, "overlong": args.overlong}.items() if v is not None}
    t0 = time.time()
    model = _load(args, overrides)
    model.eval()
    check_max_slots(model, args.max_slots)
    seed_everything(args.seed)
    if task == "ae":
        result = run_ae(model, records, settings)
    elif task == "ppl":
        result = run_ppl(model, records, settings, args.continuation_tokens, args.leave_tokens, conditions)
    elif task == "qa":
        result = run_qa(model, records, settings, fulltext=not args.skip_fulltext, judge_file=args.judge_file)
    else:
        result = run_retrieval(task, model, settings, lengths, depths, args.samples, args.distractors, args.fulltext)
    meta = {"checkpoint": str(args.checkpoint), "data": args.data, "model": model_info(model, args.max_slots),
            "settings": {k: v for k, v in settings.to_dict().items() if k != "progress"}}
    files = write_report(result, args.output_dir, meta)
    print(json.dumps({"task": task, "summary": {k: v for k, v in result.summary.items() if k not in ("grid",)},
                      "files": files, "seconds": round(time.time() - t0, 1)}, default=str))
    print(f"hicae eval: {task} done; report in {files['markdown']}", file=sys.stderr)
    return 0
