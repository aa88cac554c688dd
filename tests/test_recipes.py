"""Every recipe in configs/recipes parses against the CLI, and --config behaves as documented."""

from pathlib import Path

import pytest
import yaml

from hicae.cli.train import build_parser
from hicae.errors import ConfigError

RECIPES = sorted((Path(__file__).parent.parent / "configs" / "recipes").glob("*.yaml"))


def test_there_are_recipes_for_each_model_and_stage():
    names = {p.stem for p in RECIPES}
    for base in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-8b"):
        assert {f"{base}-pretrain", f"{base}-finetune"} <= names
    assert any("hierarchical" in n for n in names)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_against_the_cli(path):
    recipe = yaml.safe_load(path.read_text())
    mode = recipe["command"]
    assert recipe["hardware"] and recipe["expected_time"] and recipe["description"]
    # --use_cpu: this machine has no GPU, and TrainingArguments checks bf16 against the hardware
    argv = ["--config", str(path), "--train_file", "data.jsonl", "--use_cpu", "true"]
    margs, dargs, cfg, hier, rargs, targs = build_parser(mode).parse(argv)
    assert margs.model_name_or_path.startswith("Qwen/")
    assert dargs.train_file == "data.jsonl"
    assert targs.bf16 and not targs.fp16  # the ICAE authors: bf16, never fp16
    aliases = {"fixed_mem_size": "mem_size", "mean_compression_rate": "compression_rate"}  # the seed's flag names
    for key, value in recipe["args"].items():  # every flag arrived where it belongs
        key = aliases.get(key, key)
        got = next(getattr(d, key) for d in (margs, dargs, cfg, hier, rargs, targs) if hasattr(d, key))
        got = got.value if hasattr(got, "value") else got
        assert got == value or str(got) == str(value), (key, got, value)
    if margs.hierarchical:
        assert hier.max_slots and hier.max_slots >= 2 * cfg.mem_size


def test_command_line_overrides_recipe_and_wrong_command_is_refused(tmp_path):
    path = next(p for p in RECIPES if p.stem == "qwen2.5-0.5b-pretrain")
    argv = ["--learning_rate", "3e-4", "--config", str(path), "--use_cpu", "true"]
    *_, targs = build_parser("pretrain").parse(argv)
    assert targs.learning_rate == 3e-4
    with pytest.raises(ConfigError, match="not `hicae finetune`"):
        build_parser("finetune").expand_config(["--config", str(path)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: pretrain\nargs: {lr: 1}\nspeed: fast\n")
    with pytest.raises(ConfigError, match="unknown recipe keys"):
        build_parser("pretrain").expand_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="no such file"):
        build_parser("pretrain").expand_config(["--config", str(tmp_path / "none.yaml")])
