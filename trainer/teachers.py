"""Reference solvers for plain denoisers: the built-in teachers and the default baselines.

Each solver follows k-diffusion's shape — ``sample_x(denoise, x, sigmas, callback=None) -> x_N`` on a
base grid σ_0 > … > σ_N, with ``denoise(x, sigma) -> x0`` and a 0-d ``sigma``, calling
``callback({"x", "i", "sigma"})`` with the state at σ_i before each step — and integrates the
probability-flow ODE dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, Eq. 3). iPNDM is not written out
again: it is the Adams–Bashforth Φ through the one DyWeight update rule.

A teacher is a high-accuracy solver run on ``schedule(teacher_steps)``; a baseline is a hand-made
few-step solver ``(denoise, x, nfe) -> x0`` on ``schedule(nfe)`` that the validation table compares
against at the same NFE.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import torch

from ..coefficients import adams_bashforth, dyweight_sample

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Solver = Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor]
Baseline = Callable[[Denoiser, torch.Tensor, int], torch.Tensor]


def _slope(x, sigma, denoised):
    """dx/dσ of the probability-flow ODE: (x − D(x, σ))/σ."""
    return (x - denoised) / sigma


def _sigmas_like(sigmas, x):
    """The grid on ``x``'s device, in ``x``'s dtype or float32 if that is wider."""
    return torch.as_tensor(sigmas).to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))


def _report(callback: Optional[Callable], x: torch.Tensor, i: int, sigma: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma})


def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Euler's method in σ (DDIM for ε-models); a step to σ = 0 returns the denoised estimate."""
    sigmas = _sigmas_like(sigmas, x)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        _report(callback, x, i, sigma)
        x = x + (sigma_next - sigma) * _slope(x, sigma, denoise(x, sigma))
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 without churn); Euler on a step to 0.

    2N − 1 model calls on a grid ending at 0, 2N otherwise.
    """
    sigmas = _sigmas_like(sigmas, x)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        _report(callback, x, i, sigma)
        slope = _slope(x, sigma, denoise(x, sigma))
        euler_step = x + (sigma_next - sigma) * slope
        if sigma_next == 0:
            x = euler_step
        else:
            slope_next = _slope(euler_step, sigma_next, denoise(euler_step, sigma_next))
            x = x + (sigma_next - sigma) * (slope + slope_next) / 2
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data prediction, multistep, in λ = −log σ.

    First step and a step to σ = 0 are first order; the others extrapolate the denoised estimate
    linearly in λ from the previous one.
    """
    sigmas = _sigmas_like(sigmas, x)
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        _report(callback, x, i, sigma)
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            estimate = denoised
            if previous is not None:
                ratio = (sigmas[i - 1].log() - sigma.log()) / h
                estimate = (1 + 1 / (2 * ratio)) * denoised - previous / (2 * ratio)
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        previous = denoised
    return x


def sample_ipndm(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023): fourth-order Adams–Bashforth Φ through :func:`dyweight_sample`."""
    sigmas = torch.as_tensor(sigmas)
    phi = adams_bashforth(len(sigmas) - 1, 4, final_denoise=float(sigmas[-1]) == 0.0)
    return dyweight_sample(denoise, x, sigmas, phi, callback=callback)


#: Built-in teachers by name; ``heun`` is the default (second order, accurate at ≥ 32 steps).
TEACHERS: dict[str, Solver] = {
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "ipndm": sample_ipndm,
    "euler": sample_euler,
}

#: The default baselines of the validation table, for plain denoisers.
BASELINE_SOLVERS: dict[str, Solver] = {
    "euler": sample_euler,
    "ipndm": sample_ipndm,
    "dpmpp_2m": sample_dpmpp_2m,
}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher solver and the name it is recorded under."""

    name: str
    solve: Solver


def resolve_teacher(teacher: Union[str, Solver], by_name: Optional[Callable[[str], Solver]] = None) -> Teacher:
    """A teacher name, or any callable ``teacher(denoise, x, sigmas) -> x0``.

    A name is looked up with ``by_name`` (a model source's own solvers, e.g. ComfyUI's samplers; it
    raises ``ValueError`` for names it lacks) or among the built-in :data:`TEACHERS`. A solver is
    recorded under its ``name`` attribute, else its ``__name__``, else the name it was looked up by.
    """
    if isinstance(teacher, str):
        if by_name is not None:
            teacher = by_name(teacher)
        elif teacher in TEACHERS:
            return Teacher(teacher, TEACHERS[teacher])
        else:
            raise ValueError(f"unknown teacher {teacher!r}: use one of {sorted(TEACHERS)} or a callable "
                             "teacher(denoise, x, sigmas) -> x0")
    if not callable(teacher):
        raise TypeError(f"a teacher is a solver name or a callable teacher(denoise, x, sigmas) -> x0, got {teacher!r}")
    return Teacher(str(getattr(teacher, "name", None) or getattr(teacher, "__name__", "custom")), teacher)


def on_schedule(solver: Solver, schedule: Callable[[int], torch.Tensor]) -> Baseline:
    """Turn a grid solver into a baseline ``(denoise, x, nfe) -> x0`` that runs on ``schedule(nfe)``.

    Every built-in baseline makes one model call per step, so NFE = number of steps.
    """

    def baseline(denoise: Denoiser, x: torch.Tensor, nfe: int) -> torch.Tensor:
        return solver(denoise, x, schedule(nfe))

    baseline.__name__ = solver.__name__
    return baseline


def default_baselines(schedule: Callable[[int], torch.Tensor]) -> dict[str, Baseline]:
    """Euler, iPNDM and DPM-Solver++(2M), each on ``schedule(nfe)``."""
    return {name: on_schedule(solver, schedule) for name, solver in BASELINE_SOLVERS.items()}
