"""The one way a command's flags are made: a flag per field of its settings dataclasses, and ``--config``.

Every ``hicae`` command builds its parser with ``Flags`` (transformers' ``HfArgumentParser``, which also
reads ``TrainingArguments``): a flag is named after its field (``--max_new_tokens``, and the hyphenated
``--max-new-tokens``), its help is the field's ``help``, its old spellings are the field's ``aliases``
(still accepted), its ``choices`` the field's; a bool flag takes ``--flag``, ``--flag true`` or ``--flag
false`` (``--no_flag`` when it is on by default); a ``repeat`` field is given once per value (``--prompt A
--prompt B``); a field without a default is a required flag.

``--config FILE.yaml`` (every command) reads flags from a file: a mapping with ``args`` (flag: value) and
optional ``command``, ``description``, ``hardware``, ``expected_time`` (configs/recipes/ are such files);
a setting given on the command line overrides the file's.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterable

from transformers import HfArgumentParser

from ..errors import ConfigError

RECIPE_META = ("command", "description", "hardware", "expected_time")


class Flags(HfArgumentParser):
    def __init__(self, command: str, settings: Iterable[type], description: str | None = None,
                 helps: dict[str, str] | None = None, **defaults: Any):
        """``helps``: another help for some flags in this command (dest -> help); ``defaults``: this command's
        defaults where they differ from the dataclasses'."""
        super().__init__(list(settings), prog=f"hicae {command}", description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.command = command
        self.add_argument("--config", metavar="FILE.yaml", default=None,
                          help="read flags from a YAML (or JSON) file: {args: {flag: value}}; flags given here override it")
        for action in self._actions:
            if action.dest in (helps or {}):
                action.help = helps[action.dest]
        self.set_defaults(**defaults)

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        meta = dict(field.metadata)
        if meta.pop("repeat", False):  # a list given one value at a time: --prompt A --prompt B
            aliases = meta.pop("aliases", [])
            parser.add_argument(f"--{field.name}", *aliases, dest=field.name, action="append", default=None, **meta)
            return
        HfArgumentParser._parse_dataclass_field(parser, field)

    # ---- parsing ----------------------------------------------------------------------------------------

    def namespace(self, argv: list[str]) -> argparse.Namespace:
        """Every flag's value (``--config`` read first); an unknown flag is a one-line user error."""
        ns, rest = self.parse_known_args(self.expand_config(argv))
        if rest:
            raise ConfigError(f"unknown flag(s) {' '.join(rest)}: `{self.prog} --help` lists the flags")
        return ns

    def parse(self, argv: list[str]) -> tuple:
        """One instance per settings dataclass, in the order given."""
        return self.settings(self.namespace(argv))

    def settings(self, ns: argparse.Namespace) -> tuple:
        values = vars(ns)
        return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
                     for cls in self.dataclass_types)

    # ---- --config -----------------------------------------------------------------------------------------

    def expand_config(self, argv: list[str]) -> list[str]:
        """``--config FILE`` replaced by the file's flags, but for settings the command line gives itself."""
        if "--config" not in argv:
            return argv
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file")
        rest = argv[:i] + argv[i + 2 :]
        given = {self.dest_of(a.split("=")[0]) for a in rest if a.startswith("--")}
        return [*self._file_flags(config_args(argv[i + 1], self.command), skip=given), *rest]

    def dest_of(self, option: str) -> str | None:
        """The setting a flag spelling sets (``--fixed_mem_size`` -> ``mem_size``), or None for an unknown one."""
        action = self._option_string_actions.get(option)
        return action.dest if action is not None else None

    def _file_flags(self, args: dict[str, Any], skip: set[str | None]) -> list[str]:
        out: list[str] = []
        for key, value in args.items():
            dest = self.dest_of(f"--{key}")
            if value is None or (dest is not None and dest in skip):
                continue
            action = self._option_string_actions.get(f"--{key}")
            values = value if isinstance(value, (list, tuple)) else [value]
            words = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            if isinstance(action, argparse._AppendAction):  # one flag per value
                out += [w for v in words for w in (f"--{key}", v)]
            else:
                out += [f"--{key}", *words]
        return out


def config_args(path: str, command: str) -> dict[str, Any]:
    """The ``args`` of a config file (YAML or JSON), checked: known keys only, and made for ``command``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        recipe = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("args"), dict):
        raise ConfigError(f"{path}: a config file is a mapping with an 'args' mapping of flags")
    unknown = sorted(set(recipe) - set(RECIPE_META) - {"args"})
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {unknown} (allowed: {list(RECIPE_META) + ['args']})")
    if recipe.get("command", command) != command:
        raise ConfigError(f"{path} is a recipe for `hicae {recipe['command']}`, not `hicae {command}`")
    return recipe["args"]
