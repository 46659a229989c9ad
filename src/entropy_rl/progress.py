"""Progress bars (tqdm) that show where the user is looking, notices, and the per-phase clock of the RL step.

Under ``dvc repro`` the notebooks run inside papermill kernels; their output is captured into the executed
notebook, where a progress bar is noise (and makes outputs differ run to run). With
``ENTROPY_RL_PROGRESS=terminal`` (set by the dvc.yaml commands) bars go to the kernel process's own stderr,
which is the terminal that runs ``dvc repro``. In an interactive notebook they render in the notebook.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import torch


def progress(iterable=None, **kwargs):
    mode = os.environ.get("ENTROPY_RL_PROGRESS", "auto")
    if mode == "off":
        kwargs["disable"] = True
    if mode == "terminal":
        from tqdm import tqdm

        return tqdm(iterable, file=sys.__stderr__, dynamic_ncols=True, mininterval=1.0, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def notice(message: str) -> None:
    """Print ``message`` (into the notebook); under ``dvc repro`` (progress to the terminal) also on the terminal,
    where the user is looking: a resumed or restarted run, a skipped update."""
    print(message, flush=True)
    if os.environ.get("ENTROPY_RL_PROGRESS") == "terminal":
        print(message, file=sys.__stderr__, flush=True)


def quiet_libraries() -> None:
    """Under ``dvc repro`` (progress to the terminal or off), silence the libraries' own progress bars, whose
    rates would otherwise land in the executed notebooks."""
    if os.environ.get("ENTROPY_RL_PROGRESS", "auto") == "auto":
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class PhaseClock:
    """Wall seconds per named phase, summed over the phase's calls: ``with clock("rollout"): ...``. On a GPU the
    device is synchronized at both ends of a phase, so that its kernels are counted in it (as verl's
    ``timing_s/*``)."""

    def __init__(self, device=None):
        self._sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else None
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        if self._sync:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def row(self, prefix: str = "timing_s/") -> dict[str, float]:
        """The phases as log keys, ``timing_s/<phase>``."""
        return {f"{prefix}{k}": v for k, v in self.seconds.items()}
