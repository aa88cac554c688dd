"""``qa``: memory vs full-text answers, both data formats, the judging file, batching."""

import json

import pytest
import torch

from hicae import ConfigError
from hicae.decoding.generation import generate_plain
from hicae.evaluation import EvalSettings, QARecord, run_qa
from hicae.evaluation import qa as qa_mod
from hicae.evaluation.decoding import chat_prompt_ids

from .conftest import TEXTS, write_jsonl

QUIET = EvalSettings(batch_size=3, max_new_tokens=4, progress=False)


def pwc_records():
    # two questions about the first text: its context is compressed once per batch
    recs = [{"input": TEXTS[0], "prompt": "Which animal jumps?", "answer": "the fox"},
            {"input": TEXTS[0], "prompt": "Where?", "answer": "near the river bank"}]
    recs += [{"input": t, "prompt": f"What is text {i} about?", "answer": t.split()[1]} for i, t in enumerate(TEXTS[1:4])]
    return recs


def test_cli_pwc_with_judge_file(icae_ckpt, tmp_path, run_cli):
    data = write_jsonl(tmp_path / "pwc.jsonl", pwc_records())
    out, judge = tmp_path / "out", tmp_path / "judge" / "pairs.jsonl"
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", data, "--output_dir", out,
                           "--device", "cpu", "--max_new_tokens", "4", "--batch_size", "4", "--judge_file", judge, "--no_progress")
    assert code == 0, err
    res = json.loads((out / "qa.json").read_text())
    assert res["summary"]["n"] == 5 and set(res["summary"]["memory"]) == {"rouge_l", "f1", "exact_match"}
    assert set(res["summary"]["fulltext"]) == {"rouge_l", "f1", "exact_match"}
    lines = [json.loads(x) for x in judge.read_text().splitlines()]
    assert len(lines) == 5 and lines[1]["question"] == "Where?" and lines[1]["reference"] == "near the river bank"
    assert {"answer_memory", "answer_fulltext", "references", "where"} <= set(lines[0])
    assert (out / "qa_scores.png").exists() and "| memory slots |" in (out / "qa.md").read_text()
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", data, "--output_dir", out,
                           "--judge_file", judge, "--skip_fulltext")
    assert code == 1 and "--skip_fulltext" in err


def test_longbench_records_on_hierarchical_memory(hier_model):
    recs = [QARecord("lb:1", " ".join(TEXTS), "Which animal jumps?", ["fox", "the fox"]),
            QARecord("lb:2", TEXTS[1], "Which language?", ["Python"])]
    res = run_qa(hier_model, recs, EvalSettings(max_slots=6, max_new_tokens=3, progress=False), fulltext=False)
    assert res.summary["n"] == 2 and "fulltext" not in res.summary
    assert all(r["slots"] <= 6 for r in res.examples) and res.examples[0]["answers"] == ["fox", "the fox"]


def test_perfect_answers_score_1(icae_model, monkeypatch):
    recs = [QARecord(f"f:{i}", r["input"], r["prompt"], [r["answer"]]) for i, r in enumerate(pwc_records())]
    answers = {r.question: r.answers[0] for r in recs}
    tok = icae_model.tokenizer
    monkeypatch.setattr(icae_model, "generate_ids", lambda mem, prompts, max_new_tokens: [
        tok(answers[p], add_special_tokens=False)["input_ids"] for p in prompts])
    monkeypatch.setattr(qa_mod, "generate_plain", lambda model, prompts, n: [
        tok("It says: " + answers[[k for k in answers if k in tok.decode(p)][0]], add_special_tokens=False)["input_ids"]
        for p in prompts])
    res = run_qa(icae_model, recs, QUIET)
    assert res.summary["memory"] == {"rouge_l": 1.0, "f1": 1.0, "exact_match": 1.0}
    assert res.summary["fulltext"]["exact_match"] == 0.0 and 0 < res.summary["fulltext"]["f1"] < 1


def test_fulltext_baseline_batched_equals_one_unpadded_prompt(icae_model):
    """Left-padded batch generation of the base model equals transformers' generate on each prompt alone."""
    prompts = [chat_prompt_ids(icae_model, qa_mod.fulltext_content(t, "What is it about?")) for t in TEXTS[:3]]
    assert len({len(p) for p in prompts}) == 3  # different lengths: padding is exercised
    batched = generate_plain(icae_model, prompts, 6)
    stops = set(icae_model.tokens.stop_ids)
    for p, got in zip(prompts, batched):
        with torch.no_grad():
            out = icae_model.decoder.generate(input_ids=torch.tensor([p]), max_new_tokens=6, do_sample=False,
                                              eos_token_id=icae_model.tokens.stop_ids, pad_token_id=icae_model.tokens.pad_id,
                                              temperature=None, top_p=None, top_k=None)[0, len(p):].tolist()
        cut = next((i for i, t in enumerate(out) if t in stops), len(out))
        assert got == out[:cut]
    assert len({t for r in batched for t in r}) >= 6  # a varied model: the comparison proves something


def test_chat_prompt_is_the_tokenizer_template(icae_model):
    ids = chat_prompt_ids(icae_model, "Hello there")
    text = icae_model.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nHello there<|im_end|>") and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    with pytest.raises(ConfigError, match="judge_file"):
        run_qa(icae_model, [], QUIET, fulltext=False, judge_file="x.jsonl")


def test_truncated_contexts_reach_both_answers_alike(icae_ckpt, monkeypatch):
    """--overlong truncate: the memory holds the text's head, so the full-text baseline reads that same head
    (not the whole text), and the report says how many contexts were cut."""
    from hicae.io.checkpoint import load_icae

    model = load_icae(icae_ckpt, config_overrides={"model_max_length": 8, "overlong": "truncate"}).eval()
    seen = []
    real = qa_mod.generate_plain
    monkeypatch.setattr(qa_mod, "generate_plain", lambda m, prompts, n: seen.extend(prompts) or real(m, prompts, n))
    recs = [QARecord("t:1", TEXTS[1], "Which language?", ["Python"]), QARecord("t:2", "Short one.", "What?", ["one"])]
    res = run_qa(model, recs, QUIET)
    head = model.tokenizer.decode(model.tokens.text_ids([TEXTS[1]])[0][:8])
    assert seen[0] == chat_prompt_ids(model, qa_mod.fulltext_content(head, "Which language?"))
    assert seen[1] == chat_prompt_ids(model, qa_mod.fulltext_content("Short one.", "What?"))
    assert [r["context_truncated"] for r in res.examples] == [True, False]
    assert res.examples[0]["context_tokens"] == 8
    assert any("1 context(s) over the length limit (8 tokens) were cut to their head" in n for n in res.notes)


def test_no_context_baseline_is_the_question_alone_and_leaves_the_rest(icae_model):
    """``no_context``: each row's answer is the base model's greedy answer to the chat turn holding only the
    prompt that follows the memory (the question, or a template without its context; one prompt at a time,
    unbatched), scored like the others; memory and full-text answers stay as without it."""
    from hicae.evaluation import metrics
    from hicae.evaluation.prompts import parse as parse_template

    recs = [QARecord(f"f:{i}", r["input"], r["prompt"], [r["answer"]]) for i, r in enumerate(pwc_records())]
    recs[2].template = parse_template("Read this: {context}\nThen answer briefly: {input}", "--prompt_template")
    assert qa_mod.memory_prompt(recs[2]) != recs[2].question  # the template reaches the no-context prompt
    plain = run_qa(icae_model, recs, QUIET)
    res = run_qa(icae_model, recs, QUIET, no_context=True)
    assert set(res.summary) >= {"memory", "fulltext", "none"} and "none" not in plain.summary
    for a, b, r in zip(plain.examples, res.examples, recs):
        assert (a["answer_memory"], a["answer_fulltext"]) == (b["answer_memory"], b["answer_fulltext"])
        alone = generate_plain(icae_model, [chat_prompt_ids(icae_model, qa_mod.memory_prompt(r))], QUIET.max_new_tokens)
        assert b["answer_none"] == icae_model.tokenizer.decode(alone[0], skip_special_tokens=True)
        assert b["none_f1"] == metrics.qa_scores(b["answer_none"], r.answers)["f1"]
    assert len({b["answer_none"] for b in res.examples}) > 1  # the questions differ, so do the answers
    assert res.summary["none"]["f1"] == pytest.approx(sum(b["none_f1"] for b in res.examples) / len(recs))
    assert [row[0] for row in res.tables[0].rows] == ["memory slots", "full text (base model)", "no context (base model)"]


def test_no_context_flag_reaches_the_task(icae_ckpt, tmp_path, run_cli):
    data = write_jsonl(tmp_path / "pwc.jsonl", pwc_records()[:2])
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", data, "--output_dir", out,
                           "--device", "cpu", "--max_new_tokens", "3", "--skip_fulltext", "--no_context", "--no_progress")
    assert code == 0, err
    summary = json.loads((out / "qa.json").read_text())["summary"]
    assert {"memory", "none"} <= set(summary) and "fulltext" not in summary
