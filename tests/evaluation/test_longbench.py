"""LongBench's official scorers on hand-computed cases (expected values derived in the comments)."""

import json
import sys

import pytest

from hicae import ConfigError, DataError
from hicae.evaluation import EvalSettings, QARecord, run_qa
from hicae.evaluation import longbench as LB
from hicae.evaluation import metrics as M
from hicae.evaluation.records import read_qa

from .conftest import TEXTS, write_jsonl


def test_qa_f1_normalises_as_longbench():
    # "the eiffel tower in paris" -> articles out: [eiffel, tower, in, paris] vs [eiffel, tower]
    # common 2: P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert LB.qa_f1("The Eiffel Tower, in Paris!", "eiffel tower") == pytest.approx(2 / 3)
    # punctuation is deleted, not a separator: "state-of-the-art" is one word "stateoftheart";
    # [stateoftheart, model] vs [stateoftheart]: P = 1/2, R = 1, F1 = 2/3 (hicae's own F1 splits it: 0)
    assert LB.qa_f1("state-of-the-art model", "stateoftheart") == pytest.approx(2 / 3)
    assert M.token_f1("state-of-the-art model", "stateoftheart") == 0.0


def test_qa_f1_zh_uses_jieba_words():
    # jieba: 北京/是/中国/的/首都/。 and 中国/的/首都; "。" normalises to "" and is dropped:
    # 5 words vs 3, common 3: P = 3/5, R = 1, F1 = 2 * 0.6 / 1.6 = 0.75
    # (by characters, as hicae's F1 does: 8 vs 5, common 5: F1 = 2 * (5/8) / (13/8) = 10/13)
    assert LB.qa_f1_zh("北京是中国的首都。", "中国的首都") == pytest.approx(0.75)
    assert M.token_f1("北京是中国的首都。", "中国的首都") == pytest.approx(10 / 13)
    # 他/说/：/“/你好/！/” -> Chinese punctuation removed -> [他, 说, 你好] vs [你好]: P = 1/3, R = 1, F1 = 0.5
    assert LB.qa_f1_zh("他说：“你好！”", "你好") == pytest.approx(0.5)


def test_rouge_is_the_rouge_package_summary_level_lcs():
    # the rouge package counts distinct words: reference {the, cat, is, on, mat} = 5, prediction
    # {the, cat, sat, on, mat} = 5; LCS "the cat on the mat" as distinct words {the, cat, on, mat} = 4:
    # P = R = 4/5, F = 0.8 (hicae's ROUGE-L counts every word: LCS 5 of 6, F = 5/6)
    assert LB.rouge("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8)
    assert M.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert LB.rouge("", "the cat") == 0.0  # the package raises on an empty prediction: LongBench scores 0
    # jieba: 我/爱/北京 vs 我/爱/上海, joined by spaces: LCS {我, 爱} = 2 of 3 each: F = 2/3
    assert LB.rouge_zh("我爱北京", "我爱上海") == pytest.approx(2 / 3)


def test_classification_retrieval_count_code():
    # classes named in the prediction: [Human, Hum, Human being]; LongBench drops those inside the true
    # class while iterating, which skips the entry after each drop: "Human" goes, "Hum" is skipped and
    # stays: [Hum, Human being] -> 1/2
    assert LB.classification("Type: Human being", "Human being", ["Human", "Hum", "Human being"]) == 0.5
    assert LB.classification("Location", "Human being", ["Human being", "Location"]) == 0.0
    assert LB.score("passage_retrieval_en", "Paragraph 3, or maybe 5", ["Paragraph 3"]) == 0.5  # numbers [3, 5]
    assert LB.score("passage_retrieval_zh", "答案是段落12", ["段落12"]) == 1.0
    assert LB.score("passage_count", "There are 4 unique paragraphs out of 10", ["4"]) == 0.5  # numbers [4, 10]
    assert LB.score("passage_count", "none", ["4"]) == 0.0
    # the first line without ``` / # / //: "    return a + b", equal to the reference -> 100 -> 1.0
    assert LB.score("lcc", "```python\n    return a + b\n```", ["    return a + b"]) == 1.0
    # "x = 1" vs "x = 2": 4 of 5 characters match; difflib ratio 2 * 4 / 10 = 0.8 -> 80 -> 0.8
    assert LB.score("repobench-p", "x = 1", ["x = 2"]) == 0.8
    assert LB.fuzz_ratio("abc", "") == 0 and LB.fuzz_ratio("", "") == 100


def test_first_line_rule_and_best_reference():
    # triviaqa scores the first line only: "Paris" vs "Paris" -> 1; the whole answer would give
    # [paris, it, is, in, france] vs [paris]: P = 1/5, R = 1, F1 = 1/3
    assert LB.score("triviaqa", "Paris\nIt is in France", ["Paris"]) == 1.0
    assert LB.score("hotpotqa", "Paris\nIt is in France", ["Paris"]) == pytest.approx(1 / 3)
    # trec, first line "Human being" names one class -> 1 (both lines would name two -> 1/2)
    assert LB.score("trec", "\nHuman being\nLocation", ["Human being"], ["Human being", "Location"]) == 1.0
    assert LB.score("hotpotqa", "the fox", ["a dog", "fox"]) == 1.0  # best over references
    assert LB.score("qasper_e", "x", ["x"]) == 1.0  # a LongBench-E name
    assert LB.table_score([1.0, 0.5, 0.0]) == 50.0


def test_missing_packages_are_config_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    monkeypatch.setitem(sys.modules, "rouge", None)
    with pytest.raises(ConfigError, match="jieba"):
        LB.qa_f1_zh("北京", "北京")
    with pytest.raises(ConfigError, match="rouge"):
        LB.rouge("a", "a")


def test_records_name_their_dataset_and_bad_ones_are_refused(tmp_path):
    ok = [{"context": "c", "input": "q", "answers": ["a"], "dataset": "hotpotqa_e"},
          {"context": "c", "input": "q", "answers": ["a"], "dataset": "trec", "all_classes": ["a", "b"]}]
    recs = read_qa(write_jsonl(tmp_path / "lb.jsonl", ok))
    assert [(r.dataset, r.all_classes) for r in recs] == [("hotpotqa", None), ("trec", ["a", "b"])]
    assert {r.dataset for r in read_qa(tmp_path / "lb.jsonl", dataset="musique")} == {"musique"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [ok[0], {"context": "c", "input": "q", "answers": ["a"], "dataset": "lsht"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*'lsht' is scored by class.*all_classes"):
        read_qa(bad)
    with pytest.raises(DataError, match=r"lb.jsonl:1: unknown LongBench dataset 'nope'"):
        read_qa(write_jsonl(tmp_path / "lb.jsonl", [{**ok[0], "dataset": "nope"}]))


def test_run_qa_scores_longbench_per_dataset(icae_model, monkeypatch):
    recs = [QARecord("lb:1", TEXTS[0], "Which animal?", ["fox"], "hotpotqa"),
            QARecord("lb:2", TEXTS[1], "Which language?", ["Python"], "triviaqa"),
            QARecord("lb:3", TEXTS[2], "Who?", ["Alibaba"], "triviaqa"),
            QARecord("lb:4", TEXTS[3], "What?", ["slots"])]  # no dataset: no LongBench score
    said = {"Which animal?": "the fox\nreally", "Which language?": "Python\nsurely", "Who?": "nobody", "What?": "x"}
    tok, asked = icae_model.tokenizer, []

    def fake_generate(mem, prompts, max_new_tokens):
        asked.append(max_new_tokens)
        return [tok(said[p], add_special_tokens=False)["input_ids"] for p in prompts]

    monkeypatch.setattr(icae_model, "generate_ids", fake_generate)
    res = run_qa(icae_model, recs, EvalSettings(batch_size=4, progress=False), fulltext=False)
    # hotpotqa (all lines): [fox, really] vs [fox] -> F1 2/3 -> 66.67; triviaqa (first lines): "Python" -> 1,
    # "nobody" -> 0 -> 50.0
    assert res.summary["longbench"] == {"hotpotqa": {"n": 1, "metric": "qa_f1", "memory": 66.67},
                                        "triviaqa": {"n": 2, "metric": "qa_f1", "memory": 50.0}}
    assert asked == [64]  # LongBench lengths: hotpotqa and triviaqa 32; the record without a dataset 64
    assert "longbench" not in res.examples[3] and "memory_longbench" not in res.examples[3]
    assert any("name no LongBench dataset" in n for n in res.notes)
    assert any(t.title.startswith("LongBench") for t in res.tables)


def test_rows_keep_their_own_generation_limit(icae_model):
    recs = [QARecord("lb:1", TEXTS[0], "Which animal?", ["fox"], "hotpotqa"),  # LongBench: 32 new tokens
            QARecord("lb:2", TEXTS[1], "Which language?", ["Python"], "multifieldqa_en")]  # 64
    both = run_qa(icae_model, recs, EvalSettings(batch_size=2, progress=False)).examples
    alone = run_qa(icae_model, recs[:1], EvalSettings(batch_size=1, progress=False)).examples
    longer = run_qa(icae_model, recs[:1], EvalSettings(batch_size=1, max_new_tokens=64, progress=False)).examples
    for src in ("answer_memory", "answer_fulltext"):  # cut at 32 tokens though its batch ran to 64
        assert both[0][src] == alone[0][src] != longer[0][src]


def test_cli_format_longbench_reports_its_metric(icae_ckpt, tmp_path, run_cli):
    data = write_jsonl(tmp_path / "lb.jsonl", [{"context": t, "input": "What is it about?", "answers": [t.split()[1]]}
                                               for t in TEXTS[:2]])
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", data, "--output_dir", out,
                           "--format", "longbench", "--longbench_dataset", "multifieldqa_zh", "--skip_fulltext",
                           "--max_new_tokens", "2", "--no_progress", "--device", "cpu")
    assert code == 0, err
    lb = json.loads((out / "qa.json").read_text())["summary"]["longbench"]
    assert list(lb) == ["multifieldqa_zh"] and lb["multifieldqa_zh"]["metric"] == "qa_f1_zh"
    assert "LongBench, official metric" in (out / "qa.md").read_text()
    pwc = write_jsonl(tmp_path / "pwc.jsonl", [{"input": "c", "prompt": "q", "answer": "a"}])
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", pwc, "--output_dir", out,
                           "--longbench_dataset", "hotpotqa")
    assert code == 1 and "pwc.jsonl:1 is a PwC record" in err
