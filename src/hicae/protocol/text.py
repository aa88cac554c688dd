"""Plain text out of the protocol's Debian sources: reStructuredText, roff man pages, fortunes, the KJV bible.

Each function takes the file's text and returns plain text with paragraphs separated by blank
lines. The stripping is deliberately light (markup that a reader would not see goes; code,
commands and tables' words stay): the protocol measures how well prose and technical text come
back, and both keep their own register.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# ---- reStructuredText (Python docs, kernel docs) --------------------------------------------------

_RST_UNDERLINE = re.compile(r"^\s*([=\-~^*#+`'\".:_])\1{2,}\s*$")  # a heading's over/underline
_RST_EXPLICIT = re.compile(r"^\s*\.\.(\s.*)?$")  # .. note:: / .. _label: / .. [1] / .. |x| / a comment
_RST_OPTION = re.compile(r"^\s+:[\w -]+:(\s.*)?$")  # a directive's :option: lines
_RST_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")  # :func:`os.path` -> os.path
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")  # `text <url>`_ -> text
_RST_TARGET = re.compile(r"<[^<>`\s]+>")  # ~ leftover <label> inside a role's text
_RST_LITERAL = re.compile(r"``([^`]*)``")
_RST_REF = re.compile(r"`([^`]*)`_{0,2}")
_RST_EMPH = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_RST_SUBST = re.compile(r"\|([\w -]+)\|")


def _rst_inline(line: str) -> str:
    line = _RST_ROLE.sub(lambda m: _RST_TARGET.sub("", m.group(1)).strip().lstrip("~!"), line)
    line = _RST_LINK.sub(r"\1", line)
    line = _RST_LITERAL.sub(r"\1", line)
    line = _RST_REF.sub(r"\1", line)
    line = _RST_EMPH.sub(r"\1", line)
    return _RST_SUBST.sub(r"\1", line)


def strip_rst(text: str) -> str:
    """reST -> plain text: directives, comments, targets, heading rules and role markup removed.

    A directive's indented body is kept (a ``.. note::`` says something; a ``.. code-block::``
    holds code, which is technical text); its ``:option:`` lines go. A ``::`` ending a paragraph
    becomes ``:``.
    """
    out: list[str] = []
    in_directive_head = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if _RST_UNDERLINE.match(line):
            continue
        if _RST_EXPLICIT.match(line):
            in_directive_head = True  # its option lines follow directly
            if "::" in line:
                rest = line.split("::", 1)[1].strip()
                # the argument of e.g. ``.. function:: open(file)`` or ``.. note:: Text`` is content
                if rest and not line.lstrip().startswith((".. _", ".. |")):
                    out.append(_rst_inline(rest))
            continue
        if in_directive_head and _RST_OPTION.match(line):
            continue
        in_directive_head = False
        if line.endswith("::"):
            line = line[:-1] if not line.endswith(" ::") else line[:-3]
        out.append(_rst_inline(line))
    return _tidy("\n".join(out))


# ---- roff man pages (manpages-zh) -----------------------------------------------------------------

_ROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^%:]|\\n(\(..|.)")
_ROFF_CHARS = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(bu": "•", r"\(aq": "'", r"\(dq": '"', r"\(lq": "“",
               r"\(rq": "”", r"\(co": "©", r"\e": "\\", r"\ ": " ", r"\~": " ", r"\0": " ", r"\(mu": "×", r"\(+-": "±"}
_ROFF_SKIP = {"TH", "br", "sp", "ll", "PP", "LP", "P", "TP", "IP", "nf", "fi", "in", "RS", "RE", "ad", "na", "ft",
              "ds", "de", "ne", "hy", "nh", "so", "ti", "ta", "bp", "ps", "vs", "ce", "UC", "Dd", "Os", "Dt", "if",
              "ie", "el", "tr", "nr", "rm", "am", "ig", "..", "ev", "lf", "cs", "ss", "mk", "rt", "pc", "HP", "PD",
              "ns", "rs", "ul", "cu", "DT", "UE", "ME", "EE", "EX", "YS", "SY", "OP", "TQ"}


def _roff_inline(s: str) -> str:
    for k, v in _ROFF_CHARS.items():
        s = s.replace(k, v)
    s = _ROFF_ESC.sub("", s)
    s = re.sub(r"\\\((..)", "", s)  # any other named character
    return s.replace("\\", "")


def _macro_args(rest: str) -> list[str]:
    """A macro line's arguments: words, or double-quoted strings holding spaces."""
    return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
            for a in re.findall(r'"[^"]*"?|\S+', rest)]


def strip_man(text: str) -> str:
    """roff (``man`` macros) -> plain text: comments and layout requests dropped, font macros'
    arguments kept (``.BR a b`` -> ``ab``, ``.B a b`` -> ``a b``), ``.SH``/``.SS`` headings as
    paragraphs of their own, escapes such as ``\\fB`` and ``\\-`` resolved."""
    out: list[str] = []
    in_definition = False  # inside .de/.am/.ig ... "..": a macro's body, not text
    for raw in text.splitlines():
        line = raw.rstrip()
        if in_definition:
            in_definition = line.strip() != ".."
            continue
        if re.match(r"^[.']\s*(de|de1|am|ig)\b", line):
            in_definition = True
            continue
        if line.startswith(('.\\"', '\\"', "'\\\"", ".\\#")) or line in (".", "'"):
            continue
        if line.startswith((".", "'")) and len(line) > 1:
            name, _, rest = line[1:].lstrip().partition(" ")
            if name in ("SH", "SS", "Sh", "Ss"):
                out += ["", _roff_inline(" ".join(_macro_args(rest))), ""]
            elif name in ("B", "I", "SM", "SB"):
                out.append(_roff_inline(" ".join(_macro_args(rest))))
            elif name in ("BR", "RB", "IR", "RI", "BI", "IB"):
                out.append(_roff_inline("".join(_macro_args(rest))))
            elif name in ("PP", "LP", "P", "sp", "TP", "IP", "HP", "Pp", "It"):
                out.append("")
                if name == "IP" and rest:
                    out.append(_roff_inline(_macro_args(rest)[0]))
                elif name == "It" and rest:  # mdoc list item: its tag (flags get their dash back)
                    out.append(_roff_inline(" ".join("-" + a if i == 1 and _macro_args(rest)[0] == "Fl" else a
                                                     for i, a in enumerate(_macro_args(rest)) if a != "Fl")))
            elif name in ("UR", "MT") or (name[:1].isupper() and name not in _ROFF_SKIP and rest):
                # mdoc's .Nm/.Fl/.Ar/.Xr ... carry words (flags get their dash back)
                args = [a for a in _macro_args(rest) if not (len(a) == 2 and a[0].isupper() and a[1].islower())]
                out.append(("-" if name == "Fl" else "") + _roff_inline(" ".join(args)))
            # anything else (.TH, .br, .nf, .de ... and lower-case requests): layout, not words
            continue
        out.append(_roff_inline(line))
    return fill(_tidy("\n".join(out)))


_CJK_END = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]$")
_CJK_START = re.compile(r"^[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def _join(a: str, b: str) -> str:
    """Two wrapped lines as one: no space between Chinese characters, one space otherwise."""
    return a + b if _CJK_END.search(a) and _CJK_START.match(b) else a + " " + b


def fill(text: str) -> str:
    """Each paragraph's lines joined into one line (roff fills text the same way when it renders)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.splitlines() if ln.strip()]
        if lines:
            acc = lines[0]
            for ln in lines[1:]:
                acc = _join(acc, ln)
            out.append(acc)
    return "\n\n".join(out)


_NOT_PROSE = re.compile(r"^\s*([$#*•|+>-]|\d+(\.\d+)*\.\s|Table |表 )")
WRAP_WIDTH = 55  # display columns: a line at least this wide was wrapped by the renderer (it wraps at ~70)


def _width(line: str) -> int:
    return sum(2 if _CJK_START.match(c) else 1 for c in line)


def unwrap(text: str) -> str:
    """Undo a renderer's hard wrapping: a wide prose line is joined with the prose line after it.

    Lines of commands, list items, headings and table titles stay on their own; so does any line
    after a short one (the end of a paragraph or of a code line)."""
    lines = text.split("\n")
    out: list[str] = []
    for ln in lines:
        s = ln.strip()
        if (out and s and out[-1].strip() and _width(out[-1].strip()) >= WRAP_WIDTH
                and not _NOT_PROSE.match(out[-1]) and not _NOT_PROSE.match(s)):
            out[-1] = _join(out[-1].rstrip(), s)
        else:
            out.append(s)
    return "\n".join(out)


# ---- fortunes and the bible -----------------------------------------------------------------------

def parse_fortunes(text: str) -> list[str]:
    """Entries of a fortune file (separated by lines holding only ``%``); ANSI colour codes removed.

    Same rule as ``experiments/proxy.py``'s, so that the shipped adapter's held-out fortunes can be
    found by index (see ``split.proxy_split``).
    """
    entries, cur = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    entries.append("\n".join(cur))
    return [e for e in (ANSI.sub("", e).strip() for e in entries) if e]


_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


def parse_bible(text: str) -> list[tuple[str, str]]:
    """``(chapter id, text)`` from the ``bible -f`` listing (one verse a line: ``Ge1:1 In the ...``).

    A chapter is one document; its verses are joined into paragraphs of running prose.
    """
    chapters: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _VERSE.match(line.strip())
        if m:
            chapters.setdefault(f"{m.group(1)}{m.group(2)}", []).append(m.group(4).strip())
    return [(cid, " ".join(vs)) for cid, vs in chapters.items()]


# ---- the Debian reference (plain-text rendering shipped in the package) ---------------------------

_SECTION = re.compile(r"^(\d+(?:\.\d+)+)\.\s+\S")  # "1.1.11. An extra user account" at column 0
_TABLE_RULE = re.compile(r"^\s*[+|┌├└│─┬┼┴┐┤┘═]")


def split_sections(text: str) -> list[tuple[str, str]]:
    """``(section number, text)`` of a Debian reference ``.txt``: one document per numbered (sub)section.

    The number (``1.1.11``) is the same in every language's rendering, so a section held out in
    English is held out in Chinese too. Table-drawing lines (ASCII and box characters) are dropped;
    the table of contents makes tiny sections that the length filters discard.
    """
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            out.append((m.group(1), [line.strip()]))
        elif out and not _TABLE_RULE.match(line):
            out[-1][1].append(line.strip())
    return [(num, unwrap(_tidy("\n".join(lines)))) for num, lines in out]


def _tidy(text: str) -> str:
    """Lines stripped, runs of blank lines collapsed to one, no blank edges."""
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r", "").replace("\xa0", " "))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
