"""Endpoint distillation of one Φ (paper Algorithm 1): Adam on W and s against the teacher's x0.

The student runs the one DyWeight update rule (:func:`dyweight_sample`) from the teacher's noise x_T on
its own N-step grid; the loss is the mean squared error between its endpoint and the teacher's
(Algorithm 1, line 6: ‖x0_student − x0_teacher‖², averaged over the batch and the latent's elements).
W is trained in full below its diagonal (rows need not sum to one: the implicit time shift of Eq. 8);
the time scales are trained as log s, so s > 0 always. After each Adam step a projection keeps the
running time above ``TIME_FLOOR``·σ_n (the update rule needs t̃ > 0 and a few-step grid that ends at
σ_min then 0 leaves almost no room before its penultimate point).

A mini-batch may be split into micro-batches whose gradients are summed before the Adam step: the
same step (up to float rounding) with the activation memory of one micro-batch, which is what lets a
large model train within a small multiple of one sampling call's memory.

Everything that decides a number is a function of (seed, NFE, iteration), so a run resumed from its
saved state finishes bit for bit as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..coefficients import Coefficients, CoefficientError, SamplingError, dyweight_sample, shifted_times
from .config import DistillConfig
from .pairs import PairSet
from .progress import Reporter
from .state import NfeRun

#: Share of the iterations spent on the linear learning-rate warm-up before the cosine decay.
WARMUP_FRACTION = 0.05
#: Gradients are clipped to this global L2 norm before each Adam step.
MAX_GRAD_NORM = 1.0
#: The running time is kept at t̃_n ≥ TIME_FLOOR·σ_n (n ≥ 1) by projecting the weight rows.
TIME_FLOOR = 0.1


class Student:
    """The trainable Φ of one NFE: W (masked to the available history) and log s, on top of ``template``."""

    def __init__(self, template: Coefficients, weights: torch.Tensor, log_scale: torch.Tensor):
        self.template = template
        self.weights = weights.detach().clone().requires_grad_(True)
        self.log_scale = log_scale.detach().clone().requires_grad_(True)
        self.mask = torch.ones_like(self.weights).tril()  # column k ≤ row n: gradients that exist

    @property
    def parameters(self) -> list:
        return [self.weights, self.log_scale]

    def phi(self) -> Coefficients:
        """The current Φ (differentiable in the parameters)."""
        return dataclasses.replace(self.template, weights=self.weights * self.mask, time_scale=self.log_scale.exp())

    @torch.no_grad()
    def keep_time_positive(self, sigmas: torch.Tensor) -> None:
        """Project W so that t̃_n ≥ TIME_FLOOR·σ_n (up to rounding) for every queried step.

        t̃_n is linear in the row sum of row n − 1 (Eq. 8): front to back, a row that overshoots gets
        the newest-gradient weight that puts t̃_n on the floor (later rows do not move earlier times).
        """
        grid = sigmas.double()
        floor = TIME_FLOOR * grid
        for n in range(1, self.weights.shape[0]):
            times = shifted_times((self.weights * self.mask).double(), grid)
            if times[n] >= floor[n]:
                continue
            needed = (floor[n] - times[n - 1]) / (grid[n] - times[n - 1])
            self.weights[n - 1, 0] += float(needed - (self.weights[n - 1] * self.mask[n - 1]).double().sum())


def initial_parameters(init: Coefficients) -> tuple:
    """float32 (W, log s) of the initial Φ: the exact values the init is evaluated and returned with."""
    return init.weights.detach().float(), init.time_scale.detach().float().log()


def learning_rate(iteration: int, config: DistillConfig) -> float:
    """Linear warm-up over the first ``WARMUP_FRACTION`` of the iterations, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * config.iterations))
    if iteration < warmup:
        return config.lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, config.iterations - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(config: DistillConfig, nfe: int, iteration: int, count: int) -> torch.Tensor:
    """The training pairs of one iteration: a seeded draw without replacement, a function of
    (seed, NFE, iteration) only."""
    digest = hashlib.sha256(f"dyweight/{config.seed}/{nfe}/{iteration}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(count, generator=generator)[:config.batch_size].sort().values


def checkpointed(denoise: Callable) -> Callable:
    """``denoise`` recomputed in the backward pass instead of storing its activations (one model call
    of memory per step instead of N)."""

    def call(x, sigma):
        return checkpoint(denoise, x, sigma, use_reentrant=False)

    return call


def endpoint_loss(denoise: Callable, batch: PairSet, sigmas: torch.Tensor, phi: Coefficients,
                  checkpointing: bool) -> torch.Tensor:
    """Algorithm 1, line 6: mean squared distance of the student's endpoint to the teacher's."""
    model = batch.bind(denoise)
    endpoint = dyweight_sample(checkpointed(model) if checkpointing else model, batch.noise, sigmas, phi)
    return (endpoint - batch.target).pow(2).mean()


@torch.no_grad()
def held_out_rmse(solve: Callable, denoise: Callable, pairs: PairSet, batch_size: int) -> float:
    """RMSE to the teacher, per latent element, of ``solve(denoise, x_T) -> x0`` over ``pairs``."""
    squared, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs.subset(slice(start, start + batch_size))
        error = solve(batch.bind(denoise), batch.noise) - batch.target
        error = error.to(torch.promote_types(error.dtype, torch.float32))  # float64 stays; half → float32
        squared += float(error.pow(2).sum())
        count += error.numel()
    return math.sqrt(squared / count)


def phi_rmse(phi: Coefficients, sigmas: torch.Tensor, denoise: Callable, pairs: PairSet, batch_size: int) -> float:
    return held_out_rmse(lambda model, x: dyweight_sample(model, x, sigmas, phi), denoise, pairs, batch_size)


def train(run: NfeRun, template: Coefficients, sigmas: torch.Tensor, denoise: Callable, train_pairs: PairSet,
          validation_pairs: PairSet, config: DistillConfig, reporter: Reporter,
          commit: Callable[[NfeRun, bool], None]) -> None:
    """Optimise ``run`` from its current iteration to ``config.iterations`` (Algorithm 1, lines 3–8).

    After every iteration ``commit(snapshot, validated)`` receives a consistent copy of the run (what an
    interruption saves). A non-finite loss or gradient, or a Φ the update rule refuses, stops this NFE
    (``status = "stopped"``) and keeps the best Φ so far.
    """
    student = Student(template, run.weights, run.log_scale)
    optimizer = torch.optim.Adam(student.parameters, lr=config.lr)
    if run.adam:
        optimizer.load_state_dict({"state": _unflatten(run.adam), "param_groups": optimizer.state_dict()["param_groups"]})
    reporter.begin(f"NFE {run.nfe}", run.iteration, config.iterations)
    clock = time.monotonic()
    while run.iteration < config.iterations and run.status == "training":
        iteration = run.iteration
        batch = train_pairs.subset(batch_indices(config, run.nfe, iteration, len(train_pairs)))
        try:
            loss = _step(student, optimizer, learning_rate(iteration, config), denoise, batch, sigmas, config)
        except Diverged as error:
            _stop(run, iteration + 1, str(error))
            break
        run.train_loss.append(loss)
        run.weights, run.log_scale = student.weights.detach(), student.log_scale.detach()
        run.adam = _flatten(optimizer.state_dict()["state"])
        run.iteration = iteration + 1
        validated = run.iteration % config.validation_interval == 0 or run.iteration == config.iterations
        if validated:
            _validate_and_keep_best(run, student, sigmas, denoise, validation_pairs, config)
        run.seconds += time.monotonic() - clock
        clock = time.monotonic()
        commit(run.snapshot(), validated)
        reporter.train(run.nfe, run.iteration, config.iterations, loss)
        if validated and run.validation and run.validation[-1][0] == run.iteration:
            reporter.validation(run.nfe, run.iteration, run.validation[-1][1], run.best_rmse)
    if run.status == "training":
        run.status = "done"
    run.seconds += time.monotonic() - clock


class Diverged(Exception):
    """No step could be taken from the current Φ (the message says why)."""


def batch_gradients(student: Student, denoise, batch: PairSet, sigmas, config: DistillConfig) -> tuple:
    """The mini-batch loss and its gradients in (W, log s), accumulated over micro-batches.

    A micro-batch's mean loss enters with weight (its size / the batch's): every pair has as many
    latent elements as any other, so the weighted sum is the batch mean of Algorithm 1, line 6, and
    its gradient the batch gradient. Only one micro-batch's graph is alive at a time. Gradients are
    taken with :func:`torch.autograd.grad` for W and log s only, so none are ever built for (or
    accumulated into) the model's own parameters.

    Raises:
        Diverged: a loss is NaN/Inf, or the update rule refused the Φ.
    """
    loss, gradients = 0.0, None
    for start in range(0, len(batch), config.micro_batch):
        part = batch.subset(slice(start, start + config.micro_batch))
        try:
            with torch.enable_grad():
                part_loss = endpoint_loss(denoise, part, sigmas, student.phi(), config.checkpointing)
                part_loss = part_loss * (len(part) / len(batch))
                if not torch.isfinite(part_loss):
                    raise Diverged(f"the loss became {float(part_loss)}")
                part_gradients = torch.autograd.grad(part_loss, student.parameters)
        except (CoefficientError, SamplingError) as error:
            raise Diverged(f"the current Φ is unusable ({error})") from None
        loss += float(part_loss.detach())
        gradients = part_gradients if gradients is None else [g + p for g, p in zip(gradients, part_gradients)]
    return loss, gradients


def _step(student: Student, optimizer, lr: float, denoise, batch: PairSet, sigmas, config: DistillConfig) -> float:
    """One Adam step; returns the batch loss.

    Raises:
        Diverged: the loss or a gradient is NaN/Inf, or the update rule refused the Φ.
    """
    loss, gradients = batch_gradients(student, denoise, batch, sigmas, config)
    if not all(torch.isfinite(g).all() for g in gradients):
        raise Diverged("a gradient became NaN/Inf")
    for parameter, gradient in zip(student.parameters, gradients):
        parameter.grad = gradient
    torch.nn.utils.clip_grad_norm_(student.parameters, MAX_GRAD_NORM)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    student.keep_time_positive(sigmas)
    return loss


def _validate_and_keep_best(run: NfeRun, student: Student, sigmas, denoise, pairs: PairSet, config: DistillConfig) -> None:
    """Held-out RMSE of the current Φ; keep it as the best when it beats every earlier one."""
    try:
        phi = student.phi().detached()
        rmse = phi_rmse(phi, sigmas, denoise, pairs, config.sampling_batch)
    except (CoefficientError, SamplingError) as error:
        rmse = math.nan
        reason = f"the current Φ is unusable on held-out data ({error})"
    else:
        reason = None if math.isfinite(rmse) else "the held-out RMSE became NaN/Inf"
    if reason:
        _stop(run, run.iteration, reason)
        return
    run.validation.append([run.iteration, rmse])
    if rmse < run.best_rmse:
        run.best_rmse, run.best_iteration = rmse, run.iteration
        run.best_weights, run.best_time_scale = phi.weights, phi.time_scale


def _stop(run: NfeRun, iteration: int, reason: str) -> None:
    run.status = "stopped"
    run.notes.append(f"NFE {run.nfe}: training stopped at iteration {iteration} because "
                     f"{reason}; kept the best Φ so far (held-out RMSE {run.best_rmse:.4g} from iteration "
                     f"{run.best_iteration})")


def _flatten(state: dict) -> dict:
    return {f"{index}.{name}": value.detach().clone() for index, entry in state.items() for name, value in entry.items()}


def _unflatten(flat: dict) -> dict:
    state: dict = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.clone()
    return state
