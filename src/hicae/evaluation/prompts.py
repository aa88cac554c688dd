"""Prompt templates for ``hicae eval --task qa``: LongBench's per-dataset prompts, without shipping them.

A template is a ``str.format`` string with ``{context}`` (exactly once) and ``{input}`` (the
question; optional, as LongBench's summarisation, passage_count and lcc templates have none);
``{{``/``}}`` are literal braces. ``--prompt_templates FILE`` reads a JSON object dataset ->
template, the format of LongBench's ``config/dataset2prompt.json``; ``--prompt_template TEXT``
gives one template for every record.

- full text: the template rendered as is, the context inline (``PromptTemplate.fulltext``);
- memory: the context is compressed, so the prompt after the slots is the template without it
  (``PromptTemplate.memory``): the text before ``{context}`` (the task instruction) and the text
  after it (``{input}`` filled), joined by one blank line, the whitespace that framed the context
  dropped. hicae's fine-tuning layout is ``[slots] [FT] prompt``, so all instructions must follow
  the memory; keeping only the text after ``{context}`` would lose the whole task for templates
  that state it only before the context (LongBench's trec and lsht: instruction, examples, question).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError
from .longbench import check_dataset

FIELDS = ("context", "input")


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    source: str  # where it came from, for messages and the report: "FILE: dataset 'x'" or "--prompt_template"
    # the template as (literal text, field or None) pairs, braces unescaped; validated by ``parse``
    parts: tuple[tuple[str, str | None], ...]

    @property
    def has_input(self) -> bool:
        return any(f == "input" for _, f in self.parts)

    def fulltext(self, context: str, question: str) -> str:
        """The template rendered as is: ``text.format(context=context, input=question)``."""
        return _render(self.parts, context, question)

    def memory(self, question: str) -> str:
        """The prompt that follows the memory: the template with ``{context}`` taken out (module doc).

        Only the template's own whitespace next to ``{context}`` is stripped, never the question's.
        """
        i = next(k for k, (_, f) in enumerate(self.parts) if f == "context")
        head = self.parts[:i] + ((self.parts[i][0].rstrip(), None),)
        tail = self.parts[i + 1:]
        if tail:
            tail = ((tail[0][0].lstrip(), tail[0][1]),) + tail[1:]
        pieces = (_render(head, "", question), _render(tail, "", question))
        return "\n\n".join(p for p in pieces if p)


def _render(parts: tuple[tuple[str, str | None], ...], context: str, question: str) -> str:
    values = {"context": context, "input": question, None: ""}
    return "".join(lit + values[f] for lit, f in parts)


def parse(text: str, source: str) -> PromptTemplate:
    """Check a template (placeholders ``{context}`` once, ``{input}``; nothing else) and split it once."""
    if not isinstance(text, str):
        raise DataError(f"{source}: a template must be a string, got {type(text).__name__}")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:  # a lone "{" or "}"
        raise DataError(f"{source}: not a valid template ({e}; write {{{{ and }}}} for literal braces)") from None
    parts = []
    for literal, field, spec, conversion in parsed:
        if field is not None and field not in FIELDS:
            raise DataError(f"{source}: unknown placeholder {{{field}}} (a template may use {{context}} and {{input}})")
        if spec or conversion:
            raise DataError(f"{source}: placeholder {{{field}}} takes no conversion or format spec")
        parts.append((literal, field))
    if sum(f == "context" for _, f in parts) != 1:
        raise DataError(f"{source}: a template must hold {{context}} exactly once (the text that memory replaces)")
    return PromptTemplate(text, source, tuple(parts))


def _unique_keys(pairs: list[tuple[str, object]], path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise DataError(f"{path}: dataset {k!r} appears twice")
        out[k] = v
    return out


def load_templates(path: str | Path) -> dict[str, PromptTemplate]:
    """A JSON object dataset -> template (LongBench's dataset2prompt.json), every template checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompt_templates {path}: no such file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=lambda p: _unique_keys(p, path))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: expected a JSON object dataset -> template (LongBench's dataset2prompt.json)")
    out: dict[str, PromptTemplate] = {}
    for key, text in obj.items():
        name = check_dataset(key, str(path))
        if name in out:  # "x" and "x_e" both given: LongBench-E shares its dataset's prompt
            raise DataError(f"{path}: datasets {key!r} and {name!r} name the same LongBench dataset")
        out[name] = parse(text, f"{path}: dataset {key!r}")
    return out


def assign_templates(records: Sequence, templates: dict[str, PromptTemplate] | PromptTemplate, source: str) -> None:
    """Give each record its template, or refuse naming the record: a run mixes no prompt styles.

    ``templates``: per dataset (a record without one, or whose dataset has none, is refused) or one
    template for all. A template without ``{input}`` is refused for a record that has a question,
    which it would silently drop.
    """
    for r in records:
        if isinstance(templates, PromptTemplate):
            t = templates
        elif r.dataset is None:
            raise DataError(f"{r.where}: the record names no LongBench dataset (field 'dataset', or --longbench_dataset), "
                            f"so {source} gives it no template")
        elif r.dataset not in templates:
            raise DataError(f"{r.where}: {source} has no template for dataset {r.dataset!r}; add one, or leave "
                            f"these records out")
        else:
            t = templates[r.dataset]
        if r.question.strip() and not t.has_input:
            raise DataError(f"{r.where}: {t.source} has no {{input}}: the record's question would be dropped")
        r.template = t
