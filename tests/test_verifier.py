"""The math verifier: math-verify in-process (verifier.py), and the bounded-time worker pool (pool.py)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from entropy_rl.rewards import get_reward
from entropy_rl.rewards import verifier as V
from entropy_rl.rewards.pool import MathVerifier, WorkerPool, default_verifier

from conftest import ROOT

TIMEOUT = 1.5


@pytest.mark.parametrize("response,gold,want", [
    ("so $\\boxed{\\frac{1}{2}}$", "\\frac12", True),
    ("$\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", True),
    ("The answer is $0.5$.", "\\frac{1}{2}", True),  # unboxed, inside a sentence
    ("$\\frac{5}{2}$ first, then \\boxed{3}", "3", True),  # the box wins over an earlier expression
    ("\\boxed{3}", "4", False),
    ("no answer at all", "4", False),
    ("\\boxed{60\\%}", "60", True),  # percent signs dropped (math-verify cannot parse \boxed{60\%})
    ("\\boxed{62.5}", "62.5%", True),
    ("\\boxed{45^\\circ}", "$45^{\\circ}$", True),
    ("\\boxed{45°}", "45^\\circ", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1\\,000}", "1000", True),
    ("\\boxed{4.5 \\times 10^{33}}", "4.5e33", True),  # e-notation is not Euler's number
    ("\\boxed{4.5e33}", "4.5e33", True),
    ("\\boxed{1.325 \\times 10^{-27}}", "2.88e-19", False),  # the small-number guard
    ("\\boxed{2.88 \\times 10^{-19}}", "2.88e-19", True),
    ("\\boxed{69, 84}", "$69$,$84$", True),
    ("\\boxed{84, 69}", "$69$,$84$", True),
    ("\\boxed{(2,12) \\cup (12,102)}", "(2,12) \\cup (12,102)", True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    ("\\boxed{x=5}", "5", True),
    # a box that does not parse must not hand over to an earlier expression (math-verify's any_match mode would)
    ("First $\\frac{5}{2}$. So \\boxed{\\unparseable{{}}", "\\frac{5}{2}", False),
    ("The answer is 4.5e33.", "4.5e33", True),  # e-notation in plain text
])
def test_score_cases(response, gold, want):
    assert V.score(response, gold)["correct"] is want


@pytest.mark.parametrize("response,extracted", [
    ("\\boxed{5}, wait, \\boxed{6}", "5,6"),  # boxes less than 70 characters apart with a separator merge
    ("\\boxed{5}. Hmm, so the answer is \\boxed{6}", "5,6"),
    ("\\boxed{5}" + "x" * 9 + "\\boxed{6}", "5,6"),  # under 10 characters apart: merged without a separator
    ("\\boxed{5}" + "x" * 10 + "\\boxed{6}", "6"),
    ("\\boxed{5}," + "x" * 68 + "\\boxed{6}", "5,6"),
    ("\\boxed{5}," + "x" * 69 + "\\boxed{6}", "6"),
    ("\\boxed{6}, i.e. \\boxed{6}", "6"),  # equal neighbours count once
    ("\\boxed{4}, \\boxed{5}, \\boxed{6}", "4,5,6"),
    ("\\boxed{5}" + " and more reasoning" * 20 + " so \\boxed{6}", "6"),  # far apart: the last box
    ("$\\boxed{5}$, wait, $\\boxed{6}$", "6"),  # inside $..$: math-verify's environment pattern
    ("$\\boxed{5}$ and $\\boxed{6}$", "5 and 6"),
    ("\\boxed{5}. Actually it is 6.", "5"),  # a box beats later unboxed text
])
def test_what_math_verify_extracts_from_several_boxes(response, extracted):
    """The extraction rules as the verifier module docstring states them (step 2), measured."""
    assert V.score(response, "6")["answer"] == extracted


def test_a_merged_set_is_not_a_single_answer():
    assert not V.score("\\boxed{5}, \\boxed{6}", "6")["correct"]
    assert not V.score("\\boxed{5}, \\boxed{6}", "5")["correct"]
    assert V.score("\\boxed{5}, \\boxed{6}", "5, 6")["correct"]
    assert V.score("\\boxed{6}, \\boxed{6.0}", "6")["correct"]


def test_gold_first_order_and_extracted_answer():
    s = V.score("Thus $\\boxed{\\dfrac{1}{2}}$.", "0.5")
    assert s["correct"] and s["answer"] == "\\frac{1}{2}" and s["key"] == "1/2" and s["parsed"]
    assert V.score("nothing", "1") == {"correct": False, "answer": None, "key": None, "parsed": False}
    assert V.equivalent("\\frac{1}{2}", "0.5") and not V.equivalent("\\frac{1}{2}", "0.6")


def test_normalize_is_needed_for_the_forms_it_rewrites():
    """Without normalize() these forms fail; it is measured, not assumed (docs/evaluation.md)."""
    for response, gold in [("\\boxed{60\\%}", "60"), ("\\boxed{4.5 \\times 10^{33}}", "4.5e33"),
                           ("\\boxed{45°}", "45"), ("\\boxed{1\\,000}", "1000")]:
        assert V.score(response, gold)["correct"]
        assert not V.score(response, gold, normalized=False)["correct"]


@pytest.fixture(scope="module")
def fast_verifier():
    with MathVerifier(workers=2, timeout=TIMEOUT) as v:
        yield v


def _alive(pids):
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_adversarial_inputs_answer_incorrect_within_the_timeout(fast_verifier):
    bad = {
        "garbage": "".join(chr(33 + (i * 7919) % 90) for i in range(20_000)),
        "1 MB of text": "a" * 1_000_000,
        "1 MB of maths": "\\boxed{" + "1+" * 500_000 + "1}",
        "nested fractions": "\\boxed{" + "\\frac{" * 3000 + "1" + "}{2}" * 3000 + "}",
        "nested boxes": "\\boxed{" * 100_000,
        "tower of powers": "\\boxed{10^{10^{10^{10^{10}}}}}",
        "dollars": "$" * 200_000,
    }
    pids_before = fast_verifier.pool.pids()
    t0 = time.monotonic()
    out = fast_verifier.score(list(bad.values()) + ["\\boxed{7}"], ["7"] * (len(bad) + 1))
    wall = time.monotonic() - t0
    for name, s in zip(bad, out):
        assert s["correct"] is False, name
        assert s["status"] in {"ok", "timeout", "error", "crashed"}, name
    assert out[-1]["correct"] and out[-1]["status"] == "ok"  # the pool still works after killing workers
    assert max(fast_verifier.pool.last_times) <= TIMEOUT + 1.0  # each item answered within the timeout
    assert wall < TIMEOUT * len(bad) + 30
    killed = [p for p in pids_before if p not in fast_verifier.pool.pids()]
    assert fast_verifier.pool.stats["timeout"] >= 1 and not _alive(killed)  # stuck workers were killed


def test_a_valid_but_deeply_nested_answer_times_out(fast_verifier):
    """math-verify's check of a right answer doubles in time per level of \\frac nesting: 10 deep is instant,
    50 deep never finishes (status timeout, scored incorrect)."""
    def nested(d):
        return "\\boxed{" + "\\frac{" * d + "1" + "}{2}" * d + "}"

    shallow, deep = fast_verifier.score([nested(10), nested(50)],
                                        [f"\\frac{{1}}{{{2**10}}}", f"\\frac{{1}}{{{2**50}}}"])
    assert shallow["correct"] and shallow["status"] == "ok"
    assert deep == {"correct": False, "answer": None, "key": None, "parsed": False, "status": "timeout"}


def test_pool_statuses_and_replacement():
    with WorkerPool(workers=2, timeout=1.0) as pool:
        out = pool.map(time.sleep, [(5,), (0,)])
        assert out[0] == ("timeout", None) and out[1] == ("ok", None)
        assert pool.map(os._exit, [(3,)]) == [("crashed", 3)]  # a worker that dies answers "crashed"
        assert pool.map(int, [("x",)]) == [("error", "ValueError")]
        assert pool.map(bytearray, [(8 << 30,)]) == [("error", "MemoryError")]  # 8 GiB > the 4 GiB cap
        victim = pool.start(wait=True).pids()[0]
        os.kill(victim, signal.SIGKILL)  # killed from outside while idle: replaced on next use
        psutil.Process(victim).wait(5)
        assert pool.map(abs, [(-i,) for i in range(6)]) == [("ok", i) for i in range(6)]
        pids = pool.pids()
    assert not _alive(pids)


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_no_worker_left_behind_when_the_parent_ends(tmp_path, ending):
    """A parent that exits without closing its pool, or is killed, leaves no worker running."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from entropy_rl.rewards.pool import WorkerPool
        pool = WorkerPool(workers=2, timeout=5.0)
        pool.map(abs, [(-1,), (-2,)])
        print(" ".join(map(str, pool.pids())), flush=True)
        sys.stdin.readline()  # the test has seen both workers alive (else "exit" could end them before it looks)
        if {ending!r} == "sigkill":
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and len(_alive(pids)) == 2
    if ending == "sigkill":
        proc.kill()
    else:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    proc.wait(30)
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids)


def test_vote_classes_group_equivalent_answers(fast_verifier):
    responses = ["\\boxed{\\frac12}", "\\boxed{3}", "\\boxed{0.5}", "no answer", "\\boxed{\\dfrac{1}{2}}", "\\boxed{3.0}",
                 "\\boxed{x}"]
    (scored,) = fast_verifier.score_groups([("\\frac{1}{2}", responses)])
    assert [s["correct"] for s in scored] == [True, False, True, False, True, False, False]
    assert [s["vote"] for s in scored] == ["\\frac{1}{2}", "3", "\\frac{1}{2}", None, "\\frac{1}{2}", "3", "x"]


def test_math_reward_is_registered():
    reward = get_reward("math")
    try:
        assert reward("so $\\boxed{\\dfrac{1}{2}}$", "0.5") == 1.0 and reward("\\boxed{2}", "0.5") == 0.0
    finally:
        pids = default_verifier().pool.pids()
        default_verifier().close()
    assert not _alive(pids)
