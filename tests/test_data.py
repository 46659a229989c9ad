import json
import shutil

import pytest
import yaml

from entropy_rl.config import ConfigError, DataConfig
from entropy_rl.data import (DAPO_PREFIX, DAPO_SUFFIX, TRAIN_SOURCES, DataMismatchError, _md5, arithmetic_splits,
                             dapo_problem, fetch_raw, load_train_source, math_train_rows, scratchpad, verify_raw)

from conftest import ROOT, SHARED_DATA


def test_splits_are_deterministic_disjoint_and_correct():
    cfg = DataConfig(n_sft=300, n_rl=100, n_eval=50, seed=7)
    a, b = arithmetic_splits(cfg), arithmetic_splits(cfg)
    assert a == b
    sets = {k: {r["problem"] for r in v} for k, v in a.items()}
    assert not (sets["eval"] & sets["rl"] or sets["eval"] & sets["sft"] or sets["rl"] & sets["sft"])
    for r in a["sft"]:
        x, y = r["problem"][:-1].split("+")
        assert int(r["answer"]) == int(x) + int(y)
        assert r["target"].endswith("\\boxed{" + r["answer"] + "}")
    share = sum(";" in r["target"] for r in a["sft"]) / len(a["sft"])
    assert 0.4 < share < 0.6


def test_scratchpad_columns_and_carries():
    assert scratchpad(347, 589, "+") == "7+9=16;4+8+1=13;3+5+1=9;"
    assert scratchpad(999, 1, "+") == "9+1=10;9+0+1=10;9+0+1=10;"
    assert scratchpad(12, 3, "*") == ""


def test_too_many_problems_is_an_error():
    with pytest.raises(ValueError, match="only"):
        arithmetic_splits(DataConfig(digits=1, n_sft=100, n_rl=1, n_eval=1))


def _fake_source(tmp_path):
    src = tmp_path / "src"
    (src / "gsm8k").mkdir(parents=True)
    (src / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (src / "extra.txt").write_text("not pinned")
    dvc = tmp_path / "data.dvc"
    dvc.write_text(yaml.safe_dump({"outs": [{"path": "data"}],
                                   "meta": {"files": {"gsm8k/test.jsonl": _md5(src / "gsm8k" / "test.jsonl")}}}))
    return src, dvc


def test_fetch_copies_pinned_files_and_verifies(tmp_path):
    src, dvc = _fake_source(tmp_path)
    files = fetch_raw(src, tmp_path / "data", dvc)
    assert list(files) == ["gsm8k/test.jsonl"] and (tmp_path / "data" / "gsm8k" / "test.jsonl").exists()
    assert not (tmp_path / "data" / "extra.txt").exists()


def test_fetch_names_the_changed_file(tmp_path):
    src, dvc = _fake_source(tmp_path)
    fetch_raw(src, tmp_path / "data", dvc)
    (tmp_path / "data" / "gsm8k" / "test.jsonl").write_text("tampered\n")
    with pytest.raises(DataMismatchError, match=r"gsm8k/test.jsonl: md5 [0-9a-f]+, data.dvc pins"):
        verify_raw(tmp_path / "data", dvc)
    (src / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="missing gsm8k/test.jsonl"):
        fetch_raw(src, tmp_path / "data2", dvc)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        fetch_raw(tmp_path / "nope", tmp_path / "data3", dvc)


def test_data_dvc_pins_every_file_with_hashes():
    pinned = yaml.safe_load((ROOT / "data.dvc").read_text())["meta"]["files"]
    assert {"gsm8k/train.jsonl", "gsm8k/test.jsonl", "math_eval/math500.jsonl", "math_eval/aime24.jsonl"} <= set(pinned)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"local copy of the raw data not found at {SHARED_DATA}")
def test_fetch_from_the_local_shared_copy(tmp_path):
    files = fetch_raw(SHARED_DATA, tmp_path / "data", ROOT / "data.dvc")
    assert len(files) == 9
    shutil.rmtree(tmp_path / "data")



# ----------------------------------------------------------------------------------------------------------
# Real RL training data (task `math`), on fixtures in the sources' own layouts
# ----------------------------------------------------------------------------------------------------------
TRAIN_FIXTURES = ROOT / "tests" / "fixtures" / "train_data"


def _raw(name):
    return [json.loads(line) for line in (TRAIN_FIXTURES / TRAIN_SOURCES[name].file).read_text().splitlines()]


def test_math_keeps_levels_3_to_5_and_the_last_balanced_boxed_answer():
    recs = load_train_source("math_l3_5", TRAIN_FIXTURES)
    raw = _raw("math_l3_5")
    assert [r["answer"] for r in recs] == ["0", "17", "(3, -1)", "10\\frac{1}{12}", "\\frac{20}{3}"]
    assert [r["id"] for r in recs] == ["math_l3_5-00000", "math_l3_5-00001", "math_l3_5-00002", "math_l3_5-00004",
                                       "math_l3_5-00005"]  # row 3 is Level 2
    assert raw[3]["level"] == "Level 2" and raw[3]["problem"] not in {r["problem"] for r in recs}
    assert all(set(r) == {"id", "problem", "answer", "source"} and r["source"] == "math_l3_5" for r in recs)
    assert recs[0]["problem"] == raw[0]["problem"]


def test_gsm8k_train_answers_are_the_number_after_the_hashes():
    recs = load_train_source("gsm8k", TRAIN_FIXTURES)
    assert [r["answer"] for r in recs] == ["72", "10", "624", "850000", "2250"]
    assert [r["problem"] for r in recs] == [row["question"] for row in _raw("gsm8k")]


def test_dapo_problems_are_bare_and_each_kept_once():
    raw = _raw("dapo17k")
    assert len(raw) == 5 and raw[0] == raw[2] == raw[4]
    recs = load_train_source("dapo17k", TRAIN_FIXTURES)
    assert [r["id"] for r in recs] == ["dapo17k-00000", "dapo17k-00001", "dapo17k-00003"]
    assert [r["answer"] for r in recs] == ["34", "113", "-3"]
    for r in recs:
        assert "Answer:" not in r["problem"] and not r["problem"].startswith("Solve")
    assert recs[1]["problem"].startswith("Let $ABCD$ be a unit square") and recs[1]["problem"].endswith("compute $m+n$.")
    assert dapo_problem(DAPO_PREFIX + "What is $1+1$?" + DAPO_SUFFIX) == "What is $1+1$?"


def test_hub_branch_reads_each_source_by_its_hub_id(monkeypatch):
    import datasets

    local = {name: load_train_source(name, TRAIN_FIXTURES) for name in TRAIN_SOURCES}
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        key = {"DigitalLearningGmbH/MATH-lighteval": "math_l3_5", "openai/gsm8k": "gsm8k",
               "BytedTsinghua-SIA/DAPO-Math-17k": "dapo17k"}[path]
        return datasets.Dataset.from_list(_raw(key))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert {name: load_train_source(name, "hub") for name in TRAIN_SOURCES} == local
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", "default", "train"), ("openai/gsm8k", "main", "train"),
                          ("BytedTsinghua-SIA/DAPO-Math-17k", None, "train")]


def test_hub_reads_pass_the_configured_revision_and_none_without_one(monkeypatch):
    """`data.revisions` (per training source) reaches `load_dataset` for hub reads; a source without one, and any
    local directory, gets no `revision` argument."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, kw))
        key = {"DigitalLearningGmbH/MATH-lighteval": "math_l3_5", "openai/gsm8k": "gsm8k",
               "BytedTsinghua-SIA/DAPO-Math-17k": "dapo17k"}.get(path)
        return datasets.Dataset.from_list(_raw(key)) if key else real_load(path, name, split=split, **kw)

    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(task="math", sources=["math_l3_5", "gsm8k", "dapo17k"], source="hub", n_eval=3,
                     revisions={"gsm8k": "e53f048", "dapo17k": "v1"})
    math_train_rows(cfg)
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", {}), ("openai/gsm8k", {"revision": "e53f048"}),
                     ("BytedTsinghua-SIA/DAPO-Math-17k", {"revision": "v1"})]
    calls.clear()
    local = math_train_rows(DataConfig(task="math", sources=["gsm8k"], source=str(TRAIN_FIXTURES), n_eval=1,
                                       revisions={"gsm8k": "e53f048"}))  # a directory: the revision does not apply
    assert local["eval"] and [kw.get("revision") for _, kw in calls] == [None]


def test_math_splits_are_disjoint_deterministic_and_sized():
    cfg = DataConfig(task="math", sources=["math_l3_5", "gsm8k", "dapo17k"], source=str(TRAIN_FIXTURES),
                     n_eval=3, n_rl=0, seed=5)
    a = math_train_rows(cfg)
    assert a == math_train_rows(cfg) and set(a) == {"rl", "eval"}
    assert len(a["eval"]) == 3 and len(a["rl"]) == 5 + 5 + 3 - 3  # n_rl = 0: all the rest
    problems = [r["problem"] for split in a.values() for r in split]
    assert len(problems) == len(set(problems))
    assert {r["source"] for split in a.values() for r in split} == {"math_l3_5", "gsm8k", "dapo17k"}
    other = math_train_rows(DataConfig(task="math", sources=cfg.sources, source=cfg.source, n_eval=3, n_rl=4, seed=6))
    assert len(other["rl"]) == 4 and other["eval"] != a["eval"]
    with pytest.raises(ValueError, match="data.n_eval: 13 held-out rows requested but .* have 13 distinct"):
        math_train_rows(DataConfig(task="math", sources=cfg.sources, source=cfg.source, n_eval=13))


def test_math_config_names_bad_sources_and_allows_all_rl_rows():
    with pytest.raises(ConfigError, match="data.sources: invalid value 'math'; valid values: math_l3_5, gsm8k, dapo17k"):
        DataConfig(task="math", sources=["math"])
    with pytest.raises(ConfigError, match="data.sources: empty"):
        DataConfig(task="math", sources=[])
    with pytest.raises(ConfigError, match="data.task: invalid value 'maths'"):
        DataConfig(task="maths")
    assert DataConfig(task="math", n_rl=0).n_rl == 0
    with pytest.raises(ConfigError, match="data.n_rl"):
        DataConfig(n_rl=0)  # the synthetic task still needs RL prompts


def test_missing_train_file_and_unknown_source_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dapo_math_17k/train.jsonl not found; data.source is 'hub' or a "
                                                r"directory with math/train.jsonl \(math_l3_5\)"):
        load_train_source("dapo17k", tmp_path)
    with pytest.raises(KeyError, match="unknown training source 'gsm8k_train'; valid: math_l3_5, gsm8k, dapo17k"):
        load_train_source("gsm8k_train", TRAIN_FIXTURES)


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(),
                    reason=f"no local copy of GSM8K train at {SHARED_DATA / 'gsm8k' / 'train.jsonl'}")
def test_full_local_gsm8k_train_copy_through_a_directory():
    recs = load_train_source("gsm8k", SHARED_DATA)
    assert len(recs) > 7000 and all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in recs)
    split = math_train_rows(DataConfig(task="math", sources=["gsm8k"], source=str(SHARED_DATA), n_eval=100, n_rl=0))
    assert len(split["eval"]) == 100 and len(split["rl"]) == len(recs) - 100


def test_make_data_from_the_hub_exports_every_hub_id_with_the_licence_and_verifies(tmp_path):
    """`make data` (source `hub`): each HUB_SOURCES id is loaded, written in the offline layout, the GSM8K licence is
    added from the package, and every file is checked against data.dvc. No network here: a stand-in loader plays
    the hub and serves rows in the layout each id has (the real snapshots are not checked against the pin)."""
    import datasets

    from entropy_rl.data import HUB_SOURCES, LICENSES, export_from_hub

    asked = []

    def fake_load(hub_id, config, split):
        asked.append((hub_id, config, split))
        return datasets.Dataset.from_list([{"problem": f"{hub_id} 1+1?", "answer": "2"}])

    export_from_hub(tmp_path / "hub", load=fake_load)
    assert asked == list(HUB_SOURCES.values())
    for rel in [*HUB_SOURCES, *LICENSES]:
        assert (tmp_path / "hub" / rel).exists(), rel
    assert _md5(tmp_path / "hub" / "gsm8k" / "LICENSE") == yaml.safe_load((ROOT / "data.dvc").read_text())[
        "meta"]["files"]["gsm8k/LICENSE"]
    with pytest.raises(DataMismatchError, match="math_eval/aime24.jsonl: md5"):  # the stand-in rows are not the pin
        fetch_raw(tmp_path / "hub", tmp_path / "data", ROOT / "data.dvc")


def test_hub_export_passes_revisions_by_hub_id(tmp_path, monkeypatch):
    """`python -m entropy_rl.data --source hub --revision openai/gsm8k=e53f048`: both GSM8K splits are read at that
    revision, the other ids at the default branch (no `revision` argument); an unknown id or a bad item is named."""
    import datasets

    from entropy_rl import data as D

    asked = []

    def fake_load(hub_id, config, split, **kw):
        asked.append((hub_id, kw.get("revision")))
        return datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}])

    D.export_from_hub(tmp_path / "a", load=fake_load, revisions={"openai/gsm8k": "e53f048"})
    assert asked == [(hub_id, "e53f048" if hub_id == "openai/gsm8k" else None) for hub_id, _, _ in D.HUB_SOURCES.values()]
    with pytest.raises(ValueError, match="revision for 'openai/gsm8kk': not a hub id of HUB_SOURCES; valid: "):
        D.export_from_hub(tmp_path / "b", load=fake_load, revisions={"openai/gsm8kk": "x"})

    seen = {}
    monkeypatch.setattr(D, "export_from_hub", lambda dest, revisions=None: seen.update(revisions))
    monkeypatch.setattr(D, "fetch_raw", lambda *a: {})
    D.main(["--source", "hub", "--dest", str(tmp_path / "d"), "--revision", "openai/gsm8k=e53f048",
            "--revision", "math-ai/aime25=main"])
    assert seen == {"openai/gsm8k": "e53f048", "math-ai/aime25": "main"}
    for bad in (["--revision", "openai/gsm8k"], ["--revision", "nope/x=1"], ["--source", "dir", "--revision", "a=b"]):
        with pytest.raises(SystemExit):
            D.main(bad)
