"""What a distillation run returns: the trained Φ per NFE with its training record, the validation
table, the loss history and the timings."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Optional

import torch

from ..coefficients import Coefficients
from ..version import __version__
from .pairs import PairSet
from .state import NfeRun

#: Training losses averaged for the record's ``loss``.
LOSS_WINDOW = 10


@dataclasses.dataclass
class DistillResult:
    """The outcome of :func:`~comfyui_dyweight.trainer.distill`.

    Attributes:
        coefficients: NFE → the Φ with the lowest held-out RMSE (never worse than its initialisation);
            with ``solver = "both"``, the better of the two families.
        candidates: NFE → family → that family's best Φ (one entry unless ``solver = "both"``).
        table: one row per NFE: the kept family's ``{"nfe", "solver", "rmse", "init", "baselines": {name:
            rmse | None}, "iterations", "best_iteration", "status", "optimisation_s"}`` and every family's
            figures under ``"families"``; every figure is the RMSE per latent element to the teacher's x0
            on the held-out pairs.
        history: NFE → family → ``{"train": [[iteration, loss], …], "validation": [[iteration, rmse], …]}``
            (validation iteration 0 is the initialisation).
        timings: ``{"teacher_s", "teacher_cache_hit", "optimisation_s": {nfe: seconds}}``.
        notes: what the caller should know (stopped training, an unimproved Φ, a failed baseline).
        pairs: the teacher pairs; ``validation_index`` selects the held-out ones.
    """

    coefficients: dict
    candidates: dict
    table: list
    history: dict
    timings: dict
    notes: list
    pairs: Optional[PairSet] = None
    validation_index: Optional[torch.Tensor] = None
    state_path: Optional[Path] = None

    @property
    def validation_pairs(self) -> Optional[PairSet]:
        return None if self.pairs is None else self.pairs.subset(self.validation_index)


def trained_phi(run: NfeRun, template: Coefficients, facts: dict) -> Coefficients:
    """The best Φ of ``run`` with its training record (``facts`` are the run-wide entries)."""
    record = dict(template.training)
    record.update(facts)
    record.update({
        "initialiser": template.training.get("initialiser"),
        "iterations": run.iteration,
        "loss": _recent_loss(run.train_loss),
        "validation": {
            "rmse": run.best_rmse, "init_rmse": run.init_rmse, "best_iteration": run.best_iteration,
            "baselines": None if run.row is None else run.row["baselines"],
        },
        "status": run.status,
        "returned": "initialisation" if run.best_iteration == 0 else "trained",
        "notes": list(run.notes),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pack_version": __version__,
    })
    return dataclasses.replace(template, **{name: tensor.clone() for name, tensor in run.best.items()},
                               training=record)


def _recent_loss(losses: list) -> Optional[float]:
    recent = losses[-LOSS_WINDOW:]
    return sum(recent) / len(recent) if recent else None


def family_row(run: NfeRun, baselines: dict) -> dict:
    """One family's validation figures at one NFE (the baselines' alongside)."""
    return {"nfe": run.nfe, "solver": run.family, "rmse": run.best_rmse, "init": run.init_rmse, "baselines": baselines,
            "iterations": run.iteration, "best_iteration": run.best_iteration, "status": run.status,
            "optimisation_s": run.seconds}


def history(run: NfeRun) -> dict:
    return {"train": [[i + 1, loss] for i, loss in enumerate(run.train_loss)],
            "validation": [list(entry) for entry in run.validation]}
