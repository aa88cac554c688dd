"""``hicae demo``: compression on the real Qwen2.5-0.5B-Instruct, offline on a CPU, in about a minute.

Default (real weights): loads the real Qwen2.5-0.5B-Instruct that ``scripts/setup.sh`` fetched
(``hicae.demo.real_model``; ``--model_name_or_path`` for another copy of that model) and the ICAE adapter
this project trained on it (shipped in ``hicae/demo/checkpoint``; how it was trained is recorded
in its ``TRAINING.md``), then compresses held-out passages (written for the demo, in no training
data) into memory slots, prints each beside its reconstruction with BLEU, answers a question from
memory and from the full text, and times both.

``--tiny``: the whole pipeline from scratch in a few CPU minutes, as a smoke run:
1. builds a tiny random Qwen3-architecture model with the real Qwen3 tokenizer, warms it up as a
   causal LM on the training passages (a real Qwen knows language; a random decoder does not),
   and saves it, so the rest runs the same code as for a real checkpoint (or loads
   ``--model_name_or_path``);
2. writes a small corpus (docstrings of Python's standard library, held out by module) as JSONL;
3. runs ``hicae pretrain`` on it (AE + LM objectives);
4. compresses a training passage and a held-out passage, reconstructs them, answers a prompt and
   continues them, and prints the loss curve's start and end (PNG in the output folder).
A tiny random decoder cannot generalise to unseen text in a few CPU minutes; reconstruction of
seen passages shows that the autoencoder learns.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..demo.corpus import demo_corpus, long_document
from ..devices import pick_device
from ..io.fileio import write_text_atomic
from ..setting import setting as _f
from ..tokens import tokenize
from .flags import Flags
from .train import pretrain


def _write_jsonl(path: Path, texts: list[str]) -> None:
    write_text_atomic(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))


def warm_up_base(model, tokenizer, texts: list[str], steps: int, seed: int, device: str) -> tuple[float, float]:
    """Train ``model`` as a causal LM on ``texts`` for ``steps`` steps with transformers' Trainer; returns the first and last loss."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data = [{"input_ids": ids + [tokenizer.eos_token_id]} for ids in tokenize(tokenizer, texts)]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hicae-base-"), max_steps=steps, learning_rate=1e-2,
                             per_device_train_batch_size=8, logging_steps=max(1, steps // 8), report_to=[],
                             save_strategy="no", seed=seed, disable_tqdm=True, use_cpu=device == "cpu")
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    return losses[0], losses[-1]



@dataclass
class DemoSettings:
    tiny: bool = _f(False, "train a tiny random model from scratch instead (smoke run)")
    model_name_or_path: str | None = _f(None, "real demo: the base (default: the fetched Qwen2.5-0.5B-Instruct); "
                                              "--tiny: a base instead of the tiny model")
    checkpoint: str | None = _f(None, "real demo: an ICAE checkpoint instead of the shipped one")
    dtype: str = _f("bf16", "real demo: bf16 (fast on CPUs with bf16 support) or fp32")
    question: str | None = _f(None, "real demo: the question asked about the first passage")
    long_document: str | None = _f(None, "real demo: the long document compressed once and asked 3 questions "
                                         "(default: the GPL-3 text of Debian's base-files, "
                                         "/usr/share/common-licenses/GPL-3)")
    no_long_document: bool = _f(False, "real demo: skip the long-document part")
    allow_other_weights: bool = _f(False, "real demo: run --checkpoint on a base model whose weights differ from "
                                          "those it was trained on")
    output_dir: str = _f("outputs/demo", "folder of the demo's data, checkpoints and memory files")
    max_steps: int = _f(200, "--tiny: training steps of the ICAE")
    train_passages: int = _f(8, "passages to train on: few enough that a tiny model learns them in CPU minutes")
    base_steps: int = _f(100, "causal-LM warm-up steps of the tiny random base before it is frozen (0: none)")
    batch_size: int = _f(8, "--tiny: training batch size")
    learning_rate: float = _f(5e-3, "--tiny: learning rate")
    mem_size: int = _f(8, "--tiny: k, memory slots per segment", aliases=["--fixed_mem_size"])
    compression_rate: int = _f(4, "--tiny: r, mean tokens per slot", aliases=["--mean_compression_rate"])
    lora_r: int = _f(16, "--tiny: LoRA rank of the encoder adapter")
    lm_ratio: float = _f(0.2, "--tiny: share of LM (continuation) examples")
    seed: int = _f(0, "--tiny: seed of the tiny model and of training")
    device: str = _f("auto", "cpu, cuda, cuda:1 ... (default: cuda if available)")
    hierarchical: bool = _f(False, "then train a HierarchicalICAE from the ICAE and compress a long text into a "
                                   "bounded memory")
    max_slots: int = _f(48, "--hierarchical: memory budget of the long text, in slots")
    hier_steps: int = _f(60, "--hierarchical: training steps of the hierarchy")


def build_parser() -> Flags:
    return Flags("demo", (DemoSettings,), __doc__)


def demo(argv: list[str]) -> int:
    (args,) = build_parser().parse(argv)
    if not args.tiny:
        from .demo_real import real_demo

        return real_demo(args)
    out = Path(args.output_dir)
    device = pick_device(args.device)
    t0 = time.time()

    if args.model_name_or_path:
        base_path = args.model_name_or_path
    else:
        from ..demo.assets import load_qwen3_tokenizer
        from ..demo.tiny import tiny_model

        tok = load_qwen3_tokenizer()
        base = tiny_model("qwen3", seed=args.seed, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        base.config._name_or_path = "tiny-qwen3-demo"
        if args.base_steps:
            # A random decoder is no language model: warm the tiny base up on the training passages
            # first (plain causal-LM training), as a real Qwen would know language. It is frozen after.
            t = time.time()
            first, last = warm_up_base(base, tok, demo_corpus()[0][: args.train_passages], args.base_steps, args.seed, device)
            print(f"[demo] base LM warm-up: {args.base_steps} steps, loss {first:.3f} -> {last:.3f} ({time.time() - t:.0f} s)")
        base_path = str(out / "base")
        base.save_pretrained(base_path)
        tok.save_pretrained(base_path)
        print(f"[demo] tiny Qwen3 ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params, "
              f"vocab {base.config.vocab_size}) + real Qwen3 tokenizer -> {base_path}")

    train, heldout = demo_corpus()
    train = train[: args.train_passages]
    _write_jsonl(out / "data" / "train.jsonl", train)
    _write_jsonl(out / "data" / "eval.jsonl", heldout)
    print(f"[demo] corpus: {len(train)} training / {len(heldout)} held-out passages (Python stdlib docstrings)")

    ckpt = out / "icae"
    pretrain([
        "--model_name_or_path", base_path, "--output_dir", str(ckpt),
        "--train_file", str(out / "data" / "train.jsonl"), "--validation_file", str(out / "data" / "eval.jsonl"),
        "--mem_size", str(args.mem_size), "--compression_rate", str(args.compression_rate),
        "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r), "--lora_dropout", "0.0",
        # every projection: a tiny encoder needs the adapter's full reach to learn in CPU minutes
        "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        "--lm_ratio", str(args.lm_ratio), "--min_tokens_for_lm", "16", "--leave_tokens_for_lm", "2",
        "--model_max_length", "256", "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", "16",
        "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "cosine", "--warmup_steps", "10",
        "--logging_steps", "10", "--eval_strategy", "steps", "--eval_steps", str(max(1, args.max_steps // 3)),
        "--save_strategy", "no", "--seed", str(args.seed), "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", str(device == "cpu").lower(), "--overwrite_output_dir", "true",  # a re-run of the demo starts over
    ])

    from ..io.checkpoint import load_icae

    model = load_icae(ckpt, device=device)
    seen, unseen = train[1], heldout[0]
    mem = model.compress([seen, unseen])
    recon = model.reconstruct(mem)
    answer = model.generate(mem[0], "What does this text describe?", max_new_tokens=24)[0]
    cont = model.continue_text(mem[1], max_new_tokens=16)[0]
    mem.save(out / "demo.mem.safetensors")
    hist = json.loads((out / "icae" / "loss_history.json").read_text())
    loss = hist.get("loss", [])
    print("\n[demo] results")
    if loss:
        print(f"  training loss: {loss[0][1]:.3f} at step {loss[0][0]} -> {loss[-1][1]:.3f} at step {loss[-1][0]}")
    if hist.get("eval_loss"):
        ev = hist["eval_loss"]
        print(f"  held-out loss: {ev[0][1]:.3f} at step {ev[0][0]} -> {ev[-1][1]:.3f} at step {ev[-1][0]}")
    for name, text, rec, n in zip(("seen", "held-out"), (seen, unseen), recon, mem.num_slots):
        print(f"  [{name}] {mem.num_tokens[0 if name == 'seen' else 1]} tokens -> {n} slots")
        print(f"    original:      {text!r}")
        print(f"    reconstructed: {rec!r}")
    print(f"  answer (seen passage, 'What does this text describe?'): {answer!r}")
    print(f"  continuation (held-out passage): {cont!r}")
    png = out / "icae" / "loss_curve.png"
    print(f"  loss curve: {png if png.exists() else out / 'icae' / 'loss_history.json'}")
    print(f"  memory file: {out / 'demo.mem.safetensors'}; checkpoint: {ckpt}")
    if args.hierarchical:
        hierarchical_demo(args, out, ckpt, train, heldout, device)
    print(f"[demo] done in {time.time() - t0:.0f} s")
    return 0


def _blocks_summary(mem) -> str:
    levels: dict[int, int] = {}
    for lvl, _, _ in mem.blocks[0]:
        levels[lvl] = levels.get(lvl, 0) + 1
    per = ", ".join(f"{n} at level {lvl}" for lvl, n in sorted(levels.items(), reverse=True))
    return f"{mem.num_tokens[0]} tokens -> {mem.num_slots[0]} slots in {len(mem.blocks[0])} blocks ({per})"


def hierarchical_demo(args, out: Path, ckpt: Path, train: list[str], heldout: list[str], device: str) -> None:
    """Upgrade the ICAE to a hierarchy, train it briefly on longer documents, then compress and
    stream a long text into a bounded memory and decode from it."""
    from ..io.checkpoint import load_icae

    docs = [" ".join(train[i:] + train[:i]) for i in range(len(train))]  # long documents from the passages
    _write_jsonl(out / "data" / "long.jsonl", docs)
    hckpt = out / "hierarchical"
    pretrain([
        "--restore_from", str(ckpt), "--hierarchical", "--levels", "4", "--group_size", "2",
        "--max_slots", str(args.max_slots), "--output_dir", str(hckpt), "--train_file", str(out / "data" / "long.jsonl"),
        "--model_max_length", "128", "--lm_ratio", "0.3", "--max_steps", str(args.hier_steps),
        "--per_device_train_batch_size", "4", "--learning_rate", str(args.learning_rate / 2), "--logging_steps", "10",
        "--save_strategy", "no", "--seed", str(args.seed), "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", str(device == "cpu").lower(), "--overwrite_output_dir", "true",  # a re-run of the demo starts over
    ])
    model = load_icae(hckpt, device=device)
    long_text = long_document()
    mem = model.compress(long_text, max_slots=args.max_slots)
    print("\n[demo] hierarchical memory (budget %d slots)" % args.max_slots)
    print(f"  whole text: {_blocks_summary(mem)}")
    # streaming: the same text in four parts, appended; only new text is compressed each time
    # cut after paragraph breaks, where the parts tokenize exactly as the whole does
    cuts = [0] + [long_text.index("\n\n", len(long_text) * i // 4) + 2 for i in (1, 2, 3)] + [len(long_text)]
    parts = [long_text[a:b] for a, b in zip(cuts, cuts[1:])]
    stream = model.compress(parts[0], max_slots=args.max_slots)
    for i, part in enumerate(parts[1:], 2):
        stream = model.append(stream, part, max_slots=args.max_slots)
        print(f"  streamed {i}/4: {_blocks_summary(stream)}")
    same = [b for b in stream.blocks[0]] == [b for b in mem.blocks[0]]
    diff = max(float((a - b).abs().max()) for a, b in zip(stream.slots, mem.slots)) if same else float("nan")
    print(f"  streamed memory equals the one-shot memory: blocks {'identical' if same else 'differ'}, "
          f"max |slot difference| {diff:.2e}")
    stream.save(out / "demo.hier.mem.safetensors")
    print(f"  continuation: {model.continue_text(stream, max_new_tokens=24)[0]!r}")
    print(f"  answer ('What is this text about?'): {model.generate(stream, 'What is this text about?', max_new_tokens=24)[0]!r}")
    print(f"  memory file: {out / 'demo.hier.mem.safetensors'}; checkpoint: {hckpt}")
