import pytest
import yaml

from entropy_rl.config import ConfigError, load_profile, objective_settings, read_params, resolve_objective
from entropy_rl.objectives import OBJECTIVES, make_objective_config

from conftest import ROOT


def write(tmp_path, params):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    return p


def test_repository_params_load():
    prof = load_profile(ROOT / "params.yaml", "tiny")
    assert prof.rl.group_size >= 2 and prof.model.source == "tiny"
    for name in read_params(ROOT / "params.yaml")["objectives"]:
        make_objective_config(*resolve_objective(ROOT / "params.yaml", name))


def test_every_registered_objective_has_params_preset_and_card():
    params = read_params(ROOT / "params.yaml")
    for name in OBJECTIVES:
        assert name in params["objectives"], f"objective {name} has no preset in params.yaml"
        assert (ROOT / "docs" / "objectives" / f"{name}.md").exists(), f"objective {name} has no fidelity card"


def test_every_rl_run_names_a_profile_and_objective():
    params = read_params(ROOT / "params.yaml")
    for runs, prefix in (("rl_runs", "{profile}"), ("study_runs", "tiny-seeds")):
        assert params.get(runs), runs
        for key, run in params[runs].items():
            assert run["profile"] in params["profiles"], key
            method, settings = resolve_objective(ROOT / "params.yaml", run["objective"])
            assert method in OBJECTIVES, key
            make_objective_config(method, settings)
            assert key == f"{prefix.format(**run)}-{run['objective']}-s{run['seed']}"
            load_profile(ROOT / "params.yaml", run["profile"])


def test_study_reuses_default_seed0_and_covers_three_seeds():
    params = read_params(ROOT / "params.yaml")
    default = {(r["objective"], r["seed"]) for r in params["rl_runs"].values()}
    study = {(r["objective"], r["seed"]) for r in params["study_runs"].values()}
    assert not default & study  # the study adds seeds, it never reruns one
    for obj in {o for o, _ in default | study}:
        assert {s for o, s in default | study if o == obj} == {0, 1, 2}, obj


def test_objective_variants_extend_and_override(tmp_path):
    p = write(tmp_path, {"objectives": {"paec": {"rho": 0.8, "penalty": True},
                                        "paec-a": {"extends": "paec", "penalty": False},
                                        "paec-b": {"extends": "paec-a", "rho": 0.5}}})
    assert resolve_objective(p, "paec-b") == ("paec", {"rho": 0.5, "penalty": False})
    assert objective_settings(p, "paec-a") == {"rho": 0.8, "penalty": False}
    assert resolve_objective(p, "paec") == ("paec", {"rho": 0.8, "penalty": True})
    p = write(tmp_path, {"objectives": {"x": {"extends": "paek"}}})
    with pytest.raises(ConfigError, match="unknown objective 'paek' in objectives.x.extends; objectives with"):
        resolve_objective(p, "x")
    p = write(tmp_path, {"objectives": {"x": {"extends": "y"}, "y": {"extends": "x"}}})
    with pytest.raises(ConfigError, match="cycle x -> y -> x"):
        resolve_objective(p, "x")


def test_repository_variants_change_only_what_they_name():
    params = read_params(ROOT / "params.yaml")
    for name, entry in params["objectives"].items():
        if "extends" not in (entry or {}):
            continue
        method, settings = resolve_objective(ROOT / "params.yaml", name)
        base = objective_settings(ROOT / "params.yaml", entry["extends"])
        changed = {k for k in settings if settings[k] != base.get(k)}
        assert changed == set(entry) - {"extends"}, name
        make_objective_config(method, settings)


@pytest.mark.parametrize(
    "section,bad,fragment",
    [
        ("rl", {"stepz": 3}, "unknown key 'profiles.p.rl.stepz'"),
        ("rl", {"steps": "ten"}, "profiles.p.rl.steps: expected an integer"),
        ("rl", {"group_size": 1}, "rl.group_size"),
        ("model", {"compute_dtype": "fp8"}, "valid values: float32, bfloat16, float16"),
        ("data", {"ops": ["/"]}, "data.ops"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, section, bad, fragment):
    p = write(tmp_path, {"profiles": {"p": {section: bad}}})
    with pytest.raises(ConfigError) as e:
        load_profile(p, "p")
    assert fragment in str(e.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, {"profiles": {"p": {"rl": {"lr_": 1.0}}}})
    with pytest.raises(ConfigError, match="valid keys here: .*lr.*steps"):
        load_profile(p, "p")


def test_unknown_profile_and_top_level_key(tmp_path):
    p = write(tmp_path, {"profiles": {"a": {}}, "more_profiles": {"b": {}}})
    with pytest.raises(ConfigError, match="unknown profile 'c'; valid profiles: a, b"):
        load_profile(p, "c")
    p = write(tmp_path, {"profile": {}})
    with pytest.raises(ConfigError, match="unknown top-level key 'profile'"):
        read_params(p)


def test_extends_and_overrides(tmp_path):
    p = write(tmp_path, {"profiles": {"base": {"rl": {"steps": 7, "lr": 1e-3}}},
                         "more_profiles": {"child": {"extends": "base", "rl": {"steps": 9}}}})
    child = load_profile(p, "child", {"rl.group_size": 4})
    assert (child.rl.steps, child.rl.lr, child.rl.group_size) == (9, 1e-3, 4)
    p = write(tmp_path, {"profiles": {"a": {"extends": "b"}, "b": {"extends": "a"}}})
    with pytest.raises(ConfigError, match="cycle"):
        load_profile(p, "a")


def test_objective_config_rejects_unknown_and_bad(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'objectives.grpo.clip_hi'"):
        make_objective_config("grpo", {"clip_hi": 0.3})
    with pytest.raises(ConfigError, match="agg: invalid value 'mean'; valid values"):
        make_objective_config("grpo", {"agg": "mean"})
    with pytest.raises(ConfigError, match="unknown objective 'gpro'; valid objectives: .*grpo"):
        make_objective_config("gpro", {})
