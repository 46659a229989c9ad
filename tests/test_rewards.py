import time

import pytest

from entropy_rl.rewards import Reward, arithmetic_reward, extract_boxed, get_reward, math_reward, score_batch
from entropy_rl.rewards import pool as P


@pytest.mark.parametrize("text,want", [
    ("\\boxed{12}", "12"),
    ("7+9=16;\\boxed{936}", "936"),
    ("\\boxed{1}\\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{12", None),
    ("no answer", None),
    ("", None),
])
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


def test_arithmetic_reward():
    assert arithmetic_reward("3+4=7;\\boxed{1286}", "1286") == 1.0
    assert arithmetic_reward("\\boxed{ 1,286 }", "1286") == 1.0
    assert arithmetic_reward("\\boxed{1285}", "1286") == 0.0
    assert arithmetic_reward("\\boxed{x}", "1286") == 0.0
    assert arithmetic_reward("1286", "1286") == 0.0  # no box, no reward
    with pytest.raises(KeyError, match="valid: arithmetic"):
        get_reward("chess")


def test_arithmetic_vote_key():
    from entropy_rl.rewards import arithmetic_vote_key

    assert arithmetic_vote_key("7+9=16;\\boxed{ 1,286 }") == arithmetic_vote_key("\\boxed{1286}") == "1286"
    assert arithmetic_vote_key("\\boxed{x}") == "x" and arithmetic_vote_key("1286") is None


# ----------------------------------------------------------------------------------------------------------
# Reward objects and the batch path
# ----------------------------------------------------------------------------------------------------------
TIMEOUT = 1.5
SLOW = "\\boxed{" + "\\frac{" * 50 + "1" + "}{2}" * 50 + "}"  # a valid answer math-verify cannot check in time
MIXED = [  # (response, gold): right, wrong, garbage
    ("so $\\boxed{\\frac{1}{2}}$", "0.5"),
    ("The answer is $0.5$.", "\\frac{1}{2}"),
    ("\\boxed{3}", "4"),
    ("no answer at all", "4"),
    ("".join(chr(33 + (i * 7919) % 90) for i in range(3000)), "7"),
    ("First $\\frac{5}{2}$. So \\boxed{\\unparseable{{}}", "\\frac{5}{2}"),
    ("\\boxed{5}, wait, \\boxed{6}", "6"),  # read as {5, 6}: wrong
    ("$\\boxed{5}$, wait, $\\boxed{6}$", "6"),  # read as 6: right
    ("", "1"),
    ("\\boxed{69, 84}", "$69$,$84$"),
]


def test_rewards_are_callable_objects_with_a_batch():
    for name in ("arithmetic", "math"):
        reward = get_reward(name)
        assert isinstance(reward, Reward) and callable(reward) and callable(reward.batch)
    assert get_reward("math") is math_reward and get_reward("arithmetic") is arithmetic_reward
    responses, answers = ["\\boxed{1286}", "\\boxed{ 1,286 }", "\\boxed{1285}", "1286"], ["1286"] * 4
    want = [arithmetic_reward(r, a) for r, a in zip(responses, answers)]
    assert want == [1.0, 1.0, 0.0, 0.0]
    assert arithmetic_reward.batch(responses, answers) == score_batch(arithmetic_reward, responses, answers) == want
    assert arithmetic_reward.batch([], []) == []
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        arithmetic_reward.batch(["a", "b"], ["a"])


def test_score_batch_calls_a_plain_function_per_item():
    calls = []

    def exact(response, answer):
        calls.append(response)
        return response == answer

    assert score_batch(exact, ["a", "b", "c"], ["a", "a", "c"]) == [1.0, 0.0, 1.0] and calls == ["a", "b", "c"]
    with pytest.raises(ValueError, match="1 responses but 2 answers"):
        score_batch(exact, ["a"], ["a", "b"])


@pytest.fixture
def small_default_pool(monkeypatch):
    """The process-wide verifier behind ``math`` replaced by a 2-worker pool with a short timeout; it counts the
    pool's ``map`` calls."""
    v = P.MathVerifier(workers=2, timeout=TIMEOUT)
    v.pool.start(wait=True)
    monkeypatch.setattr(P, "_DEFAULT", v)
    v.maps = []
    real_map = v.pool.map

    def counting_map(fn, items):
        v.maps.append(len(items))
        return real_map(fn, items)

    monkeypatch.setattr(v.pool, "map", counting_map)
    yield v
    v.close()


def test_math_batch_is_one_pool_map_and_equals_the_per_item_path(small_default_pool):
    v = small_default_pool
    responses, golds = [r for r, _ in MIXED], [g for _, g in MIXED]
    per_item = [math_reward(r, g) for r, g in MIXED]
    assert v.maps == [1] * len(MIXED)
    v.maps.clear()
    batched = math_reward.batch(responses, golds)
    assert v.maps == [len(MIXED)]  # the whole batch in one map
    assert batched == per_item == score_batch(math_reward, responses, golds)
    assert per_item == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]


def test_math_batch_checks_slow_items_in_parallel(small_default_pool):
    """Two items that time out take about one timeout together with 2 workers, not two."""
    v = small_default_pool
    t0 = time.monotonic()
    assert math_reward.batch([SLOW, SLOW], ["1", "1"]) == [0.0, 0.0]
    wall = time.monotonic() - t0
    assert v.maps == [2] and v.pool.stats["timeout"] == 2
    assert TIMEOUT <= wall < 2 * TIMEOUT, wall
