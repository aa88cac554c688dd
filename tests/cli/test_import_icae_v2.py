"""ICAE v2 -> hicae: a state dict in the reference's key layout imports into the same encoder and embeddings.

The reference module is rebuilt here as ICAE v2 builds it (getao/icae code/icae_v2,
modeling_icae_multi_span.py): ``self.icae = get_peft_model(base, LoraConfig(r, lora_alpha=32,
task_type="CAUSAL_LM"))`` on a base whose embeddings were resized, ``self.memory_token_embed =
nn.Embedding(k + 3, D)``, and (training mode) ``self.decoder``; its ``state_dict()`` is what the
reference's Trainer saves. Its multi-span compression is written out below as the reference does it.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from hicae import CheckpointError, ICAE
from hicae.io.checkpoint import CONFIG_FILE
from hicae.io.migration import import_icae_v2, read_icae_v2
from hicae.demo.tiny import tiny_model
from hicae.tokens import tokenize

K, R, RANK = 4, 2, 8
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.", "Hi there"]


class ReferenceICAE(torch.nn.Module):
    """The parts of ICAE v2's module that shape its state dict and its compression."""

    def __init__(self, base, decoder):
        super().__init__()
        V = base.config.vocab_size
        self.vocab_size = V + 1  # the reference's [PAD]
        base.resize_token_embeddings(self.vocab_size + K + 3)
        self.icae = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=32, lora_dropout=0.0, bias="none",
                                                    task_type="CAUSAL_LM"))
        self.decoder = decoder
        self.memory_token_embed = torch.nn.Embedding(K + 3, base.config.hidden_size)

    def compress(self, ids: list[int]) -> torch.Tensor:
        """``_compress``: segments of ceil(L/n) tokens, each + k memory ids, final hidden states at the memory ids."""
        embed = self.icae.get_base_model().model.embed_tokens
        L = len(ids)
        n = math.ceil(L / (K * R))
        seg = math.ceil(L / n)
        out = []
        for i in range(n):
            x = torch.tensor([ids[i * seg : min((i + 1) * seg, L)] + list(range(self.vocab_size, self.vocab_size + K))])
            flag = x >= self.vocab_size
            e = embed(x)
            e[flag] = self.memory_token_embed(x[flag] - self.vocab_size).to(e)
            out.append(self.icae(inputs_embeds=e, output_hidden_states=True).hidden_states[-1][flag])
        return torch.cat(out)  # [n * k, D]


@pytest.fixture(scope="module")
def reference(base_dir, tmp_path_factory):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ref = ReferenceICAE(base, copy.deepcopy(base)).eval()
    with torch.no_grad():  # "trained": LoRA B starts at zero (a no-op adapter), so perturb everything trainable
        for name, p in ref.named_parameters():
            if "lora_" in name or name.startswith("memory_token_embed"):
                p.copy_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("icae_v2") / "icae_v2.safetensors"
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(path))
    return ref, path, state


def test_reference_layout_is_what_the_importer_reads(reference):
    _, path, state = reference
    assert "icae.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in state
    assert "decoder.model.layers.0.self_attn.q_proj.weight" in state  # the training-time second copy
    w = read_icae_v2(path)
    assert (w.mem_size, w.lora_r, w.target_modules) == (K, RANK, ["q_proj", "v_proj"])
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in w.adapter
    assert torch.equal(w.mem_embeddings, state["memory_token_embed.weight"][:K])
    assert w.ignored == sum(1 for k in state if "lora_" not in k and k != "memory_token_embed.weight")


def test_imported_model_compresses_as_the_reference(reference, base_dir, tmp_path, run_cli):
    ref, path, state = reference
    code, out, err = run_cli("import-icae-v2", "--icae_v2", str(path), "--model_name_or_path", str(base_dir),
                             "--output_dir", str(tmp_path / "ckpt"), "--mean_compression_rate", str(R))
    assert code == 0, err
    assert json.loads(out)["lora_r"] == RANK
    meta = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())["icae"]
    assert (meta["mem_size"], meta["lora_alpha"], meta["add_special_token_for_lm"], meta["bos"]) == (K, 32, False, "auto")
    model = ICAE.from_pretrained(tmp_path / "ckpt")  # a normal, strictly loaded hicae checkpoint
    rows = state["memory_token_embed.weight"]
    # [AE] [LM] [FT] are rows k, k+1, k+2 (the reference's ae/lm/ft_token_id - vocab_size)
    assert torch.equal(model.task_embeddings.detach(), rows[K:])
    mem = model.compress(TEXTS)
    with torch.no_grad():
        for text, slots in zip(TEXTS, mem.slots):
            want = ref.compress(tokenize(model.tokenizer, [text])[0])
            assert slots.shape == want.shape and want.shape[0] % K == 0
            torch.testing.assert_close(slots, want, rtol=1e-5, atol=1e-5)
    assert len(mem.slots[0]) == 2 * K  # the long text has two segments: the multi-span rule agrees


def test_bad_reference_files_are_one_line_errors(reference, base_dir, tmp_path, run_cli):
    _, _, state = reference
    code, _, err = run_cli("import-icae-v2", "--icae_v2", str(tmp_path / "icae.bin"), "--model_name_or_path",
                           str(base_dir), "--output_dir", str(tmp_path / "o"))
    assert code == 1 and "never unpickles" in err and "weights_only=True" in err and len(err.strip().splitlines()) == 1
    save_file({k: v for k, v in state.items() if k != "memory_token_embed.weight"}, str(tmp_path / "nomem.safetensors"))
    with pytest.raises(CheckpointError, match="not an ICAE v2 checkpoint"):
        read_icae_v2(tmp_path / "nomem.safetensors")
    dora = {**state, "icae.base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight":
            torch.ones(4)}
    save_file(dora, str(tmp_path / "dora.safetensors"))
    with pytest.raises(CheckpointError, match="no known ICAE v2 role.*lora_magnitude_vector"):
        read_icae_v2(tmp_path / "dora.safetensors")
    trained = tmp_path / "trained.safetensors"  # the tensors a released file holds, without base weights
    save_file({k: v for k, v in state.items() if "lora_" in k or k == "memory_token_embed.weight"}, str(trained))
    with pytest.raises(CheckpointError, match="hidden size is 32"):
        import_icae_v2(trained, tiny_model("qwen3", hidden_size=32), None)
