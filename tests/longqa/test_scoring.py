"""The strict span match against LongBench's contains (hicae.longqa.scoring)."""

from __future__ import annotations

from hicae.longqa.scoring import contains, strict, with_strict


def test_strict_keeps_articles_and_word_boundaries():
    # LongBench's normalisation leaves "of" of "of a": found in a wrong answer, even inside another word
    assert contains("of the", "of a", "en") == 1.0 and strict("of the", "of a", "en") == 0.0
    assert contains("often", "of a", "en") == 1.0 and strict("often", "of a", "en") == 0.0
    assert contains("device) that", "device the", "en") == 1.0 and strict("device) that", "device the", "en") == 0.0
    # right answers stay right: case, punctuation and the words around them do not matter
    assert strict("It says: Electronic Form.", "electronic form", "en") == 1.0
    assert strict("be used", "be used", "en") == 1.0 and strict("they can be used here", "be used", "en") == 1.0
    assert strict("used be", "be used", "en") == 0.0 and strict("be\nused", "be used", "en") == 1.0
    assert strict("anything", "", "en") == 0.0


def test_strict_chinese_is_contains():
    for answer, gold in (("是“下载新的”。", "下载新的"), ("别的答案", "下载新的")):
        assert strict(answer, gold, "zh") == contains(answer, gold, "zh")


def test_with_strict_fills_old_rows_only():
    rows = [{"answer": "of the", "gold": "of a", "lang": "en"}, {"answer": "x", "gold": "x", "lang": "en", "strict": 0.5},
            {"na": "over the window", "lang": "en"}]
    out = with_strict(rows)
    assert out[0]["strict"] == 0.0 and out[1]["strict"] == 0.5 and "strict" not in out[2]
    assert "strict" not in rows[0]  # the input rows are not changed
