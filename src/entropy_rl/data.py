"""Tasks and data.

* A synthetic, verifiable arithmetic task generated from a seed (the offline default profile).
* The raw public math sets that the real-data profiles use, materialized into ``data/`` from a local copy
  (or exported from their Hugging Face hub ids) and verified against the hashes pinned in ``data.dvc``.
* The real RL training sets of task ``math`` (:data:`TRAIN_SOURCES`: MATH levels 3–5, GSM8K, DAPO-Math-17k),
  read from the hub or a local directory and split by :func:`math_train_rows`.

Every record is normalized to ``{"id", "problem", "answer", "source"}``; SFT records also carry ``target``.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import yaml

from .config import TASKS as DECLARED_TASKS
from .config import TRAIN_SOURCES as DECLARED_TRAIN_SOURCES
from .config import DataConfig
from .registry import Registry, registry
from .rewards import extract_boxed

# ----------------------------------------------------------------------------------------------------------
# Synthetic arithmetic
# ----------------------------------------------------------------------------------------------------------
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def scratchpad(a: int, b: int, op: str) -> str:
    """Column-by-column working for addition, e.g. ``347+589`` → ``7+9=16;4+8+1=13;3+5+1=9;``.

    Other operators have no scratchpad (the target is the boxed answer alone)."""
    if op != "+":
        return ""
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        lhs = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        steps.append(f"{lhs}={total};")
        carry = total // 10
    return "".join(steps)


def arithmetic_splits(cfg: DataConfig) -> dict[str, list[dict]]:
    """Generate the ``sft``, ``rl`` and ``eval`` splits, with pairwise-disjoint problems.

    The SFT targets mix a scratchpad answer and a direct one (``scratchpad_frac``), so the policy starts
    with a real choice of format and length, which is where entropy collapse first shows.
    """
    rng = random.Random(cfg.seed)
    lo, hi = 10 ** (cfg.digits - 1), 10**cfg.digits - 1
    n_total = cfg.n_eval + cfg.n_rl + cfg.n_sft
    space = len(cfg.ops) * (hi - lo + 1) ** 2
    if n_total > space // 2:
        raise ValueError(f"data: {n_total} problems requested but only {space} exist for digits={cfg.digits}")
    seen: set[tuple[int, int, str]] = set()
    problems = []
    while len(problems) < n_total:
        key = (rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(cfg.ops))
        if key not in seen:
            seen.add(key)
            problems.append(key)
    splits = {
        "eval": problems[: cfg.n_eval],
        "rl": problems[cfg.n_eval : cfg.n_eval + cfg.n_rl],
        "sft": problems[cfg.n_eval + cfg.n_rl :],
    }
    out: dict[str, list[dict]] = {}
    for split, items in splits.items():
        rows = []
        for i, (a, b, op) in enumerate(items):
            answer = str(_APPLY[op](a, b))
            row = {"id": f"arith-{split}-{i:06d}", "problem": f"{a}{op}{b}=", "answer": answer, "source": "arithmetic"}
            if split == "sft":
                pad = scratchpad(a, b, op) if rng.random() < cfg.scratchpad_frac else ""
                row["target"] = pad + boxed(answer)
            rows.append(row)
        out[split] = rows
    return out


# ----------------------------------------------------------------------------------------------------------
# Raw public data pinned by data.dvc
# ----------------------------------------------------------------------------------------------------------
# Hugging Face hub ids of the raw sets (used by `export_from_hub`; the files in data/ keep these names).
HUB_SOURCES = {
    "gsm8k/train.jsonl": ("openai/gsm8k", "main", "train"),
    "gsm8k/test.jsonl": ("openai/gsm8k", "main", "test"),
    "math_eval/math500.jsonl": ("HuggingFaceH4/MATH-500", None, "test"),
    "math_eval/aime24.jsonl": ("HuggingFaceH4/aime_2024", None, "train"),
    "math_eval/aime25.jsonl": ("math-ai/aime25", None, "test"),
    "math_eval/amc2023.jsonl": ("math-ai/amc23", None, "test"),
    "math_eval/minervamath.jsonl": ("math-ai/minervamath", None, "test"),
    "math_eval/olympiadbench.jsonl": ("math-ai/olympiadbench", None, "test"),
}


LICENSES = {"gsm8k/LICENSE": Path(__file__).parent / "licenses" / "gsm8k.LICENSE"}
"""licence files pinned by data.dvc that the hub sets do not carry (GSM8K's MIT licence, from openai/grade-school-math)"""


class DataMismatchError(RuntimeError):
    """The materialized raw data does not match the hashes pinned in data.dvc."""


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_files(dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """The per-file md5s recorded under ``meta.files`` of ``data.dvc`` (relative path → md5)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise FileNotFoundError(f"{dvc_file}: not found (it pins the raw data; restore it from git)")
    meta = (yaml.safe_load(dvc_file.read_text()) or {}).get("meta") or {}
    files = meta.get("files")
    if not files:
        raise DataMismatchError(f"{dvc_file}: has no meta.files with the per-file hashes")
    return dict(files)


def verify_raw(dest: str | Path = "data", dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """Check every pinned file under ``dest`` against ``data.dvc``; raise naming each missing or changed file."""
    dest = Path(dest)
    problems = []
    pinned = pinned_files(dvc_file)
    for rel, md5 in sorted(pinned.items()):
        p = dest / rel
        if not p.exists():
            problems.append(f"missing {p}")
        elif (got := _md5(p)) != md5:
            problems.append(f"{p}: md5 {got}, data.dvc pins {md5}")
    if problems:
        raise DataMismatchError("raw data does not match data.dvc:\n  " + "\n  ".join(problems))
    return pinned


def fetch_raw(source: str | Path, dest: str | Path = "data", dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """Copy the pinned raw files from a local directory ``source`` into ``dest`` and verify their hashes.

    ``source`` has the layout of the project's offline copy (``gsm8k/*.jsonl``, ``math_eval/*.jsonl``),
    for example a directory written by :func:`export_from_hub` (what ``--source hub`` does).
    """
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise FileNotFoundError(f"data source {source}: not a directory (give a local copy of the raw sets)")
    pinned = pinned_files(dvc_file)
    missing = [rel for rel in pinned if not (source / rel).exists()]
    if missing:
        raise FileNotFoundError(f"data source {source}: missing {', '.join(sorted(missing))}")
    for rel in sorted(pinned):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source / rel, tmp)
        tmp.replace(target)
    return verify_raw(dest, dvc_file)


def _check_hub_revisions(revisions: dict[str, str]) -> dict[str, str]:
    ids = sorted({hub_id for hub_id, _, _ in HUB_SOURCES.values()})
    unknown = sorted(set(revisions) - set(ids))
    if unknown:
        raise ValueError(f"revision for '{unknown[0]}': not a hub id of HUB_SOURCES; valid: {', '.join(ids)}")
    return dict(revisions)


def export_from_hub(dest: str | Path, load: Callable = None, revisions: dict[str, str] | None = None) -> None:
    """Write the raw sets from their hub ids (``HUB_SOURCES``) into ``dest`` in the offline layout; ``load`` is
    ``datasets.load_dataset`` unless given (tests pass a stand-in: there is no network here). ``revisions`` maps a
    hub id (``openai/gsm8k``) to the revision (commit, tag or branch) to read; other ids read the default branch.

    Hub snapshots can differ from the pinned copy: ``fetch_raw(dest)`` then names the files that differ.
    """
    load = load or datasets.load_dataset
    revisions = _check_hub_revisions(revisions or {})
    dest = Path(dest)
    for rel, src in LICENSES.items():  # licences that travel with the data but live outside the hub sets
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    for rel, (hub_id, config, split) in HUB_SOURCES.items():
        pin = {"revision": revisions[hub_id]} if revisions.get(hub_id) else {}  # none: the default branch, as before
        ds = load(hub_id, config, split=split, **pin)
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(path), lines=True, force_ascii=False)


def read_dataset(source: str | Path, hub: tuple[str, str | None, str], rel: str, missing: str, revision: str = ""):
    """A ``datasets.Dataset``: from the hub (``source == "hub"``; ``hub`` = id, config, split; at ``revision``, a
    commit, tag or branch, when one is given, else the default branch) or from the jsonl file ``<source>/<rel>`` of a
    local directory (a missing file raises ``missing.format(path=...)``; ``revision`` does not apply)."""
    if str(source) == "hub":
        args, kwargs = hub[:2], {"split": hub[2]}
        if revision:
            kwargs["revision"] = revision
    else:
        path = Path(source) / rel
        if not path.exists():
            raise FileNotFoundError(missing.format(path=path))
        args, kwargs = ("json",), {"data_files": str(path), "split": "train"}
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one "Generating split" bar per file is noise in notebooks
    try:
        return datasets.load_dataset(*args, **kwargs)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------------------------------------
# Real RL training data (task `math`)
# ----------------------------------------------------------------------------------------------------------
DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the form "
               "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
"""the instruction DAPO-Math-17k wraps around every problem (our prompt templates add their own)"""


def _math_row(row: dict) -> tuple[str, str] | None:
    """MATH (lighteval layout): levels 3–5 only; the answer is the last ``\\boxed{}`` of the solution."""
    if str(row.get("level", "")).strip() not in ("Level 3", "Level 4", "Level 5"):
        return None
    answer = extract_boxed(row["solution"])
    return (row["problem"].strip(), answer.strip()) if answer and answer.strip() else None


def gsm8k_answer(rationale: str) -> str:
    """The number after ``####`` in a GSM8K rationale, without thousands separators (``"1,600"`` → ``"1600"``)."""
    if "####" not in rationale:
        raise ValueError(f"GSM8K answer without '####': {rationale[-80:]!r}")
    return rationale.rsplit("####", 1)[1].strip().replace(",", "")


def _gsm8k_row(row: dict) -> tuple[str, str]:
    return row["question"].strip(), gsm8k_answer(row["answer"])


def dapo_problem(content: str) -> str:
    """The bare problem of a DAPO-Math-17k user turn, without its ``Answer:`` instruction."""
    return content.removeprefix(DAPO_PREFIX).removesuffix(DAPO_SUFFIX).strip()


def _dapo_row(row: dict) -> tuple[str, str]:
    user = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    return dapo_problem(user), str(row["reward_model"]["ground_truth"]).strip()


@dataclass(frozen=True)
class TrainSource:
    name: str
    """registry name (``data.sources`` in params.yaml, and the ``source`` of its records)"""
    title: str
    """display name"""
    file: str
    """path in a local directory source"""
    hub: tuple[str, str | None, str]
    """(hub id, config, split)"""
    parse: Callable[[dict], tuple[str, str] | None]
    """one raw row → ``(problem, answer)``, or None to leave it out"""


TRAIN_SOURCES: Registry[TrainSource] = registry("training source", DECLARED_TRAIN_SOURCES,
                                                "entropy_rl.config.TRAIN_SOURCES")
for _s in [
    TrainSource("math_l3_5", "MATH (levels 3–5)", "math/train.jsonl",
                ("DigitalLearningGmbH/MATH-lighteval", "default", "train"), _math_row),
    TrainSource("gsm8k", "GSM8K", "gsm8k/train.jsonl", HUB_SOURCES["gsm8k/train.jsonl"], _gsm8k_row),
    TrainSource("dapo17k", "DAPO-Math-17k", "dapo_math_17k/train.jsonl",
                ("BytedTsinghua-SIA/DAPO-Math-17k", None, "train"), _dapo_row),
]:
    TRAIN_SOURCES.register(_s.name, _s)


def _problem_key(problem: str) -> str:
    return " ".join(problem.split())


def load_train_source(name: str, source: str | Path, revision: str = "") -> list[dict]:
    """Normalized records of training set ``name`` from ``source`` (``"hub"`` or a local directory laid out as
    ``<dir>/<TrainSource.file>``), in file order, each problem once; ids are ``<name>-<raw row index>``. From the
    hub, ``revision`` (``data.revisions.<name>``) pins the snapshot; empty: the default branch."""
    src = TRAIN_SOURCES.get(name)
    layout = ", ".join(f"{s.file} ({s.name})" for s in TRAIN_SOURCES.values())
    rows = read_dataset(source, src.hub, src.file,
                        f"{name}: {{path}} not found; data.source is 'hub' or a directory with {layout}", revision)
    out, seen = [], set()
    for i, row in enumerate(rows):
        parsed = src.parse(row)
        if parsed is None or _problem_key(parsed[0]) in seen:
            continue
        seen.add(_problem_key(parsed[0]))
        out.append({"id": f"{name}-{i:05d}", "problem": parsed[0], "answer": parsed[1], "source": name})
    return out


def math_train_rows(cfg: DataConfig) -> dict[str, list[dict]]:
    """The ``rl`` and ``eval`` splits of task ``math``: every set in ``cfg.sources`` read from ``cfg.source`` (from
    the hub at ``cfg.revisions[name]`` where one is given), each problem once across sets (first set wins), shuffled
    with ``cfg.seed``; ``cfg.n_eval`` held-out rows (the in-training curve set), then up to ``cfg.n_rl`` RL rows
    (0 = all the rest)."""
    pool, seen = [], set()
    for name in cfg.sources:
        for r in load_train_source(name, cfg.source, cfg.revisions.get(name, "")):
            if (key := _problem_key(r["problem"])) not in seen:
                seen.add(key)
                pool.append(r)
    if cfg.n_eval >= len(pool):
        raise ValueError(f"data.n_eval: {cfg.n_eval} held-out rows requested but {', '.join(cfg.sources)} "
                         f"have {len(pool)} distinct problems")
    random.Random(cfg.seed).shuffle(pool)
    rest = pool[cfg.n_eval :]
    return {"rl": rest[: cfg.n_rl] if cfg.n_rl else rest, "eval": pool[: cfg.n_eval]}


# ----------------------------------------------------------------------------------------------------------
# Tasks: what `data.task` names (the splits and the reward that scores them)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    splits: Callable[[DataConfig], dict[str, list[dict]]]
    """the task's splits from the profile's data settings (`sft` only for tasks with a warm start)"""
    reward: str
    """the reward that scores its answers (entropy_rl.rewards.REWARDS)"""


TASKS: Registry[Task] = registry("task", DECLARED_TASKS, "entropy_rl.config.TASKS")
TASKS.register("arithmetic", Task("arithmetic", arithmetic_splits, "arithmetic"))
TASKS.register("math", Task("math", math_train_rows, "math"))


def task_splits(cfg: DataConfig) -> dict[str, list[dict]]:
    """The splits of the profile's task (``data.task``)."""
    return TASKS.get(cfg.task).splits(cfg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m entropy_rl.data",
                                 description="Materialize the raw data pinned by data.dvc into data/")
    ap.add_argument("--source", default="hub",
                    help="'hub' (download by the hub ids of HUB_SOURCES) or a local directory with the raw sets")
    ap.add_argument("--dest", default="data")
    ap.add_argument("--dvc-file", default="data.dvc")
    ap.add_argument("--revision", action="append", default=[], metavar="HUB_ID=REV",
                    help="with --source hub: read hub id HUB_ID at revision REV (a commit, tag or branch); repeatable")
    args = ap.parse_args(argv)
    revisions = {}
    for item in args.revision:
        hub_id, sep, rev = item.partition("=")
        if not (sep and hub_id and rev):
            ap.error(f"--revision {item!r}: expected HUB_ID=REV, e.g. openai/gsm8k=e53f048")
        revisions[hub_id] = rev
    if revisions and args.source != "hub":
        ap.error("--revision: only with --source hub")
    try:
        _check_hub_revisions(revisions)
    except ValueError as e:
        ap.error(f"--revision: {e}")
    if args.source == "hub":
        with tempfile.TemporaryDirectory(prefix="entropy_rl_hub_") as tmp:
            export_from_hub(tmp, revisions=revisions)
            files = fetch_raw(tmp, args.dest, args.dvc_file)
    else:
        files = fetch_raw(args.source, args.dest, args.dvc_file)
    print(f"{len(files)} files in {args.dest}/ match {args.dvc_file}")

if __name__ == "__main__":
    main()
