"""The serving page's (docs/serve.md) curl and OpenAI-client examples, run verbatim against the real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .conftest import API_KEY

README = Path(__file__).resolve().parents[2] / "docs" / "serve.md"  # the serving page; the README links to it


def _example_blocks() -> tuple[str, str]:
    text = README.read_text()
    after = text.split("<!-- serve-example:", 1)[1]
    bash, python = re.findall(r"```(?:bash|python)\n(.*?)```", after, flags=re.S)[:2]
    return bash, python


def test_readme_examples_run(served, api, capsys):
    bash, python = _example_blocks()
    env = {**os.environ, "HICAE_URL": served.url, "HICAE_API_KEY": API_KEY}
    # a newline after each curl output (the README's commands unchanged) separates their JSON documents
    script = 'curl() { command curl "$@"; echo; }\n' + bash + '\necho "MEMORY_ID=$MEMORY_ID"\n'
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line]
    memory_id = lines[-1].split("=", 1)[1]
    info, answers = json.loads(lines[0]), json.loads(lines[1])
    assert info["id"] == memory_id and info["texts"] == 1
    want = api.post(f"/v1/memories/{memory_id}/generate",
                    json={"prompts": ["Which animal jumps?", "Where?"], "max_new_tokens": 32}).json()
    assert answers == want
    events = [json.loads(l[len("data: "):]) for l in lines if l.startswith("data: ")]
    assert events[-1]["done"] and "".join(e["text"] for e in events[:-1]) == want["outputs"][0]["text"]
    assert json.loads(lines[-2])["requests"]["total"] > 0  # /metrics
    env_before = dict(os.environ)
    os.environ.update(HICAE_URL=served.url, HICAE_API_KEY=API_KEY, MEMORY_ID=memory_id)
    try:
        exec(compile(python, str(README), "exec"), {})
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert capsys.readouterr().out.strip() == want["outputs"][0]["text"].strip()
