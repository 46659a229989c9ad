"""Every objective's docstring is its short card and its docs/objectives/<name>.md the long one: both stay honest."""
import inspect
import re

import pytest

from entropy_rl.objectives import OBJECTIVES, get_config_cls, make_objective_config
from entropy_rl.objectives.registry import ObjectiveConfig

from conftest import ROOT


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_docstring_is_a_short_card(name):
    fn = OBJECTIVES[name]
    doc = inspect.getdoc(fn)
    assert doc and "arxiv.org/abs/" in doc, f"{name}: docstring needs the arXiv link"
    assert f"Card: docs/objectives/{name}.md" in doc and "methods.md §" in doc
    params = list(inspect.signature(fn).parameters)
    assert params == ["batch", "stats", "cfg", "state"], name
    documented = re.findall(r"^\s{4}(\w+):", doc.split("Args:")[1], flags=re.M)
    assert documented == params, f"{name}: Args {documented} != signature {params}"
    cfg_name = get_config_cls(name).__name__
    assert cfg_name in doc.split("Args:")[1], f"{name}: Args should name {cfg_name}"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_card_has_equation_choices_tags_and_numbers(name):
    text = (ROOT / "docs" / "objectives" / f"{name}.md").read_text()
    assert text.startswith(f"# Fidelity card: `{name}`")
    for heading in ("## Equation", "## Choices", "## What this suite measured"):
        assert heading in text, f"{name}.md lacks {heading}"
    assert "methods.md` §" in text and "arXiv:" in text
    assert "[P]" in text and "| choice | value here | tag | option that switches it |" in text
    # every option the card names as a switch is a real setting (of the objective or of the rl profile section)
    fields = {f for f in get_config_cls(name).__dataclass_fields__}
    for row in re.findall(r"^\|.*\|\s*([^|]*)\|\s*$", text, flags=re.M):
        for opt in re.findall(r"`([a-z_]+)(?::[^`]*)?`", row):
            assert opt in fields or opt in {"rl", "grpo", "dr_grpo", "rloo", "kl_cov", "clip_cov", "linear",
                                              "constant", "microbatch", "minibatch", "advantage"}, (name, opt)
        for opt in re.findall(r"`rl\.([a-z_]+)`", row):
            from entropy_rl.config import RLConfig
            assert opt in RLConfig.__dataclass_fields__, (name, opt)


def test_config_docstrings_exist_for_every_field():
    src = {}
    for name in OBJECTIVES:
        for cls in get_config_cls(name).__mro__:
            if cls is object or not hasattr(cls, "__dataclass_fields__"):
                continue
            src[cls] = inspect.getsource(cls)
    for cls, code in src.items():
        own = [n for n in cls.__dict__.get("__annotations__", {})]
        for field in own:
            assert re.search(rf"^\s+{field}: .*\n\s+\"\"\"", code, flags=re.M), f"{cls.__name__}.{field} lacks a docstring"
    assert issubclass(get_config_cls("dapo"), ObjectiveConfig) and make_objective_config("dapo").dynamic_sampling
