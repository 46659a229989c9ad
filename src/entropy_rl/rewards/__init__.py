"""Verifiable rewards: each is a :class:`Reward`, callable as ``reward(response, answer) -> float`` and with
``reward.batch(responses, answers) -> list[float]`` for a whole batch.

* ``arithmetic``: the synthetic task; the last ``\\boxed{...}`` must be the correct integer (in-process, cheap;
  ``batch`` maps it over the items).
* ``math``: the real benchmarks; math-verify extraction then ``verify(gold, pred)``, run in a pool of worker
  processes with a per-item timeout (:mod:`.pool`, :mod:`.verifier`), so a garbage or enormous response is
  scored 0 in bounded time and never hangs the run. ``batch`` sends the whole batch to the pool in one
  ``map``, so the workers check items in parallel and one slow item holds up only its own worker.

``get_reward(name)`` returns one of these by name (the RL loop and evaluation use it); :func:`score_batch`
scores a batch with any reward, a :class:`Reward` or a plain ``(response, answer) -> float`` function.
"""
from __future__ import annotations

import random

from typing import Callable, Sequence

from ..registry import Registry, registry
from .pool import default_verifier


def extract_boxed(text: str) -> str | None:
    """Content of the ``\\boxed{...}`` opened last in ``text`` (nested braces allowed; in ``\\boxed{\\boxed{1}}``
    the inner one); None if there is none or that one is not closed (an earlier closed box is not used).
    Used by ``arithmetic``; ``math`` extracts with math-verify instead (:mod:`.verifier`, step 2)."""
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


class Reward:
    """A verifiable reward: ``reward(response, answer) -> float`` scores one response; ``reward.batch(responses,
    answers) -> list[float]`` scores a batch, with ``batch_fn`` when given (e.g. one call to a worker pool), else
    by calling ``fn`` on each item. Picklable when ``fn`` and ``batch_fn`` are module-level functions."""

    def __init__(self, fn: Callable[[str, str], float],
                 batch_fn: Callable[[list[str], list[str]], list[float]] | None = None, name: str | None = None):
        self.fn, self.batch_fn = fn, batch_fn
        self.__name__ = name or fn.__name__
        self.__doc__ = fn.__doc__

    def __call__(self, response: str, answer: str) -> float:
        return float(self.fn(response, answer))

    def batch(self, responses: Sequence[str], answers: Sequence[str]) -> list[float]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        if not responses:
            return []
        if self.batch_fn is None:
            return [float(self.fn(r, a)) for r, a in zip(responses, answers)]
        return [float(x) for x in self.batch_fn(list(responses), list(answers))]

    def __repr__(self) -> str:
        return f"Reward({self.__name__}{', batched' if self.batch_fn is not None else ''})"


def score_batch(reward_fn: Callable[[str, str], float], responses: Sequence[str],
                answers: Sequence[str]) -> list[float]:
    """``reward_fn``'s score of each response against its answer: through ``reward_fn.batch`` when it has one
    (a :class:`Reward`), else ``reward_fn(response, answer)`` item by item (a plain function)."""
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    batch = getattr(reward_fn, "batch", None)
    if callable(batch):
        return batch(responses, answers)
    return [float(reward_fn(r, a)) for r, a in zip(responses, answers)]


def _arithmetic(response: str, answer: str) -> float:
    """1.0 when the last boxed answer is the correct integer, else 0.0 (no partial credit, no format bonus)."""
    got, want = _as_int(extract_boxed(response)), _as_int(answer)
    return float(got is not None and got == want)


arithmetic_reward = Reward(_arithmetic, name="arithmetic_reward")


def arithmetic_vote_key(response: str) -> str | None:
    """What a response votes for in maj@k on the arithmetic task: its boxed integer (``" 1,286 "`` and
    ``"1286"`` vote together), else the stripped boxed text, else nothing."""
    boxed = extract_boxed(response)
    if boxed is None:
        return None
    as_int = _as_int(boxed)
    return str(as_int) if as_int is not None else boxed.strip()


def _math_batch(responses: list[str], answers: list[str]) -> list[float]:
    """Each response scored against its answer in one ``map`` over the default pool's workers."""
    return [float(s["correct"]) for s in default_verifier().score(responses, answers)]


def _math(response: str, answer: str) -> float:
    """1.0 when math-verify extracts an answer from the response (:func:`.verifier.parse_pred`) that it finds
    equivalent to ``answer`` (gold first), else 0.0; also 0.0 when the check does not finish within the pool's
    timeout (10 s) or fails.

    Runs in the process-wide default pool (:func:`.pool.default_verifier`), started on first use."""
    return _math_batch([response], [answer])[0]


math_reward = Reward(_math, _math_batch, name="math_reward")

def random_rewards(n: int, seed: int | str, p: float = 0.5) -> list[float]:
    """``n`` seeded coin flips, 1.0 with probability ``p``: a reward independent of the responses (the random-reward
    probe, ``rl.reward: random``). The same seed gives the same flips whatever was sampled."""
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


REWARDS: Registry[Reward] = registry("reward")
REWARDS.register("arithmetic", arithmetic_reward)
REWARDS.register("math", math_reward)


def get_reward(task: str) -> Reward:
    return REWARDS.get(task)
