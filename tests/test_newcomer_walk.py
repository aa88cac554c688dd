"""A newcomer's walk (README, "Your own text"): after scripts/setup.sh, the shipped checkpoint compresses a
multi-page text file, answers two questions, reconstructs, and serves it to the OpenAI client; each command with
no flags beyond the obvious ones (no --model_name_or_path, no --model_max_length), offline.

Marked ``real`` (the real Qwen2.5-0.5B from setup.sh); about a minute on a 2-core CPU. What the answers say is not
checked: the shipped adapter was trained for 450 CPU steps (docs/results.md); that every command runs is.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from hicae import Memory
from hicae.demo import DEMO_CHECKPOINT
from hicae.cli.main import main
from serve.conftest import Server  # `hicae serve` in a subprocess on a loopback port

pytestmark = pytest.mark.real

QUESTIONS = ["Who keeps the lighthouse?", "How often does the light flash?"]


def report(pages: int = 3) -> str:
    """A made-up report of a few short pages (about 250 words each), generated here: nothing is downloaded."""
    facts = [
        "The lighthouse on Gull Point was built in 1871 from granite quarried on the island.",
        "Its keeper, Ada Finch, climbs the spiral stairs every evening at dusk to wind the clockwork.",
        "The great lens flashes white once every ten seconds and can be seen twenty miles out to sea.",
        "Supply boats come on the first Monday of each month, weather permitting, with oil and letters.",
        "In winter storms the spray reaches the gallery, and the keeper logs the wind every four hours.",
    ]
    out = []
    for page in range(pages):
        paras = []
        for i, fact in enumerate(facts):
            paras.append(f"Section {page + 1}.{i + 1}. {fact} The log of that season records it in plain words: "
                         f"visitors, repairs, the price of oil, and the ships that passed the cape by night.")
        out.append("\n\n".join(paras))
    return "\n\n\f".join(out)  # pages separated by form feeds


@pytest.fixture(scope="module")
def real_model():
    from hicae.demo.real_model import qwen25_path

    try:
        return qwen25_path(fetch=False)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"real Qwen2.5 not fetched: {e}")


def test_newcomer_walk(real_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine with no model hub
    doc = tmp_path / "report.txt"
    doc.write_text(report())
    mem_file = tmp_path / "report.mem.safetensors"
    ck = str(DEMO_CHECKPOINT)

    assert main(["compress", "--checkpoint", ck, "--input", str(doc), "--output", str(mem_file)]) == 0, capsys.readouterr().err
    mem = Memory.load(mem_file)
    assert mem.num_tokens[0] > 600 and mem.num_slots[0] * 4 >= mem.num_tokens[0]  # far past the 64 tokens trained on
    capsys.readouterr()

    argv = ["generate", "--checkpoint", ck, "--memory", str(mem_file), "--max_new_tokens", "16"]
    assert main([*argv, "--prompt", QUESTIONS[0], "--prompt", QUESTIONS[1]]) == 0
    out = capsys.readouterr().out
    assert all(q in out for q in QUESTIONS)
    assert main([*argv, "--reconstruct"]) == 0
    assert capsys.readouterr().out.strip()

    server = Server(DEMO_CHECKPOINT, tmp_path / "store", env={"HF_HUB_OFFLINE": "1"}, start_timeout=180)
    try:
        r = httpx.post(server.url + "/v1/memories", json={"text": doc.read_text()}, timeout=300)
        assert r.status_code == 201, r.text
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=300)
        answer = client.chat.completions.create(model="hicae", messages=[{"role": "user", "content": QUESTIONS[1]}],
                                                max_tokens=8, extra_body={"memory_id": r.json()["id"]})
        # an answer in OpenAI's shape (its words are not checked: the shipped adapter never learned [FT] prompts)
        assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason in ("stop", "length")
        assert answer.usage.prompt_tokens > 0
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-2000:]
