"""The protocol's corpus: Debian packages fetched with ``apt-get download``, unpacked, read as documents.

Every package is downloaded once into ``<cache>/debs`` (apt checks each ``.deb`` against the
signed archive's sha256) and unpacked with ``dpkg-deb -x`` into ``<cache>/unpacked/<package>``
(staged, then renamed: an interrupted run leaves nothing half-written). Nothing is installed.

Domains (one reader each; a document is the unit that is held out whole):

| domain | language | packages | document |
|---|---|---|---|
| en_python_docs | en | python3.11-doc | one reST source file |
| en_kernel_docs | en | linux-doc (-> linux-doc-6.1) | one .rst/.txt file (no translations, devicetree, ABI) |
| en_debian_reference | en | debian-reference-en | one numbered section of its plain-text rendering |
| en_bible_kjv | en | bible-kjv-text (+ bible-kjv, its reader) | one chapter |
| en_fortunes | en | fortunes, fortunes-min | one fortune |
| zh_debian_reference | zh | debian-reference-zh-cn | one numbered section (same numbers as English) |
| zh_manpages | zh | manpages-zh | one zh_CN man page |
| zh_classical | zh (hard case) | fortunes-zh | one fortune: Tang/Song poems, classical quotations |
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HicaeError
from . import text as tx


@dataclass
class Document:
    domain: str
    doc_id: str  # unique within the domain (a path, a section number, a chapter)
    text: str  # plain text, paragraphs separated by blank lines
    split_key: str  # what the held-out rule hashes; shared by translations of one section
    proxy_index: int | None = None  # position in experiments/proxy.py's document list (shipped-adapter split)
    proxy_total: int | None = None  # length of that list


@dataclass(frozen=True)
class Domain:
    name: str
    language: str  # en | zh
    group: str  # "modern" (technical or narrative text of today) | "hard" (classical Chinese, reported apart)
    packages: tuple[str, ...]
    read: Callable[[dict[str, Path]], list[Document]]  # unpacked package roots -> documents
    split: str = "hash"  # "hash" (seeded hash of split_key) | "proxy" (the shipped adapter's split, see split.py)
    note: str = ""
    needs: str = ""  # a glob the unpacked packages must match; if none does, the first is a meta-package (below)


MIN_CHARS = 40  # shorter documents (table-of-contents entries, .so redirects, one-line fortunes) are dropped


def _docs(domain: str, items: list[tuple[str, str]], key: Callable[[str], str] | None = None) -> list[Document]:
    return [Document(domain, i, t, key(i) if key else f"{domain}:{i}") for i, t in items if len(t) >= MIN_CHARS]


# ---- readers ---------------------------------------------------------------------------------------

PY_RST = "usr/share/doc/python3.11/html/_sources"


def read_python_docs(roots: dict[str, Path]) -> list[Document]:
    """Same file list and order as ``experiments/proxy.py`` (sorted ``*.txt``, non-empty), so the
    shipped adapter's held-out files are found by index."""
    base = roots["python3.11-doc"] / PY_RST
    raw = []
    for f in sorted(base.rglob("*.txt")):
        t = f.read_text(encoding="utf-8", errors="replace").strip()
        if t:
            raw.append((str(f.relative_to(base)), t))
    out = []
    for i, (name, t) in enumerate(raw):
        d = Document("en_python_docs", name, tx.strip_rst(t), f"en_python_docs:{name}", i, len(raw))
        if len(d.text) >= MIN_CHARS:
            out.append(d)
    return out


KERNEL_SKIP = ("translations/", "devicetree/", "ABI/", "features/", "sphinx/", "output/")


def _kernel_root(roots: dict[str, Path]) -> Path:
    for root in roots.values():
        docs = sorted((root / "usr/share/doc").glob("linux-doc-*/Documentation"))
        if docs:
            return docs[0]
    raise HicaeError("linux-doc: no usr/share/doc/linux-doc-*/Documentation in the unpacked packages")


def read_kernel_docs(roots: dict[str, Path]) -> list[Document]:
    base = _kernel_root(roots)
    items = []
    for f in sorted([*base.rglob("*.rst.gz"), *base.rglob("*.txt.gz")]):
        rel = str(f.relative_to(base))
        if rel.startswith(KERNEL_SKIP):
            continue
        items.append((rel, tx.strip_rst(gzip.decompress(f.read_bytes()).decode("utf-8", errors="replace"))))
    return _docs("en_kernel_docs", items)


def _reference(roots: dict[str, Path], pkg: str, lang: str, domain: str) -> list[Document]:
    f = roots[pkg] / f"usr/share/debian-reference/debian-reference.{lang}.txt.gz"
    text = gzip.decompress(f.read_bytes()).decode("utf-8", errors="replace")
    longest: dict[str, str] = {}
    for num, body in tx.split_sections(text):
        # the list of tables repeats numbers as one-liners: a section's text is its longest
        if len(body) > len(longest.get(num, "")):
            longest[num] = body
    items = list(longest.items())
    # one key for both languages: a section held out in English is held out in Chinese
    return _docs(domain, items, key=lambda num: f"debian-reference:{num}")


def read_debian_reference_en(roots: dict[str, Path]) -> list[Document]:
    return _reference(roots, "debian-reference-en", "en", "en_debian_reference")


def read_debian_reference_zh(roots: dict[str, Path]) -> list[Document]:
    return _reference(roots, "debian-reference-zh-cn", "zh-cn", "zh_debian_reference")


BIBLE_TEXT = "bible-kjv.txt"  # the reader's output, kept beside the unpacked data


def read_bible(roots: dict[str, Path]) -> list[Document]:
    """The KJV through its own reader (``bible -f -p DIR Gen1:1-Rev22:21``: one verse a line), cached as text."""
    data = roots["bible-kjv-text"] / "usr/lib"
    cached = roots["bible-kjv-text"].parent / BIBLE_TEXT
    if not cached.is_file():
        exe = roots["bible-kjv"] / "usr/bin/bible"
        r = subprocess.run([str(exe), "-f", "-p", str(data), "Gen1:1-Rev22:21"], capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            raise HicaeError(f"bible-kjv: {exe} could not read {data}: {r.stderr.strip()[-300:]}")
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(r.stdout, encoding="utf-8")
        tmp.replace(cached)
    return _docs("en_bible_kjv", tx.parse_bible(cached.read_text(encoding="utf-8")))


FORTUNE_DIR = "usr/share/games/fortunes"
FORTUNE_SKIP = {"ascii-art"}  # pictures, not text


def read_fortunes_en(roots: dict[str, Path]) -> list[Document]:
    items = []
    for pkg in ("fortunes-min", "fortunes"):
        for f in sorted((roots[pkg] / FORTUNE_DIR).iterdir()):
            if f.is_symlink() or f.suffix or f.name in FORTUNE_SKIP:  # .dat indexes, .u8 links
                continue
            for i, e in enumerate(tx.parse_fortunes(f.read_text(encoding="utf-8", errors="replace"))):
                items.append((f"{f.name}:{i}", e))
    return _docs("en_fortunes", items)


ZH_FORTUNES = ("chinese", "tang300", "song100")  # real_quality.py's order: the shipped adapter's index
_LATIN = re.compile(r"[A-Za-z]")


def read_zh_classical(roots: dict[str, Path]) -> list[Document]:
    """Classical poems and quotations of fortunes-zh. Entries holding Latin letters (``chinese``
    also carries Debian's code of conduct and snippets of the Debian reference) are left out:
    they are modern text, and the reference's are in zh_debian_reference."""
    entries = []
    for name in ZH_FORTUNES:
        f = roots["fortunes-zh"] / FORTUNE_DIR / name
        entries += [(f"{name}:{i}", e) for i, e in enumerate(tx.parse_fortunes(f.read_text(encoding="utf-8", errors="replace")))]
    return [Document("zh_classical", i, e, f"zh_classical:{i}", n, len(entries))
            for n, (i, e) in enumerate(entries) if not _LATIN.search(e) and len(e) >= MIN_CHARS // 4]


def _read_man(raw: bytes) -> str:
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    for enc in ("utf-8", "gb18030"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
MIN_CJK_SHARE = 0.25  # of a page's non-space characters; untranslated (English) pages fall below


def cjk_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return len(_CJK.findall(text)) / max(1, len(chars))


def read_manpages_zh(roots: dict[str, Path]) -> list[Document]:
    """zh_CN pages only (zh_TW holds the same pages in traditional characters); pages left in
    English (manpages-zh ships some Tcl pages untranslated) are dropped."""
    base = roots["manpages-zh"] / "usr/share/man/zh_CN"
    items = [(str(f.relative_to(base)), tx.strip_man(_read_man(f.read_bytes())))
             for f in sorted(base.rglob("*")) if f.is_file() and not f.is_symlink()]
    return _docs("zh_manpages", [(i, t) for i, t in items if cjk_share(t) >= MIN_CJK_SHARE])


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("en_python_docs", "en", "modern", ("python3.11-doc",), read_python_docs, split="proxy",
           note="the shipped adapter's training corpus: held out as experiments/proxy.py held it out"),
    Domain("en_kernel_docs", "en", "modern", ("linux-doc",), read_kernel_docs,
           note="linux-doc is a meta-package; its Depends (linux-doc-6.1 on bookworm) carries the files",
           needs="usr/share/doc/linux-doc-*/Documentation"),
    Domain("en_debian_reference", "en", "modern", ("debian-reference-en",), read_debian_reference_en),
    Domain("en_bible_kjv", "en", "modern", ("bible-kjv-text", "bible-kjv"), read_bible,
           note="narrative prose; bible-kjv-text is compressed data, read through bible-kjv's reader"),
    Domain("en_fortunes", "en", "modern", ("fortunes-min", "fortunes"), read_fortunes_en),
    Domain("zh_debian_reference", "zh", "modern", ("debian-reference-zh-cn",), read_debian_reference_zh),
    Domain("zh_manpages", "zh", "modern", ("manpages-zh",), read_manpages_zh),
    Domain("zh_classical", "zh", "hard", ("fortunes-zh",), read_zh_classical, split="proxy",
           note="the hard case, reported apart; in the shipped adapter's training corpus: held out as "
                "experiments/real_quality.py held it out"),
)}


# ---- fetching ----------------------------------------------------------------------------------------

def _apt_download(pkg: str, debs: Path) -> Path:
    """``<debs>/<pkg>_*.deb``, downloaded with apt-get (``apt-get update`` once if the first try fails)."""
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if found:
        return found[-1]
    debs.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if r.returncode == 0 and found:
            return found[-1]
        if attempt == 0:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    raise HicaeError(f"apt-get download {pkg} failed in {debs}: {(r.stderr or r.stdout).strip()[-300:]}")


def _depends(deb: Path) -> list[str]:
    """Package names in a .deb's Depends field (alternatives and versions dropped)."""
    r = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True)
    return [re.split(r"[\s(|]", d.strip())[0] for d in r.stdout.split(",") if d.strip()]


def unpack(pkg: str, cache: Path) -> Path:
    """The unpacked tree of ``pkg`` under ``<cache>/unpacked/<pkg>`` (downloaded and extracted once)."""
    root = cache / "unpacked" / pkg
    if root.is_dir():
        return root
    deb = _apt_download(pkg, cache / "debs")
    staged = root.with_name(root.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(staged)], check=True)
    staged.rename(root)
    return root


def package_roots(domain: Domain, cache: Path) -> dict[str, Path]:
    """Unpacked roots of the domain's packages; a meta-package (no files of its own, e.g. linux-doc)
    brings the packages it depends on whose names extend its own (linux-doc -> linux-doc-6.1)."""
    roots = {pkg: unpack(pkg, cache) for pkg in domain.packages}
    if domain.needs and not any(any(r.glob(domain.needs)) for r in roots.values()):
        pkg = domain.packages[0]
        deb = sorted((cache / "debs").glob(f"{pkg}_*.deb"))[-1]
        for dep in _depends(deb):
            if dep.startswith(pkg + "-"):
                roots[dep] = unpack(dep, cache)
    return roots


def load_domain(name: str, cache: Path) -> list[Document]:
    d = DOMAINS[name]
    return d.read(package_roots(d, cache))


def package_versions(cache: Path) -> list[str]:
    """The downloaded .deb file names (package_version_arch), for the report."""
    return sorted(p.name for p in (cache / "debs").glob("*.deb"))
