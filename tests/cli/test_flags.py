"""Every command's flags come from one builder (``hicae.cli.flags.Flags``): ``--config FILE.yaml`` works for
each command of the table (the file's values, the command line's over them), each setting has one spelling
(its field's name) and the old spellings still parse to the same settings."""

from __future__ import annotations

import argparse

import pytest
import yaml

from hicae.cli.flags import Flags
from hicae.cli.main import COMMANDS, command_parser
from hicae.errors import ConfigError


def _value(action: argparse.Action, other: bool = False) -> object:
    """A value the flag accepts (``other``: a second, different one)."""
    if action.choices:
        return list(action.choices)[1 if other else 0]
    if action.type in (int, float):
        return 7 if other else 3
    return "other" if other else "x"


def _settable(parser: Flags) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")
            and not isinstance(a, (argparse._StoreFalseAction, argparse._AppendAction)) and a.nargs not in ("?", "+")]


@pytest.mark.parametrize("command", COMMANDS)
def test_config_file_gives_the_values_and_flags_override_them(tmp_path, command):
    parser = command_parser(command)
    assert isinstance(parser, Flags) and parser.prog == f"hicae {command}"
    required = [a for a in parser._actions if a.required]
    optional = next(a for a in _settable(parser) if not a.required)
    args = {a.dest: _value(a) for a in required} | {optional.dest: _value(optional)}
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump({"command": command, "description": "a test", "args": args}))

    ns = parser.namespace(["--config", str(path)])
    assert all(getattr(ns, k) == v for k, v in args.items()), (command, args, ns)
    flag = optional.option_strings[0]
    ns = parser.namespace([flag, str(_value(optional, other=True)), "--config", str(path)])
    assert getattr(ns, optional.dest) == _value(optional, other=True)  # the command line wins, wherever it stands

    other = next(c for c in COMMANDS if c != command)
    path.write_text(yaml.safe_dump({"command": other, "args": args}))
    with pytest.raises(ConfigError, match=f"not `hicae {command}`"):
        parser.namespace(["--config", str(path)])


@pytest.mark.parametrize("command", COMMANDS)
def test_one_spelling_per_setting(command):
    """A flag is named after its setting; other spellings (aliases, the hyphenated form) come after it."""
    parser = command_parser(command)
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and not isinstance(action, argparse._StoreFalseAction):
            assert action.option_strings[0] == f"--{action.dest}", (command, action.option_strings)


@pytest.mark.parametrize("command, old, new", [
    ("pretrain", ["--fixed_mem_size", "8", "--mean_compression_rate", "2"], ["--mem_size", "8", "--compression_rate", "2"]),
    ("import-icae-v2", ["--mean_compression_rate", "2"], ["--compression_rate", "2"]),
    ("demo", ["--fixed_mem_size", "4", "--mean_compression_rate", "2"], ["--mem_size", "4", "--compression_rate", "2"]),
    ("build-qa", ["--base", "b"], ["--model_name_or_path", "b"]),
    ("generate", ["--continue"], ["--continue_text"]),
    ("serve", ["--api-key", "k"], ["--api_key", "k"]),
    ("eval", ["--no_progress"], ["--progress", "false"]),
])
def test_old_spellings_are_aliases(command, old, new):
    parser = command_parser(command)
    required = [x for a in parser._actions if a.required for x in (a.option_strings[0], str(_value(a)))]
    assert vars(parser.namespace([*required, *old])) == vars(parser.namespace([*required, *new]))


def test_unknown_flag_is_a_user_error():
    with pytest.raises(ConfigError, match="unknown flag.*--nope"):
        command_parser("compress").namespace(["--checkpoint", "c", "--input", "i", "--output", "o", "--nope"])


def test_repeated_flags_and_their_config_lists(tmp_path):
    """--prompt is given once per question, on the command line and as a list in a config file."""
    parser = command_parser("generate")
    base = ["--checkpoint", "c", "--memory", "m"]
    assert parser.namespace([*base, "--prompt", "a", "--prompt", "b"]).prompt == ["a", "b"]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"args": {"prompt": ["a", "b"], "do_sample": True, "top_k": 5}}))
    ns = parser.namespace([*base, "--config", str(path)])
    assert ns.prompt == ["a", "b"] and ns.do_sample is True and ns.top_k == 5
    assert parser.namespace([*base, "--config", str(path), "--prompt", "c"]).prompt == ["c"]
