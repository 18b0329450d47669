"""``distill``: learn DyWeight coefficients Φ = {W, s} for a denoiser by endpoint distillation.

Paper (arXiv 2603.11607) Algorithm 1: draw noise x_T, solve the probability-flow ODE from it with a
many-step teacher, run the N-step DyWeight student (Eqs. 6–9) from the same x_T, and minimise
‖x0_student − x0_teacher‖² over W and s. Here the teacher pairs are generated once (and cached) and
shared by every NFE target; a held-out split picks the best Φ and builds the validation table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch

from ..coefficients import Coefficients, euler, initial_coefficients
from . import distributed, optimise
from .config import DistillConfig
from .pairs import PairSet, TeacherRun, cache_path, draw_noise, pairs_key, teacher_pairs
from .guidance import EndsReport, draw_guidance
from .progress import Reporter, TrainingInterrupted
from .result import DistillResult, family_row, history, trained_phi
from .source import ModelSource
from .state import NfeRun, load_state, save_state, state_path
from .students import DSSStudent, DyWeightStudent, ScheduleTime, student_class
from .teachers import Teacher, default_baselines, resolve_teacher

#: Coefficients fields the trainer owns; a source's ``phi_fields`` may set the others.
RESERVED_FIELDS = {"weights", "time_scale", "sigmas", "afs", "divisor"}


def distill(model: ModelSource, config: DistillConfig = DistillConfig(), *, cache_dir=None, state_dir=None,
            resume: bool = False, progress: Optional[Callable[[dict], None]] = None) -> DistillResult:
    """Distil a DyWeight Φ for each NFE in ``config.nfe`` from one set of teacher pairs.

    Args:
        model: the denoiser, its noise and base schedule, the cache key, the Φ's fields (see
            :class:`~comfyui_dyweight.trainer.source.ModelSource`). Its parameters are never given
            gradients (only W and s are differentiated), but run it in eval mode; the trainer itself
            leaves ``torch.inference_mode`` for the run.
        config: the settings (:class:`~comfyui_dyweight.trainer.config.DistillConfig`); the student for
            NFE n runs on ``model.schedule(n + afs)``, the teacher on ``model.schedule(teacher_steps)``.
        cache_dir: with ``model.cache_key``, the pairs are cached as safetensors under ``cache_dir``,
            named by a hash of the key plus the teacher, its grid, the noise and the labels; a hit skips
            the teacher entirely.
        state_dir: where the resumable state is saved (at every held-out check, after each NFE and on
            an interruption), and the pairs when there is no cache.
        resume: continue the run saved in ``state_dir``; the result is bit-identical to an
            uninterrupted run with the same settings (``config.micro_batch_size`` may change; the
            result is then equal up to float rounding).
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
    if resume and state_dir is None:
        raise ValueError("resume=True needs the state_dir of the interrupted run")
    trained_here = sorted(RESERVED_FIELDS & set(model.phi_fields))
    if trained_here:
        raise ValueError(f"phi_fields may not set {trained_here}: the trainer sets them (use DistillConfig)")
    run = _Distillation(model, config, state_dir=None if state_dir is None else Path(state_dir),
                        reporter=distributed.reporter(progress))
    with torch.inference_mode(False):
        return run.execute(cache_dir, resume)


def teacher_pairs_for(model: ModelSource, config: DistillConfig, *, cache_dir=None,
                      progress: Optional[Callable[[dict], None]] = None) -> TeacherRun:
    """The teacher pairs :func:`distill` uses for ``model`` and ``config``: read from ``cache_dir`` or
    generated (and cached there, under the key :func:`distill` looks for, so it never runs the teacher
    for them again)."""
    run = _Distillation(model, config, state_dir=None, reporter=distributed.reporter(progress))
    with torch.inference_mode(False):
        return run.run_teacher(run.plan_pairs(cache_dir))


@dataclasses.dataclass
class _Distillation:
    """One call of :func:`distill`: its settings, the pairs, and each NFE's run as last committed."""

    model: ModelSource
    config: DistillConfig
    state_dir: Optional[Path]
    reporter: Reporter
    notes: list = dataclasses.field(default_factory=list)
    runs: dict = dataclasses.field(default_factory=dict)  # NfeRun.key → last consistent NfeRun
    resume_key: dict = dataclasses.field(default_factory=dict)
    teacher_run: Optional[TeacherRun] = None
    validation_index: Optional[torch.Tensor] = None
    teacher: Teacher = dataclasses.field(init=False)
    baselines: dict = dataclasses.field(init=False)
    baseline_figures: dict = dataclasses.field(default_factory=dict)  # NFE → the baselines' held-out RMSE
    schedule_time: Optional[ScheduleTime] = None  # DSS: the schedule as a function of its own time

    def __post_init__(self):
        self.teacher = resolve_teacher(self.config.teacher, self.model.teachers)
        self.baselines = (default_baselines(self.model.schedule) if self.model.baselines is None
                          else dict(self.model.baselines))

    # --- the run -----------------------------------------------------------------------------
    def execute(self, cache_dir, resume) -> DistillResult:
        plan = self.plan_pairs(cache_dir)
        self.resume_key = self._resume_key(cache_path(".", plan.key).stem, plan.sigmas)
        if resume:
            self.runs = load_state(self.state_dir, self.resume_key)
        try:
            self.teacher_run = self.run_teacher(plan)
            self.schedule_time = ScheduleTime(plan.sigmas) if "dss" in self.config.families else None
            train_index, self.validation_index = self._split(len(plan.inputs))
            pairs = self.teacher_run.pairs
            for nfe in self.config.nfe:
                for family in self.config.families:
                    self._train(family, nfe, pairs.subset(train_index), pairs.subset(self.validation_index))
                self.reporter.done(nfe, self._table_row(nfe))
        except (KeyboardInterrupt, TrainingInterrupted, distributed.RankFailed) as stop:
            with distributed.signals_ignored(distributed.ranks()):
                path = self._save_state() if self.state_dir is not None else None
            where = f"state saved to {path}; resume=True continues" if path else "no state_dir: nothing saved"
            why = f"{stop}; " if isinstance(stop, distributed.RankFailed) else ""
            raise TrainingInterrupted(f"training interrupted ({why}{where})", result=self._result(path),
                                      state_path=path) from None
        return self._result(None if self.state_dir is None else state_path(self.state_dir))

    def plan_pairs(self, cache_dir) -> "_PairsPlan":
        """The pairs' inputs (noise, seeds, labels), the teacher's grid, the cache key and file."""
        latents, seeds, labels = draw_noise(self.model.noise, self.config.pairs, self.model.conditions)
        guidance = draw_guidance(self.model.guidance, len(latents))
        sigmas = self._checked_grid(self.config.teacher_steps, "the teacher")
        key = pairs_key(self.model.cache_key, self.teacher, sigmas, latents, labels, path=self.needs_path,
                        guidance=guidance)
        return _PairsPlan(PairSet(seeds, latents, None, labels, guidance=guidance), sigmas, key,
                          self._pairs_store(cache_dir, key))

    def run_teacher(self, plan: "_PairsPlan") -> TeacherRun:
        """The pairs of ``plan``: from its cache file, or the teacher run from its noise."""
        inputs = plan.inputs
        return teacher_pairs(self.model.denoise, inputs.noise, inputs.seeds, inputs.labels, self.teacher, plan.sigmas,
                             self.config.sampling_batch, plan.key, plan.store, self.reporter, path=self.needs_path,
                             guidance=inputs.guidance)

    @property
    def needs_path(self) -> bool:
        """Whether a family learned here supervises the student's path (DSS), not only its endpoint."""
        return any(student_class(family).needs_path for family in self.config.families)

    def _train(self, family: str, nfe: int, train_pairs: PairSet, validation_pairs: PairSet) -> None:
        """Learn one family's Φ for one NFE target, from scratch or from its saved run."""
        template = self._template(family, nfe)
        saved = self.runs.get(f"{family}-nfe{nfe}")
        if saved is not None and saved.row is not None:
            return  # finished before the interruption
        run = self._start(family, nfe, template, validation_pairs) if saved is None else saved.snapshot()
        student = self._student(family, template, run.parameters)
        optimise.train(run, student, self.model.denoise, train_pairs, validation_pairs, self.config, self.reporter,
                       self._commit)
        if run.best_iteration == 0 and run.iteration:
            run.notes.append(f"{family} NFE {nfe}: training did not improve the held-out RMSE of the "
                             f"initialisation ({run.init_rmse:.4g}); returned the initialisation")
        run.row = family_row(run, self._baseline_rmse(nfe, validation_pairs, run.notes))
        if self.model.guidance is not None:  # the range's ends and middle (see .guidance)
            phis = {"rmse": dataclasses.replace(template, **run.best), "init": template}
            run.row["guidance"] = self._guidance_report.row(
                validation_pairs, {name: (phi, student.evaluation_grid(phi)) for name, phi in phis.items()})
        self._commit(run.snapshot(), True)

    def _student(self, family: str, template: Coefficients, state: Optional[dict] = None):
        """The trainable student of ``family`` on ``template``, at ``state`` (default: its initial state)."""
        if family == "dss":
            return DSSStudent(template, state or DSSStudent.initial_state(template, self.schedule_time,
                                                                          self._dss_start(template.steps)),
                              self.schedule_time)
        return DyWeightStudent(template, state or DyWeightStudent.initial_state(template),
                               self._checked_grid(template.steps, f"NFE {template.nfe}"))

    @functools.cached_property
    def _dss_init(self) -> Optional[Coefficients]:
        """The Φ of ``config.dss_init``, read once (every DSS student of the run starts from it)."""
        return None if self.config.dss_init is None else Coefficients.load(self.config.dss_init)

    def _dss_start(self, steps: int) -> Optional[Coefficients]:
        """The DSS Φ of ``config.dss_init``, checked, for a grid of ``steps`` steps (or ``None``)."""
        start = self._dss_init
        if start is None:
            return None
        if start.solver != "dss" or start.combine != "gradient" or start.sigmas is None or start.steps != steps:
            raise ValueError(f"dss_init {self.config.dss_init} must be a DSS Φ that combines gradients, with its "
                             f"grid and {steps} steps; it is {start.solver}, {start.combine}, {start.steps} steps")
        return start

    def _start(self, family: str, nfe: int, template: Coefficients, validation_pairs: PairSet) -> NfeRun:
        student = self._student(family, template)
        rmse = optimise.phi_rmse(template, student.evaluation_grid(template), self.model.denoise,
                                 validation_pairs, self.config.sampling_batch)
        if not math.isfinite(rmse):
            raise ValueError(f"{family} NFE {nfe}: the initial Φ gives NaN/Inf on the held-out pairs; check the model")
        run = NfeRun(family=family, nfe=nfe, parameters=student.state(), best=optimise.best_tensors(template),
                     best_rmse=rmse, init_rmse=rmse, validation=[[0, rmse]])
        self._commit(run.snapshot(), False)
        self.reporter.validation(nfe, 0, rmse, rmse)
        return run

    def _commit(self, run: NfeRun, save: bool) -> None:
        self.runs[run.key] = run
        if save and self.state_dir is not None:
            self._save_state()

    def _save_state(self) -> Path:
        if not distributed.ranks().main:  # every rank holds the same state; rank 0 writes it
            return state_path(self.state_dir)
        return save_state(self.state_dir, self.resume_key, self.runs)

    # --- pieces ------------------------------------------------------------------------------
    def _checked_grid(self, steps: int, whose: str) -> torch.Tensor:
        """``schedule(steps)``, checked: steps + 1 decreasing sigmas ≥ 0 starting at the teacher's σ_max."""
        sigmas = torch.as_tensor(self.model.schedule(steps), dtype=torch.float64).detach().cpu().flatten()
        if sigmas.numel() != steps + 1 or not (sigmas[1:] < sigmas[:-1]).all() or (sigmas < 0).any():
            raise ValueError(f"schedule({steps}) for {whose} must return {steps + 1} decreasing sigmas ≥ 0, "
                             f"got {sigmas.tolist()}")
        if self.resume_key and not math.isclose(float(sigmas[0]), self.resume_key["sigma_max"], rel_tol=1e-6):
            raise ValueError(f"schedule({steps}) starts at σ = {float(sigmas[0]):g} but the teacher's grid at "
                             f"{self.resume_key['sigma_max']:g}: every grid must start where the noise is")
        return sigmas

    def _template(self, family: str, nfe: int) -> Coefficients:
        """The initial Φ of ``family`` with the caller's fields, exactly as the student first evaluates it:
        DyWeight's Adams–Bashforth rows on the model's (NFE + AFS)-step grid, or DSS's Euler rows (K = N)
        on its NFE-step grid, stored with the Φ since it is learned."""
        config = self.config
        if family == "dss":
            sigmas = self._checked_grid(nfe, f"NFE {nfe}")
            init = euler(nfe, order=nfe, solver="dss")
            fields = {**self.model.phi_fields, "schedule": {"kind": "explicit"}}
            initialiser = f"dss_init {Path(config.dss_init).name}" if config.dss_init else "euler"
        else:
            sigmas = self._checked_grid(nfe + int(config.afs), f"NFE {nfe}")
            init = initial_coefficients(nfe, config.order, sigmas=sigmas, variable_step=config.variable_step_init,
                                        afs=config.afs, divisor=config.divisor,
                                        final_denoise=float(sigmas[-1]) == 0.0)
            fields = {"schedule": {"kind": "explicit"}, **self.model.phi_fields}
            initialiser = _initialiser_name(config.variable_step_init, config.order)
        fields["training"] = {**(fields.get("training") or {}), "initialiser": initialiser}
        init = dataclasses.replace(init, **fields, sigmas=sigmas.float())
        return self._student(family, init).phi().detached()

    def _split(self, count: int):
        held_out = max(1, round(count * self.config.validation_fraction))
        if count - held_out < 1:
            raise ValueError(f"{count} pairs leave nothing to train on after holding out {held_out}")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.config.seed))
        return order[held_out:].sort().values, order[:held_out].sort().values

    def _pairs_store(self, cache_dir, key) -> Optional[Path]:
        if cache_dir is not None and self.model.cache_key is not None:
            return cache_path(cache_dir, key)
        if cache_dir is not None:
            self.notes.append("cache_dir was given but the model has no cache_key: the pairs were not cached (a "
                              "key naming the model and its settings is needed to reuse them safely)")
        return None if self.state_dir is None else cache_path(self.state_dir, key)

    @functools.cached_property
    def _guidance_report(self) -> EndsReport:
        """The held-out report over the guidance range (its teacher runs are kept for every NFE and family)."""
        return EndsReport(self.model.guidance, self.model.denoise, self.teacher,
                          self._checked_grid(self.config.teacher_steps, "the teacher"), self.config.sampling_batch,
                          self.reporter)

    def _baseline_rmse(self, nfe: int, pairs: PairSet, notes: list) -> dict:
        """The baselines' held-out RMSE at ``nfe`` (computed once per NFE, whatever the families)."""
        if nfe in self.baseline_figures:
            return self.baseline_figures[nfe]
        figures = self.baseline_figures[nfe] = {}
        for name, baseline in self.baselines.items():
            try:
                rmse = optimise.held_out_rmse(lambda model, x: baseline(model, x, nfe), self.model.denoise, pairs,
                                              self.config.sampling_batch)
            except Exception as error:  # a host sampler may refuse an NFE; the table says so instead
                rmse = math.nan
                notes.append(f"NFE {nfe}: baseline '{name}' failed ({type(error).__name__}: {error})")
            figures[name] = rmse if math.isfinite(rmse) else None
        return figures

    def _resume_key(self, pairs_id: str, teacher_sigmas: torch.Tensor) -> dict:
        """What a resume must match (JSON round-tripped, as it is stored)."""
        key = {**self.config.resume_key(), "teacher": self.teacher.name, "pairs": pairs_id,
               "sigma_max": float(teacher_sigmas[0])}
        return json.loads(json.dumps(key))

    # --- the result --------------------------------------------------------------------------
    def _table_row(self, nfe: int) -> Optional[dict]:
        """The NFE's validation-table row: the kept family's figures, each family's under ``families``."""
        rows = {family: self.runs[f"{family}-nfe{nfe}"].row for family in self.config.families
                if f"{family}-nfe{nfe}" in self.runs}
        if len(rows) < len(self.config.families) or None in rows.values():
            return None
        kept = min(rows, key=lambda family: rows[family]["rmse"])
        return {**rows[kept], "families": {family: {k: v for k, v in row.items() if k != "baselines"}
                                           for family, row in rows.items()}}

    def _result(self, state_path: Optional[Path]) -> DistillResult:
        facts = {**self.config.record(), "teacher": self.teacher.name}
        if self.teacher_run is not None:
            facts.update(pairs=len(self.teacher_run.pairs), validation_pairs=len(self.validation_index))
        coefficients, candidates, table, histories, notes = {}, {}, [], {}, list(self.notes)
        for nfe in self.config.nfe:
            runs = {family: self.runs[f"{family}-nfe{nfe}"] for family in self.config.families
                    if f"{family}-nfe{nfe}" in self.runs}
            if not runs:
                continue
            candidates[nfe] = {family: trained_phi(run, self._template(family, nfe), facts)
                               for family, run in runs.items()}
            kept = min(runs, key=lambda family: runs[family].best_rmse)
            coefficients[nfe] = candidates[nfe][kept]
            histories[nfe] = {family: history(run) for family, run in runs.items()}
            notes.extend(note for run in runs.values() for note in run.notes)
            row = self._table_row(nfe)
            if row is not None:
                table.append(row)
        timings = {"teacher_s": None if self.teacher_run is None else self.teacher_run.seconds,
                   "teacher_cache_hit": None if self.teacher_run is None else self.teacher_run.cache_hit,
                   "optimisation_s": {nfe: sum(run.seconds for run in self.runs.values() if run.nfe == nfe)
                                      for nfe in self.config.nfe}}
        return DistillResult(coefficients=coefficients, candidates=candidates, table=table, history=histories,
                             timings=timings, notes=notes,
                             pairs=None if self.teacher_run is None else self.teacher_run.pairs,
                             validation_index=self.validation_index, state_path=state_path)


@dataclasses.dataclass(frozen=True)
class _PairsPlan:
    inputs: PairSet  # seeds, noise and labels; no targets yet
    sigmas: torch.Tensor  # the teacher's grid
    key: dict
    store: Optional[Path]


def _initialiser_name(variable_step: bool, order: int) -> str:
    return f"{'variable_step_' if variable_step else ''}adams_bashforth(order={order})"
