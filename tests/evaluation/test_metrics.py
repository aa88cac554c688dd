"""Metrics on hand-computed examples, and BLEU through sacrebleu."""

import sys

import pytest

from hicae import ConfigError
from hicae.evaluation import metrics as M


def test_bleu_of_identical_texts_is_100_and_of_disjoint_texts_0():
    ref = "The quick brown fox jumps over the lazy dog near the river bank."
    assert M.sentence_bleu(ref, ref) == pytest.approx(100.0)
    assert M.corpus_bleu([ref, "Another sentence of several words here."], [ref, "Another sentence of several words here."]) == pytest.approx(100.0)
    assert M.corpus_bleu(["alpha beta gamma delta"], ["one two three four"]) == 0.0
    assert M.corpus_bleu([], []) == 0.0
    assert 0.0 < M.sentence_bleu("the quick brown fox jumps over a dog", ref) < 100.0


def test_bleu_without_sacrebleu_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
    with pytest.raises(ConfigError, match=r"hicae\[eval\]"):
        M.require_bleu()
    with pytest.raises(ConfigError, match="sacrebleu"):
        M.sentence_bleu("a", "a")


def test_words_lowercase_drop_punctuation_split_cjk():
    assert M.words("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert M.words("北京是首都 ok") == ["北", "京", "是", "首", "都", "ok"]
    assert M.answer_words("The cat and a dog") == ["cat", "and", "dog"]


def test_lcs_length_classic_examples():
    assert M.lcs_length("ABCBDAB", "BDCABA") == 4
    assert M.lcs_length("abc", "") == 0
    assert M.lcs_length(list("abcdef"), list("abcdef")) == 6


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 words on both sides: P = R = F = 5/6
    assert M.rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # pred a b c d, ref a c e: LCS a c = 2; P = 1/2, R = 2/3, F = 2PR/(P+R) = 4/7
    assert M.rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    assert M.rouge_l("x y", "a b") == 0.0
    assert M.rouge_l("Same words!", "same words") == 1.0
    assert M.rouge_l("", "") == 1.0 and M.rouge_l("", "a") == 0.0


def test_token_f1_and_exact_match_hand_computed():
    # article-free words: pred [cat, sat], ref [cat, sat, down]: common 2, P = 1, R = 2/3 -> F = 0.8
    assert M.token_f1("The cat sat", "a cat sat down") == pytest.approx(0.8)
    # bags: pred {x: 2, y: 1}, ref {x: 1, y: 2}: overlap {x: 1, y: 1} = 2 words; P = R = 2/3
    assert M.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert M.token_f1("nothing", "else") == 0.0
    assert M.exact_match("The Eiffel Tower!", "eiffel   tower") == 1.0
    assert M.exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_qa_scores_take_the_best_reference():
    s = M.qa_scores("Paris", ["London", "paris.", "the city of Paris"])
    assert s == {"rouge_l": 1.0, "f1": 1.0, "exact_match": 1.0}
    s = M.qa_scores("the city of Paris", ["Paris"])
    assert s["exact_match"] == 0.0 and s["f1"] == pytest.approx(0.5) and s["rouge_l"] == pytest.approx(0.4)


def test_token_accuracy_is_position_wise_over_the_reference():
    assert M.token_accuracy([1, 2, 3], [1, 5, 3, 4]) == 0.5  # positions 0 and 2 of 4
    assert M.token_accuracy([1, 2, 3, 4, 5, 6], [1, 2, 3]) == 1.0  # extra tokens do not count
    assert M.token_accuracy([2, 3], [1, 2, 3]) == 0.0  # a shift is wrong at every position
    assert M.token_accuracy([], []) == 1.0 and M.token_accuracy([], [7]) == 0.0


def test_contains_digits_needs_the_whole_number():
    assert M.contains_digits("The pass key is 71432.", "71432") == 1.0
    assert M.contains_digits("71432", "71432") == 1.0
    assert M.contains_digits("714320", "71432") == 0.0
    assert M.contains_digits("I do not know", "71432") == 0.0


def test_chinese_bleu_splits_characters():
    # 13a keeps a run of Chinese characters as one token: one character off scores 0 there
    ref = "今天天气很好我们去公园散步了"
    pred = "今天天气很好我们去公园散步吧"
    assert M.sentence_bleu(pred, ref, tokenize="13a") == pytest.approx(0.0, abs=1e-6)
    assert M.sentence_bleu(pred, ref) > 85  # auto -> zh: 13 of 14 characters, n-gram precisions 13/14, 12/13, ...
    assert M.sentence_bleu(pred, ref) == pytest.approx(M.sentence_bleu(pred, ref, tokenize="zh"))
    assert M.corpus_bleu([pred, "the cat sat"], [ref, "the cat sat"]) > 85
    assert M.bleu_tokenizer([ref]) == "zh" and M.bleu_tokenizer(["plain English"]) == "13a"
    assert M.script_of(ref) == "zh" and M.script_of("abc") == "en"


def test_english_bleu_unchanged_by_auto():
    pred, ref = "the cat sat on a mat today", "the cat sat on the mat today"
    assert M.sentence_bleu(pred, ref) == M.sentence_bleu(pred, ref, tokenize="13a")
    assert M.corpus_bleu([pred], [ref]) == M.corpus_bleu([pred], [ref], tokenize="13a")


def test_unknown_bleu_tokenisation_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown BLEU tokenisation 'chinese'"):
        M.sentence_bleu("a", "a", tokenize="chinese")
    from hicae.evaluation import EvalSettings

    with pytest.raises(ConfigError, match="unknown BLEU tokenisation"):
        EvalSettings(bleu_tokenize="chinese")
