import pytest
import yaml

from entropy_rl.config import ConfigError, load_profile, objective_settings, read_params, resolve_objective, run_matrix
from entropy_rl.objectives import OBJECTIVES, make_objective_config

from conftest import ROOT


BASE = {s: {} for s in ("data", "model", "sft", "rl", "eval")}  # a profile without `extends` states every section


def base(**sections):
    return {**BASE, **sections}


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
    for section in ("rl_runs", "study"):
        runs = run_matrix(ROOT / "params.yaml", section)
        assert runs, section
        for profile, objective, seed in runs:
            method, settings = resolve_objective(ROOT / "params.yaml", objective)
            assert method in OBJECTIVES, objective
            make_objective_config(method, settings)
            load_profile(ROOT / "params.yaml", profile)


def test_study_covers_every_default_objective_with_three_seeds():
    params = read_params(ROOT / "params.yaml")
    assert set(params["rl_runs"]["objectives"]) <= set(params["study"]["objectives"])
    assert params["study"]["seeds"] == [0, 1, 2]
    assert {"erpo", "repo_r", "adapo", "paec"} <= set(params["study"]["objectives"])


def test_run_matrix_rejects_unknown_profiles_objectives_and_seeds(tmp_path):
    base = {"profiles": {"tiny": {}}, "objectives": {"grpo": {}}}
    p = write(tmp_path, {**base, "rl_runs": {"profiles": ["tiny"], "objectives": ["grpo"], "seeds": [0, 1]}})
    assert run_matrix(p) == [("tiny", "grpo", 0), ("tiny", "grpo", 1)]
    for runs, fragment in (({"profiles": ["big"], "objectives": ["grpo"], "seeds": [0]}, "profile 'big' is not an active"),
                           ({"profiles": ["tiny"], "objectives": ["grpp"], "seeds": [0]}, "'grpp' has no entry"),
                           ({"profiles": ["tiny"], "objectives": ["grpo"], "seeds": ["0"]}, "expected integers"),
                           ({"profiles": ["tiny"], "objective": ["grpo"]}, "unknown key 'rl_runs.objective'")):
        with pytest.raises(ConfigError, match=fragment):
            run_matrix(write(tmp_path, {**base, "rl_runs": runs}))


def test_objective_variants_name_their_method_and_state_what_differs(tmp_path):
    p = write(tmp_path, {"objectives": {"paec": {"rho": 0.7}, "paec-a": {"method": "paec", "penalty": False}}})
    assert resolve_objective(p, "paec-a") == ("paec", {"penalty": False})  # from paec's defaults, not its preset
    assert objective_settings(p, "paec") == {"rho": 0.7}
    assert resolve_objective(p, "paec") == ("paec", {"rho": 0.7})
    # a YAML anchor shares another entry's settings, and the run depends on the merged values
    (tmp_path / "params.yaml").write_text("objectives:\n  paec: &paec {rho: 0.7}\n"
                                          "  paec-b: {<<: *paec, method: paec, penalty: false}\n")
    assert resolve_objective(tmp_path / "params.yaml", "paec-b") == ("paec", {"rho": 0.7, "penalty": False})
    with pytest.raises(ConfigError, match="unknown objective 'paek'"):
        resolve_objective(p, "paek")
    p = write(tmp_path, {"objectives": {"x": {"extends": "paec"}}})
    with pytest.raises(ConfigError, match="objectives.x.extends: variants name their registry objective with `method:`"):
        resolve_objective(p, "x")
    p = write(tmp_path, {"objectives": {"y": {"method": "paec"}, "x": {"method": "y"}}})
    with pytest.raises(ConfigError, match="'y' is itself a variant"):
        resolve_objective(p, "x")


def test_repository_presets_state_only_what_differs_from_the_defaults():
    """Presets in params.yaml hold only values that differ from the objective's dataclass defaults."""
    params = read_params(ROOT / "params.yaml")
    for name, entry in params["objectives"].items():
        method, settings = resolve_objective(ROOT / "params.yaml", name)
        defaults = make_objective_config(method, {})
        cfg = make_objective_config(method, settings)
        same = [k for k in settings if getattr(defaults, k) == getattr(cfg, k)]
        assert not same, f"objectives.{name}: {same} repeat the defaults of {method} (docs/objectives/{method}.md)"


@pytest.mark.parametrize(
    "section,bad,fragment",
    [
        ("rl", {"stepz": 3}, "unknown key 'profiles.p.rl.stepz'"),
        ("rl", {"steps": "ten"}, "profiles.p.rl.steps: expected an integer"),
        ("rl", {"grad_clip": -1}, "profiles.p.rl.grad_clip: must be > 0, got -1.0"),
        ("rl", {"group_size": 1}, "rl.group_size"),
        ("model", {"compute_dtype": "fp8"}, "valid values: float32, bfloat16, float16"),
        ("data", {"ops": ["/"]}, "data.ops"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, section, bad, fragment):
    p = write(tmp_path, {"profiles": {"p": base(**{section: bad})}})
    with pytest.raises(ConfigError) as e:
        load_profile(p, "p")
    assert fragment in str(e.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, {"profiles": {"p": base(rl={"lr_": 1.0})}})
    with pytest.raises(ConfigError, match="valid keys here: .*lr.*steps"):
        load_profile(p, "p")


def test_unknown_profile_and_top_level_key(tmp_path):
    p = write(tmp_path, {"profiles": {"a": {}}, "more_profiles": {"b": {}}})
    with pytest.raises(ConfigError, match="unknown profile 'c'; valid profiles: a, b"):
        load_profile(p, "c")
    p = write(tmp_path, {"profile": {}})
    with pytest.raises(ConfigError, match="unknown top-level key 'profile'"):
        read_params(p)


def test_a_base_profile_states_every_section(tmp_path):
    p = write(tmp_path, {"profiles": {"p": {s: {} for s in ("data", "model", "sft", "eval")}}})
    with pytest.raises(ConfigError, match=r"^profiles.p.rl: missing; a profile without `extends` states each of"):
        load_profile(p, "p")
    p = write(tmp_path, {"profiles": {"p": base()}, "more_profiles": {"q": {"extends": "p"}}})
    assert load_profile(p, "q").rl.steps == load_profile(p, "p").rl.steps == 100  # `{}`: the defaults


def test_extends_and_overrides(tmp_path):
    p = write(tmp_path, {"profiles": {"base": base(rl={"steps": 7, "lr": 1e-3})},
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
    with pytest.raises(ConfigError, match="unknown objective 'gpro'; valid: .*grpo"):
        make_objective_config("gpro", {})
