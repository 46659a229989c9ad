"""The maths evaluation sets the papers report, and the gold-answer self-check.

* :data:`EVAL_SETS` (``eval.benchmarks``): GSM8K, MATH-500, AIME24, AIME25, AMC23, Minerva and OlympiadBench. Each
  reads from one source interface, ``source="hub"`` (its Hugging Face hub id, from
  :data:`entropy_rl.data.HUB_SOURCES`) or a local directory laid out like ``data/`` (the copy pinned by
  ``data.dvc``; ``make data``), both through ``datasets.load_dataset``, and yields normalized records
  ``{"id", "problem", "answer", "source"}``. (The speed scripts live in the top-level ``benchmarks/`` folder.)
* :func:`selfcheck`: every gold answer, written in several surface forms, must verify against itself
  (``python -m entropy_rl.evalsets selfcheck --data-dir data``; results in docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import EVAL_SETS as DECLARED_EVAL_SETS
from .data import HUB_SOURCES, gsm8k_answer, read_dataset
from .io import write_jsonl
from .prompts import BOXED_INSTRUCTION, build_prompt  # noqa: F401  (build_prompt: re-exported for convenience)
from .registry import Registry, registry
from .rewards.pool import MathVerifier
from .tables import to_markdown


@dataclass(frozen=True)
class Benchmark:
    name: str
    """registry name (used in params.yaml, metrics.json, figures)"""
    title: str
    """display name in tables and figures"""
    file: str
    """path in the data layout, and the key of its hub id in ``entropy_rl.data.HUB_SOURCES``"""
    problem_fields: tuple[str, ...] = ("problem", "question")
    """candidate fields holding the problem, first present wins (local copies and hub layouts differ)"""
    answer_fields: tuple[str, ...] = ("answer",)
    """candidate fields holding the final answer"""
    gsm8k_rationale: bool = False
    """the answer field is a rationale ending in ``#### <number>`` (GSM8K)"""

    @property
    def hub(self) -> tuple[str, str | None, str]:
        """(hub id, config, split)"""
        return HUB_SOURCES[self.file]


EVAL_SETS: Registry[Benchmark] = registry("evaluation set", DECLARED_EVAL_SETS, "entropy_rl.config.EVAL_SETS")
for _b in [
    Benchmark("gsm8k", "GSM8K", "gsm8k/test.jsonl", ("question",), gsm8k_rationale=True),
    Benchmark("math500", "MATH-500", "math_eval/math500.jsonl"),
    Benchmark("aime24", "AIME24", "math_eval/aime24.jsonl"),
    Benchmark("aime25", "AIME25", "math_eval/aime25.jsonl"),
    Benchmark("amc23", "AMC23", "math_eval/amc2023.jsonl"),
    Benchmark("minerva", "Minerva", "math_eval/minervamath.jsonl"),
    # math-ai/olympiadbench keeps the answer as a list under `final_answer`; the local copy has `answer`.
    Benchmark("olympiadbench", "OlympiadBench", "math_eval/olympiadbench.jsonl",
              answer_fields=("answer", "final_answer")),
]:
    EVAL_SETS.register(_b.name, _b)
BENCHMARKS = EVAL_SETS
"""the evaluation sets by name (the name the papers' tables use)"""


def get_benchmark(name: str) -> Benchmark:
    return EVAL_SETS.get(name)


# ----------------------------------------------------------------------------------------------------------
# Loading and normalization
# ----------------------------------------------------------------------------------------------------------
def strip_instruction(problem: str) -> str:
    """The problem without a trailing boxed instruction (the local math_eval files already end with it)."""
    text = problem.rstrip()
    if text.endswith(BOXED_INSTRUCTION):
        text = text[: -len(BOXED_INSTRUCTION)].rstrip()
    return text


def _field(row: dict, names: tuple[str, ...], what: str, bench: str) -> Any:
    for n in names:
        if row.get(n) is not None:
            return row[n]
    raise KeyError(f"{bench}: no {what} field among {', '.join(names)} (fields: {', '.join(sorted(row))})")


def normalize_row(bench: Benchmark, row: dict, index: int) -> dict:
    """One raw row → ``{"id", "problem", "answer", "source"}``; ids are ``<benchmark>-<row index>``."""
    problem = strip_instruction(str(_field(row, bench.problem_fields, "problem", bench.name)))
    answer = _field(row, bench.answer_fields, "answer", bench.name)
    if isinstance(answer, (list, tuple)):  # several final answers: one comma-separated set
        answer = ", ".join(str(a) for a in answer)
    answer = gsm8k_answer(answer) if bench.gsm8k_rationale else str(answer).strip()
    return {"id": f"{bench.name}-{index:04d}", "problem": problem, "answer": answer, "source": bench.name}


def load_rows(bench: Benchmark, source: str | Path, revision: str = ""):
    """The raw rows of ``bench`` as a ``datasets.Dataset``, from the hub (``source="hub"``, at ``revision`` when one
    is given, else the default branch) or a local directory."""
    return read_dataset(source, bench.hub, bench.file,
                        f"{bench.name}: {{path}} not found (source {source}: run `make data`, or 'hub')", revision)


def load_benchmark(name: str, source: str | Path, limit: int | None = None, revision: str = "") -> list[dict]:
    """Normalized records of benchmark ``name`` from ``source`` (``"hub"`` or a directory); the first ``limit``.
    From the hub, ``revision`` (``eval.revisions.<name>``: a commit, tag or branch) pins the snapshot."""
    bench = get_benchmark(name)
    rows = load_rows(bench, source, revision)
    n = len(rows) if not limit else min(limit, len(rows))
    return [normalize_row(bench, rows[i], i) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------
# Self-check: every gold answer verifies against itself in several surface forms
# ----------------------------------------------------------------------------------------------------------
_LEAD = "First, 2 + 3 = 5, and half of that is $\\frac{5}{2}$.\n"
"""a distractor line before the answer: extraction must pick the final answer, not an earlier expression"""
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_SCI = re.compile(r"(-?\d+(?:\.\d+)?)e([-+]?\d+)")
_PLAIN = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?\s*(?:\\?%)?")


def _boxed(latex: str) -> str:
    return _LEAD + f"Therefore, the final answer is $\\boxed{{{latex}}}$."


def surface_forms(answer: str, problem: str = "") -> dict[str, str]:
    """Responses that state ``answer`` in the ways models write it; only the forms that apply.

    ``boxed`` and ``sentence`` (in ``$...$``) always; ``plain`` (no LaTeX at all) where the gold is a number;
    ``dfrac`` where there is a fraction; ``percent`` where the gold or the
    question has a percent; ``degree`` where the gold or the question has degrees (with ``^\\circ``), and
    ``degree_symbol`` (``°``); ``thousands`` (``1,000``) and ``thin_space`` (``1\\,000``) for integers from 1000;
    ``sci`` where the gold is in e-notation (``4.5e33`` written ``4.5 \\times 10^{33}``). A currency sign
    ``\\$`` in the gold is left out (models write it or not; math-verify ignores it either way).
    """
    core = answer.replace("\\$", "").replace("$", "").strip().rstrip(".").strip()  # currency, delimiters
    plain_number = bool(_NUMBER.fullmatch(core))
    forms = {"boxed": _boxed(core), "sentence": _LEAD + f"So the answer is ${core}$."}
    if _PLAIN.fullmatch(core):
        forms["plain"] = _LEAD + f"So the answer is {core.replace(chr(92) + '%', '%')}."
    if "\\frac" in core or "\\dfrac" in core:
        swapped = core.replace("\\dfrac", "\\frac") if "\\dfrac" in core else core.replace("\\frac", "\\dfrac")
        forms["dfrac"] = _boxed(swapped)
    if "%" in core:
        forms["percent"] = _boxed(re.sub(r"\s*\\?%", "", core))
    elif plain_number and re.search(r"percent|%", problem):
        forms["percent"] = _boxed(core + "\\%")
    if _DEGREE.search(core):
        forms["degree"] = _boxed(_DEGREE.sub("", core))
        forms["degree_symbol"] = _boxed(_DEGREE.sub("°", core))
    elif plain_number and re.search(r"degree", problem, re.I):
        forms["degree"] = _boxed(core + "^\\circ")
        forms["degree_symbol"] = _boxed(core + "°")
    if re.fullmatch(r"-?\d{4,}", core):
        forms["thousands"] = _boxed(f"{int(core):,}")
        forms["thin_space"] = _boxed(f"{int(core):,}".replace(",", "\\,"))
    if m := _SCI.fullmatch(core):
        forms["sci"] = _boxed(f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}")
    return forms


def selfcheck(records: list[dict], verifier) -> list[dict]:
    """Score every surface form of every record's gold answer against that gold with ``verifier``
    (a :class:`entropy_rl.rewards.pool.MathVerifier`); one row per (record, form).

    As a negative control, form ``other_gold`` boxes the gold answer of the next record of the same benchmark
    whose answer is a different string: it is expected to be judged incorrect (``expected=False``)."""
    cases = []
    for i, r in enumerate(records):
        for form, text in surface_forms(r["answer"], r["problem"]).items():
            cases.append((r, form, text, True))
        same = [o for o in records[i + 1 :] + records[:i] if o["source"] == r["source"]]
        other = next((o for o in same if o["answer"].strip() != r["answer"].strip()), None)
        if other is not None:
            cases.append((r, "other_gold", _boxed(other["answer"].replace("$", "").strip()), False))
    scores = verifier.score([c[2] for c in cases], [c[0]["answer"] for c in cases])
    return [{"benchmark": r["source"], "id": r["id"], "form": form, "gold": r["answer"], "response": text,
             "extracted": s["answer"], "parsed": s["parsed"], "correct": s["correct"], "expected": expected,
             "agrees": s["correct"] == expected, "status": s["status"]}
            for (r, form, text, expected), s in zip(cases, scores)]


FORMS = ["boxed", "sentence", "plain", "dfrac", "percent", "degree", "degree_symbol", "thousands", "thin_space", "sci",
         "other_gold"]


def selfcheck_table(rows: list[dict]):
    """Per benchmark (rows) and surface form (columns): ``"agreeing/total"`` cells (agreeing = judged correct,
    or for ``other_gold`` judged incorrect), and the agreement rates."""
    df = pd.DataFrame(rows)
    counts = df.groupby(["benchmark", "form"])["agrees"].agg(["sum", "count"])
    cells = (counts["sum"].astype(int).astype(str) + "/" + counts["count"].astype(str)).unstack("form").fillna("")
    cols = [f for f in FORMS if f in cells.columns]
    index = [b for b in BENCHMARKS if b in cells.index] + sorted(set(cells.index) - set(BENCHMARKS))
    return cells.loc[index, cols], (counts["sum"] / counts["count"]).unstack("form").loc[index, cols]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m entropy_rl.evalsets", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("selfcheck", help="verify every gold answer against itself in several surface forms")
    sc.add_argument("--data-dir", required=True, help="a local copy in the data/ layout, or 'hub'")
    sc.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    sc.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    sc.add_argument("--workers", type=int, default=0, help="verifier processes (0 = all cores)")
    sc.add_argument("--timeout", type=float, default=10.0, help="seconds per item")
    sc.add_argument("--out", default="", help="write every (problem, form) row to this jsonl")
    sc.add_argument("--raw", action="store_true", help="skip the verifier's normalize() step (to measure it)")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    records = [r for b in args.benchmarks for r in load_benchmark(b, args.data_dir, args.limit or None)]
    with MathVerifier(workers=args.workers or None, timeout=args.timeout, normalized=not args.raw) as v:
        rows = selfcheck(records, v)
        stats = dict(v.pool.stats)
    cells, _ = selfcheck_table(rows)
    print(to_markdown(cells))
    failures = [r for r in rows if not r["agrees"]]
    print(f"\n{len(rows) - len(failures)}/{len(rows)} as expected over {len(records)} problems; "
          f"pool {stats}; {time.monotonic() - t0:.1f} s")
    for r in failures:
        print(f"FAIL {r['id']} [{r['form']}] gold={r['gold']!r} extracted={r['extracted']!r} "
              f"judged {'correct' if r['correct'] else 'incorrect'} ({r['status']})")
    unparsed = [r for r in rows if r["form"] == "boxed" and not r["parsed"]]
    print(f"{len(unparsed)} gold answers math-verify does not parse (compared as normalized strings):")
    for r in unparsed:
        print(f"  {r['id']}: {r['gold']!r}")
    if args.out:
        write_jsonl(args.out, rows)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
