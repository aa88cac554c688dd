"""Issue 17's evaluation protocol: held-out text of eight Debian-packaged domains, one command (``experiments/protocol.py``).

One module per concern: ``sources`` (fetching the packages, reading documents), ``text`` (plain
text out of reST, roff, fortunes, the bible, the Debian reference), ``split`` (held out by
document), ``passages`` (training passages and evaluation texts), ``scores`` (loops, terciles,
group summaries), ``run`` (the run and its files), ``render`` (markdown), ``settings`` (the
dataclass behind the flags).
"""
