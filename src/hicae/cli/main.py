"""``hicae`` command: dispatch to subcommands; user errors exit non-zero without a traceback."""

from __future__ import annotations

import sys

from .errors import run_command

COMMANDS = {
    "pretrain": ("hicae.cli.train", "pretrain", "pretrain ICAE (AE + LM objectives) on JSONL {'text'}"),
    "finetune": ("hicae.cli.train", "finetune", "instruction fine-tuning on JSONL {'input','prompt','answer'}"),
    "compress": ("hicae.cli.infer", "compress", "compress texts into a memory file"),
    "generate": ("hicae.cli.infer", "generate", "answer prompts, reconstruct or continue from a memory file"),
    "eval": ("hicae.cli.eval", "evaluate", "evaluate a checkpoint: ae | ppl | qa | passkey | needle (JSON, markdown, plots)"),
    "serve": ("hicae.cli.serve", "serve", "HTTP service: compress once, ask many (OpenAI-style chat endpoint; needs hicae[serve])"),
    "import-icae-v2": ("hicae.cli.import_v2", "import_v2", "convert an ICAE v2 checkpoint (getao/icae) into a hicae checkpoint"),
    "build-qa": ("hicae.cli.build_qa", "build_qa", "instruction records from a corpus: questions from the text, answers by the base model reading it"),
    "demo": ("hicae.cli.demo", "demo", "offline demo: the real Qwen2.5-0.5B compresses held-out text (--tiny: train a tiny model)"),
}


def usage() -> str:
    lines = ["usage: hicae COMMAND [options]   (hicae COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(__version__)
        return 0
    cmd = argv.pop(0)
    if cmd not in COMMANDS:
        print(f"hicae: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    import importlib

    return run_command(cmd, lambda args: getattr(importlib.import_module(module), func)(args), argv)


if __name__ == "__main__":
    sys.exit(main())
