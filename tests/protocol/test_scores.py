"""hicae.protocol.scores: the degenerate-loop detector and the base-perplexity terciles."""

from __future__ import annotations

from hicae.protocol import scores


def test_loop_detector():
    assert scores.is_loop([7, 8, 9] * 10)  # "lighthouse = lighthouse = ..."
    assert scores.top_ngram_share([7, 8, 9] * 10) == 1.0
    assert not scores.is_loop(list(range(64)))  # no repeated 3-gram: 3/64
    assert scores.top_ngram_share(list(range(64))) == 3 / 64
    loop_tail = list(range(40)) + [5, 6, 5] * 8  # a text that falls into a loop halfway
    assert scores.is_loop(loop_tail) and not scores.is_loop(loop_tail, threshold=0.5)
    assert not scores.is_loop([1, 1, 1, 1, 1])  # too short to call


def test_terciles():
    vals = [5.0, 1.0, 3.0, 2.0, 6.0, 4.0]
    cuts = scores.tercile_cuts(vals)
    assert cuts == (2.0, 4.0)
    groups = [scores.tercile_of(v, cuts) for v in sorted(vals)]
    assert groups == ["low", "low", "mid", "mid", "high", "high"]
    assert [scores.tercile_of(v, scores.tercile_cuts(list(range(9)))) for v in range(9)].count("high") == 3


def test_summarize_pools_token_accuracy_and_counts_loops():
    rows = [{"prediction": "a b c d", "reference": "a b c d", "bleu": 100.0, "exact_match": 1.0, "token_accuracy": 1.0,
             "ref_tokens": 4, "loop": False, "base_nll": 2.0},
            {"prediction": "x x x x", "reference": "e f g h i j k l", "bleu": 0.0, "exact_match": 0.0, "token_accuracy": 0.0,
             "ref_tokens": 8, "loop": True, "base_nll": 4.0}]
    s = scores.summarize(rows, "13a")
    assert s["n"] == 2 and s["loops"] == 0.5 and s["base_nll"] == 3.0
    assert abs(s["token_accuracy"] - 4 / 12) < 1e-9 and s["exact_match"] == 0.5
    assert 0 < s["bleu"] < 100
