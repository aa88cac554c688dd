"""``hicae`` command: dispatch to subcommands; user errors exit non-zero without a traceback."""

from __future__ import annotations

import sys
from typing import NamedTuple

from .errors import run_command

class Command(NamedTuple):
    module: str  # imported when the command runs, so that `hicae --help` loads no model code
    func: str  # (argv) -> exit status
    parser: str  # () -> its Flags (tests/cli/test_flags.py checks --config and the spellings of every command)
    help: str


COMMANDS = {
    "pretrain": Command("hicae.cli.train", "pretrain", "pretrain_parser", "pretrain ICAE (AE + LM objectives) on JSONL {'text'}"),
    "finetune": Command("hicae.cli.train", "finetune", "finetune_parser", "instruction fine-tuning on JSONL {'input','prompt','answer'}"),
    "compress": Command("hicae.cli.infer", "compress", "compress_parser", "compress texts into a memory file"),
    "generate": Command("hicae.cli.infer", "generate", "generate_parser", "answer prompts, reconstruct or continue from a memory file"),
    "eval": Command("hicae.cli.eval", "evaluate", "build_parser", "evaluate a checkpoint: ae | ppl | qa | passkey | needle (JSON, markdown, plots)"),
    "serve": Command("hicae.cli.serve", "serve", "build_parser", "HTTP service: compress once, ask many (OpenAI-style chat endpoint; needs hicae[serve])"),
    "import-icae-v2": Command("hicae.cli.import_v2", "import_v2", "build_parser", "convert an ICAE v2 checkpoint (getao/icae) into a hicae checkpoint"),
    "build-qa": Command("hicae.cli.build_qa", "build_qa", "build_parser", "instruction records from a corpus: questions from the text, answers by the base model reading it"),
    "demo": Command("hicae.cli.demo", "demo", "build_parser", "offline demo: the real Qwen2.5-0.5B compresses held-out text (--tiny: train a tiny model)"),
}


def command_parser(name: str):
    """The ``Flags`` of command ``name``."""
    import importlib

    c = COMMANDS[name]
    return getattr(importlib.import_module(c.module), c.parser)()


def usage() -> str:
    lines = ["usage: hicae COMMAND [options]   (hicae COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<14} {c.help}" for name, c in COMMANDS.items()]
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
    import importlib

    c = COMMANDS[cmd]
    return run_command(cmd, lambda args: getattr(importlib.import_module(c.module), c.func)(args), argv)


if __name__ == "__main__":
    sys.exit(main())
