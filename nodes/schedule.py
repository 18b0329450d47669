"""The sigmas that belong to a Φ on a given model (DyWeight Sigmas and KSampler (DyWeight))."""

from __future__ import annotations

import torch

from ..coefficients import Coefficients, base_sigmas
from ..coefficients.presets import FIXED_GRIDS
from ..host.model_facts import ModelFacts, comfy_sigmas, ddpm_time_sigmas


def _schedule_sigmas(phi: Coefficients, facts: ModelFacts, steps: int) -> torch.Tensor:
    """Φ's schedule at ``steps`` steps: a ComfyUI scheduler on this model, the model's σ at DDPM times,
    else its own base grid."""
    kind = phi.schedule["kind"]
    if kind == "comfy":
        return comfy_sigmas(facts.model_sampling, phi.schedule["scheduler"], steps).float().cpu()
    if kind == "ddpm_time":  # DSS's DDPM tables (arXiv 2505.21114): the model's own σ at the searched times
        if facts.prediction == "flow":
            raise ValueError("this Φ's grid is in DDPM time (eps/v models); the model is a flow model")
        return ddpm_time_sigmas(facts.model_sampling, phi.schedule["t"])
    return base_sigmas(phi, steps).float()


def phi_sigmas(phi: Coefficients, facts: ModelFacts, denoise: float = 1.0) -> torch.Tensor:
    """The N+1 sigmas Φ runs on for this model.

    ``denoise < 1`` behaves as in the stock KSampler: the Φ's schedule is evaluated for
    int(N / denoise) steps and its last N+1 sigmas are used (img2img starts part-way down; the
    sampler then replaces an analytical first step by a model call, see ``sample_dyweight``).
    A Φ on a fixed grid (explicit sigmas or DDPM times) cannot be stretched and refuses ``denoise < 1``.
    """
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if denoise >= 0.9999:
        return _schedule_sigmas(phi, facts, phi.steps)
    if phi.schedule["kind"] in FIXED_GRIDS:
        raise ValueError("this Φ was trained on a fixed sigma grid and cannot run with denoise < 1; "
                         "use denoise 1.0 or a Φ with a ComfyUI schedule")
    total = max(phi.steps, int(phi.steps / denoise))
    return _schedule_sigmas(phi, facts, total)[-(phi.steps + 1):]
