"""Prompt templates (LongBench's dataset2prompt.json format): exact prompts for full text and memory, validation.

The templates here are written for the tests (LongBench's own text is not part of hicae).
"""

import json

import pytest

from hicae import ConfigError, DataError
from hicae.evaluation import EvalSettings, QARecord, run_qa
from hicae.evaluation import qa as qa_mod
from hicae.evaluation.decoding import decode
from hicae.evaluation.prompts import assign_templates, load_templates, parse

from .conftest import TEXTS, write_jsonl

# template -> (full text for context "C." and question "Q?", memory prompt for "Q?")
CASES = {
    # instruction, labelled context, question after: the framing blank lines go, "Story:" stays
    "Read the story.\n\nStory: {context}\n\nQuestion: {input}\nAnswer:":
        ("Read the story.\n\nStory: C.\n\nQuestion: Q?\nAnswer:", "Read the story.\n\nStory:\n\nQuestion: Q?\nAnswer:"),
    # the task is stated only before the context (few-shot examples): kept
    "Classify the question. Examples:\n\n{context}\n{input}":
        ("Classify the question. Examples:\n\nC.\nQ?", "Classify the question. Examples:\n\nQ?"),
    # no {input}; the trailing space after the cue is the template's own and stays
    "Count the paragraphs.\n\n{context}\n\nThe count is: ":
        ("Count the paragraphs.\n\nC.\n\nThe count is: ", "Count the paragraphs.\n\nThe count is: "),
    # the context first or last: one part only
    "{context}\n\nQ: {input}": ("C.\n\nQ: Q?", "Q: Q?"),
    "Summarise for: {input}\n\n{context}": ("Summarise for: Q?\n\nC.", "Summarise for: Q?"),
    # the question twice; literal braces
    "Ask {input} about {{json}}:\n{context}\nAgain: {input}":
        ("Ask Q? about {json}:\nC.\nAgain: Q?", "Ask Q? about {json}:\n\nAgain: Q?"),
}


@pytest.mark.parametrize("template", list(CASES))
def test_fulltext_renders_the_template_and_memory_takes_the_context_out(template):
    full, memory = CASES[template]
    t = parse(template, "test")
    assert t.fulltext("C.", "Q?") == full == template.format(context="C.", input="Q?")
    assert t.memory("Q?") == memory


def test_memory_keeps_the_question_whitespace():
    # code completion: the question continues the context directly; its indentation is data, not framing
    t = parse("Complete the code. \n{context}{input}Next line:\n", "test")
    assert t.memory("    x = 1\n") == "Complete the code.\n\n    x = 1\nNext line:\n"
    assert t.fulltext("def f():\n", "    x = 1\n") == "Complete the code. \ndef f():\n    x = 1\nNext line:\n"


@pytest.mark.parametrize("template, message", [
    ("Q: {question}\n{context}", r"src: unknown placeholder \{question\}"),
    ("{}\n{context}", r"src: unknown placeholder \{\}"),
    ("{0} {context}", r"src: unknown placeholder \{0\}"),
    ("{context.upper}", r"src: unknown placeholder \{context.upper\}"),
    ("{context}\n{input!r}", r"src: placeholder \{input\} takes no conversion"),
    ("{context:>9}", r"src: placeholder \{context\} takes no conversion or format spec"),
    ("Question: {input}", r"src: a template must hold \{context\} exactly once"),
    ("{context}\n{context}\n{input}", r"src: a template must hold \{context\} exactly once"),
    ("{context} } {input}", r"src: not a valid template .*literal braces"),
    (3, r"src: a template must be a string, got int"),
])
def test_bad_templates_are_one_line_errors(template, message):
    with pytest.raises(DataError, match=message):
        parse(template, "src")


def test_load_templates_file(tmp_path):
    good = {"hotpotqa": "Passages:\n{context}\n\nQuestion: {input}\nAnswer:", "gov_report_e": "Report:\n{context}\n\nSummary:"}
    f = tmp_path / "d2p.json"
    f.write_text("\ufeff" + json.dumps(good), encoding="utf-8")  # a byte-order mark is read past
    ts = load_templates(f)
    assert sorted(ts) == ["gov_report", "hotpotqa"]  # LongBench-E names map to their dataset
    assert ts["hotpotqa"].memory("Who?") == "Passages:\n\nQuestion: Who?\nAnswer:"
    assert ts["gov_report"].source == f"{f}: dataset 'gov_report_e'" and not ts["gov_report"].has_input

    def refused(text, match, error=DataError):
        f.write_text(text, encoding="utf-8")
        with pytest.raises(error, match=match):
            load_templates(f)

    refused('{"trec": "{context}\\n{question}"}', r"d2p.json: dataset 'trec': unknown placeholder \{question\}")
    refused('{"trec": "Examples:\\n{input}"}', r"d2p.json: dataset 'trec': a template must hold \{context\}")
    refused('{"trec": ["{context}"]}', r"d2p.json: dataset 'trec': a template must be a string, got list")
    refused('{"hotpot": "{context}"}', r"d2p.json: unknown LongBench dataset 'hotpot'")
    refused('{"trec": "{context}", "trec": "{context} {input}"}', r"d2p.json: dataset 'trec' appears twice")
    refused('{"trec": "{context}", "trec_e": "{context}"}', r"d2p.json: datasets 'trec_e' and 'trec' name the same")
    refused('{"trec": "{context}",\n}', r"d2p.json:2: not JSON")
    refused('["{context}"]', r"d2p.json: expected a JSON object dataset -> template")
    with pytest.raises(ConfigError, match=r"--prompt_templates .*nope.json: no such file"):
        load_templates(tmp_path / "nope.json")


def _records():
    return [QARecord("lb.jsonl:1", "C1", "Q1", ["a"], "hotpotqa"), QARecord("lb.jsonl:2", "C2", "", ["a"], "gov_report")]


def test_assign_templates_per_dataset_or_one_for_all():
    per = {"hotpotqa": parse("{context}\nQ: {input}", "f: dataset 'hotpotqa'"),
           "gov_report": parse("{context}\nSummary:", "f: dataset 'gov_report'")}
    recs = _records()
    assign_templates(recs, per, "--prompt_templates f")
    assert [r.template.source for r in recs] == ["f: dataset 'hotpotqa'", "f: dataset 'gov_report'"]
    one = parse("Text: {context}\nQ: {input}", "--prompt_template")
    recs = _records() + [QARecord("pwc.jsonl:1", "C3", "Q3", ["a"])]  # one template serves records without a dataset
    assign_templates(recs, one, "--prompt_template")
    assert all(r.template is one for r in recs)

    with pytest.raises(DataError, match=r"lb.jsonl:2: --prompt_templates f has no template for dataset 'gov_report'"):
        assign_templates(_records(), {"hotpotqa": per["hotpotqa"]}, "--prompt_templates f")
    with pytest.raises(DataError, match=r"pwc.jsonl:1: the record names no LongBench dataset .*--prompt_templates f"):
        assign_templates([QARecord("pwc.jsonl:1", "C", "Q", ["a"])], per, "--prompt_templates f")
    # a template without {input} would drop a real question: refused (the empty one of gov_report is fine)
    with pytest.raises(DataError, match=r"lb.jsonl:1: f: dataset 'gov_report' has no \{input\}: the record's question"):
        assign_templates(_records(), {"hotpotqa": per["gov_report"], "gov_report": per["gov_report"]}, "f")


def test_run_qa_sends_the_template_prompts(icae_model, monkeypatch):
    recs = [QARecord("lb:1", TEXTS[0], "Which animal?", ["fox"], "hotpotqa"),
            QARecord("lb:2", TEXTS[1], "", ["Python"], "gov_report")]
    assign_templates(recs, {"hotpotqa": parse("Passages:\n{context}\n\nQuestion: {input}\nAnswer:", "f: dataset 'hotpotqa'"),
                            "gov_report": parse("Report:\n{context}\n\nSummary:", "f: dataset 'gov_report'")}, "f")
    tok, asked_memory, asked_full = icae_model.tokenizer, [], []
    answer = tok("fox", add_special_tokens=False)["input_ids"]

    def fake_generate(mem, prompts, max_new_tokens):
        asked_memory.extend(prompts)
        return [answer for _ in prompts]

    real_chat = qa_mod.chat_prompt_ids
    monkeypatch.setattr(icae_model, "generate_ids", fake_generate)
    monkeypatch.setattr(qa_mod, "chat_prompt_ids", lambda model, content: asked_full.append(content) or real_chat(model, content))
    monkeypatch.setattr(qa_mod, "generate_plain", lambda model, prompts, n: [answer for _ in prompts])
    res = run_qa(icae_model, recs, EvalSettings(batch_size=2, progress=False))
    assert asked_memory == ["Passages:\n\nQuestion: Which animal?\nAnswer:", "Report:\n\nSummary:"]
    assert asked_full == [f"Passages:\n{TEXTS[0]}\n\nQuestion: Which animal?\nAnswer:", f"Report:\n{TEXTS[1]}\n\nSummary:"]
    assert [r["prompt_memory"] for r in res.examples] == asked_memory
    assert res.summary["prompt_templates"] == ["f: dataset 'gov_report'", "f: dataset 'hotpotqa'"]
    assert any(n.startswith("Prompts from the templates f: dataset 'gov_report'") for n in res.notes)


def test_memory_answer_equals_generate_with_the_memory_prompt(icae_model):
    # end to end on the tiny model: the answer from memory is model.generate on the compressed text
    # and the template-without-context prompt, token for token
    rec = QARecord("lb:1", TEXTS[2], "Who trained them?", ["Alibaba"], "hotpotqa",
                   template=parse("Read this.\n\n{context}\n\nQuestion: {input}\nAnswer:", "t"))
    got = run_qa(icae_model, [rec], EvalSettings(max_new_tokens=6, progress=False), fulltext=False).examples[0]
    mem = icae_model.compress(TEXTS[2])
    want = icae_model.generate_ids(mem, "Read this.\n\nQuestion: Who trained them?\nAnswer:", 6)
    assert got["answer_memory"] == decode(icae_model, want)[0]
    assert got["answer_memory"] != icae_model.generate(mem, "Who trained them?", 6)[0]  # the prompt matters


def test_cli_prompt_templates(icae_ckpt, tmp_path, run_cli):
    data = write_jsonl(tmp_path / "lb.jsonl", [{"context": TEXTS[0], "input": "Which animal?", "answers": ["fox"],
                                                 "dataset": "hotpotqa"},
                                                {"context": TEXTS[1], "input": "", "answers": ["Python"], "dataset": "lcc"}])
    templates = tmp_path / "d2p.json"
    templates.write_text(json.dumps({"hotpotqa": "Passages:\n{context}\n\nQuestion: {input}\nAnswer:"}))
    out = tmp_path / "out"
    base = ["eval", "--task", "qa", "--checkpoint", icae_ckpt, "--data", data, "--output_dir", out, "--skip_fulltext",
            "--max_new_tokens", "2", "--no_progress", "--device", "cpu"]
    # lcc has no template: refused before the model loads, naming the record and the file
    code, _, err = run_cli(*base, "--prompt_templates", templates)
    assert code == 1 and f"lb.jsonl:2: --prompt_templates {templates} has no template for dataset 'lcc'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = run_cli(*base, "--prompt_templates", templates, "--prompt_template", "{context}")
    assert code == 1 and "not both" in err
    code, _, err = run_cli(*base, "--prompt_template", "Text: {context}\nQ: {input}", "--limit", "1")
    assert code == 0, err
    row = json.loads((out / "qa_examples.jsonl").read_text().splitlines()[0])
    assert row["prompt_memory"] == "Text:\n\nQ: Which animal?" and row["prompt_template"] == "--prompt_template"
    assert "Prompts from the templates --prompt_template" in (out / "qa.md").read_text()
