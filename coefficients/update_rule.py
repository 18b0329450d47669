"""The DyWeight update rule (arXiv 2603.11607, §3, Eqs. 6–9) — the one copy, shared by sampler and trainer.

For n = 0 … N−1, with the running time t̃_0 = σ_0:

* gradient (Eq. 7): g_n = (x_n − D(x_n, s_n·t̃_n)) / t̃_n  (``divisor="sigma"``)
  or / (s_n·t̃_n)  (``divisor="net_sigma"``); with the analytical first step (AFS) g_0 needs no model
  call: x / √(1 + t̃_0²) for VE-form models, x for flow models;
* step toward the original grid point (Eq. 6): h_n = σ_{n+1} − t̃_n,
  x_{n+1} = x_n + h_n · Σ_{k<p} W[n,k] · g_{n−k},  p = min(n+1, K);
* time shift (Eq. 8): t̃_{n+1} = t̃_n + (Σ_{k<p} W[n,k]) · h_n.

t̃ depends on W and the grid only, never on x, so the whole time grid is computed (and checked) before
the first model call, and with it every number a step needs: with the residuals r_m = x_m − D_m
(so g_m = r_m / d_m, d_m the divisor of Eq. 7), Eq. 6 reads

    x_{n+1} = x_n + Σ_{k<p} c[n,k] · r_{n−k},   c[n,k] = h_n · W[n,k] / d_{n−k},

and a step costs one subtraction and p fused multiply-adds on the latents besides its model call.
The table c is differentiable in W and s, so the trainer runs this same loop.

``combine = "denoised"`` (DSS's DDPM solvers, arXiv 2505.21114, §3, in VE coordinates x̂ = x/α) weights
the data predictions instead, with the step of DDIM (Song et al. 2021, Eq. 12) from their combination:

    x_{n+1} = x_n + (h_n / d_n) · (x_n − Σ_{k<p} W[n,k] · D_{n−k}),

i.e. x_{n+1} = a_n · x_n + Σ_k b[n,k] · D_{n−k} with a_n = 1 + h_n/d_n and b[n,k] = −h_n·W[n,k]/d_n;
every row of W sums to one (an average of data predictions), so t̃ = σ. With Euler rows (W[n,0] = 1) both
combinations are DDIM.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .errors import SamplingError
from .phi import Coefficients

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shifted_times(weights: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """t̃_0 … t̃_{N−1} of Eq. 8 for weights [N, K] on the base grid σ_0 … σ_N (differentiable in W).

    Row n sums only the weights of gradients that exist (k ≤ n); t̃_{n+1} = lerp(t̃_n, σ_{n+1}, Σ_k W[n,k]).
    """
    steps, order = weights.shape
    row_sums = (weights * torch.ones_like(weights).tril()).sum(1).unbind()
    targets = sigmas[1:].unbind()
    times = [sigmas[0]]
    for n in range(steps - 1):
        times.append(torch.lerp(times[-1], targets[n], row_sums[n]))
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
    queries = scales * times  # the model is asked at s_n·t̃_n (Eq. 7)
    if phi.afs:
        queries = torch.cat([times[:1], queries[1:]])  # no model call at step 0; its callback reports t̃_0
    _check_times(times, queries, phi)
    divisors = times if phi.divisor == "sigma" else queries
    if phi.combine == "denoised":
        state_factors, rows = denoised_step_coefficients(weights, sig[1:] - times, divisors)
    else:
        state_factors, rows = None, step_coefficients(weights, sig[1:] - times, divisors)
    queries = queries.unbind()

    state = x.to(work)
    history: list[torch.Tensor] = []  # r_m = x_m − D_m (or D_m with combine = "denoised"), newest first
    step_sums: list[torch.Tensor] = []  # NaN/Inf anywhere in x_{n+1} makes its sum non-finite
    for n in range(phi.steps):
        if phi.afs and n == 0:  # g_0 = x/√(1 + t̃_0²) (VE) or x (flow), and r_0 = t̃_0·g_0
            residual = times[0] * (state if phi.prediction == "flow" else state / torch.sqrt(1 + times[0] ** 2))
            denoised = state - residual
        else:
            denoised = denoise(state, queries[n])
            residual = state - denoised  # in the working dtype, whatever the model's
        if callback is not None:
            callback({"x": state, "i": n, "sigma": queries[n], "sigma_hat": queries[n], "denoised": denoised})
        history.insert(0, residual if state_factors is None else denoised.to(work))
        del history[phi.order:]
        if state_factors is not None:
            state = state * state_factors[n]
        for coefficient, past in zip(rows[n], history):
            state = torch.addcmul(state, coefficient, past)
        step_sums.append(state.sum())
    _check_finite(torch.stack(step_sums), phi)
    return state.to(x.dtype)


def step_coefficients(weights: torch.Tensor, step_sizes: torch.Tensor, divisors: torch.Tensor) -> list:
    """c[n,k] = h_n · W[n,k] / d_{n−k} (Eqs. 6–7 with g = r / d), as rows of 0-d tensors.

    Entries with n − k < 0 (no such gradient yet) are never read.
    """
    steps, order = weights.shape
    lag = torch.arange(steps, device=divisors.device)[:, None] - torch.arange(order, device=divisors.device)
    return _table_rows(step_sizes[:, None] * weights / divisors[lag.clamp(min=0)])


def denoised_step_coefficients(weights: torch.Tensor, step_sizes: torch.Tensor, divisors: torch.Tensor) -> tuple:
    """(a_n, rows of b[n,k]) of the data-prediction step x_{n+1} = a_n·x_n + Σ_k b[n,k]·D_{n−k}:
    a_n = 1 + h_n/d_n, b[n,k] = −h_n·W[n,k]/d_n (DDIM, Song et al. 2021, Eq. 12, on Σ_k W[n,k]·D_{n−k})."""
    ratios = step_sizes / divisors
    return (1 + ratios).unbind(), _table_rows(-ratios[:, None] * weights)


def _table_rows(table: torch.Tensor) -> list:
    """An [N, K] table as N rows of 0-d tensors (one unbind: views that are cheap to pass to addcmul)."""
    steps, order = table.shape
    cells = table.flatten().unbind()
    return [cells[n * order:(n + 1) * order] for n in range(steps)]


def _check_times(times: torch.Tensor, queries: torch.Tensor, phi: Coefficients) -> None:
    """One host sync before any model call: every running time and query time must be positive."""
    times, queries = times.detach(), queries.detach()
    bad = ((times <= 0) | (queries <= 0)).nonzero()
    if bad.numel():
        n = int(bad[0])
        raise SamplingError(
            f"this Φ drives the running time t̃ to {float(times[n]):.4g} at step {n} of {phi.steps} "
            f"(it must stay > 0 before the last step): its weight rows overshoot on this sigma grid. "
            f"Use the Φ with the schedule it was trained on, or retrain it")


def _check_finite(step_sums: torch.Tensor, phi: Coefficients) -> None:
    """One host sync after the last step: the first step whose latents hold NaN/Inf (or blew up so far
    that their sum overflows)."""
    finite_after_step = torch.isfinite(step_sums)
    if not bool(finite_after_step.all()):
        n = int((~finite_after_step).nonzero()[0])
        raise SamplingError(
            f"step {n} of {phi.steps} produced NaN or Inf (the model output or the Φ-weighted step "
            f"blew up); check the model and input latents, or use an Adams–Bashforth Φ to compare")
