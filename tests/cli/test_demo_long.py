"""``hicae demo``'s long-document part on a tiny model: three questions, four readers each, right/wrong marked."""

from __future__ import annotations

import torch

from hicae import ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.cli.demo_long import long_document_part
from hicae.demo.tiny import tiny_model

TEXT = " ".join(f"Clause {i}. Whoever conveys copies number {i} must keep notice {i * 3} intact and offer "
                f"source code for {i + 2} years." for i in range(30))


def test_long_document_part_asks_three_questions_from_memory_full_text_and_bm25(tmp_path, capsys):
    torch.manual_seed(0)
    model = ICAE(tiny_model("qwen3", seed=0), load_qwen3_tokenizer(),
                 ICAEConfig(mem_size=4, compression_rate=2, lora_r=4, lora_dropout=0.0, model_max_length=64)).eval()
    doc = tmp_path / "license.txt"
    doc.write_text(TEXT)
    asked = []

    def from_text(m, text, question, n):  # the full text and the BM25 chunks come through here
        asked.append((len(text), question))
        return "intact and" if len(asked) == 1 else "no idea"

    got = long_document_part(model, str(doc), from_text)
    out = capsys.readouterr().out
    n_tok = len(model.tokens.text_ids([TEXT])[0])
    assert n_tok > model.icae_config.model_max_length  # longer than the model's limit: the demo compresses it all
    assert got["tokens"] == n_tok and got["slots"] == model.num_slots(n_tok) and got["questions"] == 3
    assert out.count("Q: ") == 3 and out.count("memory ") >= 3 and out.count("BM25") >= 3
    # the decoder also reads only the picked segments: 64 slots = 16 segments of k = 4
    assert got["picked_slots"] == 64 and out.count("     memory, 64 slots picked  ") == 3 and "of the 16 segments" in out
    assert len(asked) == 6 and asked[0][0] == len(TEXT) and asked[1][0] < len(TEXT)  # full text, then BM25's chunks
    assert got["right"]["BM25"] == 0 and got["right"]["full text"] in (0, 1)
    assert set(got["right"]) == {"memory", "memory, 64 slots picked", "full text", "BM25"}


def test_missing_document_is_skipped_with_a_note(tmp_path, capsys):
    assert long_document_part(None, str(tmp_path / "nope.txt"), None) is None
    assert "not found" in capsys.readouterr().out
