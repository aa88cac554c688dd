"""One table of model shapes: the ``config.json`` fields that size a model, by name.

``tiny`` is the tests' and the demo's random model (``hicae.demo.tiny``; vocabulary large enough for
the Qwen tokenizer, 151,669 ids). The others are released Qwen2.5 models (``config.json`` of
``Qwen/Qwen2.5-*`` on the Hugging Face hub): the benchmarks build 0.5B and 7B with random weights
(``benchmarks/harness.py``, ``--shape``); ``training/fsdp_memory.py`` computes the per-GPU memory of 32B and 72B.
"""

from __future__ import annotations

MODEL_SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=151936,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, intermediate_size=4864, vocab_size=151936,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, vocab_size=152064,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-32b": dict(hidden_size=5120, num_hidden_layers=64, intermediate_size=27648, vocab_size=152064,
                        num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-72b": dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=29568, vocab_size=152064,
                        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}
