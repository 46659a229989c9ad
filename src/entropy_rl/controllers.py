"""Small batch-level controllers (docs/methods.md §7 S10): pure functions on plain-dict state.

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
    """Skywork-OR1 / TRL target-entropy controller (docs/methods.md §5.4): after a step with mean token entropy ``entropy``,
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
    After Lei & Baehr (docs/methods.md §4A): a covariance penalty whose coefficient goes to 0 is asymptotically unbiased."""
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


# ---------------------------------------------------------------------------------------------- entropy target
def entropy_target(state: dict, entropy: float, fixed: float | None) -> float:
    """The target H* of an entropy controller: ``fixed`` if given, else ``state['entropy_target']``, else (after the
    first step) that step's ``entropy`` (docs/methods.md §2(b), §9: "the initial entropy, measured at step 0")."""
    if fixed is not None:
        return float(fixed)
    if state.get("entropy_target") is not None:
        return float(state["entropy_target"])
    return float(entropy)


# ---------------------------------------------------------------------------------------------- REPO ζ
def zeta_update(zeta: float, entropy: float, target: float, *, lo: float, hi: float, signed: bool = True) -> float:
    """REPO's ζ controller (docs/methods.md §9, two-sided): entropy below target doubles a positive ζ (up to ``hi``; 0
    becomes ``lo``) and halves a negative one (once |ζ| would fall below ``lo`` it becomes +``lo``); entropy above
    target halves a positive ζ (below ``lo`` it becomes -``lo``) and doubles a negative one (down to -``hi``).
    ``signed=False`` keeps ζ in [lo, hi] (papernotes: double below, halve above). Equal entropy: unchanged."""
    if entropy == target:
        return zeta
    up = entropy < target  # entropy too low: push it up with a larger (more positive) ζ
    if not signed:
        return min(max(2.0 * zeta, lo), hi) if up else max(0.5 * zeta, lo)
    if zeta == 0.0:
        return lo if up else -lo
    sign = 1.0 if zeta > 0 else -1.0
    if (zeta > 0) == up:  # ζ already pushes the right way: its magnitude doubles, up to hi
        return sign * min(2.0 * abs(zeta), hi)
    mag = 0.5 * abs(zeta)
    return sign * mag if mag >= lo else -sign * lo  # halved past the floor: the other side, at the floor


# ---------------------------------------------------------------------------------------------- ADAPO ε_high
def clip_high_update(eps: float, entropy: float, target: float, *, factor: float, lo: float, hi: float) -> float:
    """ADAPO's adaptive upper clip (docs/methods.md §2(f)4 [I]): ``min(eps * factor, hi)`` when entropy is below the
    target, ``max(eps / factor, lo)`` above it, unchanged when equal."""
    if entropy < target:
        return min(eps * factor, hi)
    if entropy > target:
        return max(eps / factor, lo)
    return eps


# ---------------------------------------------------------------------------------------------- PAEC anchor
def anchor_init() -> dict:
    """PAEC's anchor before the first step: nothing measured, no anchor yet."""
    return {"anchor_sum": 0.0, "anchor_steps": 0, "anchor": None}


def anchor_update(state: dict, value: float, window: int) -> dict:
    """Add this step's ``value`` to the running sum until ``window`` steps are seen, then freeze
    ``anchor = sum / window`` (docs/methods.md §3(a)4, §3(f)4: H0 from the first K = 4 steps)."""
    if state.get("anchor") is not None:
        return dict(state)
    total, n = float(state["anchor_sum"]) + float(value), int(state["anchor_steps"]) + 1
    return {**state, "anchor_sum": total, "anchor_steps": n, "anchor": total / n if n >= window else None}
