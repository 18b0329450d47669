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

from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path

FORMAT = "dyweight-state/2"
METADATA_KEY = "dyweight_state"
FILE_NAME = "state.safetensors"


@dataclasses.dataclass
class NfeRun:
    """The progress of one (solver family, NFE) target.

    ``parameters`` are the student's raw trainable tensors (see :mod:`.students`); ``adam`` is the
    optimiser's per-parameter state; ``best`` holds the tensors of the Φ with the lowest held-out RMSE
    so far (iteration 0 = the initialisation): ``weights``, ``time_scale`` and, for a learned grid,
    ``sigmas``. ``status`` is ``training``, ``done`` or ``stopped`` (non-finite loss or gradient).
    ``row`` is the finished validation-table entry.
    """

    family: str
    nfe: int
    parameters: dict
    best: dict
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

    @property
    def key(self) -> str:
        return f"{self.family}-nfe{self.nfe}"

    def snapshot(self) -> "NfeRun":
        """An independent copy (tensors cloned, lists copied): the last consistent state to save."""
        def cloned(tensors: dict) -> dict:
            return {name: tensor.detach().clone() for name, tensor in tensors.items()}

        return dataclasses.replace(self, parameters=cloned(self.parameters), best=cloned(self.best),
                                   adam=cloned(self.adam), train_loss=list(self.train_loss),
                                   validation=list(self.validation), notes=list(self.notes),
                                   row=None if self.row is None else dict(self.row))

    def tensors(self) -> dict:
        groups = {"parameters": self.parameters, "best": self.best, "adam": self.adam}
        return {f"{self.key}.{group}.{name}": tensor for group, named in groups.items() for name, tensor in named.items()}

    def document(self) -> dict:
        return {name: getattr(self, name) for name in (
            "family", "nfe", "best_rmse", "init_rmse", "best_iteration", "iteration", "train_loss", "validation",
            "status", "notes", "seconds", "row")}

    @classmethod
    def restore(cls, document: dict, tensors: dict) -> "NfeRun":
        run = cls(**document, parameters={}, best={})
        for name, tensor in tensors.items():
            key, group, tensor_name = name.split(".", 2)
            if key == run.key:
                getattr(run, group)[tensor_name] = tensor
        return run


def state_path(state_dir) -> Path:
    return Path(state_dir) / FILE_NAME


def save_state(state_dir, config: dict, runs: dict) -> Path:
    """Write ``config`` and each :class:`NfeRun` of ``runs`` atomically; return the path."""
    tensors = {}
    for run in runs.values():
        tensors.update({name: t.detach().to("cpu").contiguous() for name, t in run.tensors().items()})
    document = {"format": FORMAT, "config": config, "runs": [run.document() for run in runs.values()]}
    path = state_path(state_dir)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(document)})
    return path


def load_state(state_dir, config: dict) -> dict:
    """The runs saved in ``state_dir``, by :attr:`NfeRun.key`; refuses a state made with another configuration."""
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
    runs = [NfeRun.restore(entry, tensors) for entry in document["runs"]]
    return {run.key: run for run in runs}
