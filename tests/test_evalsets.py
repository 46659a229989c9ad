"""Benchmark adapters, prompt templates, and the gold-answer self-check."""
import json

import pytest

from entropy_rl import evalsets as B
from entropy_rl.evalsets import BENCHMARKS, BOXED_INSTRUCTION, build_prompt, load_benchmark, surface_forms
from entropy_rl.data import HUB_SOURCES
from entropy_rl.rewards.pool import MathVerifier

from conftest import ROOT, SHARED_DATA

FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
FULL_SIZES = {"gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva": 272,
              "olympiadbench": 674}
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "math_eval").is_dir(),
                                  reason=f"no local copy of the benchmarks at {SHARED_DATA} (set ENTROPY_RL_SHARED_DATA)")


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(workers=2, timeout=10.0) as v:
        yield v


def test_registry_covers_the_papers_benchmarks_and_their_hub_ids():
    assert list(BENCHMARKS) == list(FULL_SIZES)
    for b in BENCHMARKS.values():
        assert b.file in HUB_SOURCES and b.hub == HUB_SOURCES[b.file]
    with pytest.raises(KeyError, match="valid: gsm8k, math500"):
        B.get_benchmark("math5000")


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_fixture_records_are_normalized(name):
    recs = load_benchmark(name, FIXTURES)
    raw = [json.loads(line) for line in (FIXTURES / BENCHMARKS[name].file).read_text().splitlines()]
    assert len(recs) == len(raw) > 0
    assert len({r["id"] for r in recs}) == len(recs)
    for r, row in zip(recs, raw):
        assert set(r) == {"id", "problem", "answer", "source"} and r["source"] == name
        assert r["answer"] and BOXED_INSTRUCTION not in r["problem"]
        assert r["problem"] == (row.get("problem") or row["question"]).replace(BOXED_INSTRUCTION, "").rstrip()
        if name == "gsm8k":
            assert r["answer"].lstrip("-").isdigit() and r["answer"] == row["answer"].split("####")[1].strip().replace(",", "")
        else:
            assert r["answer"] == row["answer"].strip()
    assert load_benchmark(name, FIXTURES, limit=1) == recs[:1]


def test_gsm8k_answer():
    assert B.gsm8k_answer("so 2 + 2 = 4.\n#### 1,600") == "1600"
    with pytest.raises(ValueError, match="####"):
        B.gsm8k_answer("no final line")


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="math_eval/aime24.jsonl"):
        load_benchmark("aime24", tmp_path)


def test_hub_source_goes_through_load_dataset_with_the_hub_id(monkeypatch):
    """The hub path: the hub id, config and split of data.HUB_SOURCES, and the hub's own field names."""
    import datasets

    hub_rows = {  # layouts of the hub datasets (dataset cards): question/answer, or a final_answer list
        "math-ai/amc23": [{"id": 0, "question": "How many?", "answer": "27", "url": "u"}],
        "math-ai/olympiadbench": [{"id": 1, "question": "Find x.", "final_answer": ["$3$", "$4$"], "solution": ["s"]}],
        "openai/gsm8k": [{"question": "Q?", "answer": "work\n#### 1,200"}],
        "HuggingFaceH4/MATH-500": [{"problem": "P?", "solution": "s", "answer": "\\frac12", "level": 1}],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(hub_rows[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_benchmark("amc23", "hub") == [{"id": "amc23-0000", "problem": "How many?", "answer": "27", "source": "amc23"}]
    assert load_benchmark("olympiadbench", "hub")[0]["answer"] == "$3$, $4$"
    assert load_benchmark("gsm8k", "hub")[0]["answer"] == "1200"
    assert load_benchmark("math500", "hub")[0]["answer"] == "\\frac12"
    assert calls == [("math-ai/amc23", None, "test"), ("math-ai/olympiadbench", None, "test"),
                     ("openai/gsm8k", "main", "test"), ("HuggingFaceH4/MATH-500", None, "test")]


def test_hub_benchmarks_pass_the_configured_revision_and_none_without_one(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, kw))
        return datasets.Dataset.from_list([{"problem": "P?", "answer": "1"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_benchmark("math500", "hub", revision="ff5b202")
    load_benchmark("aime25", "hub")
    assert calls == [("HuggingFaceH4/MATH-500", {"revision": "ff5b202"}), ("math-ai/aime25", {})]
    calls.clear()
    load_benchmark("math500", FIXTURES, revision="ff5b202")  # a local directory: the revision does not apply
    assert calls == [("json", {"data_files": str(FIXTURES / "math_eval" / "math500.jsonl")})]


def test_prompt_templates(tiny_tok):
    problem = "What is $1+1$?"
    assert build_prompt(problem, tiny_tok, "plain") == problem
    assert build_prompt(problem, tiny_tok, "boxed") == f"{problem}\n{BOXED_INSTRUCTION}\n"  # no chat template
    import copy

    chat = copy.deepcopy(tiny_tok)  # the fixture is shared: give a copy a chat template
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert build_prompt(problem, chat, "boxed") == f"<|user|>{problem}\n{BOXED_INSTRUCTION}<|end|><|assistant|>"
    assert build_prompt(problem, chat, "qwen_math") == f"<|system|>{BOXED_INSTRUCTION}<|end|><|user|>{problem}<|end|><|assistant|>"
    # local files end with the instruction already: it is stripped on load, so it appears once
    rec = load_benchmark("aime24", FIXTURES, limit=1)[0]
    assert build_prompt(rec["problem"], chat, "boxed").count(BOXED_INSTRUCTION) == 1
    with pytest.raises(KeyError, match="valid: boxed"):
        build_prompt(problem, chat, "r1")


def test_surface_forms_apply_where_they_should():
    assert set(surface_forms("7", "How many?")) == {"boxed", "sentence", "plain"}
    assert surface_forms("62.5%", "")["plain"].endswith("So the answer is 62.5%.")
    assert set(surface_forms("\\frac{14}{3}", "")) == {"boxed", "sentence", "dfrac"}
    assert "\\dfrac{14}{3}" in surface_forms("\\frac{14}{3}", "")["dfrac"]
    assert set(surface_forms("62.5%", "")) >= {"percent"} and "\\boxed{62.5}" in surface_forms("62.5%", "")["percent"]
    assert "\\boxed{10\\%}" in surface_forms("10", "Express it as a percentage")["percent"]
    assert "\\boxed{90}" in surface_forms("90^\\circ", "")["degree"]
    assert "\\boxed{30°}" in surface_forms("30", "in degrees")["degree_symbol"]
    assert "\\boxed{70,000}" in surface_forms("70000", "")["thousands"]
    assert "\\boxed{4.5 \\times 10^{33}}" in surface_forms("4.5e33", "")["sci"]


def test_selfcheck_on_the_fixtures(verifier):
    records = [r for b in BENCHMARKS for r in load_benchmark(b, FIXTURES)]
    rows = B.selfcheck(records, verifier)
    assert {r["form"] for r in rows} == set(B.FORMS)  # the fixtures exercise every surface form
    assert [r for r in rows if not r["agrees"]] == []
    cells, rates = B.selfcheck_table(rows)
    assert list(cells.index) == list(BENCHMARKS) and (rates.fillna(1.0) == 1.0).all().all()


def test_selfcheck_can_fail_without_normalization():
    """The same check with the verifier's normalize() switched off: the forms it rewrites fail."""
    records = [r for b in ("gsm8k", "minerva", "olympiadbench") for r in load_benchmark(b, FIXTURES)]
    with MathVerifier(workers=1, timeout=10.0, normalized=False) as raw:
        rows = B.selfcheck(records, raw)
    failed = {r["form"] for r in rows if not r["agrees"]}
    assert failed == {"percent", "degree_symbol", "thin_space", "sci", "plain"}  # plain: "4.5e33" in text


@needs_shared
def test_shared_copy_loads_in_full():
    for name, size in FULL_SIZES.items():
        recs = load_benchmark(name, SHARED_DATA)
        assert len(recs) == size and all(r["answer"] for r in recs), name


@needs_shared
def test_selfcheck_sample_of_the_shared_copy(verifier):
    """Every 16th problem of every benchmark (the full check is `python -m entropy_rl.evalsets selfcheck`,
    recorded in docs/evaluation.md)."""
    records = [r for b in BENCHMARKS for r in load_benchmark(b, SHARED_DATA)[::16]]
    rows = B.selfcheck(records, verifier)
    assert len(records) > 170 and [r for r in rows if not r["agrees"]] == []


def test_selfcheck_cli(capsys):
    assert B.main(["selfcheck", "--data-dir", str(FIXTURES), "--benchmarks", "aime24", "minerva", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "| aime24 | 3/3 | 3/3 | 3/3 |" in out and "as expected over 9 problems" in out
