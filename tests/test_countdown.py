import itertools
import random
import time
from fractions import Fraction

import pytest

from entropy_rl.countdown import (CountdownError, answer_ops, canonical, check, countdown_reward, countdown_reward_fn,
                                  countdown_vote_key, evaluate, format_answer, generate_problems, numbers_used,
                                  parse_answer, prompt_text, solution_count, solution_trace, solve)

ALPHABET = set("0123456789+-*/()=, .\\boxed{}") | set("Use to make")


def box(expr: str) -> str:
    return "\\boxed{" + expr + "}"


@pytest.fixture(scope="module")
def problems():
    return generate_problems(300, seed=0)


# ----------------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------------
def test_problems_are_solvable_distinct_and_in_range(problems):
    assert len(problems) == 300
    keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in problems}
    assert len(keys) == len(problems)
    for r in problems:
        assert len(r["numbers"]) == 4 and all(1 <= x <= 9 for x in r["numbers"])
        assert 10 <= r["target"] <= 99
        assert check(r["expr"], r["numbers"], r["target"])["correct"], r
        sols = solve(r["numbers"], r["target"])
        assert sols and r["solutions"] == len(sols) == solution_count(r["numbers"], r["target"])
        assert canonical(r["expr"]) in sols
        assert parse_answer(r["answer"]) == (r["numbers"], r["target"])
        assert r["prompt"] == prompt_text(r["numbers"], r["target"])
        assert set(r["prompt"]) <= ALPHABET and len(r["prompt"]) < 40


def test_most_problems_have_several_solutions(problems):
    counts = [r["solutions"] for r in problems]
    share = sum(c >= 2 for c in counts) / len(counts)
    print(f"countdown defaults: {share:.1%} of problems with >= 2 solutions, mean {sum(counts) / len(counts):.2f}")
    assert share >= 0.5


def test_generator_is_reproducible_from_the_seed(problems):
    assert generate_problems(300, seed=0) == problems
    assert generate_problems(50, seed=1) != problems[:50]
    three = generate_problems(40, seed=3, count=3, target_low=5, target_high=60, ops="+-*/")
    assert all(len(r["numbers"]) == 3 and 5 <= r["target"] <= 60 and r["answer"].endswith(" [+-*/]")
               and len(r["prompt"]) < 40 for r in three)
    assert all(check(r["expr"], r["numbers"], r["target"], "+-*/")["correct"] for r in three)


def test_generator_errors():
    with pytest.raises(ValueError, match="distinct problems"):
        generate_problems(50, seed=0, count=1)  # only 9 single-number problems exist (targets 10..99: none)
    with pytest.raises(ValueError, match="ops"):
        generate_problems(5, seed=0, ops="+^")


def test_answer_format():
    assert format_answer([3, 5, 7], 22) == "3 5 7 -> 22"
    assert format_answer([3, 5, 7], 22, "+-*/") == "3 5 7 -> 22 [+-*/]"
    assert parse_answer(" 3 5  7 -> 22 ") == ([3, 5, 7], 22) and answer_ops("3 5 7 -> 22") == "+-*"
    assert answer_ops("3 5 7 -> 22 [+-*/]") == "+-*/" and parse_answer("4 -> -3") == ([4], -3)
    for bad in ["", "3 5 7", "3 5 7 = 22", "a -> 1", "3 5 -> 22 [+^]", "3 5 -> 22 []", None]:
        with pytest.raises(ValueError, match="countdown answer|ops"):
            parse_answer(bad)


# ----------------------------------------------------------------------------------------------------------
# The parser and verifier
# ----------------------------------------------------------------------------------------------------------
def test_evaluate_precedence_associativity_and_fractions():
    assert evaluate("3+5*7") == 38 and evaluate("(3+5)*7") == 56
    assert evaluate("8-3-2") == 3 and evaluate("8/4/2") == 1 and evaluate("8/(4/2)") == 4
    assert evaluate("7/2") == Fraction(7, 2) and evaluate("(1/2+1/2)*3") == 3 and isinstance(evaluate("6/3"), int)
    assert evaluate(" 3 \\times 5 \\cdot 2 ") == 30 and evaluate("3×5÷5") == 3 and evaluate("7−2") == 5
    assert evaluate("((((1))))") == 1 and numbers_used("(3+5)*3-12") == [3, 5, 3, 12]


@pytest.mark.parametrize("expr,reason", [
    ("3*7+5", "wrong_value"),
    ("3*5+5", "numbers_mismatch"),      # 7 omitted, 5 reused
    ("3*5*7+7", "numbers_mismatch"),    # 7 reused
    ("3*5", "numbers_mismatch"),        # 7 omitted
    ("3*5+7+0", "numbers_mismatch"),    # 0 not given
    ("-3+5*5", "malformed"),            # unary minus
    ("+3*5+7", "malformed"),
    ("3**5+7", "bad_operator"),
    ("3^5+7", "bad_operator"),
    ("(3+5)/7*7+6", "bad_operator"),    # '/' not allowed by default
    ("x*5+7", "malformed"),
    ("", "empty"),
    ("   ", "empty"),
    ("(3*5+7", "malformed"),
    ("3*5)+7", "malformed"),
    ("3*5+7)", "malformed"),
    ("()", "malformed"),
    ("3 5 7", "malformed"),
    ("3*05+7", "malformed"),
    ("3.0*5+7", "malformed"),
    ("(" * 10000 + "1" + ")" * 10000, "too_long"),
    ("(" * 20 + "1" + ")" * 20, "too_deep"),
    ("9" * 5000, "too_long"),
    ("99999*99999*99999", "too_large"),
    ("99999999999", "too_large"),
])
def test_check_rejects_quickly(expr, reason):
    t = time.perf_counter()
    result = check(expr, [3, 5, 7], 22)
    assert time.perf_counter() - t < 0.1
    assert not result["correct"] and result["reason"] == reason, result


def test_rejects_huge_inputs_quickly_even_with_loose_limits():
    for expr, reason in [("(" * 10000 + "1" + ")" * 10000, "too_deep"), ("9" * 5000, "too_large"),
                         ("1+" * 20000 + "1", "too_large")]:
        t = time.perf_counter()
        with pytest.raises(CountdownError) as e:
            evaluate(expr, max_len=10**6, max_abs=10**4)
        # a 40,000-character input with the length bound lifted: linear work (about 0.05 s alone on the 2-core
        # machine); the bound leaves room for a loaded machine
        assert e.value.reason == reason and time.perf_counter() - t < 0.5
        assert isinstance(e.value, ValueError)


def test_division():
    assert check("7/(5-5)+3", [3, 5, 5, 7], 22, "+-*/")["reason"] == "division_by_zero"
    assert check("(7+5)/3*5+2", [2, 3, 5, 5, 7], 22, "+-*/")["correct"]
    assert check("7/2*4+8", [2, 4, 7, 8], 22, "+-*/")["correct"]  # exact rational: 7/2 is fine in between
    assert check("7/2", [2, 7], 3, "+-*/")["reason"] == "wrong_value"
    with pytest.raises(ValueError, match="ops"):
        check("3", [3], 3, "+x")


def test_check_accepts_solutions_and_variant_spellings(problems):
    for r in problems[:60]:
        for s in solve(r["numbers"], r["target"]):
            assert check(s, r["numbers"], r["target"])["correct"], (r, s)
            assert check(f"({s})", r["numbers"], r["target"])["correct"]
            assert check(" ".join(s).replace("*", "\\times"), r["numbers"], r["target"])["correct"]
    for expr in ["3*5+7", "7+5*3", "(5*3)+7", "7 + 3 × 5", "((7))+(3*5)", "7+3\\cdot 5", "7+3\\times5", " 7+ 5 *3 "]:
        assert check(expr, [7, 3, 5], 22)["correct"], expr
    for expr in ["7+15/5*5", "7+15÷5*5", "7+15\\div 5*5", "(5*15/5)+7"]:
        assert check(expr, [5, 7, 15, 5], 22, "+-*/")["correct"], expr


# ----------------------------------------------------------------------------------------------------------
# Distinct solutions
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [
    ("3+5*7", "7*5+3"), ("3+5*7", "(5*7)+3"), ("8-(5-3)", "8+3-5"), ("6/(3/2)", "6*2/3"),
    ("(2+3)*(4+5)", "(5+4)*(3+2)"), ("9-2-3", "9-(3+2)"), ("8/4/2", "8/(2*4)"), ("(1+2)+(3+4)", "4+(3+(2+1))"),
])
def test_canonical_equivalent_spellings_coincide(a, b):
    assert canonical(a) == canonical(b)
    assert evaluate(canonical(a)) == evaluate(a)


@pytest.mark.parametrize("a,b", [
    ("3*(5+7)", "3*5+7"), ("7-5+3", "7-(5+3)"), ("8/4/2", "8/(4/2)"), ("5*1", "5/1"), ("2+3*4", "(2+3)*4"),
    ("(7-5)*(3-1)", "(5-7)*(1-3)"), ("9-3", "3-9"),
])
def test_canonical_distinguishes_different_solutions(a, b):
    assert canonical(a) != canonical(b)


def _all_expressions(numbers: list[int], ops: str):
    """Every expression over ``numbers`` (3 or 4), each once: permutations × operator tuples × shapes."""
    shapes = {3: ["(({}{}{}){}{})", "({}{}({}{}{}))"],
              4: ["((({}{}{}){}{}){}{})", "(({}{}({}{}{})){}{})", "(({}{}{}){}({}{}{}))",
                  "({}{}(({}{}{}){}{}))", "({}{}({}{}({}{}{})))"]}[len(numbers)]
    for perm in set(itertools.permutations(numbers)):
        for op_tuple in itertools.product(ops, repeat=len(numbers) - 1):
            for shape in shapes:
                tokens = [x for pair in itertools.zip_longest(perm, op_tuple) for x in pair if x is not None]
                yield shape.format(*tokens)


@pytest.mark.parametrize("numbers,target,ops", [
    ([3, 5, 7], 22, "+-*"), ([2, 3, 4], 10, "+-*"), ([2, 2, 3], 7, "+-*/"), ([1, 2, 3, 4], 10, "+-*"),
    ([2, 3, 4, 6], 24, "+-*/"), ([1, 1, 5, 5], 6, "+-*/"), ([4, 4, 6, 8], 16, "+-*"),
])
def test_solution_count_matches_independent_enumeration(numbers, target, ops):
    found = {canonical(e) for e in _all_expressions(numbers, ops) if check(e, numbers, target, ops)["correct"]}
    assert set(solve(numbers, target, ops)) == found
    assert solution_count(numbers, target, ops) == len(found) > 0


# ----------------------------------------------------------------------------------------------------------
# Reward, vote key, SFT traces
# ----------------------------------------------------------------------------------------------------------
def test_reward():
    ans = "3 5 7 -> 22"
    assert countdown_reward_fn("5*3=15, 15+7=22. " + box("5*3+7"), ans) == 1.0
    assert countdown_reward_fn(box("7 + 3*5"), ans) == 1.0
    assert countdown_reward_fn(box("3*5+7=22"), ans) == countdown_reward_fn(box("3*5+7 = 22 "), ans) == 1.0
    assert countdown_reward_fn(box("3*5+7=23"), ans) == 0.0       # the claimed value must be the target
    assert countdown_reward_fn(box("3*5+7=22=22"), ans) == 0.0
    assert countdown_reward_fn(box("3*5+7="), ans) == 0.0
    assert countdown_reward_fn(box("=22"), ans) == 0.0
    assert countdown_reward_fn(box("3*5+8"), ans) == 0.0
    assert countdown_reward_fn(box(""), ans) == 0.0
    assert countdown_reward_fn("3*5+7", ans) == 0.0               # no box
    assert countdown_reward_fn(box("3*5+7") + " or " + box("3*5+8"), ans) == 0.0  # the last box wins
    assert countdown_reward_fn(box("3*5+8") + " no: " + box("3*5+7"), ans) == 1.0
    assert countdown_reward_fn(box("(7+5)/3*5+2"), "2 3 5 5 7 -> 22 [+-*/]") == 1.0
    assert countdown_reward_fn(box("(7+5)/3*5+2"), "2 3 5 5 7 -> 22") == 0.0
    assert countdown_reward.batch([box("3*5+7"), box("1")], [ans, ans]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="countdown answer"):
        countdown_reward_fn(box("3*5+7"), "22")  # a bad gold answer is a bug of ours, not a wrong response


def test_reward_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = sorted(ALPHABET | set("\\{}=^*x-") | {"\\boxed{", "\\times", "×", "−"})
    t = time.perf_counter()
    hits = 0
    for i in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        if i % 2:
            text = box(text) if i % 4 == 1 else text + box(text)
        r = countdown_reward_fn(text, "3 5 7 -> 22")
        assert r in (0.0, 1.0)
        hits += r == 1.0
        key = countdown_vote_key(text)
        assert key is None or isinstance(key, str)
    assert hits == 0 and time.perf_counter() - t < 10


def test_vote_key():
    assert countdown_vote_key(box("3*5+7")) == countdown_vote_key(box("7 + 5\\times3")) == "7+3*5"
    assert countdown_vote_key("x " + box("(5*3)+7=22")) == "7+3*5"
    assert countdown_vote_key(box("3*5+7=23")) == "7+3*5=23"
    assert countdown_vote_key(box("3*(5+7)")) != countdown_vote_key(box("3*5+7"))
    for bad in ["3*5+7", box(""), box("3+"), box("x"), box("3*5+7") + box("-1"), box("3=4=5")]:
        assert countdown_vote_key(bad) is None, bad


def test_solution_trace(problems):
    rng = random.Random(0)
    for r in problems[:50]:
        for s in solve(r["numbers"], r["target"]):
            trace = solution_trace(r["numbers"], r["target"], s, rng)
            assert set(trace) <= ALPHABET, trace
            assert countdown_reward_fn(trace, r["answer"]) == 1.0, trace
            assert canonical(trace.rsplit("\\boxed{", 1)[1][:-1]) == s
    assert solution_trace([3, 5, 7], 38, "5*7+3", random.Random(1)) in {
        "5*7=35, 35+3=38. \\boxed{5*7+3}", "7*5=35, 35+3=38. \\boxed{7*5+3}",
        "5*7=35, 3+35=38. \\boxed{3+5*7}", "7*5=35, 3+35=38. \\boxed{3+7*5}"}
    written = {solution_trace([2, 3, 4, 6], 26, "(2+3)*4+6", random.Random(i)) for i in range(40)}
    assert len(written) == 8  # 3 commutative nodes, each written both ways
    assert solution_trace([7, 2, 4], 14, "7/2*4", rng, "+-*/").startswith("7/2=(7/2), ")
    with pytest.raises(ValueError, match="not a solution"):
        solution_trace([3, 5, 7], 38, "3*5+7", rng)
