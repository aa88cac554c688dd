"""Questions made from a text alone, English or Chinese (by script), seeded and deterministic.

Kinds (``KINDS``):

- ``cloze``: extractive and checkable: "what comes right after '<cue>'?"; the gold answer is the
  span that follows the cue in the text, copied verbatim. The cue occurs exactly once in the text,
  so the answer is determined by the text (a question a reader of the text can answer and a
  scorer can check).
- ``entity`` / ``about``: about a named thing found in the text (a capitalised phrase, an acronym,
  an identifier; in Chinese a quoted term or a Latin word): "what is X", "what does the text say
  about X".
- ``summary``: a summary request.
- ``next_step``: for a text with a list (numbered or bulleted items): "what is the next step after
  '<item>'?"; the next item is kept as ``expected`` (a hint, not a gold answer).

Only ``cloze`` is checkable; the others are answered by the teacher (``teacher.py``).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

KINDS = ("cloze", "entity", "about", "summary", "next_step")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
ZH_SHARE = 0.2  # a text is Chinese when this share of its non-space characters are CJK


@dataclass
class Question:
    kind: str
    lang: str
    prompt: str
    gold: str | None = None  # checkable kinds: the answer, a span of the text
    extra: dict = field(default_factory=dict)  # e.g. cloze: the cue and the gold's character offset

    @property
    def checkable(self) -> bool:
        return self.gold is not None


def lang_of(text: str) -> str:
    chars = [c for c in text if not c.isspace()]
    return "zh" if chars and len(_CJK_CHAR.findall(text)) / len(chars) >= ZH_SHARE else "en"


# ---- cloze (extractive) ------------------------------------------------------------------------------

_EN_WORD = re.compile(r"\S+")
_HAS_ALNUM = re.compile(r"\w")
_ZH_RUN = re.compile(f"[{_CJK}]+")


def _en_cloze(text: str, lo: int, hi: int, rng: random.Random, cue_words: int, answer_words: int) -> Question | None:
    words = [m for m in _EN_WORD.finditer(text)]
    starts = [i for i in range(cue_words, len(words) - answer_words + 1) if lo <= words[i].start() < hi]
    rng.shuffle(starts)
    for i in starts[:64]:  # a few tries: the cue must be unique and the answer must hold a word
        cue = text[words[i - cue_words].start() : words[i - 1].end()]
        gold = text[words[i].start() : words[i + answer_words - 1].end()].strip(".,;:!?\"'()[]{}")
        if not _HAS_ALNUM.search(gold) or "\n" in cue or text.count(cue) != 1:
            continue
        prompt = (f'In the text, which {answer_words} words come right after "{cue}"? '
                  f"Answer with those words only.")
        return Question("cloze", "en", prompt, gold, {"cue": cue, "offset": text.index(gold, words[i].start())})
    return None


def _zh_cloze(text: str, lo: int, hi: int, rng: random.Random, cue_chars: int, answer_chars: int) -> Question | None:
    # the cue and the answer lie within one run of CJK characters: no punctuation or spaces to normalise away
    spots = [(m.start() + k) for m in _ZH_RUN.finditer(text) if m.end() - m.start() >= cue_chars + answer_chars
             for k in range(cue_chars, m.end() - m.start() - answer_chars + 1) if lo <= m.start() + k < hi]
    rng.shuffle(spots)
    for s in spots[:64]:
        cue, gold = text[s - cue_chars : s], text[s : s + answer_chars]
        if text.count(cue) != 1:
            continue
        prompt = f"在文中，“{cue}”后面紧接着的{answer_chars}个字是什么？只回答这{answer_chars}个字。"
        return Question("cloze", "zh", prompt, gold, {"cue": cue, "offset": s})
    return None


def cloze_questions(text: str, n: int, rng: random.Random, lang: str | None = None, *, cue_words: int = 6,
                    answer_words: int = 2, cue_chars: int = 8, answer_chars: int = 4) -> list[Question]:
    """Up to ``n`` cloze questions, one from each of ``n`` equal stretches of the text (so that questions
    cover its start, middle and end alike, not only where a baseline that reads the end would look)."""
    lang = lang or lang_of(text)
    out = []
    for j in range(n):
        lo, hi = len(text) * j // n, len(text) * (j + 1) // n
        q = (_zh_cloze(text, lo, hi, rng, cue_chars, answer_chars) if lang == "zh"
             else _en_cloze(text, lo, hi, rng, cue_words, answer_words))
        if q is not None:
            q.extra["stretch"] = j
            out.append(q)
    return out


# ---- named things ------------------------------------------------------------------------------------

_EN_NAMES = re.compile(r"\b[A-Z][A-Za-z0-9]+(?:[ -][A-Z][A-Za-z0-9]+)+\b"  # Debian Reference, Linux Kernel
                       r"|\b[A-Z]{2,6}s?\b"  # acronyms: DMA, APT, URLs
                       r"|\b[A-Za-z_][A-Za-z0-9]*(?:[._][A-Za-z0-9_]+)+(?:\(\))?"  # sys.path, kmalloc_array()
                       r"|(?<!\w)--?[a-z][a-z0-9-]+")  # command-line options
_ZH_NAMES = re.compile(r"[「“《]([^」”》\n]{1,20})[」”》]|(?<![A-Za-z0-9_./-])([A-Za-z][A-Za-z0-9_.+-]{2,30})")
_STOP = {"The", "This", "That", "These", "It", "In", "If", "For", "To", "And", "OK", "I"}
# English words inside Chinese text are names only when they are not plain English ("the" asked as
# "根据文中内容，the是什么？" made the teacher echo the question)
_EN_WORDS = {"the", "and", "for", "with", "not", "are", "you", "can", "this", "that", "from", "was", "which",
             "will", "all", "any", "has", "have", "but", "one", "use", "see", "its", "into", "also", "may"}


def named_things(text: str, lang: str) -> list[str]:
    """Named things of the text, the most frequent first (ties by first appearance)."""
    if lang == "zh":
        found = [a or b.rstrip(".-") for a, b in _ZH_NAMES.findall(text)]  # a sentence end is not part of the name
    else:
        found = [m.group(0) for m in _EN_NAMES.finditer(text)]
    found = [f for f in (x.strip() for x in found) if f and f not in _STOP and f.lower() not in _EN_WORDS]
    counts = Counter(found)
    first = {f: i for i, f in reversed(list(enumerate(found)))}
    return sorted(counts, key=lambda f: (-counts[f], first[f]))


# ---- lists (next step) -------------------------------------------------------------------------------

_ITEM = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|[-*•·]|[a-z][.)]|（?\d{1,2}）|\d{1,2}、)[ \t]+(\S.{3,})$", re.M)


def list_items(text: str) -> list[list[str]]:
    """Runs of consecutive list items (numbered or bulleted lines), each run at least two items."""
    runs: list[list[str]] = []
    last_end = -10
    for m in _ITEM.finditer(text):
        gap = text[last_end : m.start()]
        if runs and gap.count("\n") <= 2:  # the next line, or one blank line between items
            runs[-1].append(m.group(1).strip())
        else:
            runs.append([m.group(1).strip()])
        last_end = m.end()
    return [r for r in runs if len(r) >= 2]


def _short(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n].rsplit(" ", 1)[0] + " ..."


PROMPTS = {
    "en": {"entity": "What is {x}, according to the text?",
           "about": "What does the passage say about {x}?",
           "summary": "Summarize the text in two or three sentences.",
           "next_step": 'In the text, what is the next step after "{x}"?'},
    "zh": {"entity": "根据文中内容，{x}是什么？",
           "about": "这段文字关于{x}说了什么？",
           "summary": "请用两三句话概括这段文字。",
           "next_step": "在文中，“{x}”的下一步是什么？"},
}


def make_questions(text: str, kinds: tuple[str, ...], rng: random.Random, per_kind: int = 1,
                   lang: str | None = None) -> list[Question]:
    """Questions of each kind the text supports (a text without names or lists gets none of those)."""
    lang = lang or lang_of(text)
    out: list[Question] = []
    names = named_things(text, lang) if {"entity", "about"} & set(kinds) else []
    used = 0  # entity and about ask about different names
    for kind in kinds:
        if kind == "cloze":
            out += cloze_questions(text, per_kind, rng, lang)
        elif kind in ("entity", "about"):
            for x in names[used : used + per_kind]:
                out.append(Question(kind, lang, PROMPTS[lang][kind].format(x=x), extra={"subject": x}))
            used += per_kind
        elif kind == "summary":
            out.append(Question(kind, lang, PROMPTS[lang]["summary"]))
        elif kind == "next_step":
            pairs = [(r[i], r[i + 1]) for r in list_items(text) for i in range(len(r) - 1)]
            for a, b in rng.sample(pairs, min(per_kind, len(pairs))):
                out.append(Question(kind, lang, PROMPTS[lang]["next_step"].format(x=_short(a)), extra={"expected": b}))
        else:
            raise ValueError(f"unknown question kind {kind!r} (choose from {', '.join(KINDS)})")
    return out
