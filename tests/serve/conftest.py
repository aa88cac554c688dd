"""Tiny checkpoints on disk and a real ``hicae serve`` subprocess on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import hicae
from hicae import HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.demo.tiny import tiny_model

from conftest import TINY_ICAE, perturb_trainable

SRC = str(Path(hicae.__file__).resolve().parents[1])


def save_tiny_checkpoint(path: Path, hierarchical: bool = False) -> Path:
    """A tiny random Qwen2 ICAE (fp32, perturbed adapter) with its base inside the checkpoint."""
    base = tiny_model("qwen2", initializer_range=0.5)
    cfg = ICAEConfig(**TINY_ICAE, model_max_length=64)
    tok = load_qwen3_tokenizer()
    hier = HierarchyConfig(levels=3, max_text_tokens=200)
    model = HierarchicalICAE(base, tok, cfg, hier) if hierarchical else ICAE(base, tok, cfg)
    perturb_trainable(model)
    model.save_pretrained(str(path), save_base=True)
    return path


@pytest.fixture(scope="session")
def tiny_hier_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("serve-hck") / "ck", hierarchical=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hicae serve`` in a subprocess (the real entry point, uvicorn, a loopback port)."""

    def __init__(self, checkpoint: Path, store: Path, *extra: str, env: dict[str, str] | None = None,
                 start_timeout: float = 120.0):
        self.start_timeout = start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = store
        self.log = Path(str(store) + f".{self.port}.log")
        self.cmd = [sys.executable, "-m", "hicae.cli.main", "serve", "--checkpoint", str(checkpoint), "--store",
                    str(store), "--port", str(self.port), "--device", "cpu", "--log_level", "warning", *extra]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {}),
                    "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
        self.start()

    def start(self) -> None:
        """Start (again: after ``kill9``, on the same port and store)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self._wait_up()

    def _wait_up(self) -> None:
        timeout = self.start_timeout
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hicae serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"hicae serve did not start in {timeout} s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


API_KEY = "test-key"
# The shared server's limits: small, so that each is cheap to hit.
LIMITS = ["--max_queue", "4", "--batch_window_ms", "150", "--max_prompts", "4", "--max_text_chars", "2000",
          "--max_body_bytes", "20000", "--max_new_tokens", "64"]


@pytest.fixture(scope="session")
def served(tiny_hier_checkpoint, tmp_path_factory):
    """One server for the session (a hierarchical tiny checkpoint, bearer token from HICAE_API_KEY)."""
    server = Server(tiny_hier_checkpoint, tmp_path_factory.mktemp("served") / "store", *LIMITS,
                    env={"HICAE_API_KEY": API_KEY})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(served):
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client
