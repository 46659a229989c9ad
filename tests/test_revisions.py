"""Hub revisions pinned in params.yaml reach `from_pretrained` (model.revision), also through a starting-policy pointer,
and `datasets.load_dataset` (eval.revisions, through the evaluation tasks). No network here: stand-ins play the hub."""
import json
import types

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from entropy_rl.config import EvalConfig, ModelConfig, Profile
from entropy_rl.model import (BASE_POINTER, load_base, load_checkpoint_model, load_tokenizer, resolve_revision,
                              resolve_source, write_base_pointer)

from conftest import ROOT

HUB_ID = "org/some-model"


@pytest.fixture
def hub(monkeypatch):
    """Stand-ins for the transformers class methods; returns the ``(what, source, kwargs)`` of every call."""
    calls = []

    def fake_model(source, **kwargs):
        calls.append(("model", str(source), kwargs))
        return types.SimpleNamespace(config=types.SimpleNamespace(use_cache=False), eval=lambda: None)

    def fake_tokenizer(source, **kwargs):
        calls.append(("tokenizer", str(source), kwargs))
        return types.SimpleNamespace(padding_side="right", pad_token=None, eos_token="</s>")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tokenizer)
    return calls


def _revisions(calls):
    return [(what, source, kw.get("revision")) for what, source, kw in calls]


def test_a_hub_id_loads_at_model_revision_and_at_the_default_branch_without_one(hub):
    cfg = ModelConfig(source=HUB_ID, revision="abc1234")
    load_base(HUB_ID, cfg)
    load_tokenizer(HUB_ID, cfg)
    assert _revisions(hub) == [("model", HUB_ID, "abc1234"), ("tokenizer", HUB_ID, "abc1234")]
    hub.clear()
    cfg = ModelConfig(source=HUB_ID)  # none configured: no revision argument at all (today's behaviour)
    load_base(HUB_ID, cfg)
    load_tokenizer(HUB_ID, cfg)
    load_tokenizer(HUB_ID)
    assert [("revision" in kw) for _, _, kw in hub] == [False, False, False]


def test_the_revision_travels_with_the_pointer_of_a_starting_policy(hub, tmp_path):
    """`sft.steps: 0`: 10_sft writes a pointer naming `model.source` and `model.revision`; RL (load_policy, via
    load_base) and evaluation (load_checkpoint_model, load_tokenizer without the config) load that snapshot."""
    cfg = ModelConfig(source=HUB_ID, revision="v1.2")
    start = write_base_pointer(tmp_path / "start", cfg.source, cfg.revision)
    assert json.loads((start / BASE_POINTER).read_text()) == {"source": HUB_ID, "revision": "v1.2"}
    assert resolve_source(start) == HUB_ID and resolve_revision(start) == "v1.2"
    load_base(start, cfg)
    load_checkpoint_model(start, None, cfg)
    load_tokenizer(start)
    load_tokenizer(start, cfg)
    assert _revisions(hub) == [("model", HUB_ID, "v1.2"), ("model", HUB_ID, "v1.2"),
                               ("tokenizer", HUB_ID, "v1.2"), ("tokenizer", HUB_ID, "v1.2")]
    # a pointer without a revision stays `{"source": ...}` and loads the default branch
    hub.clear()
    plain = write_base_pointer(tmp_path / "plain", HUB_ID)
    assert json.loads((plain / BASE_POINTER).read_text()) == {"source": HUB_ID}
    load_base(plain, ModelConfig(source=HUB_ID))
    load_tokenizer(plain)
    assert [("revision" in kw) for _, _, kw in hub] == [False, False]


def test_a_pointer_at_another_revision_than_the_profile_is_refused(hub, tmp_path):
    start = write_base_pointer(tmp_path / "start", HUB_ID, "old")
    with pytest.raises(ValueError, match=r"at revision old but model.revision is new; rerun the SFT stage"):
        load_base(start, ModelConfig(source=HUB_ID, revision="new"))
    with pytest.raises(ValueError, match=r"but model.revision is \(default branch\)"):
        load_tokenizer(start, ModelConfig(source=HUB_ID))
    (start / BASE_POINTER).write_text(json.dumps({"source": HUB_ID, "revision": 3}))
    with pytest.raises(ValueError, match="optional"):
        resolve_revision(start)
    assert hub == []


def test_local_paths_and_tiny_get_no_revision(hub, tmp_path):
    local = tmp_path / "weights"
    local.mkdir()
    cfg = ModelConfig(source=str(local), revision="abc1234")
    load_base(local, cfg)
    load_tokenizer(local, cfg)
    start = write_base_pointer(tmp_path / "start", str(local), "abc1234")
    assert json.loads((start / BASE_POINTER).read_text()) == {"source": str(local)}  # a revision only for a hub id
    load_base(start, cfg)
    load_tokenizer(start, cfg)
    assert [(what, "revision" in kw) for what, _, kw in hub] == [("model", False), ("tokenizer", False)] * 2
    assert resolve_revision("tiny", ModelConfig(source="tiny", revision="abc1234")) == ""
    # model.revision is the revision of model.source: another hub id is loaded at its default branch
    assert resolve_revision("org/other", ModelConfig(source=HUB_ID, revision="abc1234")) == ""


def test_sft_notebook_writes_the_revision_into_the_pointer():
    nb = json.loads((ROOT / "notebooks" / "10_sft.ipynb").read_text())
    calls = [line for c in nb["cells"] if c["cell_type"] == "code" for line in c["source"]
             if "write_base_pointer(" in line and "import" not in line]
    assert calls and all("cfg.model.revision" in line for line in calls)


def test_profile_tasks_pass_eval_revisions_to_load_dataset(monkeypatch):
    import datasets

    from entropy_rl.evaluate import profile_tasks

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, kw.get("revision")))
        return datasets.Dataset.from_list([{"problem": "P?", "answer": "1"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ev = EvalConfig(benchmarks=["math500", "amc23"], data_source="hub", revisions={"math500": "ff5b202"})
    tasks = profile_tasks(Profile(name="p", eval=ev), "unused")
    assert [t.name for t in tasks] == ["math500", "amc23"]
    assert calls == [("HuggingFaceH4/MATH-500", "ff5b202"), ("math-ai/amc23", None)]
