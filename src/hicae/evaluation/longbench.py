"""LongBench's official scorers, so that ``hicae eval --task qa`` on LongBench data compares with its tables.

The rules of THUDM/LongBench (``LongBench/metrics.py``, ``eval.py``), written for hicae:

- each dataset has one metric (``DATASET_METRIC``); a prediction's score is the best over the
  reference answers (at least 0); for trec, triviaqa, samsum and lsht only the prediction's first
  line counts (after leading newlines);
- ``qa_f1``: SQuAD token F1 after LongBench's ``normalize_answer`` (lower case, ASCII punctuation
  removed, English articles removed, whitespace split);
- ``qa_f1_zh``: token F1 over jieba words (accurate mode), each word lower-cased with Chinese and
  ASCII punctuation and whitespace removed, empty words dropped;
- ``rouge``: ROUGE-L F of the ``rouge`` package (summary level; sentences split at ``.``), 0 when
  it fails (an empty prediction); ``rouge_zh``: the same over jieba words joined by spaces;
- ``classification``: the classes of ``all_classes`` named in the prediction, less those that are
  part of the true class (LongBench's loop skips the entry after each one it removes; kept, so
  the numbers agree), score ``1/len`` when the true class is among them;
- ``retrieval`` / ``retrieval_zh``: share of the numbers in the prediction that equal the
  paragraph number of the answer (``Paragraph N`` / ``段落N``); ``count``: share equal to the answer;
- ``code_sim``: the first line of the prediction without ``\\``` ``, ``#`` or ``//``, compared with
  fuzzywuzzy's ``ratio`` (difflib's similarity, rounded to a whole percent; what LongBench's
  requirements install).

Scores here are in [0, 1]; LongBench's tables show 100 x the mean over a dataset (``table_score``).
jieba and rouge are optional dependencies (``pip install 'hicae[eval]'``), imported on first use.
"""

from __future__ import annotations

import difflib
import re
import string
from typing import Callable, Sequence

from ..errors import ConfigError, DataError
from .metrics import bag_f1

DATASET_METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_zh",
    "gov_report": "rouge", "qmsum": "rouge", "multi_news": "rouge", "vcsum": "rouge_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim", "repobench-p": "code_sim",
}
FIRST_LINE = frozenset({"trec", "triviaqa", "samsum", "lsht"})
# LongBench's generation lengths (config/dataset2maxlen.json): the default --max_new_tokens per dataset.
DATASET_MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}
_ZH_PUNCT = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
             "–—‘’‛“”„‟…‧﹏.")
_EN_PUNCT = frozenset(string.punctuation)
_ALL_PUNCT = frozenset(string.punctuation + _ZH_PUNCT)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")


def dataset_name(name: str) -> str:
    """A LongBench dataset name as the metric map knows it (LongBench-E's ``_e`` suffix dropped)."""
    return name[:-2] if name.endswith("_e") and name[:-2] in DATASET_METRIC else name


def check_dataset(name: str, where: str) -> str:
    name = dataset_name(name)
    if name not in DATASET_METRIC:
        raise DataError(f"{where}: unknown LongBench dataset {name!r} (one of {', '.join(sorted(DATASET_METRIC))})")
    return name


# ---- normalisation and tokens ------------------------------------------------------------------------


def lower_no_punct(s: str) -> str:
    """Lower case without ASCII punctuation: the first step of ``normalize_answer`` (articles kept)."""
    return "".join(ch for ch in s.lower() if ch not in _EN_PUNCT)


def normalize_answer(s: str) -> str:
    """LongBench's English normalisation: lower case, no ASCII punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", lower_no_punct(s)).split())


def normalize_zh_answer(s: str) -> str:
    """LongBench's Chinese normalisation: lower case, no Chinese or ASCII punctuation, no whitespace."""
    return "".join("".join(ch for ch in s.lower() if ch not in _ALL_PUNCT).split())


def _jieba():
    try:
        import jieba
    except ImportError:
        raise ConfigError("LongBench's Chinese metrics need jieba: pip install 'hicae[eval]' (or pip install jieba)") from None
    jieba.setLogLevel(40)  # its dictionary-loading chatter ("Building prefix dict ...") is not for the user
    return jieba


def jieba_words(text: str) -> list[str]:
    """jieba's accurate-mode segmentation (``cut_all=False``, HMM on), as LongBench calls it."""
    return list(_jieba().cut(text, cut_all=False))


# ---- the metrics -------------------------------------------------------------------------------------


def qa_f1(prediction: str, reference: str) -> float:
    return bag_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def qa_f1_zh(prediction: str, reference: str) -> float:
    def words(text: str) -> list[str]:
        return [w for w in (normalize_zh_answer(t) for t in jieba_words(text)) if w]

    return bag_f1(words(prediction), words(reference))


def rouge(prediction: str, reference: str) -> float:
    try:
        from rouge import Rouge
    except ImportError:
        raise ConfigError("LongBench's ROUGE needs the rouge package: pip install 'hicae[eval]' (or pip install rouge)") from None
    try:
        return float(Rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError, ZeroDivisionError):  # e.g. "Hypothesis is empty": LongBench scores 0
        return 0.0


def rouge_zh(prediction: str, reference: str) -> float:
    return rouge(" ".join(jieba_words(prediction)), " ".join(jieba_words(reference)))


def classification(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    named = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(named):
        if named[i] in reference and named[i] != reference:
            del named[i]  # LongBench removes while iterating a list, which then skips the next entry
        i += 1
    return 1.0 / len(named) if reference in named else 0.0


def _number_share(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    return sum(1 for n in numbers if n == target) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, reference: str, pattern: str = r"Paragraph (\d+)") -> float:
    found = re.findall(pattern, reference)
    return _number_share(prediction, found[0]) if found else 0.0


def retrieval_zh(prediction: str, reference: str) -> float:
    return retrieval(prediction, reference, r"段落(\d+)")


def count(prediction: str, reference: str) -> float:
    return _number_share(prediction, str(reference))


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's ``fuzz.ratio`` (pure-Python path): equal -> 100, one empty -> 0, else difflib's ratio in whole %."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim(prediction: str, reference: str) -> float:
    line = next((x for x in prediction.lstrip("\n").split("\n") if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz_ratio(line, reference) / 100


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1, "qa_f1_zh": qa_f1_zh, "rouge": rouge, "rouge_zh": rouge_zh, "classification": classification,
    "retrieval": retrieval, "retrieval_zh": retrieval_zh, "count": count, "code_sim": code_sim,
}


def score(dataset: str, prediction: str, references: Sequence[str], all_classes: Sequence[str] | None = None) -> float:
    """LongBench's score of one prediction in [0, 1]: its dataset's metric, best over the references."""
    dataset = dataset_name(dataset)
    name = DATASET_METRIC[dataset]
    if dataset in FIRST_LINE:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = METRICS[name]
    kwargs = {"all_classes": all_classes or []} if name == "classification" else {}
    return max([0.0] + [metric(prediction, r, **kwargs) for r in references])


def table_score(scores: Sequence[float]) -> float:
    """A dataset's number as LongBench's tables print it: 100 x the mean, rounded to 2 decimals."""
    return round(100 * sum(scores) / len(scores), 2)
