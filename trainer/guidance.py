"""Training one Φ for a range of CFG (or FLUX guidance) scales.

A solver's best coefficients depend on the guidance: CFG bends the probability-flow trajectory that
the teacher integrates. DSS (arXiv 2505.21114) trains with a random CFG per sample so that one solver
serves them all; here each teacher pair draws its guidance uniformly from the model source's range
(:attr:`~comfyui_dyweight.trainer.source.ModelSource.guidance`), the student is trained on those pairs
as usual (Algorithm 1 with the expectation also over the guidance), and the validation report gives
the held-out RMSE at both ends of the range and its middle, with the teacher re-run there.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from . import optimise
from .pairs import PairSet, teacher_pairs
from .progress import Reporter

#: Seeds the guidance draws, so that pair i's guidance depends on i and the range only.
GUIDANCE_SEED = 0x6C1D


def draw_guidance(span: Optional[Sequence[float]], count: int) -> Optional[torch.Tensor]:
    """Per-pair guidance [count] (float64) uniform in ``span`` = (low, high); ``None`` without a range."""
    if span is None:
        return None
    low, high = (float(value) for value in span)
    if not 0 <= low <= high:
        raise ValueError(f"a guidance range needs 0 ≤ low ≤ high, got ({low:g}, {high:g})")
    draws = torch.rand(count, dtype=torch.float64, generator=torch.Generator().manual_seed(GUIDANCE_SEED))
    return low + (high - low) * draws


def checkpoints(span: Sequence[float]) -> list:
    """Where the report evaluates a range: its low end, its middle and its high end."""
    low, high = (float(value) for value in span)
    return [low, (low + high) / 2, high]


@dataclasses.dataclass
class EndsReport:
    """Held-out RMSE at the :func:`checkpoints` of a range, the teacher re-run there once per run."""

    span: Sequence[float]
    denoise: Callable
    teacher: object
    teacher_sigmas: torch.Tensor
    batch_size: int
    reporter: Reporter
    pairs: dict = dataclasses.field(default_factory=dict)  # guidance → held-out pairs with its targets

    def row(self, validation_pairs: PairSet, phis: dict) -> list:
        """``[{"guidance": g, name: rmse, …}]`` at each checkpoint g for each ``name → (Φ, its grid)``."""
        rows = []
        for value in checkpoints(self.span):
            pairs = self._pairs_at(value, validation_pairs)
            rows.append({"guidance": value, **{name: optimise.phi_rmse(phi, grid, self.denoise, pairs, self.batch_size)
                                               for name, (phi, grid) in phis.items()}})
        return rows

    def _pairs_at(self, value: float, validation_pairs: PairSet) -> PairSet:
        if value not in self.pairs:
            fixed = torch.full((len(validation_pairs),), value, dtype=torch.float64)
            run = teacher_pairs(self.denoise, validation_pairs.noise, validation_pairs.seeds, validation_pairs.labels,
                                self.teacher, self.teacher_sigmas, self.batch_size, {}, None, self.reporter,
                                guidance=fixed)
            self.pairs[value] = run.pairs
        return self.pairs[value]
