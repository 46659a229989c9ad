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
