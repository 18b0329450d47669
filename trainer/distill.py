"""``distill``: learn DyWeight coefficients Φ = {W, s} for a denoiser by endpoint distillation.

Paper (arXiv 2603.11607) Algorithm 1: draw noise x_T, solve the probability-flow ODE from it with a
many-step teacher, run the N-step DyWeight student (Eqs. 6–9) from the same x_T, and minimise
‖x0_student − x0_teacher‖² over W and s. Here the teacher pairs are generated once (and cached) and
shared by every NFE target; a held-out split picks the best Φ and builds the validation table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..coefficients import Coefficients, initial_coefficients
from . import optimise
from .pairs import NoiseSource, PairSet, TeacherRun, cache_path, draw_noise, pairs_key, teacher_pairs
from .progress import Reporter, TrainingInterrupted
from .result import DistillResult, history, table_row, trained_phi
from .state import NfeRun, load_state, save_state, state_path
from .teachers import Solver, Teacher, default_baselines, resolve_teacher

#: Defaults, tuned on Gaussian mixtures with ``bench/trainer_quality.py`` (see its table).
DEFAULT_TEACHER_STEPS = 64
DEFAULT_ORDER = 3
DEFAULT_ITERATIONS = 600
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 0.05
DEFAULT_VALIDATION_FRACTION = 0.2
#: Coefficients fields the trainer owns; ``phi_fields`` may set the others.
RESERVED_FIELDS = {"weights", "time_scale", "sigmas", "afs", "divisor"}


def distill(denoise: Callable, noise: NoiseSource, schedule: Callable[[int], torch.Tensor],
            nfe: Union[int, Sequence[int]] = (3, 4, 5), *,
            teacher: Union[str, Solver] = "heun", teacher_steps: int = DEFAULT_TEACHER_STEPS,
            order: int = DEFAULT_ORDER, afs: bool = False, divisor: str = "sigma",
            variable_step_init: bool = False, iterations: int = DEFAULT_ITERATIONS,
            batch_size: int = DEFAULT_BATCH_SIZE, micro_batch_size: Optional[int] = None, lr: float = DEFAULT_LR,
            validation_fraction: float = DEFAULT_VALIDATION_FRACTION, validation_every: Optional[int] = None,
            pairs: Optional[int] = None, sampling_batch_size: Optional[int] = None, seed: int = 0,
            checkpointing: bool = False, cache_dir=None, cache_key=None, state_dir=None, resume: bool = False,
            baselines: Optional[dict] = None, conditions: Optional[Sequence[int]] = None,
            phi_fields: Optional[dict] = None,
            progress: Optional[Callable[[dict], None]] = None) -> DistillResult:
    """Distil a DyWeight Φ for each NFE in ``nfe`` from one set of teacher pairs.

    Args:
        denoise: ``denoise(x, sigma) -> x0`` for a batch and a 0-d ``sigma`` (CFG applied); with
            ``conditions``, ``denoise(x, sigma, condition=labels)`` with the batch's labels [B]. Its
            parameters are never given gradients (only W and s are differentiated), but run it in
            eval mode; the trainer itself leaves ``torch.inference_mode`` for the run.
        noise: the initial latents at σ_max (already scaled): a tensor [P, …], or a callable
            ``noise(seed) -> tensor [B, …]`` called with seeds 0, 1, 2, … until ``pairs`` latents
            are drawn.
        schedule: ``schedule(n)`` → the n+1 decreasing base sigmas of an n-step grid; the student for
            NFE n runs on ``schedule(n + afs)``, the teacher on ``schedule(teacher_steps)``. All grids
            must start at the same σ_max.
        nfe: the NFE targets (model calls per sample), trained one after another on the same pairs.
        teacher: ``"heun"`` (default: EDM's 2nd-order method), ``"dpmpp_2m"``, ``"ipndm"``, ``"euler"``,
            or any ``teacher(denoise, x, sigmas) -> x0`` (recorded under its ``name`` or ``__name__``).
        teacher_steps: the teacher's steps (default 64: heun makes 127 model calls per sample).
        order: K, the gradient history of the student (default 3, the paper's pixel-space choice).
        afs: the analytical first step (saves one model call; off by default).
        divisor: ``"sigma"`` or ``"net_sigma"`` (Eq. 7), as in the released tables.
        variable_step_init: start from variable-step Adams–Bashforth (paper App. A) instead of the
            fixed iPNDM rows.
        iterations: Adam steps per NFE (default 600); batch_size: pairs per step (default 32);
            lr: peak learning rate (default 0.05) after a 5% linear warm-up, cosine-decayed to 0.
        micro_batch_size: pairs per forward/backward pass (default: the whole batch). Smaller values
            accumulate the same gradient (up to float rounding) in that many pairs' memory: with
            ``checkpointing``, training needs about one model call with its backward pass at this
            batch. A resume may change it (say, after running out of memory); it is then exact only
            up to float rounding.
        validation_fraction: share of the pairs held out (default 0.2; seeded split) for choosing the
            best Φ and for the table; validation_every: iterations between held-out checks
            (default ``iterations // 20``).
        pairs: how many pairs to draw (default: ``len(conditions)``, else all rows of a noise tensor,
            else 256).
        sampling_batch_size: pairs per model-call batch where no gradient is taken — the teacher, the
            held-out checks and the baselines (default ``batch_size``); it bounds the memory of
            those calls as ``micro_batch_size`` bounds training's.
        seed: seeds the split and the mini-batches (each a function of (seed, NFE, iteration)).
        checkpointing: recompute each model call in the backward pass (per-step gradient
            checkpointing; memory near one model call instead of N). Results are identical.
        cache_dir, cache_key: with both, the pairs are cached as safetensors under ``cache_dir``,
            named by a hash of ``cache_key`` (JSON-able: model identity, patches, prompts, size, CFG, …)
            plus the teacher, its grid, the noise and the labels; a hit skips the teacher entirely.
        state_dir: where the resumable state is saved (at every held-out check, after each NFE and on
            an interruption), and the pairs when there is no cache.
        resume: continue the run saved in ``state_dir``; the result is bit-identical to an
            uninterrupted run with the same settings.
        baselines: name → ``(denoise, x, nfe) -> x0`` evaluated on the held-out pairs at each NFE;
            default Euler, iPNDM and DPM-Solver++(2M) on ``schedule(nfe)``; ``{}`` for none.
        conditions: one integer label per pair (e.g. a prompt index), passed to ``denoise``.
        phi_fields: further :class:`Coefficients` fields for the result (``schedule``, ``prediction``,
            ``model_family``, ``sigma_min``, ``sigma_max``, ``cfg``; a ``training`` dict is merged into
            the record). Default schedule: ``{"kind": "explicit"}``; ``sigmas`` is always the grid.
        progress: ``progress(event)``; see :mod:`~comfyui_dyweight.trainer.progress`. Without it,
            tqdm bars with ETA go to stderr.

    Returns:
        A :class:`DistillResult`. Each Φ is the checkpoint with the lowest held-out RMSE, the
        initialisation included, so it is never worse than its initialisation there (the notes say
        when the initialisation itself is returned). A NaN/Inf loss or gradient stops that NFE with
        a note and keeps its best Φ so far.

    Raises:
        TrainingInterrupted: on Ctrl-C or when ``progress`` raises it; ``.result`` holds the best Φ so
            far per started NFE, and the state is saved in ``state_dir`` when given.
    """
    targets = [nfe] if isinstance(nfe, int) else list(nfe)
    settings = optimise.Settings(
        iterations=iterations, batch_size=batch_size, lr=lr, seed=seed, checkpointing=checkpointing,
        micro_batch_size=batch_size if micro_batch_size is None else min(batch_size, micro_batch_size),
        sampling_batch_size=batch_size if sampling_batch_size is None else sampling_batch_size,
        validation_every=validation_every or max(1, iterations // 20))
    _check_arguments(targets, settings, validation_fraction, teacher_steps, resume, state_dir, phi_fields)
    run = _Distillation(
        denoise=denoise, schedule=schedule, targets=targets, teacher=resolve_teacher(teacher),
        teacher_steps=teacher_steps, order=order, afs=afs, divisor=divisor,
        variable_step_init=variable_step_init, settings=settings, validation_fraction=validation_fraction,
        baselines=default_baselines(schedule) if baselines is None else dict(baselines),
        phi_fields=dict(phi_fields or {}), state_dir=None if state_dir is None else Path(state_dir),
        reporter=Reporter(progress))
    with torch.inference_mode(False):
        latents, seeds, labels = draw_noise(noise, pairs, conditions)
        return run.execute(latents, seeds, labels, cache_dir, cache_key, resume)


def _check_arguments(targets, settings, validation_fraction, teacher_steps, resume, state_dir, phi_fields) -> None:
    if settings.micro_batch_size < 1 or settings.sampling_batch_size < 1:
        raise ValueError(f"micro_batch_size and sampling_batch_size must be ≥ 1 (or None for batch_size), got "
                         f"{settings.micro_batch_size} and {settings.sampling_batch_size}")
    if not targets or any(not isinstance(n, int) or n < 1 for n in targets) or len(set(targets)) != len(targets):
        raise ValueError(f"nfe must be distinct integers ≥ 1, got {targets}")
    if settings.iterations < 0 or settings.batch_size < 1 or not settings.lr > 0 or teacher_steps < 1:
        raise ValueError("iterations must be ≥ 0, batch_size and teacher_steps ≥ 1, lr > 0")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if resume and state_dir is None:
        raise ValueError("resume=True needs the state_dir of the interrupted run")
    trained_here = sorted(RESERVED_FIELDS & set(phi_fields or {}))
    if trained_here:
        raise ValueError(f"phi_fields may not set {trained_here}: the trainer sets them (use its arguments)")


@dataclasses.dataclass
class _Distillation:
    """One call of :func:`distill`: its settings, the pairs, and each NFE's run as last committed."""

    denoise: Callable
    schedule: Callable
    targets: list
    teacher: Teacher
    teacher_steps: int
    order: int
    afs: bool
    divisor: str
    variable_step_init: bool
    settings: optimise.Settings
    validation_fraction: float
    baselines: dict
    phi_fields: dict
    state_dir: Optional[Path]
    reporter: Reporter
    notes: list = dataclasses.field(default_factory=list)
    runs: dict = dataclasses.field(default_factory=dict)  # NFE → last consistent NfeRun
    config: dict = dataclasses.field(default_factory=dict)
    teacher_run: Optional[TeacherRun] = None
    validation_index: Optional[torch.Tensor] = None

    # --- the run -----------------------------------------------------------------------------
    def execute(self, latents, seeds, labels, cache_dir, cache_key, resume) -> DistillResult:
        teacher_sigmas = self._checked_grid(self.teacher_steps, "the teacher")
        key = pairs_key(cache_key, self.teacher, teacher_sigmas, latents, labels)
        self.config = self._config(cache_path(".", key).stem)
        if resume:
            self.runs = load_state(self.state_dir, self.config)
        try:
            self.teacher_run = teacher_pairs(self.denoise, latents, seeds, labels, self.teacher, teacher_sigmas,
                                             self.settings.sampling_batch_size, key,
                                             self._pairs_store(cache_dir, cache_key, key),
                                             self.reporter)
            train_index, self.validation_index = self._split(len(latents))
            pairs = self.teacher_run.pairs
            for nfe in self.targets:
                self._train(nfe, pairs.subset(train_index), pairs.subset(self.validation_index))
        except (KeyboardInterrupt, TrainingInterrupted):
            path = self._save_state() if self.state_dir is not None else None
            where = f"state saved to {path}; resume=True continues" if path else "no state_dir: nothing saved"
            raise TrainingInterrupted(f"training interrupted ({where})", result=self._result(path),
                                      state_path=path) from None
        return self._result(None if self.state_dir is None else state_path(self.state_dir))

    def _train(self, nfe: int, train_pairs: PairSet, validation_pairs: PairSet) -> None:
        """Algorithm 1 for one NFE target, from scratch or from its saved run."""
        sigmas = self._checked_grid(nfe + int(self.afs), f"NFE {nfe}")
        template = self._template(nfe, sigmas)
        saved = self.runs.get(nfe)
        if saved is not None and saved.row is not None:
            return  # finished before the interruption
        run = self._start(nfe, template, sigmas, validation_pairs) if saved is None else saved.snapshot()
        optimise.train(run, template, sigmas, self.denoise, train_pairs, validation_pairs, self.settings,
                       self.reporter, self._commit)
        if run.best_iteration == 0 and run.iteration:
            run.notes.append(f"NFE {nfe}: training did not improve the held-out RMSE of the initialisation "
                             f"({run.init_rmse:.4g}); returned the initialisation")
        run.row = table_row(run, self._baseline_rmse(nfe, validation_pairs, run.notes))
        self._commit(run.snapshot(), True)
        self.reporter.done(nfe, run.row)

    def _start(self, nfe: int, template: Coefficients, sigmas, validation_pairs: PairSet) -> NfeRun:
        weights, log_scale = optimise.initial_parameters(template)
        rmse = optimise.phi_rmse(template, sigmas, self.denoise, validation_pairs, self.settings.sampling_batch_size)
        if not math.isfinite(rmse):
            raise ValueError(f"NFE {nfe}: the initial Φ gives NaN/Inf on the held-out pairs; check the model")
        run = NfeRun(nfe=nfe, weights=weights, log_scale=log_scale, best_weights=template.weights,
                     best_time_scale=template.time_scale, best_rmse=rmse, init_rmse=rmse, validation=[[0, rmse]])
        self._commit(run.snapshot(), False)
        self.reporter.validation(nfe, 0, rmse, rmse)
        return run

    def _commit(self, run: NfeRun, save: bool) -> None:
        self.runs[run.nfe] = run
        if save and self.state_dir is not None:
            self._save_state()

    def _save_state(self) -> Path:
        return save_state(self.state_dir, self.config, self.runs)

    # --- pieces ------------------------------------------------------------------------------
    def _checked_grid(self, steps: int, whose: str) -> torch.Tensor:
        """``schedule(steps)``, checked: steps + 1 decreasing sigmas ≥ 0 starting at the teacher's σ_max."""
        sigmas = torch.as_tensor(self.schedule(steps), dtype=torch.float64).detach().cpu().flatten()
        if sigmas.numel() != steps + 1 or not (sigmas[1:] < sigmas[:-1]).all() or (sigmas < 0).any():
            raise ValueError(f"schedule({steps}) for {whose} must return {steps + 1} decreasing sigmas ≥ 0, "
                             f"got {sigmas.tolist()}")
        if self.config and not math.isclose(float(sigmas[0]), self.config["sigma_max"], rel_tol=1e-6):
            raise ValueError(f"schedule({steps}) starts at σ = {float(sigmas[0]):g} but the teacher's grid at "
                             f"{self.config['sigma_max']:g}: every grid must start where the noise is")
        return sigmas

    def _template(self, nfe: int, sigmas: torch.Tensor) -> Coefficients:
        """The initial Φ with the caller's fields, exactly as the student first evaluates it."""
        init = initial_coefficients(nfe, self.order, sigmas=sigmas, variable_step=self.variable_step_init,
                                    afs=self.afs, divisor=self.divisor, final_denoise=float(sigmas[-1]) == 0.0)
        fields = {"schedule": {"kind": "explicit"}, **self.phi_fields, "sigmas": sigmas.float()}
        fields["training"] = {**(fields.get("training") or {}),
                              "initialiser": _initialiser_name(self.variable_step_init, self.order)}
        init = dataclasses.replace(init, **fields)
        return optimise.Student(init, *optimise.initial_parameters(init)).phi().detached()

    def _split(self, count: int):
        held_out = max(1, round(count * self.validation_fraction))
        if count - held_out < 1:
            raise ValueError(f"{count} pairs leave nothing to train on after holding out {held_out}")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.settings.seed))
        return order[held_out:].sort().values, order[:held_out].sort().values

    def _pairs_store(self, cache_dir, cache_key, key) -> Optional[Path]:
        if cache_dir is not None and cache_key is not None:
            return cache_path(cache_dir, key)
        if cache_dir is not None:
            self.notes.append("cache_dir was given without cache_key: the pairs were not cached (a key naming "
                              "the model and its settings is needed to reuse them safely)")
        return None if self.state_dir is None else cache_path(self.state_dir, key)

    def _baseline_rmse(self, nfe: int, pairs: PairSet, notes: list) -> dict:
        figures = {}
        for name, baseline in self.baselines.items():
            try:
                rmse = optimise.held_out_rmse(lambda model, x: baseline(model, x, nfe), self.denoise, pairs,
                                              self.settings.sampling_batch_size)
            except Exception as error:  # a host sampler may refuse an NFE; the table says so instead
                rmse = math.nan
                notes.append(f"NFE {nfe}: baseline '{name}' failed ({type(error).__name__}: {error})")
            figures[name] = rmse if math.isfinite(rmse) else None
        return figures

    def _config(self, pairs_id: str) -> dict:
        """What a resume must match (JSON round-tripped, as it is stored)."""
        config = {
            "nfe": self.targets, "teacher": self.teacher.name, "teacher_steps": self.teacher_steps,
            "order": self.order, "afs": self.afs, "divisor": self.divisor,
            "variable_step_init": self.variable_step_init, "iterations": self.settings.iterations,
            "batch_size": self.settings.batch_size, "lr": self.settings.lr, "seed": self.settings.seed,
            "validation_every": self.settings.validation_every, "validation_fraction": self.validation_fraction,
            "pairs": pairs_id, "sigma_max": float(self._checked_grid(self.teacher_steps, "the teacher")[0]),
        }
        return json.loads(json.dumps(config))

    # --- the result --------------------------------------------------------------------------
    def _result(self, state_path: Optional[Path]) -> DistillResult:
        facts = {"teacher": self.teacher.name, "teacher_steps": self.teacher_steps,
                 "batch_size": self.settings.batch_size, "lr": self.settings.lr, "seed": self.settings.seed,
                 "planned_iterations": self.settings.iterations}
        if self.teacher_run is not None:
            facts.update(pairs=len(self.teacher_run.pairs), validation_pairs=len(self.validation_index))
        coefficients, table, histories, notes = {}, [], {}, list(self.notes)
        for nfe in self.targets:
            run = self.runs.get(nfe)
            if run is None:
                continue
            sigmas = self._checked_grid(nfe + int(self.afs), f"NFE {nfe}")
            coefficients[nfe] = trained_phi(run, self._template(nfe, sigmas), facts)
            histories[nfe] = history(run)
            notes.extend(run.notes)
            if run.row is not None:
                table.append(run.row)
        timings = {"teacher_s": None if self.teacher_run is None else self.teacher_run.seconds,
                   "teacher_cache_hit": None if self.teacher_run is None else self.teacher_run.cache_hit,
                   "optimisation_s": {nfe: run.seconds for nfe, run in self.runs.items()}}
        return DistillResult(coefficients=coefficients, table=table, history=histories, timings=timings, notes=notes,
                             pairs=None if self.teacher_run is None else self.teacher_run.pairs,
                             validation_index=self.validation_index, state_path=state_path)


def _initialiser_name(variable_step: bool, order: int) -> str:
    return f"{'variable_step_' if variable_step else ''}adams_bashforth(order={order})"
