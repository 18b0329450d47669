"""Base grids σ_0 > … > σ_N that need no ComfyUI (ComfyUI's own schedulers come in through the nodes)."""

from __future__ import annotations

from typing import Optional

import torch

from .errors import CoefficientError
from .phi import Coefficients


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, to_zero: bool = False,
               dtype=torch.float64) -> torch.Tensor:
    """Karras et al. (2022) Eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    ``steps`` is the number of steps N. With ``to_zero`` the grid has N−1 polynomial steps down to
    σ_min and a final step to σ = 0 (ComfyUI's ``karras``); without it, all N steps are polynomial
    and the trajectory ends at σ_min (the EDM/DyWeight pixel-space convention).
    """
    if steps < 1:
        raise CoefficientError(f"a schedule needs at least one step, got {steps}")
    points = steps if to_zero else steps + 1
    ramp = torch.linspace(0, 1, points, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    if to_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype)


def flux_sigmas(steps: int, mu: float, dtype=torch.float64) -> torch.Tensor:
    """The FLUX time shift on a uniform grid: σ_i = e^μ / (e^μ + 1/t_i − 1), t = linspace(1, 0, N+1)."""
    if steps < 1:
        raise CoefficientError(f"a schedule needs at least one step, got {steps}")
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    shift = torch.exp(torch.tensor(mu, dtype=torch.float64))
    sigmas = torch.where(t > 0, shift / (shift + 1 / t.clamp_min(1e-300) - 1), torch.zeros_like(t))
    return sigmas.to(dtype)


def base_sigmas(phi: Coefficients, steps: Optional[int] = None, dtype=torch.float64) -> torch.Tensor:
    """The base sigmas of a Φ's own schedule for ``steps`` steps (default N), for schedules needing no model.

    An explicit grid exists for N steps only. A ``comfy`` schedule is evaluated on the model's
    ``model_sampling`` by the nodes instead; so is a ``ddpm_time`` one, whose stored ``sigmas`` (the grid
    it was searched on, e.g. DSS's VP σ̂(t)) are what it runs on without a model.
    """
    steps = phi.steps if steps is None else steps
    kind = phi.schedule["kind"]
    if kind == "explicit" or (kind == "ddpm_time" and phi.sigmas is not None):
        if steps != phi.steps:
            raise CoefficientError(f"this Φ's grid has {phi.steps} steps, not {steps}")
        return phi.sigmas.detach().to(dtype)
    if kind == "edm":
        return edm_sigmas(steps, phi.sigma_min, phi.sigma_max, phi.schedule["rho"],
                          bool(phi.schedule.get("to_zero", False)), dtype=dtype)
    if kind == "flux":
        return flux_sigmas(steps, phi.schedule["mu"], dtype=dtype)
    if kind == "ddpm_time":
        raise CoefficientError("this Φ's grid is in DDPM time: its sigmas come from the model's own σ(t) "
                               "(use the DyWeight Sigmas node, or pass sigmas explicitly)")
    raise CoefficientError(
        f"this Φ uses ComfyUI's '{phi.schedule['scheduler']}' scheduler: its sigmas come from the model "
        "(use the DyWeight Sigmas node, or pass sigmas explicitly)")
