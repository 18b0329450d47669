"""Resumable training state: everything a run needs to continue bit for bit after an interruption.

One safetensors file, ``<state_dir>/state.safetensors``: per NFE target the trainable parameters, the
Adam moments, the best Φ so far, and (in the JSON metadata) the iteration reached, the loss history,
the notes and the run's configuration, which a resume must match. Written atomically; never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path

FORMAT = "dyweight-state/1"
METADATA_KEY = "dyweight_state"
FILE_NAME = "state.safetensors"


@dataclasses.dataclass
class NfeRun:
    """The progress of one NFE target.

    ``weights``/``log_scale`` are the raw trainable parameters (s = exp(log_scale)); ``adam`` is the
    optimiser's per-parameter state; ``best_*`` is the Φ with the lowest held-out RMSE so far
    (iteration 0 = the initialisation). ``status`` is ``training``, ``done`` or ``stopped`` (non-finite
    loss or gradient). ``row`` is the finished validation-table row.
    """

    nfe: int
    weights: torch.Tensor
    log_scale: torch.Tensor
    best_weights: torch.Tensor
    best_time_scale: torch.Tensor
    best_rmse: float
    init_rmse: float
    best_iteration: int = 0
    iteration: int = 0
    adam: dict = dataclasses.field(default_factory=dict)
    train_loss: list = dataclasses.field(default_factory=list)
    validation: list = dataclasses.field(default_factory=list)
    status: str = "training"
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    row: Optional[dict] = None

    TENSORS = ("weights", "log_scale", "best_weights", "best_time_scale")

    def snapshot(self) -> "NfeRun":
        """An independent copy (tensors cloned, lists copied): the last consistent state to save."""
        copy = dataclasses.replace(self, adam={name: t.clone() for name, t in self.adam.items()},
                                   train_loss=list(self.train_loss), validation=list(self.validation),
                                   notes=list(self.notes), row=None if self.row is None else dict(self.row))
        for name in self.TENSORS:
            setattr(copy, name, getattr(self, name).detach().clone())
        return copy

    def tensors(self) -> dict:
        named = {name: getattr(self, name) for name in self.TENSORS}
        named.update({f"adam.{name}": tensor for name, tensor in self.adam.items()})
        return {f"nfe{self.nfe}.{name}": tensor for name, tensor in named.items()}

    def document(self) -> dict:
        return {name: getattr(self, name) for name in (
            "nfe", "best_rmse", "init_rmse", "best_iteration", "iteration", "train_loss", "validation",
            "status", "notes", "seconds", "row")}

    @classmethod
    def restore(cls, document: dict, tensors: dict) -> "NfeRun":
        prefix = f"nfe{document['nfe']}."
        mine = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        adam = {name[len("adam."):]: t for name, t in mine.items() if name.startswith("adam.")}
        return cls(**document, **{name: mine[name] for name in cls.TENSORS}, adam=adam)


def state_path(state_dir) -> Path:
    return Path(state_dir) / FILE_NAME


def save_state(state_dir, config: dict, runs: dict) -> Path:
    """Write ``config`` and the :class:`NfeRun` of each NFE in ``runs`` atomically; return the path."""
    tensors = {}
    for run in runs.values():
        tensors.update({name: t.detach().to("cpu").contiguous() for name, t in run.tensors().items()})
    document = {"format": FORMAT, "config": config, "runs": [run.document() for run in runs.values()]}
    path = state_path(state_dir)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(document)})
    return path


def load_state(state_dir, config: dict) -> dict:
    """The runs saved in ``state_dir``, by NFE; refuses a state made with another configuration."""
    path = state_path(state_dir)
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: no training state at {path}")
    with safe_open(str(path), framework="pt") as stored:
        document = json.loads((stored.metadata() or {}).get(METADATA_KEY, "{}"))
        tensors = {name: stored.get_tensor(name) for name in stored.keys()}
    if document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DyWeight training state this version can resume")
    changed = sorted(name for name in set(config) | set(document["config"])
                     if config.get(name) != document["config"].get(name))
    if changed:
        raise ValueError(f"cannot resume from {path}: it was made with different settings ({', '.join(changed)}); "
                         "use the same settings, or start afresh without resume")
    return {entry["nfe"]: NfeRun.restore(entry, tensors) for entry in document["runs"]}
