"""The BM25 baseline: exact ranking on planted passages, Chinese by characters and bigrams."""

import math

from hicae.evaluation.bm25 import BM25, rank, terms

FILLER = ["The weather was mild and the river ran slowly past the town.",
          "Markets opened late on Monday because of the holiday.",
          "A short note about gardens, flowers and the spring rain.",
          "The committee met again and postponed the decision."]


def test_planted_passage_ranks_first():
    planted = "To rebuild the initramfs, run update-initramfs with the -u option after changing modules."
    for at in range(len(FILLER) + 1):
        passages = FILLER[:at] + [planted] + FILLER[at:]
        assert rank(passages, "How do I rebuild the initramfs after changing modules?")[0] == at


def test_chinese_terms_and_ranking():
    assert terms("安装软件 apt-get") == ["安", "装", "软", "件", "安装", "装软", "软件", "apt", "get"]
    passages = ["今天天气很好，我们去公园散步。", "使用软件包管理器安装新的内核映像。", "会议推迟到下周举行。"]
    assert rank(passages, "怎样安装内核？")[0] == 1


def test_score_is_the_okapi_formula():
    docs = [["a", "b", "b"], ["c"]]
    k1, b = 1.5, 0.75
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    avg = 2.0
    want = idf * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * 3 / avg))
    got = BM25(docs, k1, b).scores(["b"])
    assert abs(got[0] - want) < 1e-12 and got[1] == 0.0


def test_ties_keep_document_order():
    assert rank(["x", "y", "z"], "nothing matches") == [0, 1, 2]
