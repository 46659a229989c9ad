"""Check a whole ``params.yaml`` before any work starts: every profile, objective and run matrix.

:func:`check` loads every profile under ``profiles`` and ``more_profiles`` (with its ``extends`` chain), every entry
under ``objectives`` (a variant through its ``method``), and the run matrices ``rl_runs`` and ``study``; the first
problem raises :class:`~entropy_rl.config.ConfigError`, one line that names the full key path. The stage command
(``entropy_rl.stage``) calls it with the stage's ``profile``, ``objective`` and ``overrides`` before papermill
starts; from the shell::

    python -m entropy_rl.preflight [params.yaml]    # prints `params.yaml: OK (...)` or `params.yaml: <the error>`

Exit status: 0 valid, 2 a configuration error (no traceback).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, check_overrides, load_profile, no_profiles_error, read_params, run_matrix
from .objectives import load_objective

MATRICES = ("rl_runs", "study", "probe")


def check(params_file: str | Path = "params.yaml", profile: str | None = None, objective: str | None = None,
          overrides: dict | None = None) -> dict:
    """Validate ``params_file``; raise :class:`ConfigError` on the first problem, else return the counts.

    Every profile and every objective entry is loaded. ``profile`` and ``objective`` (a notebook's parameters) are
    checked first, the profile with ``overrides`` (dotted keys, e.g. ``{"rl.steps": 3}``) applied. The run
    matrices ``rl_runs`` and ``study`` are checked in the whole-file check only (no ``profile`` or ``objective``
    given): a notebook run does not depend on them, and test set-ups that move profiles around leave them stale.
    """
    params = read_params(params_file)
    overrides = check_overrides(overrides)
    if overrides and profile is None:
        raise ConfigError("overrides: given without a profile; name the profile they apply to")
    for key, value in (("profile", profile), ("objective", objective)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: expected a name, got {value!r}")
    profiles = [*(params.get("profiles") or {}), *(params.get("more_profiles") or {})]
    if not profiles:
        raise no_profiles_error(params_file)
    objectives = list(params.get("objectives") or {})
    if profile is not None:
        load_profile(params_file, profile, overrides)
    if objective is not None:
        load_objective(objective, params_file)
    for name in profiles:
        load_profile(params_file, name, overrides if name == profile else None)
    for name in objectives:
        load_objective(name, params_file)
    summary: dict[str, Any] = {"profiles": len(profiles), "objectives": len(objectives)}
    if profile is None and objective is None:
        for section in MATRICES:
            if section in params:
                summary[section] = len(run_matrix(params_file, section))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 or argv[:1] in (["-h"], ["--help"]):
        print("usage: python -m entropy_rl.preflight [params.yaml]", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    path = argv[0] if argv else "params.yaml"
    try:
        summary = check(path)
    except ConfigError as e:
        message = " ".join(str(e).split())
        print(message if message.startswith(f"{path}:") else f"{path}: {message}")
        return 2
    counts = ", ".join(f"{n} {k}" if k in ("profiles", "objectives") else f"{k}: {n} runs" for k, n in summary.items())
    print(f"{path}: OK ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
