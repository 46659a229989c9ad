"""Small batch-level controllers (methods.md §7 S10): pure functions on plain-dict state.

The state is a ``dict`` of Python numbers, so it is its own ``state_dict``: it lives in ``RLRun.state`` and is
saved in and restored from every RL checkpoint unchanged, so a resumed run continues with the exact values.
Controllers run once per RL step, after it, on that step's log row; the new values apply from the next step, so
every update of one step sees the same values (TRL does the same per optimizer step).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


# ---------------------------------------------------------------------------------------------- adaptive α
def adaptive_coef_init(coef0: float) -> dict:
    """Before the first step: the initial coefficient, and no entropy measured yet (so no bonus is applied)."""
    return {"entropy_coef": float(coef0), "entropy_last": None}


def adaptive_coef_update(state: dict, entropy: float, *, target: float, delta: float, lo: float, hi: float) -> dict:
    """Skywork-OR1 / TRL target-entropy controller (methods.md §5.4): after a step with mean token entropy ``entropy``,
    ``c <- min(c + delta, hi)`` if ``entropy <= target`` else ``max(c - delta, lo)``; remember ``entropy`` for the gate."""
    c = float(state["entropy_coef"])
    c = min(c + delta, hi) if entropy <= target else max(c - delta, lo)
    return {**state, "entropy_coef": c, "entropy_last": float(entropy)}


def adaptive_coef_applied(state: dict, target: float) -> float:
    """The coefficient applied this step: ``c`` if the previous step's entropy was <= target, else 0 (TRL's gate)."""
    last = state.get("entropy_last")
    return float(state["entropy_coef"]) if last is not None and last <= target else 0.0


# ---------------------------------------------------------------------------------------------- annealing
def anneal_scale(step: int, total_steps: int, schedule: str, start: float, final: float = 0.0) -> float:
    """Multiplier of an annealed coefficient at 0-based ``step`` of ``total_steps``: 1 until the fraction ``start``
    of training, then ``linear`` or ``cosine`` down to ``final`` at the last step (``constant``: always 1).
    After Lei & Baehr (methods.md §4A): a covariance penalty whose coefficient goes to 0 is asymptotically unbiased."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    progress = step / max(total_steps - 1, 1)  # 0 at the first step, 1 at the last
    if progress <= start:
        return 1.0
    x = min((progress - start) / max(1.0 - start, 1e-12), 1.0)  # 0 -> 1 over the annealing phase
    shape = 1.0 - x if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))
    return final + (1.0 - final) * shape
