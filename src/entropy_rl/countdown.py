"""The *countdown* task: reach a target with a few small numbers; many correct answers per problem.

A problem is a multiset of small positive integers (4 by default) and a target, e.g. ``Use 3 5 7 to make 22.``;
the response ends in ``\\boxed{expr}``, where ``expr`` uses every given number exactly once (a multiset match:
``3 3 5`` needs two 3s), only the allowed operators (a subset of ``+-*/``, default ``+-*``) and any parentheses,
and equals the target; a trailing ``= target`` in the box is accepted (``\\boxed{3*5+7=22}``). Problems are solvable by
construction: the target is the value of a random expression over all the numbers.

* **Arithmetic** is exact rational (``Fraction``): intermediate fractions are allowed, only the final value must
  equal the target; division by zero is an error. So value and correctness depend only on the equivalence class.
* **Syntax**: integer literals (no leading zeros), ``+ - * /``, parentheses, whitespace; ``\\times``, ``\\cdot``,
  ``×`` read as ``*``, ``\\div``, ``÷`` as ``/``, ``−`` as ``-``. No unary minus or plus (the numbers are positive),
  no ``**``/``^``, no letters. Inputs longer than ``max_len``, parentheses deeper than ``max_depth`` and literals
  or intermediates with a numerator or denominator above ``max_abs`` are rejected: the verifier never hangs.
* **Answer format** (the gold ``answer``): ``"3 5 7 -> 22"`` (the numbers in prompt order, ``->``, the target),
  plus the operators in brackets when they are not the default: ``"3 5 7 -> 22 [+-*/]"``.
* **Equivalence** (the same solution, :func:`canonical`): commutativity and associativity of ``+`` and ``*``, with
  ``-`` and ``/`` folded in: a sum is a multiset of positive and negative terms, a product one of numerator and
  denominator factors, recursively. So ``3+5*7`` == ``7*5+3`` == ``(5*7)+3``, ``8-(5-3)`` == ``8+3-5``,
  ``6/(3/2)`` == ``6*2/3``; but ``5*1`` != ``5/1`` and ``(7-5)*(3-1)`` != ``(5-7)*(1-3)`` (identities of
  particular values), and distributivity is not applied (``3*(5+7)`` vs ``3*5+3*7``: the latter reuses 3 anyway).
  Equal numbers are indistinguishable. Each number used once keeps the space finite; :func:`solve` enumerates it.
"""
from __future__ import annotations

import random
import re
from fractions import Fraction
from functools import lru_cache

from .rewards import Reward, extract_boxed

DEFAULT_OPS = "+-*"
ALL_OPS = "+-*/"
_ALIASES = [("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("−", "-")]
_TOKEN = re.compile(r"([0-9]+)|(\s+)|(.)", re.S)
_ANSWER = re.compile(r"\s*([0-9]+(?:\s+[0-9]+)*)\s*->\s*(-?[0-9]+)\s*(?:\[([^\]]*)\])?\s*")


class CountdownError(ValueError):
    """An expression the verifier rejects; ``reason`` is one of ``empty``, ``malformed``, ``too_long``,
    ``too_deep``, ``too_large``, ``bad_operator``, ``division_by_zero``."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _ops(ops: str) -> str:
    if not ops or set(ops) - set(ALL_OPS) or len(set(ops)) != len(ops):
        raise ValueError(f"ops {ops!r}: expected a non-empty subset of {ALL_OPS!r}, each operator once")
    return ops


# --- normal forms (the equivalence) and expression trees ---------------------------------------------------
# A normal form is (kind, pos, neg, text): kind "n" a leaf; "+" a sum (pos/neg: terms, each a leaf or product);
# "*" a product (pos/neg: numerator/denominator factors, each a leaf or sum); text its canonical spelling.
def _leaf(v: int) -> tuple:
    return ("n", (), (), str(v))


def _make(kind: str, pos: tuple, neg: tuple) -> tuple:
    key = lambda t: (len(t[3]), t[3])  # noqa: E731  (shortest first, then by text)
    pos, neg = tuple(sorted(pos, key=key)), tuple(sorted(neg, key=key))
    inv = "-" if kind == "+" else "/"
    wrap = (lambda t: t[3]) if kind == "+" else (lambda t: f"({t[3]})" if t[0] == "+" else t[3])
    return kind, pos, neg, kind.join(map(wrap, pos)) + "".join(inv + wrap(t) for t in neg)


def _combine(op: str, a: tuple, b: tuple) -> tuple:
    kind = "+" if op in "+-" else "*"
    (ap, an), (bp, bn) = [(x[1], x[2]) if x[0] == kind else ((x,), ()) for x in (a, b)]
    return _make(kind, ap + bp, an + bn) if op in "+*" else _make(kind, ap + bn, an + bp)


def _apply(op: str, x: Fraction, y: Fraction, max_abs: int) -> Fraction:
    if op == "/" and y == 0:
        raise CountdownError("division_by_zero", "division by zero")
    v = x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x / y
    if abs(v.numerator) > max_abs or v.denominator > max_abs:
        raise CountdownError("too_large", f"an intermediate value exceeds {max_abs}")
    return v


def _render(tree) -> str:
    """A tree (an int, or ``(op, left, right)``) written with the fewest parentheses."""
    if isinstance(tree, int):
        return str(tree)
    op, a, b = tree
    la, lb = _render(a), _render(b)
    if op in "*/" and not isinstance(a, int) and a[0] in "+-":
        la = f"({la})"
    if not isinstance(b, int) and (op == "/" or (op == "*" and b[0] in "+-") or (op == "-" and b[0] in "+-")):
        lb = f"({lb})"
    return la + op + lb


# --- the safe parser ---------------------------------------------------------------------------------------
def _tokens(expr: str, max_len: int, max_abs: int) -> list:
    if not isinstance(expr, str):
        raise CountdownError("malformed", f"expected a string, got {type(expr).__name__}")
    if len(expr) > max_len:
        raise CountdownError("too_long", f"{len(expr)} characters, at most {max_len}")
    for alias, op in _ALIASES:
        expr = expr.replace(alias, op)
    if "**" in expr or "^" in expr:
        raise CountdownError("bad_operator", "exponentiation is not allowed")
    toks: list = []
    for m in _TOKEN.finditer(expr):
        digits, _, other = m.groups()
        if digits:
            if len(digits) > 1 and digits[0] == "0":
                raise CountdownError("malformed", f"number with a leading zero: {digits}")
            if len(digits) > len(str(max_abs)) or int(digits) > max_abs:
                raise CountdownError("too_large", f"a number exceeds {max_abs}")
            toks.append(int(digits))
        elif other and other not in "+-*/()":
            raise CountdownError("malformed", f"unexpected character {other!r}")
        elif other:
            toks.append(other)
    if not toks:
        raise CountdownError("empty", "empty expression")
    return toks


def _binary(level: int, toks: list, pos: int, depth: int, lim: tuple) -> tuple:
    """Parse a sum (level 0) or a product (level 1) from ``pos``: ``((value, nf, tree), next pos)``. The normal
    form of a chain ``a+b-c...`` is built once at its end, so a long chain costs O(n log n), not O(n²)."""
    kind, ops = ("+", "+-") if level == 0 else ("*", "*/")
    operand = (lambda p: _binary(1, toks, p, depth, lim)) if level == 0 else (lambda p: _atom(toks, p, depth, lim))
    (value, nf, tree), pos = operand(pos)
    terms, first, chained = (([*nf[1]], [*nf[2]]) if nf[0] == kind else ([nf], [])), nf, False
    while pos < len(toks) and isinstance(toks[pos], str) and toks[pos] in ops:
        op = toks[pos]
        (v, nf, t), pos = operand(pos + 1)
        value, tree = _apply(op, value, v, lim[1]), (op, tree, t)
        (rp, rn), flip = ((nf[1], nf[2]) if nf[0] == kind else ((nf,), ())), op in "-/"
        terms[flip].extend(rp)
        terms[not flip].extend(rn)
        chained = True
    return (value, _make(kind, tuple(terms[0]), tuple(terms[1])) if chained else first, tree), pos


def _atom(toks: list, pos: int, depth: int, lim: tuple) -> tuple:
    if pos >= len(toks):
        raise CountdownError("malformed", "the expression ends where a number was expected")
    t = toks[pos]
    if isinstance(t, int):
        return (Fraction(t), _leaf(t), t), pos + 1
    if t == "(":
        if depth >= lim[0]:
            raise CountdownError("too_deep", f"parentheses nested deeper than {lim[0]}")
        node, pos = _binary(0, toks, pos + 1, depth + 1, lim)
        if pos >= len(toks) or toks[pos] != ")":
            raise CountdownError("malformed", "unclosed '('")
        return node, pos + 1
    if t in "+-":
        raise CountdownError("malformed", f"unary {t!r} is not allowed (the numbers are positive)")
    raise CountdownError("malformed", f"unexpected {t!r}")


def _parse(expr: str, max_len: int = 200, max_depth: int = 16, max_abs: int = 10**9) -> tuple:
    """``(tokens, value, normal form, tree)`` of ``expr``; raises :class:`CountdownError`."""
    toks = _tokens(expr, max_len, max_abs)
    try:
        (value, nf, tree), pos = _binary(0, toks, 0, 0, (max_depth, max_abs))
    except RecursionError:  # only with a max_depth beyond Python's stack
        raise CountdownError("too_deep", "parentheses nested too deep for the parser") from None
    if pos != len(toks):
        raise CountdownError("malformed", f"unexpected {toks[pos]!r} after a complete expression")
    return toks, value, nf, tree


def evaluate(expr: str, max_len: int = 200, max_depth: int = 16, max_abs: int = 10**9) -> Fraction | int:
    """The exact value of ``expr`` (an int when integral, else a Fraction); raises :class:`CountdownError`."""
    value = _parse(expr, max_len, max_depth, max_abs)[1]
    return value.numerator if value.denominator == 1 else value


def numbers_used(expr: str, max_len: int = 200) -> list[int]:
    """The integer literals of ``expr`` in written order (tokenized only; raises :class:`CountdownError`)."""
    return [t for t in _tokens(expr, max_len, 10**9) if isinstance(t, int)]


def canonical(expr: str, max_len: int = 200) -> str:
    """The canonical spelling of ``expr``'s equivalence class (module docstring); itself a valid expression of
    the same value. Raises :class:`CountdownError` on what :func:`evaluate` rejects."""
    return _parse(expr, max_len)[2][3]


def check(expr: str, numbers: list[int], target: int, ops: str = DEFAULT_OPS) -> dict:
    """Verify ``expr`` against a problem: ``{"correct", "reason", "message", "value"}``; ``reason`` is ``ok``,
    ``wrong_value``, ``numbers_mismatch``, ``bad_operator`` or a :class:`CountdownError` reason. Never raises
    on bad ``expr`` (a bad ``ops`` raises ValueError)."""
    ops = _ops(ops)
    try:
        toks, value, _, _ = _parse(expr)
    except CountdownError as e:
        return {"correct": False, "reason": e.reason, "message": str(e), "value": None}
    value = value.numerator if value.denominator == 1 else value
    out = {"correct": False, "reason": "ok", "message": "", "value": value}
    bad = sorted({t for t in toks if isinstance(t, str) and t in ALL_OPS} - set(ops))
    used = [t for t in toks if isinstance(t, int)]
    if bad:
        out.update(reason="bad_operator", message=f"operator(s) {''.join(bad)} not in {ops!r}")
    elif sorted(used) != sorted(numbers):
        out.update(reason="numbers_mismatch", message=f"uses {sorted(used)}, must use {sorted(numbers)} once each")
    elif value != target:
        out.update(reason="wrong_value", message=f"value {value}, target {target}")
    else:
        out["correct"] = True
    return out


# --- the brute-force solver --------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _forms(nums: tuple, ops: str, max_abs: int = 10**9) -> dict:
    """Every equivalence class of expressions over the multiset ``nums`` (sorted): canonical text → (value, nf)."""
    if len(nums) == 1:
        return {str(nums[0]): (Fraction(nums[0]), _leaf(nums[0]))}
    out, n = {}, len(nums)
    for mask in range(1, 2**n - 1):
        left = tuple(nums[i] for i in range(n) if mask >> i & 1)
        right = tuple(nums[i] for i in range(n) if not mask >> i & 1)
        for va, a in _forms(left, ops, max_abs).values():
            for vb, b in _forms(right, ops, max_abs).values():
                for op in ops:
                    try:
                        v = _apply(op, va, vb, max_abs)
                    except CountdownError:
                        continue
                    nf = _combine(op, a, b)
                    out.setdefault(nf[3], (v, nf))
    return out


def solve(numbers: list[int], target: int, ops: str = DEFAULT_OPS) -> list[str]:
    """One canonical expression per class of correct solutions (every number once), shortest first. Exponential
    in ``len(numbers)``: fine up to 5 numbers; results are cached per multiset and ``ops``."""
    forms = _forms(tuple(sorted(numbers)), _ops(ops))
    return sorted((t for t, (v, _) in forms.items() if v == target), key=lambda t: (len(t), t))


def solution_count(numbers: list[int], target: int, ops: str = DEFAULT_OPS) -> int:
    """The number of distinct solutions (equivalence classes of correct expressions)."""
    return len(solve(numbers, target, ops))


# --- problems, prompts, SFT traces -------------------------------------------------------------------------
def prompt_text(numbers: list[int], target: int) -> str:
    """The problem as the model reads it: ``Use 3 5 7 to make 22.``"""
    return f"Use {' '.join(map(str, numbers))} to make {target}."


def format_answer(numbers: list[int], target: int, ops: str = DEFAULT_OPS) -> str:
    """The gold answer string: ``"3 5 7 -> 22"``, plus ``" [+-*/]"`` when ``ops`` is not the default."""
    return f"{' '.join(map(str, numbers))} -> {target}" + ("" if _ops(ops) == DEFAULT_OPS else f" [{ops}]")


def _answer(answer: str) -> tuple[list[int], int, str]:
    m = _ANSWER.fullmatch(answer) if isinstance(answer, str) else None
    if m is None:
        raise ValueError(f"countdown answer {answer!r}: expected e.g. '3 5 7 -> 22' or '3 5 7 -> 22 [+-*/]'")
    ops = DEFAULT_OPS if m.group(3) is None else _ops(m.group(3))
    return [int(x) for x in m.group(1).split()], int(m.group(2)), ops


def parse_answer(answer: str) -> tuple[list[int], int]:
    """``(numbers, target)`` of a gold answer ``"3 5 7 -> 22"``; ValueError with the expected format otherwise."""
    return _answer(answer)[:2]


def answer_ops(answer: str) -> str:
    """The operators a gold answer allows (``DEFAULT_OPS`` when it names none); ValueError on a bad answer."""
    return _answer(answer)[2]


def _random_tree(numbers: list[int], ops: str, rng: random.Random):
    items = list(numbers)
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        tree = (rng.choice(ops), items[i], items[j])
        items = [x for k, x in enumerate(items) if k not in (i, j)] + [tree]
    return items[0]


def generate_problems(n: int, seed: int, *, count: int = 4, low: int = 1, high: int = 9, target_low: int = 10,
                      target_high: int = 99, ops: str = DEFAULT_OPS) -> list[dict]:
    """``n`` distinct solvable problems, deterministic from ``seed``: rows ``{"numbers", "target", "prompt",
    "answer", "solutions", "expr"}`` (``expr``: the random expression the target was built from). Numbers are
    drawn from ``[low, high]`` with repeats; a target outside ``[target_low, target_high]`` or not an integer is
    redrawn; two problems are the same when their sorted numbers and targets are. ValueError when fewer than
    ``n`` distinct problems turn up."""
    ops = _ops(ops)
    if count < 1 or not 0 <= low <= high or target_low > target_high:
        raise ValueError("countdown: need count >= 1, 0 <= low <= high, target_low <= target_high")
    rng, seen, rows = random.Random(seed), set(), []
    for _ in range(200 * n + 10_000):
        if len(rows) == n:
            break
        nums = [rng.randint(low, high) for _ in range(count)]
        tree = _random_tree(nums, ops, rng)
        try:
            value = _parse(_render(tree))[1]
        except CountdownError:
            continue
        key = (tuple(sorted(nums)), value)
        if value.denominator != 1 or not target_low <= value <= target_high or key in seen:
            continue
        seen.add(key)
        t = int(value)
        rows.append({"numbers": nums, "target": t, "prompt": prompt_text(nums, t),
                     "answer": format_answer(nums, t, ops), "solutions": solution_count(nums, t, ops),
                     "expr": _render(tree)})
    if len(rows) < n:
        raise ValueError(f"countdown: only {len(rows)} distinct problems found, {n} requested")
    return rows


def solution_trace(numbers: list[int], target: int, expr: str, rng: random.Random, ops: str = ALL_OPS) -> str:
    """An SFT response for a correct ``expr``: its steps, then the box, e.g. ``5*7=35, 35+3=38. \\boxed{5*7+3}``.
    The operands of each ``+`` and ``*`` are swapped at random (``rng``), so the policy sees real choices; the
    boxed expression stays in ``expr``'s class. ValueError when ``expr`` is not a solution."""
    result = check(expr, numbers, target, ops)
    if not result["correct"]:
        raise ValueError(f"solution_trace: {expr!r} is not a solution of {prompt_text(numbers, target)!r}: "
                         f"{result['message']}")

    def shuffle(t):
        if isinstance(t, int):
            return t
        a, b = shuffle(t[1]), shuffle(t[2])
        return (t[0], b, a) if t[0] in "+*" and rng.random() < 0.5 else (t[0], a, b)

    steps: list[str] = []
    fmt = lambda v: str(v.numerator) if v.denominator == 1 else f"({v.numerator}/{v.denominator})"

    def walk(t) -> Fraction:
        if isinstance(t, int):
            return Fraction(t)
        a, b = walk(t[1]), walk(t[2])
        steps.append(f"{fmt(a)}{t[0]}{fmt(b)}={fmt(v := _apply(t[0], a, b, 10**9))}")
        return v

    tree = shuffle(_parse(expr)[3])
    walk(tree)
    return (", ".join(steps) + ". " if steps else "") + "\\boxed{" + _render(tree) + "}"


# --- reward and vote key -----------------------------------------------------------------------------------
_INT = re.compile(r"\s*(-?[0-9]{1,12})\s*")


def _split_box(response: str) -> tuple[str, str | None] | None:
    box = extract_boxed(response) if isinstance(response, str) else None
    if box is None or len(box) > 200 or box.count("=") > 1:
        return None
    lhs, eq, rhs = box.partition("=")
    return lhs, (rhs if eq else None)


def countdown_reward_fn(response: str, answer: str) -> float:
    """1.0 when the last ``\\boxed{...}`` holds a solution of the problem ``answer`` encodes (a trailing
    ``= target`` allowed, and then it must be the target), else 0.0. A malformed ``answer`` (ours, not the
    model's) raises ValueError; nothing in ``response`` makes it raise."""
    numbers, target, ops = _answer(answer)
    try:
        parts = _split_box(response)
        if parts is None:
            return 0.0
        lhs, rhs = parts
        if rhs is not None and ((m := _INT.fullmatch(rhs)) is None or int(m.group(1)) != target):
            return 0.0
        return float(check(lhs, numbers, target, ops)["correct"])
    except Exception:  # defensive: the verifier is meant never to raise on model text
        return 0.0


countdown_reward = Reward(countdown_reward_fn, name="countdown_reward")


def countdown_vote_key(response: str) -> str | None:
    """What a response votes for in maj@k: the canonical form of its boxed expression (equivalent expressions
    vote together); with an ``= N`` suffix that is not the expression's value, that form plus ``=N`` (a distinct,
    wrong claim); None without a box or for an expression the verifier rejects. All members of a class are
    equally correct when the allowed ops include ``+`` and ``*`` (the rearrangements may introduce them) and no
    divisor is zero-valued (``5/(7/(3-3))`` fails, its class-mate ``5*(3-3)/7`` does not)."""
    try:
        parts = _split_box(response)
        if parts is None:
            return None
        lhs, rhs = parts
        _, value, nf, _ = _parse(lhs)
        if rhs is None or ((m := _INT.fullmatch(rhs)) is not None and int(m.group(1)) == value):
            return nf[3]
        return nf[3] + "=" + rhs.strip()
    except Exception:
        return None
