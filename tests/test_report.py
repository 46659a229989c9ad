"""Gathering runs, the seed table, and the papers' claims as verdicts (report.py) and their figures (plots.py)."""
import pandas as pd
import pytest

from entropy_rl import plots, report
from entropy_rl.io import write_json

from conftest import fake_run


@pytest.fixture
def two_dirs(tmp_path):
    a, b = tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny-seeds"
    write_json(a / "sft" / "eval" / "metrics.json", {"pass@1": 0.3, "maj@8": 0.4})
    fake_run(a, "grpo-s0", (0.2, 0.04), {"pass@1": 0.60, "maj@8": 0.70})
    for seed, (late, maj) in enumerate([(0.05, 0.72), (0.06, 0.74)], start=1):
        fake_run(b, f"grpo-s{seed}", (0.2, late), {"pass@1": 0.62, "maj@8": maj})
    for seed, maj in enumerate([0.80, 0.82, 0.84]):
        # the floor penalty active in 1 of 4 steps (run mean 0.25 >= 0.1); the soft mask over 3 % of positions (< 5 %)
        fake_run(b, f"paec-s{seed}", (0.2, 0.10), {"pass@1": 0.6, "maj@8": maj},
                 logged={"stats/paec_penalty_active": [0, 1, 0, 0], "stats/paec_mask_frac": 0.03})
        fake_run(b, f"paec-no_mask-s{seed}", (0.2, 0.10), {"pass@1": 0.6, "maj@8": maj - 0.01})
    return a, b


def test_collect_merges_directories_and_rejects_a_run_found_twice(two_dirs, tmp_path):
    a, b = two_dirs
    runs = report.collect([a, b])
    assert set(runs.eval_metrics) == {"sft", "grpo-s0", "grpo-s1", "grpo-s2", "paec-s0", "paec-s1", "paec-s2",
                                      "paec-no_mask-s0", "paec-no_mask-s1", "paec-no_mask-s2"}
    assert set(runs.steps["objective"]) == {"grpo", "paec", "paec-no_mask"}
    fake_run(b, "grpo-s0", (0.2, 0.1), {})
    with pytest.raises(ValueError, match="run grpo-s0 found twice"):
        report.collect([a, b])
    with pytest.raises(FileNotFoundError, match="no such runs directory"):
        report.collect([a, tmp_path / "nope"])


def test_objective_table_means_and_sds_over_seeds(two_dirs):
    table = report.objective_table(report.collect(list(two_dirs)))
    assert table.loc["grpo", "seeds"] == 3 and table.loc["paec", "seeds"] == 3
    maj = [0.70, 0.72, 0.74]
    assert table.loc["grpo", "maj@8"] == pytest.approx(sum(maj) / 3)
    assert table.loc["grpo", "maj@8 sd"] == pytest.approx(0.02)  # sample sd of 0.70, 0.72, 0.74
    # 4 steps, last half = steps 2 and 3: entropy 0.2 + (late - 0.2) * {2/3, 1}
    lates = [0.2 + (e - 0.2) * (2 / 3 + 1) / 2 for e in (0.04, 0.05, 0.06)]
    assert table.loc["grpo", "train_entropy_late"] == pytest.approx(sum(lates) / 3)
    assert table.loc["grpo", "entropy_change"] == pytest.approx(sum(x / 0.2 - 1 for x in lates) / 3)
    assert "sft" not in table.index  # the SFT start has no training run


@pytest.mark.parametrize("diff,spread,seeds,expected", [
    (0.5, 0.1, 3, "holds"), (-0.5, 0.1, 3, "reversed"), (0.05, 0.1, 3, "within seed spread"),
    (-0.05, 0.1, 3, "not reproduced (within seed spread)"), (0.5, 0.0, 1, "1 seed, no verdict (as claimed)"),
    (-0.5, 0.0, 1, "1 seed, no verdict (against the claim)"),
])
def test_verdict(diff, spread, seeds, expected):
    assert report.verdict(diff, spread, seeds) == expected


def test_claim_verdicts_on_gathered_runs(two_dirs):
    table = report.objective_table(report.collect(list(two_dirs)))
    rows = {(r["method"], r["baseline"], r["metric"]): r for r in report.claim_verdicts(table)}
    # present: grpo, paec, paec-no_mask; so only the PAEC claims that name two of them
    assert set(rows) == {("paec", "grpo", "maj@8"), ("paec", "paec-no_mask", "maj@8")}
    r = rows[("paec", "grpo", "maj@8")]
    assert (r["value"], r["baseline_value"]) == (pytest.approx(0.82), pytest.approx(0.72))
    assert r["sd_sum"] == pytest.approx(0.04) and r["verdict"] == "holds"
    assert r["binding"] == "stats/paec_penalty_active" and r["binding_value"] == pytest.approx(0.25) and r["bound"]
    # paec against its no-mask ablation: the mask covered 3 % of positions, under the claim's 5 %: not tested
    r = rows[("paec", "paec-no_mask", "maj@8")]
    assert r["binding_value"] == pytest.approx(0.03) and r["bound"] is False
    assert r["verdict"] == report.INACTIVE == "not tested (mechanism inactive)"


def test_a_claim_without_its_diagnostic_logged_is_not_tested_and_one_without_a_diagnostic_keeps_its_verdict():
    table = pd.DataFrame({"maj@8": [0.8, 0.7], "maj@8 sd": [0.01, 0.01], "seeds": [3, 3]}, index=["paec", "grpo"])
    (row,) = report.claim_verdicts(table)  # no stats/paec_penalty_active column: never measured, so not bound
    assert row["binding_value"] != row["binding_value"] and row["verdict"] == report.INACTIVE
    table["stats/paec_penalty_active"] = [0.5, float("nan")]
    assert report.claim_verdicts(table)[0]["verdict"] == "holds"
    bf16 = [c for c in report.CLAIMS if c.method == "dapo-bf16"]
    assert bf16 and all(c.binding is None for c in bf16)  # no diagnostic: the verdict stands and says so


def test_a_baseline_diagnostic_is_read_from_the_baseline_and_the_markdown_shows_it():
    cols = {"train_entropy_late": [0.10, 0.05], "train_entropy_late sd": [0.01, 0.01], "seeds": [3, 3],
            "stats/clip_frac_high": [0.5, 0.002]}  # DAPO's own share is high, GRPO's (the baseline's) is 0.2 %
    table = pd.DataFrame(cols, index=["dapo", "grpo"])
    (row,) = report.claim_verdicts(table)
    assert row["binding_of"] == "baseline" and row["binding_value"] == pytest.approx(0.002)
    assert row["verdict"] == report.INACTIVE
    table.loc["grpo", "stats/clip_frac_high"] = 0.02
    assert report.claim_verdicts(table)[0]["verdict"] == "holds"
    for k in ("mean_length", "pass@1", "pass@8", "maj@8", "entropy_change"):
        table[k], table[f"{k} sd"] = 0.0, 0.0
    table["train_entropy_late sd"] = 0.01
    md = report.results_markdown(table, report.claim_table(table))
    assert "`stats/clip_frac_high` (of `grpo`) 0.02 (bound if >= 0.01): yes" in md


def test_lower_is_the_claimed_direction_for_length_and_bf16():
    table = pd.DataFrame({"train_entropy_late": [0.10, 0.05], "train_entropy_late sd": [0.01, 0.01], "seeds": [3, 3]},
                         index=["dapo", "dapo-bf16"])
    (row,) = report.claim_verdicts(table)
    assert row["method"] == "dapo-bf16" and row["verdict"] == "holds"
    table.loc["dapo-bf16", "train_entropy_late"] = 0.2
    assert report.claim_verdicts(table)[0]["verdict"] == "reversed"


def test_every_claim_names_a_figure_that_shows_both_objectives():
    for c in report.CLAIMS:
        objectives = report.figure_objectives(c.figure)
        assert c.method in objectives and c.baseline in objectives, c
        assert c.direction in ("higher", "lower")
        assert c.metric in (*report.COMPARE_KEYS, *report.ENTROPY_KEYS)


def test_claim_figures_draw_only_what_ran(two_dirs):
    runs = report.collect(list(two_dirs))
    assert plots.claim_figure(runs, "erpo") is None  # no ERPO run
    fig = plots.claim_figure(runs, "paec")  # bars: grpo, paec, paec-no_mask
    assert fig is not None and len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["grpo", "paec", "paec-no_mask"]
    plots.plt.close(fig)
    assert plots.claim_figure(runs, "entropy") is None  # GRPO alone
    fake_run(two_dirs[1], "dapo-s0", (0.2, 0.3), {})
    fig = plots.claim_figure(report.collect(list(two_dirs)), "entropy")  # curves: grpo and dapo
    entropy_panel = fig.axes[0]
    assert entropy_panel.get_title() == "token entropy (nats)"
    assert sorted(round(line.get_ydata()[0], 6) for line in entropy_panel.lines) == [0.2, 0.2]
    plots.plt.close(fig)
