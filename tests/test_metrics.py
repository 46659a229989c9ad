import itertools
from math import comb

import pytest

from entropy_rl.metrics import maj_at_k, majority_answer, pass_at_k, summarize


def brute_force_pass_at_k(outcomes, k):
    """Fraction of k-subsets of the n samples with at least one correct sample."""
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(outcomes, k))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_ties_go_to_first_seen_and_none_does_not_vote():
    assert majority_answer(["3", "5", "5", "3"]) == "3"  # 2-2 tie: "3" appeared first
    assert majority_answer([None, None, "7"]) == "7"
    assert majority_answer([None, None]) is None
    assert maj_at_k(["3", "5", "5", "3"], [False, True, True, False], 4) == 0.0
    assert maj_at_k(["3", "5", "5", "3"], [False, True, True, False], 3) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_summarize_hand_computed():
    recs = [
        {"correct": [True, False], "answers": ["1", "2"], "lengths": [3, 5], "entropy_sums": [0.3, 1.0], "truncated": [False, True]},
        {"correct": [False, False], "answers": [None, "9"], "lengths": [2, 2], "entropy_sums": [0.2, 0.1], "truncated": [False, False]},
    ]
    m = summarize(recs)
    assert m["pass@1"] == pytest.approx(0.25) and m["avg@2"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx(0.5)
    assert m["mean_length"] == pytest.approx(3.0) and m["truncation_rate"] == pytest.approx(0.25)
    assert m["mean_token_entropy"] == pytest.approx(1.6 / 12)
    assert comb(2, 1) == 2


def _brute_force_maj_at_k(votes, correct, k):
    """Count the first k votes by hand; ties go to the earliest-seen class; judged by its first sample."""
    counts, first_seen = {}, {}
    for i, v in enumerate(votes[:k]):
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
            first_seen.setdefault(v, i)
    if not counts:
        return 0.0
    best = max(counts.values())
    winner = min((v for v in counts if counts[v] == best), key=first_seen.get)
    return float(correct[first_seen[winner]])


def test_summarize_pass_and_maj_agree_with_enumeration():
    """Random prompts, every k <= n: pass@k against subset enumeration, maj@k against a hand count."""
    import random

    rng = random.Random(0)
    for n in (3, 6):
        prompts = []
        for _ in range(12):
            correct = [rng.random() < 0.4 for _ in range(n)]
            votes = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
            prompts.append({"correct": correct, "answers": list(votes), "votes": votes, "lengths": [1] * n,
                            "entropy_sums": [0.0] * n, "truncated": [False] * n})
        m = summarize(prompts)
        assert sorted(k for k in m if k.startswith("pass@")) == sorted(f"pass@{k}" for k in range(1, n + 1))
        for k in range(1, n + 1):
            assert m[f"pass@{k}"] == pytest.approx(sum(brute_force_pass_at_k(p["correct"], k) for p in prompts) / 12)
            assert m[f"maj@{k}"] == pytest.approx(
                sum(_brute_force_maj_at_k(p["votes"], p["correct"], k) for p in prompts) / 12)


def test_maj_ties_with_vote_classes():
    # 2-2 tie between classes "A" and "B": "B" was seen first among the 4, and its first sample is wrong
    votes, correct = ["B", "A", "A", "B", "A"], [False, True, True, False, True]
    assert maj_at_k(votes, correct, 4) == 0.0 and maj_at_k(votes, correct, 5) == 1.0
    assert maj_at_k(votes, correct, 1) == 0.0 and maj_at_k(votes, correct, 2) == 0.0  # 1-1 tie: "B" first
    # within a class the first sample decides (math-verify's equivalence need not match the gold identically)
    assert maj_at_k(["A", "A", "B"], [True, False, False], 3) == 1.0
    assert maj_at_k(["A", "A", "B"], [False, True, False], 3) == 0.0
    # summarize votes on classes ("votes"), not on raw answer strings
    rec = {"correct": [True, True, False], "answers": ["\\frac12", "0.5", "3"], "votes": ["1/2", "1/2", "3"],
           "lengths": [1, 1, 1], "entropy_sums": None, "truncated": [False] * 3}
    m = summarize([rec])
    assert m["maj@3"] == 1.0 and "mean_token_entropy" not in m
    rec2 = {**rec, "correct": [False, True, True], "answers": ["3", "\\frac12", "0.5"], "votes": ["3", "1/2", "1/2"]}
    assert summarize([rec2])["maj@3"] == 1.0  # class "1/2" wins 2-1
    no_classes = {k: v for k, v in rec2.items() if k != "votes"}
    assert summarize([no_classes])["maj@3"] == 0.0  # raw strings: a 1-1-1 tie, won by "3" (seen first)


def test_macro_average_and_offline_recomputation():
    from entropy_rl.metrics import macro_average, metrics_from_samples

    a = {"n_prompts": 2, "n_samples": 2, "pass@1": 0.5, "maj@2": 1.0, "mean_length": 4.0}
    b = {"n_prompts": 3, "n_samples": 2, "pass@1": 0.1, "maj@2": 0.0, "mean_length": 8.0}
    m = macro_average({"x": a, "y": b})
    assert m["n_prompts"] == 5 and m["pass@1"] == pytest.approx(0.3) and m["maj@2"] == 0.5 and m["mean_length"] == 6
    assert m["benchmarks"] == {"x": a, "y": b} and m["macro_over"] == ["x", "y"]
    rows = [  # shuffled samples of two prompts of one benchmark and one of another
        {"benchmark": "p", "id": "1", "sample": 1, "correct": False, "answer": "2", "vote": "2", "length": 5,
         "entropy_sum": 1.0, "truncated": True},
        {"benchmark": "q", "id": "9", "sample": 0, "correct": True, "answer": "7", "vote": "7", "length": 2,
         "entropy_sum": 0.2, "truncated": False},
        {"benchmark": "p", "id": "1", "sample": 0, "correct": True, "answer": "1", "vote": "1", "length": 3,
         "entropy_sum": 0.3, "truncated": False},
        {"benchmark": "q", "id": "9", "sample": 1, "correct": True, "answer": "7.0", "vote": "7", "length": 2,
         "entropy_sum": 0.2, "truncated": False},
    ]
    m = metrics_from_samples(rows)
    assert m["macro_over"] == ["p", "q"]
    assert m["benchmarks"]["p"]["maj@1"] == 1.0 and m["benchmarks"]["p"]["maj@2"] == 1.0  # 1-1 tie: sample 0 first
    assert m["benchmarks"]["p"]["truncation_rate"] == 0.5 and m["benchmarks"]["q"]["pass@1"] == 1.0
    assert m["pass@1"] == pytest.approx(0.75) and m["mean_token_entropy"] == pytest.approx((1.3 / 8 + 0.4 / 4) / 2)
