import shutil

import pytest
import yaml

from entropy_rl.config import DataConfig
from entropy_rl.data import DataMismatchError, _md5, arithmetic_splits, fetch_raw, scratchpad, verify_raw

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
