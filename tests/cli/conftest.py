import json

import pytest

from hicae.demo.assets import load_qwen3_tokenizer
from hicae.cli.main import main
from hicae.demo.tiny import tiny_model


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """A tiny random Qwen3 and the real Qwen3 tokenizer saved as a local 'hub' folder."""
    d = tmp_path_factory.mktemp("tiny-base")
    model = tiny_model("qwen3", initializer_range=0.5)
    model.save_pretrained(d)
    load_qwen3_tokenizer().save_pretrained(d)
    return d


PASSAGES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Python is a programming language that lets you work quickly and integrate systems.",
    "Qwen models are large language models trained by Alibaba Cloud on many languages.",
    "Memory slots compress a long text into a few vectors that a frozen model reads.",
]


@pytest.fixture
def pretrain_file(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
    return f


@pytest.fixture
def finetune_file(tmp_path):
    f = tmp_path / "ft.jsonl"
    recs = [{"input": t, "prompt": "What is this about?", "answer": t.split()[1]} for t in PASSAGES]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return f


def tiny_args(base_dir, out, train_file, *extra):
    return [
        "--model_name_or_path", str(base_dir), "--output_dir", str(out), "--train_file", str(train_file),
        "--fixed_mem_size", "4", "--mean_compression_rate", "4", "--lora_r", "4", "--lora_dropout", "0",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1", *extra,
    ]


@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
