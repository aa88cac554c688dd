"""hicae.protocol.text: plain text out of reST, roff, fortunes, the bible listing and the Debian reference."""

from __future__ import annotations

from hicae.protocol import text as tx


def test_strip_rst_drops_markup_keeps_words():
    rst = """.. _intro:

Intro to :mod:`os.path`
=======================

.. note::
   :class: small

   Read ``open()`` first, see `the docs <https://x.org>`_ and :func:`~os.path.join`.

Example::

    print("hi")
"""
    out = tx.strip_rst(rst)
    assert out.splitlines()[0] == "Intro to os.path"
    assert "Read open() first, see the docs and os.path.join." in out
    assert "Example:" in out and 'print("hi")' in out
    for junk in ("..", ":mod:", "``", "===", ":class:", "_intro", "https://"):
        assert junk not in out, junk


def test_strip_man_resolves_macros_and_escapes():
    man = r""".\" a comment
.TH LS 1
.de XX
macro body that is not text
..
.SH 名称
ls \- 列出目录内容
.SH 描述
.B ls
列出
.BR \-l ", " \-a
的\fB文件\fR信息。
.PP
第二段。
"""
    out = tx.strip_man(man)
    assert out.split("\n\n") == ["名称", "ls - 列出目录内容", "描述", "ls 列出 -l, -a 的文件信息。", "第二段。"]
    assert "macro body" not in out and "comment" not in out and "TH" not in out


def test_fortunes_bible_sections():
    assert tx.parse_fortunes("one\n%\n\x1b[33mtwo\x1b[m\nlines\n%\n\n%\n") == ["one", "two\nlines"]
    chapters = tx.parse_bible("Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n")
    assert chapters == [("Ge1", "In the beginning. And the earth."), ("Ge2", "Thus the heavens.")]
    ref = ("1.1. List of tables entry\n1.2. Other entry\n\n1.1. Real section\n\n    This paragraph was wrapped by the renderer at about seventy\n"
           "    columns and goes on here.\n    +----+\n    |tbl |\n    +----+\n\n    $ ls -l\n1.1.2. 中文小节\n\n"
           "    这是一个很长的中文段落，渲染器在这里把它折成了两行，所以要\n    重新接起来。\n")
    secs = tx.split_sections(ref)
    assert [n for n, _ in secs] == ["1.1", "1.2", "1.1", "1.1.2"]
    body = secs[2][1]
    assert "wrapped by the renderer at about seventy columns and goes on here." in body  # unwrapped
    assert "tbl" not in body and "$ ls -l" in body  # table art dropped, a command kept on its own line
    assert "所以要重新接起来" in secs[3][1]  # Chinese lines joined without a space
