import pytest

from entropy_rl.rewards import arithmetic_reward, extract_boxed, get_reward


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
