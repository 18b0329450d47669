"""``DistillConfig``: every setting of a distillation run, in one immutable object.

The node, the command line, :func:`~comfyui_dyweight.trainer.distill`, the resume check and the
training record all read this one object; a model source only suggests defaults for it
(:meth:`~comfyui_dyweight.trainer.source.ModelSource.config`). Defaults were tuned on Gaussian
mixtures with ``bench/trainer_quality.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

from ..coefficients.phi import DIVISORS

#: A trainer solver: ``solve(denoise, x, sigmas) -> x0`` (see :mod:`.teachers`).
Solver = Callable
#: DSS's default peak learning rate, as a multiple of ``lr`` (see ``dss_lr``).
DSS_LR_SCALE = 3.0
#: What ``solver`` may be: one family, or both (keeping the better per NFE).
SOLVERS = ("dyweight", "dss", "both")
#: Settings that change how a run is computed but not its result (up to float rounding), so a resume
#: may change them — e.g. smaller micro-batches after running out of memory.
EXECUTION_ONLY = ("micro_batch_size", "sampling_batch_size", "checkpointing")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The settings of one distillation (paper Algorithm 1) over one or more NFE targets.

    Student (Eqs. 6–9):
        nfe: the NFE targets (model calls per sample), trained one after another on the same pairs.
        solver: the family learned — ``"dyweight"`` (W and s on the model's grid, endpoint loss),
            ``"dss"`` (Differentiable Solver Search, arXiv 2505.21114: the grid and full-history
            coefficients whose rows sum to one, path loss; it ignores ``order``, ``afs``, ``divisor`` and
            ``variable_step_init``), or ``"both"``: each on the same pairs, keeping per NFE the one with
            the lower held-out error.
        order: K, the gradient history (default 3, the paper's pixel-space choice).
        afs: the analytical first step (one model call fewer).
        divisor: ``"sigma"`` or ``"net_sigma"`` (Eq. 7), as in the released tables.
        variable_step_init: start from variable-step Adams–Bashforth (paper App. A) instead of the fixed
            iPNDM rows.
        dss_init: a DSS Φ file to start the DSS family from (its grid and older-history weights, e.g. a
            shipped rectified-flow table for a flow model) instead of Euler on the model's grid; it must
            combine gradients and have one of the NFE targets.
    Teacher (Algorithm 1, line 2):
        teacher: a solver name (the model source resolves it: the built-in ``heun``, ``dpmpp_2m``,
            ``ipndm``, ``euler``, or a ComfyUI sampler for a ComfyUI model) or a solver
            ``teacher(denoise, x, sigmas) -> x0``, recorded under its ``name``/``__name__``.
        teacher_steps: the teacher's steps (heun at 64 makes 127 model calls per sample).
        pairs: how many pairs to draw (default: one per condition label, else every row of a noise
            tensor, else 256).
    Optimisation (Algorithm 1, lines 3–8):
        iterations: Adam steps per NFE; batch_size: pairs per step; lr: peak learning rate after a 5%
            linear warm-up, cosine-decayed to 0; dss_lr: DSS's (default 3 × lr: its logits move each grid
            point by a fraction of its interval, and on the demo model 0.15 reached 0.43× iPNDM's held-out
            error at NFE 5 in 200 steps where 0.05 reached 0.52×).
        micro_batch_size: pairs per forward/backward pass (default: the whole batch); gradients are
            summed over the step's batch, so smaller values give the same step (up to float rounding)
            in less memory.
        sampling_batch_size: pairs per model-call batch without gradients — the teacher, the held-out
            checks and the baselines (default ``batch_size``).
        checkpointing: recompute each model call in the backward pass (memory near one model call
            instead of N); results are identical.
        validation_fraction: share of the pairs held out (seeded split) for choosing the best Φ and for
            the table; validation_every: iterations between held-out checks (default iterations // 20).
        seed: seeds the split and the mini-batches (each a function of (seed, NFE, iteration)).
    """

    nfe: Sequence[int] = (3, 4, 5)
    solver: str = "dyweight"
    order: int = 3
    afs: bool = False
    divisor: str = "sigma"
    variable_step_init: bool = False
    teacher: Union[str, Solver] = "heun"
    teacher_steps: int = 64
    pairs: Optional[int] = None
    iterations: int = 600
    batch_size: int = 32
    micro_batch_size: Optional[int] = None
    sampling_batch_size: Optional[int] = None
    lr: float = 0.05
    dss_lr: Optional[float] = None
    dss_init: Optional[str] = None
    validation_fraction: float = 0.2
    validation_every: Optional[int] = None
    seed: int = 0
    checkpointing: bool = False

    def __post_init__(self):
        object.__setattr__(self, "nfe", (self.nfe,) if isinstance(self.nfe, int) else tuple(self.nfe))
        self._check()

    def _check(self) -> None:
        """``ValueError`` naming the first setting that cannot work."""
        targets = self.nfe
        if not targets or any(not isinstance(n, int) or n < 1 for n in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"nfe must be distinct integers ≥ 1, got {list(targets)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.order < 1:
            raise ValueError(f"order (K) must be ≥ 1, got {self.order}")
        if self.divisor not in DIVISORS:
            raise ValueError(f"divisor must be one of {DIVISORS}, got {self.divisor!r}")
        if self.iterations < 0 or self.batch_size < 1 or not self.lr > 0 or self.teacher_steps < 1:
            raise ValueError("iterations must be ≥ 0, batch_size and teacher_steps ≥ 1, lr > 0")
        if self.dss_lr is not None and not self.dss_lr > 0:
            raise ValueError(f"dss_lr must be > 0 (or None for 3 × lr), got {self.dss_lr}")
        for name in ("micro_batch_size", "sampling_batch_size", "pairs", "validation_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be ≥ 1 (or None for its default), got {value}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")

    # --- derived settings ------------------------------------------------------------------------
    @property
    def micro_batch(self) -> int:
        """Pairs per forward/backward pass (at most the batch)."""
        return self.batch_size if self.micro_batch_size is None else min(self.batch_size, self.micro_batch_size)

    @property
    def sampling_batch(self) -> int:
        """Pairs per model-call batch without gradients."""
        return self.batch_size if self.sampling_batch_size is None else self.sampling_batch_size

    @property
    def validation_interval(self) -> int:
        """Iterations between held-out checks."""
        return self.validation_every or max(1, self.iterations // 20)

    @property
    def families(self) -> tuple:
        """The solver families this run trains."""
        return ("dyweight", "dss") if self.solver == "both" else (self.solver,)

    def peak_lr(self, family: str) -> float:
        """The peak learning rate of a solver family's parameters."""
        if family == "dss":
            return DSS_LR_SCALE * self.lr if self.dss_lr is None else self.dss_lr
        return self.lr

    @property
    def teacher_name(self) -> str:
        return self.teacher if isinstance(self.teacher, str) else getattr(
            self.teacher, "name", getattr(self.teacher, "__name__", "custom"))

    # --- what others read --------------------------------------------------------------------------
    def resume_key(self) -> dict:
        """The settings a resumed run must share with the interrupted one (JSON values)."""
        key = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
               if field.name not in EXECUTION_ONLY}
        key.update(nfe=list(self.nfe), teacher=self.teacher_name, validation_every=self.validation_interval)
        return key

    def record(self) -> dict:
        """The settings a trained Φ's ``training`` record keeps."""
        return {"teacher": self.teacher_name, "teacher_steps": self.teacher_steps, "batch_size": self.batch_size,
                "lr": self.lr, "dss_lr": self.peak_lr("dss") if "dss" in self.families else None, "seed": self.seed,
                "planned_iterations": self.iterations}

    def with_given(self, **given) -> "DistillConfig":
        """A copy with the settings in ``given`` that are not ``None`` (``None`` = "not given", as an
        optional command-line option or node input leaves it)."""
        return dataclasses.replace(self, **{name: value for name, value in given.items() if value is not None})
