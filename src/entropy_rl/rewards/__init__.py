"""Verifiable rewards, all with the signature ``reward(response, answer) -> float``.

* ``arithmetic``: the synthetic task; the last ``\\boxed{...}`` must be the correct integer (in-process, cheap).
* ``math``: the real benchmarks; math-verify extraction then ``verify(gold, pred)``, run in a pool of worker
  processes with a per-item timeout (:mod:`.pool`, :mod:`.verifier`), so a garbage or enormous response is
  scored 0 in bounded time and never hangs the run.

``get_reward(name)`` returns one of these by name (the RL loop and evaluation use it).
"""
from __future__ import annotations

from typing import Callable

from ..registry import Registry, registry
from .pool import default_verifier


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


def arithmetic_vote_key(response: str) -> str | None:
    """What a response votes for in maj@k on the arithmetic task: its boxed integer (``" 1,286 "`` and
    ``"1286"`` vote together), else the stripped boxed text, else nothing."""
    boxed = extract_boxed(response)
    if boxed is None:
        return None
    as_int = _as_int(boxed)
    return str(as_int) if as_int is not None else boxed.strip()


def math_reward(response: str, answer: str) -> float:
    """1.0 when math-verify finds the response's final answer equivalent to ``answer`` (gold first), else 0.0.

    Runs in the process-wide default pool (:func:`.pool.default_verifier`), started on first use."""
    return float(default_verifier().score([response], [answer])[0]["correct"])


REWARDS: Registry[Callable[[str, str], float]] = registry("reward")
REWARDS.register("arithmetic", arithmetic_reward)
REWARDS.register("math", math_reward)


def get_reward(task: str) -> Callable[[str, str], float]:
    return REWARDS.get(task)
