"""The DyWeight update rule (arXiv 2603.11607, §3, Eqs. 6–9) — the one copy, shared by sampler and trainer.

For n = 0 … N−1, with the running time t̃_0 = σ_0:

* gradient (Eq. 7): g_n = (x_n − D(x_n, s_n·t̃_n)) / t̃_n  (``divisor="sigma"``)
  or / (s_n·t̃_n)  (``divisor="net_sigma"``); with the analytical first step (AFS) g_0 needs no model
  call: x / √(1 + t̃_0²) for VE-form models, x for flow models;
* step toward the original grid point (Eq. 6): h_n = σ_{n+1} − t̃_n,
  x_{n+1} = x_n + h_n · Σ_{k<p} W[n,k] · g_{n−k},  p = min(n+1, K);
* time shift (Eq. 8): t̃_{n+1} = t̃_n + (Σ_{k<p} W[n,k]) · h_n.

t̃ depends on W and the grid only, never on x, so the whole time grid is computed (and checked) before
the first model call.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .errors import SamplingError
from .phi import Coefficients

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shifted_times(weights: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """t̃_0 … t̃_{N−1} of Eq. 8 for weights [N, K] on the base grid σ_0 … σ_N (differentiable in W)."""
    steps, order = weights.shape
    times = [sigmas[0]]
    for n in range(steps - 1):
        available = min(n + 1, order)
        times.append(times[-1] + weights[n, :available].sum() * (sigmas[n + 1] - times[-1]))
    return torch.stack(times)


def check_grid(phi: Coefficients, sigmas: torch.Tensor) -> None:
    """Refuse a grid that does not fit Φ (wrong step count), with what to do instead."""
    if sigmas.ndim != 1 or sigmas.numel() != phi.steps + 1:
        given = sigmas.numel() - 1 if sigmas.ndim == 1 else f"a {tuple(sigmas.shape)}-shaped tensor"
        raise SamplingError(
            f"this Φ has {phi.steps} steps (NFE {phi.nfe}) and needs {phi.steps + 1} sigmas, but the "
            f"schedule has {given} steps; set the sampler's steps to {phi.steps} or load a Φ made for "
            f"{given} steps")


def dyweight_sample(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, phi: Coefficients,
                    callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Integrate the probability-flow ODE from σ_0 to σ_N with the DyWeight rule.

    Args:
        denoise: ``denoise(x, sigma) -> x0`` for a batch ``x`` and a 0-d ``sigma`` (CFG already applied).
        x: the initial batch at σ_0 (noise times σ_0 for VE-form models, noise for flow models).
        sigmas: the base grid σ_0 > … > σ_N, N = ``phi.steps`` (σ_N is 0 or σ_min).
        phi: the coefficients; ``weights``/``time_scale`` may require grad.
        callback: called once per step with k-diffusion's dict ``{x, i, sigma, sigma_hat, denoised}``
            (for the AFS step, ``denoised`` is the analytical estimate x − t̃_0·g_0).

    Returns x_N in ``x``'s dtype. The Φ arithmetic runs in float32, or float64 for float64 input.

    Raises:
        SamplingError: the grid does not fit Φ, Φ drives t̃ (or s·t̃) to ≤ 0 before the last step, or
            a step produced NaN/Inf — each naming the step.
    """
    check_grid(phi, sigmas)
    work = torch.promote_types(x.dtype, torch.float32)
    sig = sigmas.to(device=x.device, dtype=work)
    weights = phi.weights.to(device=x.device, dtype=work)
    scales = phi.time_scale.to(device=x.device, dtype=work)
    times = shifted_times(weights, sig)
    _check_times(times, scales, phi)

    state = x.to(work)
    history: list[torch.Tensor] = []  # newest first
    finite_after_step: list[torch.Tensor] = []
    for n in range(phi.steps):
        t_n = times[n]
        if phi.afs and n == 0:
            gradient = state if phi.prediction == "flow" else state / torch.sqrt(1 + t_n ** 2)
            query = t_n
            denoised = state - t_n * gradient
        else:
            query = scales[n] * t_n
            denoised = denoise(state, query).to(work)
            gradient = (state - denoised) / (t_n if phi.divisor == "sigma" else query)
        if callback is not None:
            callback({"x": state, "i": n, "sigma": query, "sigma_hat": query, "denoised": denoised})
        history.insert(0, gradient)
        del history[phi.order:]
        direction = sum(weights[n, k] * g for k, g in enumerate(history))
        state = state + (sig[n + 1] - t_n) * direction
        finite_after_step.append(torch.isfinite(state).all())
    _check_finite(torch.stack(finite_after_step), phi)
    return state.to(x.dtype)


def _check_times(times: torch.Tensor, scales: torch.Tensor, phi: Coefficients) -> None:
    """One host sync before any model call: every running time and query time must be positive."""
    times, scales = times.detach(), scales.detach()
    bad = ((times <= 0) | (times * scales <= 0)).nonzero()
    if bad.numel():
        n = int(bad[0])
        raise SamplingError(
            f"this Φ drives the running time t̃ to {float(times[n]):.4g} at step {n} of {phi.steps} "
            f"(it must stay > 0 before the last step): its weight rows overshoot on this sigma grid. "
            f"Use the Φ with the schedule it was trained on, or retrain it")


def _check_finite(finite_after_step: torch.Tensor, phi: Coefficients) -> None:
    if not bool(finite_after_step.all()):
        n = int((~finite_after_step).nonzero()[0])
        raise SamplingError(
            f"step {n} of {phi.steps} produced NaN or Inf (the model output or the Φ-weighted step "
            f"blew up); check the model and input latents, or use an Adams–Bashforth Φ to compare")
