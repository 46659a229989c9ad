"""Math answer checking with math-verify, in-process and without time limits.

These functions run inside the worker processes of :mod:`.pool`, which bounds their time from outside:
math-verify's own timeouts use ``signal.alarm`` (main thread only), so they are switched off here
(``parsing_timeout=None``, ``timeout_seconds=None``). Do not call them on untrusted text in the main process.

Steps, for a response and a gold answer:

1. **Normalize** both texts (:func:`normalize`): a bare decimal point goes (``-1./3`` → ``-1/3``, two Minerva
   golds), scientific e-notation ``4.5e33`` becomes ``4.5\\times 10^{33}`` inside LaTeX (math-verify's LaTeX
   parser reads the ``e`` as Euler's number) and ``4.5*10^33`` in plain text (its plain-expression pattern
   stops at the ``e``), percent signs are dropped (math-verify cannot parse ``\\boxed{60\\%}``), ``°`` becomes
   ``^{\\circ}`` and a thin-space thousands separator ``1\\,000`` becomes ``1000``. Each rule fixes a failure
   measured by the gold self-check (``python -m entropy_rl.evalsets selfcheck``; docs/evaluation.md).
2. **Extract** the prediction (:func:`parse_pred`). math-verify's patterns come in priority groups: a box
   (``\\boxed{...}``; priority 0, with "final answer is ... I hope"), "final answer ... is" (50), "answer:"
   (100), "answer" (200), then any LaTeX span or plain number/expression (300). Only the first group with a
   match counts, and in it the match that *ends* rightmost (of two ending together, the one starting earlier).
   In math-verify's ``first_match`` mode, used here, only that match is parsed; if it does not parse, the
   response has no parsed answer. (In the default ``any_match`` mode a box that fails to parse hands over to an
   *earlier* expression of the response, so a distractor could count as the answer.) A box beats anything
   after it: ``\\boxed{5}. Actually it is 6.`` is read as 5.

   With several boxes the answer is not simply the last one. The rightmost box match is a catch-all from the
   first ``\\boxed{`` to the last ``}``, whose boxes latex2sympy2's ``extract_boxed_content`` (mode ``last``)
   walks from right to left: the box to the left joins while the text between the two is shorter than 10
   characters, or shorter than 70 characters, contains a separator (the words ``and`` or ``or``, ``,`` or ``;``)
   and the two contents differ; the first gap failing both stops it; equal neighbours count once. The kept
   contents are joined by commas and parsed, so several become a set. Measured (math-verify 0.9.0):
   ``\\boxed{5}, wait, \\boxed{6}`` and ``\\boxed{5}. Hmm, so the answer is \\boxed{6}`` give ``{5, 6}``;
   ``\\boxed{5}`` and ``\\boxed{6}`` 10 characters apart with no separator, or 70 apart with one, give 6;
   ``\\boxed{6}, i.e. \\boxed{6}`` gives 6. Boxes inside ``$...$`` match math-verify's environment pattern
   instead, which ends later (at the ``$``) and joins at most 6 spans separated by nothing but ``,``, ``and``
   or ``or``: ``$\\boxed{5}$, wait, $\\boxed{6}$`` gives 6, ``$\\boxed{5}$ and $\\boxed{6}$`` gives
   ``{5, 6}``. A set of different values is not accepted for a single gold (``{5, 6}`` is wrong for 6 and right
   for ``5, 6``), so hedging between candidates earns nothing; ``\\boxed{6}, \\boxed{6.0}`` is right for 6.
3. **Parse the gold** (:func:`parse_gold`): ``$`` signs and a trailing period removed, then parsed as if boxed,
   also ``first_match`` (``any_match`` misread two Minerva golds as the numbers 2 and 2/3). A gold that does
   not parse (7 of the 2,865 local golds) is compared as a normalized string.
4. **Verify** with the gold first: ``verify(gold, pred)`` (math-verify is not symmetric).
5. **Guard small numbers**: when both sides are plain numbers, an accepted pair must also agree to a relative
   ``NUMERIC_RTOL`` (1e-4). math-verify compares floats after rounding to 6 decimals and other numeric
   expressions by ``evalf(chop=True)``, so below about 1e-6 (rounding) or 1e-15 (chop) any two numbers are
   "equal": the self-check's negative control found ``1.325e-27`` accepted for ``2.88e-19`` (Minerva has
   answers down to 1e-27). The guard only ever turns an accept into a reject, and only below about 0.01.

**Time.** A typical response is scored in milliseconds, but nothing here bounds the time: in the pool's 10 s a
1 MB boxed sum, a 3,000-deep ``\\frac``, 100,000 unclosed ``\\boxed{`` and ``10^{10^{10^{10^{10}}}}`` all end as
``timeout`` (1 MB of plain text, 200,000 ``$`` or 20,000 random characters take under 0.5 s). Even a *valid*
answer can: ``\\frac`` nested ``d`` deep (``\\frac{\\frac{1}{2}}{2}``..., gold ``\\frac{1}{2^d}``) is
extracted and parsed in about 20 ms at any depth, but :func:`agree` (math-verify's ``verify``) roughly doubles
in time with each level (measured for the right gold): 0.03 s at depth 12, 0.5 s at 16, 1.9 s at 18, 3.8 s at
19, 15 s at 20, 51 s at 21 (37 s at 20 against a wrong gold). From depth 20 on such an answer, right or wrong,
ends as status ``timeout`` and is scored incorrect; at depth 50 it would never finish.
"""
from __future__ import annotations

import re
from functools import lru_cache

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Basic, Expr, MatrixBase

# The timeouts are off on purpose (the pool bounds time); silence math-verify's one-time warning about that.
math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True

PRED_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
"""prediction extraction: boxed first, then math-verify's anchored and unanchored LaTeX/expression matches"""
GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())

NUMERIC_RTOL = 1e-4
"""relative tolerance that two plain numbers accepted by math-verify must also meet"""

_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_PERCENT = re.compile(r"\\?%")
_BARE_POINT = re.compile(r"(?<=\d)\.(?!\d)")
_MATH = re.compile(  # LaTeX spans, of bounded length: $$..$$, $..$, \(..\), \[..\], \boxed{..}
    r"\$\$[^$]{0,5000}\$\$|\$[^$\n]{1,2000}\$|\\\(.{0,1000}?\\\)|\\\[.{0,2000}?\\\]"
    r"|\\boxed\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}", re.S)
_THIN_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")


def _sci_latex(text: str) -> str:
    return _SCI.sub(lambda e: f"{e.group(1)}\\times 10^{{{int(e.group(2))}}}", text)


def normalize(text: str, latex: bool = False) -> str:
    """Rewrite the surface forms that math-verify misreads (see the module docstring). ``latex``: the whole
    text is one LaTeX expression (a gold answer); otherwise LaTeX spans are found by :data:`_MATH`."""
    text = _BARE_POINT.sub("", text)  # first, so that "4.5e33." at the end of a sentence is e-notation too
    if latex:
        text = _sci_latex(text)
    else:
        text = _MATH.sub(lambda m: _sci_latex(m.group(0)), text)
        text = _SCI.sub(lambda e: f"{e.group(1)}*10^{int(e.group(2))}", text)  # outside LaTeX
    text = _PERCENT.sub("", text)
    text = text.replace("°", "^{\\circ}")
    return _THIN_THOUSANDS.sub("", text)


def gold_latex(answer: str, normalized: bool = True) -> str:
    """The gold answer as one LaTeX expression: currency signs ``\\$`` and math delimiters ``$`` dropped
    (``"$69$,$84$"`` → ``"69,84"``), and a trailing period."""
    text = (normalize(answer, latex=True) if normalized else answer).replace("\\$", "").replace("$", "")
    return text.strip().rstrip(".").strip()


@lru_cache(maxsize=4096)
def parse_gold(answer: str, normalized: bool = True) -> tuple:
    """Parsed gold answer (cached: every sample of a prompt shares it)."""
    latex = gold_latex(answer, normalized)
    return tuple(parse("\\boxed{" + latex + "}", extraction_config=GOLD_CONFIG, extraction_mode="first_match",
                       parsing_timeout=None))


def parse_pred(response: str, normalized: bool = True) -> list:
    """math-verify's extraction from a response: ``[parsed, extracted string]``, ``[string]`` when only the
    string was found, ``[]`` when nothing was. ``normalized=False`` skips :func:`normalize` (to measure it)."""
    return parse(normalize(response) if normalized else response, extraction_config=PRED_CONFIG,
                 extraction_mode="first_match", parsing_timeout=None)


def _answer_text(parsed) -> str | None:
    strings = [p for p in parsed if isinstance(p, str)]
    if strings:
        return strings[-1].strip() or None
    return str(parsed[0]) if parsed else None


def _vote_key(parsed) -> str | None:
    """A cheap canonical form: sympy's printing of the parsed answer (``\\frac12``, ``\\dfrac{1}{2}`` and
    ``1/2`` all print ``1/2``), else the extracted string."""
    for p in parsed:
        if isinstance(p, (Basic, MatrixBase)):
            return str(p)
    return _answer_text(parsed)


def _number(parsed) -> float | None:
    """The value of the first parsed object when it is a plain real number, else None."""
    x = next((p for p in parsed if isinstance(p, (Basic, MatrixBase))), None)
    if not isinstance(x, Expr) or not x.is_number:
        return None
    try:
        v = complex(x.evalf(30))
    except (TypeError, ValueError, OverflowError):
        return None
    return v.real if v.imag == 0 and abs(v.real) != float("inf") else None


def agree(gold_parsed: list, pred_parsed: list) -> bool:
    """``verify(gold, pred)``, then the small-number guard (module docstring, step 5)."""
    if not gold_parsed or not pred_parsed or not verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return False
    a, b = _number(gold_parsed), _number(pred_parsed)
    if a is None or b is None:
        return True
    return abs(a - b) <= NUMERIC_RTOL * max(abs(a), abs(b))


def score(response: str, gold: str, normalized: bool = True) -> dict:
    """``{"correct", "answer", "key", "parsed"}`` for one response: correctness against the gold, the extracted
    answer string (None if nothing was extracted), its canonical vote key, and whether it parsed to sympy."""
    pred = parse_pred(response, normalized)
    gold_parsed = list(parse_gold(gold, normalized))
    correct = agree(gold_parsed, pred)
    return {"correct": bool(correct), "answer": _answer_text(pred), "key": _vote_key(pred),
            "parsed": any(isinstance(p, (Basic, MatrixBase)) for p in pred)}


def equivalent(reference: str, other: str) -> bool:
    """Whether two extracted answers are the same answer, by math-verify with ``reference`` as the gold."""
    return agree(list(parse_gold(reference)), list(parse_gold(other)))
