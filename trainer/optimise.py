"""The optimisation loop of one Φ (DyWeight, arXiv 2603.11607, Algorithm 1, lines 3–8): Adam with a
linear warm-up and cosine decay, gradient clipping, held-out checks that keep the best Φ.

The student (:mod:`.students`: DyWeight's W and s, or DSS's grid and coefficients) runs the one update
rule (:func:`dyweight_sample`) from the teacher's noise x_T; its family's loss compares it with the
teacher (DyWeight: the endpoint, Algorithm 1, line 6; DSS: the path and the endpoint).

A mini-batch may be split into micro-batches whose gradients are summed before the Adam step: the
same step (up to float rounding) with the activation memory of one micro-batch, which is what lets a
large model train within a small multiple of one sampling call's memory.

Everything that decides a number is a function of (seed, NFE, iteration), so a run resumed from its
saved state finishes bit for bit as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable

import torch

from ..coefficients import Coefficients, CoefficientError, SamplingError, dyweight_sample
from . import distributed
from .config import DistillConfig
from .model_calls import differentiable_calls
from .pairs import PairSet
from .progress import Reporter
from .state import NfeRun

#: Share of the iterations spent on the linear learning-rate warm-up before the cosine decay.
WARMUP_FRACTION = 0.05
#: Gradients are clipped to this global L2 norm before each Adam step.
MAX_GRAD_NORM = 1.0


def learning_rate(iteration: int, config: DistillConfig, peak: float) -> float:
    """Linear warm-up over the first ``WARMUP_FRACTION`` of the iterations, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * config.iterations))
    if iteration < warmup:
        return peak * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, config.iterations - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(config: DistillConfig, nfe: int, iteration: int, count: int) -> torch.Tensor:
    """The training pairs of one iteration: a seeded draw without replacement, a function of
    (seed, NFE, iteration) only."""
    digest = hashlib.sha256(f"dyweight/{config.seed}/{nfe}/{iteration}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(count, generator=generator)[:config.batch_size].sort().values


@torch.no_grad()
def held_out_rmse(solve: Callable, denoise: Callable, pairs: PairSet, batch_size: int) -> float:
    """RMSE to the teacher, per latent element, of ``solve(denoise, x_T) -> x0`` over ``pairs``."""
    ranks = distributed.ranks()
    starts = range(0, len(pairs), batch_size)
    mine = {}
    for index in ranks.share(range(len(starts))):
        batch = pairs.subset(slice(starts[index], starts[index] + batch_size))
        try:
            error = solve(batch.bind(denoise), batch.noise) - batch.target
        except Exception:
            if ranks.world == 1:
                raise
            mine[index] = [_exact(0.0), _exact(0.0), _exact(1.0)]  # every rank raises below
            continue
        error = error.to(torch.promote_types(error.dtype, torch.float32))  # float64 stays; half → float32
        mine[index] = [_exact(float(error.pow(2).sum())), _exact(error.numel()), _exact(0.0)]
    squared, count = 0.0, 0
    for batch_squared, batch_count, failed in ranks.ordered(mine, len(starts), [_exact(0.0)] * 3):
        if failed:
            raise RuntimeError("held-out sampling failed on one of the ranks (see its message)")
        squared += float(batch_squared)
        count += int(batch_count)
    return math.sqrt(squared / count)


def _exact(value: float) -> torch.Tensor:
    """A Python number as a float64 scalar tensor (no rounding on the way to another rank and back)."""
    return torch.tensor(value, dtype=torch.float64)


def phi_rmse(phi: Coefficients, sigmas: torch.Tensor, denoise: Callable, pairs: PairSet, batch_size: int) -> float:
    return held_out_rmse(lambda model, x: dyweight_sample(model, x, sigmas, phi), denoise, pairs, batch_size)


def best_tensors(phi: Coefficients) -> dict:
    """The tensors of a (detached) Φ that a run keeps as its best."""
    return {"weights": phi.weights, "time_scale": phi.time_scale, "sigmas": phi.sigmas}


def train(run: NfeRun, student, denoise: Callable, train_pairs: PairSet, validation_pairs: PairSet,
          config: DistillConfig, reporter: Reporter, commit: Callable[[NfeRun, bool], None]) -> None:
    """Optimise ``run`` from its current iteration to ``config.iterations`` (Algorithm 1, lines 3–8).

    After every iteration ``commit(snapshot, validated)`` receives a consistent copy of the run (what an
    interruption saves). A non-finite loss or gradient, or a Φ the update rule refuses, stops this NFE
    (``status = "stopped"``) and keeps the best Φ so far.
    """
    peak = config.peak_lr(student.family)
    optimizer = torch.optim.Adam(student.parameters, lr=peak)
    if run.adam:
        optimizer.load_state_dict({"state": _unflatten(run.adam), "param_groups": optimizer.state_dict()["param_groups"]})
    reporter.begin(f"{run.family} NFE {run.nfe}", run.iteration, config.iterations)
    calls = differentiable_calls(denoise, config.checkpointing)
    clock = time.monotonic()
    while run.iteration < config.iterations and run.status == "training":
        iteration = run.iteration
        batch = train_pairs.subset(batch_indices(config, run.nfe, iteration, len(train_pairs)))
        try:
            loss = _step(student, optimizer, learning_rate(iteration, config, peak), calls, batch, config)
        except Diverged as error:
            _stop(run, iteration + 1, str(error))
            break
        run.train_loss.append(loss)
        run.parameters = student.state()
        run.adam = _flatten(optimizer.state_dict()["state"])
        run.iteration = iteration + 1
        validated = run.iteration % config.validation_interval == 0 or run.iteration == config.iterations
        if validated:
            _validate_and_keep_best(run, student, denoise, validation_pairs, config)
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


def batch_gradients(student, calls: Callable, batch: PairSet, config: DistillConfig) -> tuple:
    """The mini-batch loss and its gradients in the student's parameters, accumulated over micro-batches;
    ``calls`` are the model's differentiable calls (:func:`.model_calls.differentiable_calls`).

    A micro-batch's mean loss enters with weight (its size / the batch's): every pair has as many
    latent elements as any other, so the weighted sum is the batch mean of Algorithm 1, line 6, and
    its gradient the batch gradient. Only one micro-batch's graph is alive at a time. On several ranks
    each computes its share of the micro-batches, and all are summed in order (:mod:`.distributed`).
    Gradients are taken with :func:`torch.autograd.grad` for the student's parameters only, so none are ever built for
    (or accumulated into) the model's own parameters.

    Raises:
        Diverged: a loss is NaN/Inf, or the update rule refused the Φ.
    """
    ranks = distributed.ranks()
    starts = range(0, len(batch), config.micro_batch)
    template = [_exact(0.0), _exact(0.0), *student.parameters]  # loss, failed, gradients
    mine = {}
    for index in ranks.share(range(len(starts))):
        part = batch.subset(slice(starts[index], starts[index] + config.micro_batch))
        try:
            with torch.enable_grad():
                part_loss = student.loss(calls, part) * (len(part) / len(batch))
                if not torch.isfinite(part_loss):
                    raise Diverged(f"the loss became {float(part_loss)}")
                part_gradients = torch.autograd.grad(part_loss, student.parameters)
        except (CoefficientError, SamplingError, Diverged) as error:
            failure = error if isinstance(error, Diverged) else Diverged(f"the current Φ is unusable ({error})")
            if ranks.world == 1:
                raise failure from None
            mine[index] = [_exact(0.0), _exact(1.0), *(torch.zeros_like(p) for p in student.parameters)]
            continue
        mine[index] = [_exact(float(part_loss.detach())), _exact(0.0), *part_gradients]
    loss, gradients = 0.0, None
    for part_loss, failed, *part_gradients in ranks.ordered(mine, len(starts), template):
        if failed:
            raise Diverged("the loss or the Φ failed on one of the ranks' micro-batches")
        loss += float(part_loss)
        gradients = part_gradients if gradients is None else [g + p for g, p in zip(gradients, part_gradients)]
    return loss, gradients


def _step(student, optimizer, lr: float, calls: Callable, batch: PairSet, config: DistillConfig) -> float:
    """One Adam step; returns the batch loss.

    Raises:
        Diverged: the loss or a gradient is NaN/Inf, or the update rule refused the Φ.
    """
    loss, gradients = batch_gradients(student, calls, batch, config)
    if not all(torch.isfinite(g).all() for g in gradients):
        raise Diverged("a gradient became NaN/Inf")
    for parameter, gradient in zip(student.parameters, gradients):
        parameter.grad = gradient
    torch.nn.utils.clip_grad_norm_(student.parameters, MAX_GRAD_NORM)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    student.after_step()
    return loss


def _validate_and_keep_best(run: NfeRun, student, denoise, pairs: PairSet, config: DistillConfig) -> None:
    """Held-out RMSE of the current Φ; keep it as the best when it beats every earlier one."""
    try:
        phi = student.phi().detached()
        rmse = phi_rmse(phi, student.evaluation_grid(phi), denoise, pairs, config.sampling_batch)
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
        run.best = best_tensors(phi)


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
