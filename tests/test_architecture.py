"""The shape of the package: an acyclic import graph in named layers, one registry type, one place per objective,
honest DVC dependencies, and documents generated from the code rather than copied."""
import re
from pathlib import Path

import pytest
import yaml

from entropy_rl import depgraph, glossary
from entropy_rl.config import ConfigError, read_params
from entropy_rl.objectives import CLAIM_FIGURES, SPECS, Needs, all_claims, figure_objectives
from entropy_rl.token_stats import DEFAULT_TOP_P
from entropy_rl.registry import ALL, Registry, UnknownNameError
from entropy_rl.report import readme_blocks

from conftest import ROOT

GRAPH = depgraph.graph()

# Layers a reader can name, bottom to top; a module may import only from its own layer or below.
LAYERS = [
    {"config", "io", "progress", "registry", "tables"},                                    # names, config, files
    {"token_stats", "agg", "advantages", "controllers", "metrics", "objectives"},          # tensors and maths
    {"model", "rollout", "policy", "rewards", "prompts", "data", "evalsets", "countdown"}, # model, sampling, tasks
    {"rl", "sft", "evaluate", "report", "plots", "glossary"},                              # loop, evaluation, reports
    {"notebooks", "stage", "depgraph", "integrations", "preflight"},                       # runners, tooling, plug-ins
]


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_sits_in_a_named_layer():
    for module in GRAPH:
        if module != "entropy_rl":
            layer_of(module)  # StopIteration names a module that no layer lists


def test_import_graph_is_acyclic():
    assert depgraph.cycles(GRAPH) == []


def test_no_package_import_inside_a_function():
    """Only optional heavy libraries (vllm, bitsandbytes, peft's loaders) are imported inside functions."""
    inside = [f"{e.source}:{e.line} imports {e.target}" for es in GRAPH.values() for e in es if e.in_function]
    assert inside == []


def test_imports_only_go_down_the_layers():
    up = [f"{e.source} (layer {layer_of(e.source)}) imports {e.target} (layer {layer_of(e.target)})"
          for es in GRAPH.values() for e in es if layer_of(e.target) > layer_of(e.source)]
    assert up == []


def test_config_imports_nothing_of_the_package_and_objectives_stay_pure():
    assert GRAPH["entropy_rl.config"] == []
    for module, edges in GRAPH.items():
        targets = {e.target.split(".")[1] for e in edges}
        if module.startswith("entropy_rl.objectives"):
            assert not targets & {"rl", "rollout", "model", "policy", "evaluate"}, module
        if module == "entropy_rl.token_stats":
            assert "objectives" not in targets
        # the notebook helpers serve notebooks, the stage command (which runs them) and the plug-ins' examples
        assert "notebooks" not in targets or module.startswith(("entropy_rl.integrations", "entropy_rl.stage")), module


def test_the_graph_sees_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "entropy_rl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("from .sub import b\nfrom . import c\n\ndef f():\n    from .c import x\n")
    (pkg / "c.py").write_text("from .a import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..c import x\n")
    g = depgraph.graph(pkg)
    assert {(e.target, e.in_function) for e in g["entropy_rl.a"]} == {
        ("entropy_rl.sub.b", False), ("entropy_rl.c", False), ("entropy_rl.c", True)}
    assert depgraph.cycles(g) == [["entropy_rl.a", "entropy_rl.c", "entropy_rl.sub.b"]]  # a -> sub.b -> c -> a


# ---------------------------------------------------------------------------------------------- registries
def test_one_registry_type_for_every_kind():
    kinds = {r.kind for r in ALL}
    assert {"objective", "advantage estimator", "rollout backend", "evaluation set", "prompt template", "task",
            "training source", "reward", "claim figure"} <= kinds
    for r in ALL:
        r.check_complete()  # every name config declares is registered


@pytest.mark.parametrize("reg", ALL, ids=lambda r: r.kind)
def test_every_registry_is_strict(reg):
    name = next(iter(reg))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as err:
        reg.get(name + "-not-a-name")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)
    assert all(n in str(err.value) for n in reg) and reg.kind in str(err.value)


def test_a_declared_registry_refuses_an_undeclared_name():
    reg = Registry("thing", declared=("a", "b"), declared_in="entropy_rl.config.THINGS")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="not declared in entropy_rl.config.THINGS"):
        reg.register("c", 3)
    with pytest.raises(ValueError, match="declared but not registered: b"):
        reg.check_complete()


# ---------------------------------------------------------------------------------------------- one place per objective
HAND_TESTS = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))


@pytest.mark.parametrize("name", SPECS.names())
def test_every_objective_has_a_card_a_glossary_and_a_hand_computed_case(name):
    spec = SPECS.get(name)
    assert (ROOT / "docs" / "objectives" / f"{name}.md").exists(), f"{name}: no card docs/objectives/{name}.md"
    assert set(spec.metrics) <= set(glossary.glossary()), name
    assert re.search(rf"^def test_{name}_\w*(hand_computed|worked)", HAND_TESTS, re.M), \
        f"{name}: no hand-computed test case (a test named test_{name}_..._hand_computed...)"
    assert spec.module.startswith("entropy_rl.objectives."), spec.module


def test_objectives_declare_what_the_loop_computes_for_them():
    from entropy_rl.objectives import make_objective_config as cfg

    assert cfg("grpo").needs() == Needs(ref_logp=False, top_p=DEFAULT_TOP_P, stat_scope="microbatch")
    assert cfg("grpo", {"kl_coef": 0.04}).needs().ref_logp
    assert cfg("clip_cov").needs().stat_scope == "minibatch"
    assert cfg("kl_cov", {"stat_scope": "microbatch"}).needs().stat_scope == "microbatch"
    assert cfg("paec", {"top_p": 0.7}).needs().top_p == 0.7
    assert cfg("erpo").needs().ref_logp and not cfg("erpo", {"progress_ref": "old", "stats_from": "current"}).needs().ref_logp


def test_claims_name_objectives_or_presets_and_registered_figures():
    presets = set(read_params(ROOT / "params.yaml")["objectives"])
    for c in all_claims():
        assert c.figure in CLAIM_FIGURES
        for name in (c.method, c.baseline):
            assert name in SPECS or name in presets, (c.text, name)
    for fig in CLAIM_FIGURES:
        assert len(figure_objectives(fig)) >= 2, fig


def test_metric_glossary_is_generated():
    assert (ROOT / "docs" / "metrics.md").read_text() == glossary.markdown(), \
        "docs/metrics.md is stale: run `python -m entropy_rl.glossary > docs/metrics.md`"


# ---------------------------------------------------------------------------------------------- honest DVC deps
@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "studies/dvc.yaml", "studies/probe/dvc.yaml"])
def test_stages_depend_on_what_their_notebooks_execute(dvc_file):
    assert depgraph.check_dvc(ROOT / dvc_file) == []
    stages = yaml.safe_load((ROOT / dvc_file).read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = body["deps"]
        assert "constraints.txt" in deps, name
        assert "src/entropy_rl" not in deps, name  # never the whole package
        params = [p for entry in body.get("params", []) for p in ([entry] if isinstance(entry, str) else
                  next(iter(entry.values())))]
        assert "objectives" not in params, f"{name}: depends on the whole objectives section"
        wdir = (ROOT / dvc_file).parent / body.get("wdir", ".")
        for entry in body.get("params", []):  # DVC reads a params file relative to the stage's wdir
            for params_file in ([] if isinstance(entry, str) else entry):
                assert (wdir / params_file).resolve() == ROOT / "params.yaml", f"{name}: {params_file} from {wdir}"
        if name == "rl":
            assert "objectives.${item.objective}" in params


def test_notebook_closure_covers_the_notebook_imports():
    files = depgraph.notebook_closure(ROOT / "notebooks" / "20_rl.ipynb", root=ROOT)
    assert "src/entropy_rl/rl.py" in files and "src/entropy_rl/objectives/__init__.py" in files
    assert "src/entropy_rl/depgraph.py" not in files and not any("integrations" in f for f in files)
    sft = depgraph.notebook_closure(ROOT / "notebooks" / "10_sft.ipynb", root=ROOT)
    assert not any("objectives" in f for f in sft)  # editing an objective does not rerun the warm start


# ---------------------------------------------------------------------------------------------- generated documents
def test_readme_results_are_the_generated_files():
    readme = (ROOT / "README.md").read_text()
    blocks = readme_blocks(readme)
    assert {p for p, _ in blocks} >= {"docs/results/tiny/results.md", "docs/results/tiny-seeds/results.md"}
    for path, body in blocks:
        assert body == (ROOT / path).read_text(), f"README block of {path} is stale: `python -m entropy_rl.report readme`"


def test_no_reference_outside_the_repository():
    """A user's clone has no ../shared: code, docs and notebooks cite docs/methods.md or primary sources."""
    offenders = []
    for p in [*ROOT.glob("src/**/*.py"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("notebooks/*.ipynb"),
              ROOT / "README.md", ROOT / "params.yaml", ROOT / "Makefile"]:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if "../shared" in line or re.search(r"(?<![\w/])methods\.md §", line):
                offenders.append(f"{p.relative_to(ROOT)}:{i}")
    assert offenders == []


def test_walkthrough_exists_and_names_its_files():
    doc = (ROOT / "docs" / "adding-an-objective.md").read_text()
    for needle in ("src/entropy_rl/objectives/", "docs/objectives/", "params.yaml", "register_objective", "```diff"):
        assert needle in doc, needle
    assert Path(ROOT / "src/entropy_rl/objectives/whitened.py").exists()
