"""Progress of a distillation run: events for a caller's callback, or tqdm bars with ETA on stderr.

Events (plain dicts, one ``kind`` each):

* ``{"kind": "teacher", "done", "total", "eta_s"}`` after each batch of teacher pairs;
* ``{"kind": "train", "nfe", "iteration", "iterations", "loss", "eta_s"}`` after each optimiser step;
* ``{"kind": "validation", "nfe", "iteration", "val_rmse", "best"}`` after each held-out evaluation;
* ``{"kind": "done", "nfe", "table"}`` when an NFE target is finished (``table`` is its table row).

A callback may raise :class:`TrainingInterrupted` (or ``KeyboardInterrupt``) to stop the run; the
trainer then saves a resumable state and raises :class:`TrainingInterrupted` with the best Φ so far.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


class TrainingInterrupted(Exception):
    """The run was stopped (Ctrl-C or by the progress callback); ``result`` holds the best Φ so far.

    Raise it without arguments from a progress callback to stop a run; the trainer re-raises it with
    ``result`` (a :class:`~comfyui_dyweight.trainer.result.DistillResult`, or ``None`` before any
    NFE started) and ``state_path`` (where the resumable state went, or ``None``).
    """

    def __init__(self, message: str = "training interrupted", result=None, state_path=None):
        super().__init__(message)
        self.result = result
        self.state_path = state_path


class _Eta:
    """Seconds left for a phase, from the rate observed since it (re)started."""

    def __init__(self, start: int):
        self.start, self.clock = start, time.monotonic()

    def __call__(self, done: int, total: int) -> Optional[float]:
        if done <= self.start:
            return None
        rate = (time.monotonic() - self.clock) / (done - self.start)
        return rate * (total - done)


class Reporter:
    """Sends events to ``callback``; without one, draws tqdm bars (when tqdm is installed)."""

    def __init__(self, callback: Optional[Callable[[dict], None]] = None):
        self.callback = callback
        self._bar = None
        self._postfix: dict = {}
        self._eta: Optional[_Eta] = None

    # --- phases ------------------------------------------------------------------------------
    def begin(self, label: str, done: int, total: int, unit: str = "it") -> None:
        """Start a phase (teacher pairs, or one NFE's optimisation) that is ``done`` of ``total`` in."""
        self.end()
        self._eta, self._postfix = _Eta(done), {}
        if self.callback is None:
            self._bar = _tqdm(label, done, total, unit)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- events ------------------------------------------------------------------------------
    def teacher(self, done: int, total: int) -> None:
        self._emit({"kind": "teacher", "done": done, "total": total, "eta_s": self._eta(done, total)}, done)

    def train(self, nfe: int, iteration: int, iterations: int, loss: float) -> None:
        self._postfix["loss"] = f"{loss:.3g}"
        self._emit({"kind": "train", "nfe": nfe, "iteration": iteration, "iterations": iterations,
                    "loss": loss, "eta_s": self._eta(iteration, iterations)}, iteration)

    def validation(self, nfe: int, iteration: int, val_rmse: float, best: float) -> None:
        self._postfix.update(val=f"{val_rmse:.4g}", best=f"{best:.4g}")
        self._emit({"kind": "validation", "nfe": nfe, "iteration": iteration, "val_rmse": val_rmse,
                    "best": best}, None)

    def done(self, nfe: int, row: dict) -> None:
        self.end()
        self._emit({"kind": "done", "nfe": nfe, "table": row}, None)

    def _emit(self, event: dict, position: Optional[int]) -> None:
        if self.callback is not None:
            self.callback(event)
        elif self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)
            if position is not None:
                self._bar.update(position - self._bar.n)


def _tqdm(label: str, done: int, total: int, unit: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: without it the run is silent unless a callback is given
        return None
    return tqdm(total=total, initial=done, desc=label, unit=unit, dynamic_ncols=True)
