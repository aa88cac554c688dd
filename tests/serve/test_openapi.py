"""The OpenAPI document of ``hicae serve`` is true: schemathesis (all checks) against a tiny-checkpoint server on
a loopback port finds no undocumented status, no schema-valid request refused, no schema-violating one accepted,
no server error; and 405s list every method of the path in ``Allow``."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from .conftest import Server, save_tiny_checkpoint

KEY = "schema-key"
# Small limits: every schema-valid body fits --max_body_bytes (413 is for schema-violating requests only), and
# each decoding is a few tokens.
LIMITS = ["--max_new_tokens", "4", "--max_text_chars", "200", "--max_texts", "4", "--max_prompts", "4",
          "--max_prompt_chars", "200", "--max_body_bytes", "65536"]
# 413 answers a request over a limit the document states (maxLength, maxItems, maximum): a rejection
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("openapi")
    s = Server(save_tiny_checkpoint(d / "ck"), d / "store", *LIMITS, env={"HICAE_API_KEY": KEY})
    yield s
    s.stop()


def test_document_lists_each_route_statuses_and_constraints(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    gen = doc["paths"]["/v1/memories/{memory_id}/generate"]["post"]
    assert {"200", "400", "401", "404", "409", "413", "422", "429", "500", "504"} <= set(gen["responses"])
    assert gen["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert gen["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    assert set(doc["paths"]["/v1/memories"]["post"]["responses"]) >= {"200", "201", "413", "429"}
    assert "/v1/memories/{memory_id}/append" not in doc["paths"]  # not a hierarchical checkpoint: no such route
    texts = doc["components"]["schemas"]["CompressRequest"]["properties"]["texts"]["anyOf"][0]
    assert texts["maxItems"] == 4 and texts["items"]["maxLength"] == 200
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_405_allow_lists_every_method_of_the_path(server):
    r = httpx.patch(server.url + "/v1/memories/" + "0" * 32, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == 405
    assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET"}


def test_text_over_the_checkpoint_training_length_is_served(server):
    """The checkpoint was trained on texts of at most 64 tokens; the server reads up to the base's window."""
    r = httpx.post(server.url + "/v1/memories", json={"text": "0123456789" * 20}, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60)
    assert r.status_code == 201 and r.json()["tokens"][0] > 64, r.text


def test_schemathesis_finds_nothing(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", server.url + "/openapi.json",
           "--checks", "all", "--max-examples", "15", "--max-time", "30", "--workers", "1", "--seed", "1",
           "--generation-database", "none", "--no-color", "-H", f"Authorization: Bearer {KEY}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_PROXY": "127.0.0.1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Traceback" not in server.output()
