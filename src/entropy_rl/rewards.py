"""Verifiable rewards.

The synthetic arithmetic task checks the last ``\\boxed{...}`` of a response against the integer answer.
(The real math benchmarks use math-verify with process-level timeouts; see the evaluation issue.)
"""
from __future__ import annotations


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed); None if there is none
    or it is not closed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth, j = 1, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
        j += 1
    return None


def _as_int(s: str | None) -> int | None:
    if s is None:
        return None
    s = s.strip().replace(",", "")
    try:
        return int(s)
    except ValueError:
        return None


def arithmetic_reward(response: str, answer: str) -> float:
    """1.0 when the last boxed answer is the correct integer, else 0.0 (no partial credit, no format bonus)."""
    got, want = _as_int(extract_boxed(response)), _as_int(answer)
    return float(got is not None and got == want)


REWARDS = {"arithmetic": arithmetic_reward}


def get_reward(task: str):
    if task not in REWARDS:
        raise KeyError(f"unknown reward task '{task}'; valid: {', '.join(sorted(REWARDS))}")
    return REWARDS[task]
