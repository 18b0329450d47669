"""Φ, the DyWeight coefficients: the weight matrix W, the time scales s, and what they belong to.

Notation follows the paper (arXiv 2603.11607, §3): N base steps, a history window of K gradients,
row n of W weighting the K most recent gradients (column 0 = newest), s_n the time scale of the
model query at step n (Eq. 7), and the running, implicitly shifted time t̃ (Eq. 8).

The same value holds the second family, DSS (Differentiable Solver Search, arXiv 2505.21114, §3):
a searched base grid plus full-history coefficients whose rows sum to one, so K = N, s = 1 and the
model is queried on the grid itself (no implicit time shift). ``solver`` says which family a Φ is;
``combine`` says what its rows weight: ``gradient`` (residuals / velocities, Eq. 6 of DyWeight and
DSS's rectified-flow solvers) or ``denoised`` (data predictions, DSS's DDPM solvers).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Optional, Union

import torch

from .errors import CoefficientError, CoefficientFileError
from .io import FORMAT, read_coefficient_file, write_coefficient_file

DIVISORS = ("sigma", "net_sigma")
PREDICTIONS = ("eps", "v", "flow")
SCHEDULE_KINDS = ("comfy", "explicit", "edm", "flux", "ddpm_time")
SOLVERS = ("dyweight", "dss")
COMBINES = ("gradient", "denoised")
#: How far a row of W may be from summing to one (relative to its absolute sum) where one is required:
#: float32 files round each weight by ~6e-8.
ROW_SUM_TOLERANCE = 1e-5


def validate_schedule(schedule: Any) -> dict:
    """Check a schedule record (the file's ``schedule``, see :mod:`.io`) and return it as a plain dict."""
    if not isinstance(schedule, dict) or schedule.get("kind") not in SCHEDULE_KINDS:
        raise CoefficientError(
            f"schedule must be a dict whose 'kind' is one of {SCHEDULE_KINDS}, got {schedule!r}")
    kind = schedule["kind"]
    if kind == "comfy" and not isinstance(schedule.get("scheduler"), str):
        raise CoefficientError("a 'comfy' schedule needs the ComfyUI scheduler name in 'scheduler'")
    if kind == "edm" and not _positive_number(schedule.get("rho")):
        raise CoefficientError("an 'edm' schedule needs a positive 'rho'")
    if kind == "flux" and not _finite_number(schedule.get("mu")):
        raise CoefficientError("a 'flux' schedule needs the resolution shift 'mu'")
    if kind == "ddpm_time":
        times = schedule.get("t")
        if not (isinstance(times, list) and len(times) >= 2
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in times)
                and all(later < earlier for earlier, later in zip(times, times[1:]))):
            raise CoefficientError(
                "a 'ddpm_time' schedule needs 't': the DDPM times of the grid, strictly decreasing in [0, 1]")
    return dict(schedule)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _finite_number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _finite_number(value) and value >= 0


#: What a CFG range applies to: the CFG scale, or FLUX's guidance embedding (set on the conditioning).
CFG_RANGE_KINDS = ("cfg", "guidance")


def _validate_cfg_range(record: dict) -> None:
    """``{"kind": "cfg" | "guidance", "min": a, "max": b}``, 0 ≤ a ≤ b: a Φ trained over that range."""
    if set(record) != {"kind", "min", "max"} or record["kind"] not in CFG_RANGE_KINDS \
            or not (_non_negative(record["min"]) and _non_negative(record["max"])) or record["min"] > record["max"]:
        raise CoefficientError(f"a cfg range must be {{'kind': 'cfg' or 'guidance', 'min': a, 'max': b}} with "
                               f"0 ≤ a ≤ b, got {record!r}")


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """A DyWeight solver: W ∈ ℝ^{N×K}, s ∈ ℝ^N, flags, and the facts of the model it was made for.

    An immutable value, validated once when it is built: a new Φ is made with ``dataclasses.replace``
    (which validates again), never by changing one. The tensors are shared, not copied (so that
    ``weights``/``time_scale`` may carry the trainer's autograd graph); nothing may write into them.
    ``prediction``/``model_family`` of ``None`` mean "any" (model-agnostic presets).
    ``sigmas`` is the base grid σ_0 > … > σ_N the Φ was trained on, when it belongs to a model.
    """

    weights: torch.Tensor
    time_scale: torch.Tensor
    afs: bool = False
    divisor: str = "sigma"
    schedule: dict = dataclasses.field(default_factory=lambda: {"kind": "comfy", "scheduler": "karras"})
    sigmas: Optional[torch.Tensor] = None
    prediction: Optional[str] = None
    model_family: Optional[str] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    cfg: Union[float, dict, None] = None  # a number, or a range record (see _validate_cfg_range)
    training: dict = dataclasses.field(default_factory=dict)
    solver: str = "dyweight"
    combine: str = "gradient"
    source: Optional[dict] = None

    def __post_init__(self):
        self._validate()
        # Private copies of the records, so that no caller's dict can change this Φ afterwards.
        object.__setattr__(self, "schedule", validate_schedule(self.schedule))
        object.__setattr__(self, "training", copy.deepcopy(self.training))
        object.__setattr__(self, "source", copy.deepcopy(self.source))
        object.__setattr__(self, "cfg", copy.deepcopy(self.cfg))

    # --- shape facts -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """N, the number of base steps (rows of W)."""
        return self.weights.shape[0]

    @property
    def order(self) -> int:
        """K, the width of the gradient history window."""
        return self.weights.shape[1]

    @property
    def nfe(self) -> int:
        """Model calls per sample: N, or N − 1 with the analytical first step."""
        return self.steps - int(self.afs)

    # --- checks ------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Raise :class:`CoefficientError` naming the first thing that makes this Φ unusable."""
        w, s = self.weights, self.time_scale
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise CoefficientError(f"weights must be an [N, K] tensor, got shape {tuple(getattr(w, 'shape', ()))}")
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (w.shape[0],):
            raise CoefficientError(
                f"time_scale must have one entry per step ({w.shape[0]}), got shape {tuple(getattr(s, 'shape', ()))}")
        if not (w.is_floating_point() and s.is_floating_point()):
            raise CoefficientError("weights and time_scale must be floating-point tensors")
        w, s = w.detach(), s.detach()
        if not torch.isfinite(w).all() or not torch.isfinite(s).all():
            raise CoefficientError("weights and time_scale must be finite (found NaN or Inf)")
        if not (s > 0).all():
            raise CoefficientError(f"time scales must be positive, got {s.tolist()}")
        outside = torch.ones_like(w, dtype=torch.bool).triu(1)  # column k > row n: no gradient yet
        if (w[outside] != 0).any():
            raise CoefficientError(
                "weights outside the available history must be 0 (row n uses columns 0..n; column 0 = newest)")
        if not isinstance(self.afs, bool):
            raise CoefficientError(f"afs must be true or false, got {self.afs!r}")
        if self.steps - int(self.afs) < 1:
            raise CoefficientError("with the analytical first step a Φ needs at least 2 steps")
        if self.divisor not in DIVISORS:
            raise CoefficientError(f"divisor must be one of {DIVISORS}, got {self.divisor!r}")
        if self.prediction is not None and self.prediction not in PREDICTIONS:
            raise CoefficientError(f"prediction must be one of {PREDICTIONS} or None, got {self.prediction!r}")
        if self.model_family is not None and not isinstance(self.model_family, str):
            raise CoefficientError(f"model_family must be a model config name or None, got {self.model_family!r}")
        validate_schedule(self.schedule)
        if self.sigmas is not None:
            self._validate_sigmas()
        elif self.schedule["kind"] == "explicit":
            raise CoefficientError("an 'explicit' schedule needs the base grid in 'sigmas'")
        for name in ("sigma_min", "sigma_max", "cfg"):
            value = getattr(self, name)
            if name == "cfg" and isinstance(value, dict):
                _validate_cfg_range(value)
            elif value is not None and not _non_negative(value):
                raise CoefficientError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if self.schedule["kind"] == "edm" and (self.sigma_min is None or self.sigma_max is None):
            raise CoefficientError("an 'edm' schedule needs sigma_min and sigma_max")
        if self.schedule["kind"] == "ddpm_time":
            if len(self.schedule["t"]) != self.steps + 1:
                raise CoefficientError(f"a 'ddpm_time' schedule needs N+1 = {self.steps + 1} times in 't', "
                                       f"got {len(self.schedule['t'])}")
            if self.prediction == "flow":
                raise CoefficientError("a 'ddpm_time' schedule is for eps/v models, not flow models")
        if not isinstance(self.training, dict):
            raise CoefficientError("training must be a dict")
        if self.source is not None and not isinstance(self.source, dict):
            raise CoefficientError("source must be a dict (repository, commit, file, licence) or absent")
        self._validate_family()

    def _validate_family(self) -> None:
        """DSS (arXiv 2505.21114, §3): K = N, s = 1, no analytical first step, and every model query on
        the grid itself — rows 0 … N−2 sum to one (the last row's sum only places the end point, t̃_N).
        Data predictions are combined affinely: with ``combine = "denoised"`` every row sums to one."""
        if self.solver not in SOLVERS:
            raise CoefficientError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.combine not in COMBINES:
            raise CoefficientError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        w = self.weights.detach()  # zero above the diagonal (checked in _validate)
        off_by = (w.sum(1) - 1).abs() > ROW_SUM_TOLERANCE * w.abs().sum(1).clamp_min(1)
        if self.combine == "denoised" and off_by.any():
            n = int(off_by.nonzero()[0])
            raise CoefficientError(
                f"with combine = 'denoised' every row of weights must sum to 1 (an average of data "
                f"predictions); row {n} sums to {float(w[n].sum()):.6g}")
        if self.solver != "dss":
            return
        if self.order != self.steps or self.afs or not bool((self.time_scale.detach() == 1).all()):
            raise CoefficientError(
                "a DSS Φ has the full history (K = N), time scales of 1 and no analytical first step; "
                f"got K = {self.order}, N = {self.steps}, afs = {self.afs}, s = {self.time_scale.tolist()}")
        if off_by[:-1].any():
            n = int(off_by[:-1].nonzero()[0])
            raise CoefficientError(
                f"a DSS Φ queries the model on its grid: rows 0 … N−2 of weights must sum to 1, row {n} "
                f"sums to {float(w[n].sum()):.6g}")

    def _validate_sigmas(self) -> None:
        sig = self.sigmas
        if not isinstance(sig, torch.Tensor) or tuple(sig.shape) != (self.steps + 1,):
            raise CoefficientError(
                f"sigmas must hold N+1 = {self.steps + 1} values, got shape {tuple(getattr(sig, 'shape', ()))}")
        sig = sig.detach()
        if not torch.isfinite(sig).all() or (sig < 0).any() or not (sig[1:] < sig[:-1]).all():
            raise CoefficientError("sigmas must be finite, ≥ 0 and strictly decreasing")

    # --- conversions -------------------------------------------------------------------------
    def metadata(self) -> dict:
        """The JSON document stored in the file's metadata (format ``dyweight/1``, see :mod:`.io`)."""
        return {
            "format": FORMAT, "nfe": self.nfe, "order": self.order, "afs": bool(self.afs),
            "divisor": self.divisor, "schedule": self.schedule, "prediction": self.prediction,
            "model_family": self.model_family, "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max, "cfg": self.cfg, "training": self.training,
            "solver": self.solver, "combine": self.combine, "source": self.source,
        }

    def steps_slice(self, start: int, stop: int) -> "Coefficients":
        """The rows of steps ``start`` … ``stop − 1`` as a Φ of their own, for a sampler handed that slice of
        the grid this Φ was made for (a two-stage or refiner workflow).

        The gradients from before the slice do not exist there: a row's weights of those are added to its
        newest gradient's, which keeps the row sums (the time shift of Eq. 8). A slice that starts later
        than step 0 has no analytical first step; its grid is the matching part of this Φ's.
        """
        if not 0 <= start < stop <= self.steps:
            raise CoefficientError(f"steps {start}…{stop - 1} are not a slice of this Φ's {self.steps} steps")
        steps = stop - start
        weights = self.weights[start:stop].clone()
        for row in range(min(steps, self.order)):
            weights[row, 0] += weights[row, row + 1:].sum()
            weights[row, row + 1:] = 0
        schedule = dict(self.schedule)
        if schedule["kind"] == "ddpm_time":
            schedule["t"] = schedule["t"][start:stop + 1]
        return dataclasses.replace(
            self, weights=weights[:, :min(self.order, steps)], time_scale=self.time_scale[start:stop].clone(),
            afs=self.afs and start == 0, schedule=schedule,
            sigmas=None if self.sigmas is None else self.sigmas[start:stop + 1].clone(),
            training={**self.training, "slice_of_steps": [start, stop]})

    def detached(self, dtype=torch.float32) -> "Coefficients":
        """A CPU copy without autograd history (what is saved and shipped), in float32 unless told."""
        return dataclasses.replace(
            self,
            weights=self.weights.detach().to("cpu", dtype).clone(),
            time_scale=self.time_scale.detach().to("cpu", dtype).clone(),
            sigmas=None if self.sigmas is None else self.sigmas.detach().to("cpu", dtype).clone(),
        )

    def summary(self) -> str:
        """A few human-readable lines: what this Φ is and where it came from."""
        family = self.model_family or "any model"
        prediction = self.prediction or "any prediction"
        kind = "DSS solver" if self.solver == "dss" else "DyWeight Φ"
        combined = ", combines data predictions" if self.combine == "denoised" else ""
        lines = [
            f"{kind}: NFE {self.nfe} ({self.steps} steps{', analytical first step' if self.afs else ''}), "
            f"history K={self.order}{combined}",
            f"for {family} ({prediction}), schedule {_describe_schedule(self.schedule)}",
        ]
        if self.source:
            lines.append("from " + ", ".join(str(self.source[k]) for k in ("repository", "commit", "file", "licence")
                                             if self.source.get(k)))
        if isinstance(self.cfg, dict):
            lines.append(f"{self.cfg['kind']} {self.cfg['min']:g}–{self.cfg['max']:g}")
        elif self.cfg is not None:
            lines.append(f"CFG/guidance {self.cfg:g}")
        record = self.training
        if record.get("initialiser") and not record.get("iterations"):
            lines.append(f"untrained: {record['initialiser']} initialisation")
        elif record:
            facts = [f"{k}={record[k]}" for k in ("teacher", "teacher_steps", "pairs", "iterations", "base_model")
                     if record.get(k) is not None]
            lines.append(("searched: " if self.solver == "dss" else "trained: ") + ", ".join(facts))
            validation = record.get("validation")
            if isinstance(validation, dict) and _finite_number(validation.get("rmse")):
                lines.append(f"held-out RMSE to teacher {validation['rmse']:.4g}")
        return "\n".join(lines)

    @classmethod
    def load(cls, path) -> "Coefficients":
        """Read and validate a coefficient file (the file format: :mod:`coefficients.io`); every problem is a
        :class:`CoefficientFileError` that names the file. Nothing is ever unpickled."""
        tensors, document = read_coefficient_file(path)
        try:
            return cls(weights=tensors["weights"], time_scale=tensors["time_scale"], sigmas=tensors.get("sigmas"),
                       afs=document["afs"], divisor=document["divisor"], schedule=document["schedule"],
                       prediction=document["prediction"], model_family=document["model_family"],
                       sigma_min=document["sigma_min"], sigma_max=document["sigma_max"], cfg=document["cfg"],
                       training=document["training"], solver=document.get("solver", "dyweight"),
                       combine=document.get("combine", "gradient"), source=document.get("source"))
        except CoefficientError as error:
            raise CoefficientFileError(path, "invalid", str(error)) from None

    def save(self, path, dtype=torch.float32) -> None:
        """Write this Φ atomically, its tensors in ``dtype`` (float64 keeps converted third-party tables at
        their published decimals)."""
        phi = self.detached(dtype)
        tensors = {"weights": phi.weights, "time_scale": phi.time_scale}
        if phi.sigmas is not None:
            tensors["sigmas"] = phi.sigmas
        write_coefficient_file(path, tensors, phi.metadata())


def _describe_schedule(schedule: dict) -> str:
    kind = schedule["kind"]
    if kind == "comfy":
        return f"ComfyUI '{schedule['scheduler']}'"
    if kind == "edm":
        return f"EDM ρ={schedule['rho']:g}{' to 0' if schedule.get('to_zero') else ''}"
    if kind == "flux":
        return f"FLUX shift μ={schedule['mu']:g}"
    if kind == "ddpm_time":
        return f"DDPM times {schedule['t'][0]:g} … {schedule['t'][-1]:g} (the model's own σ(t))"
    return "explicit sigmas"
