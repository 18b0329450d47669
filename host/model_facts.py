"""What the sampler needs to know about a ComfyUI model, read the same way on current and 2024 hosts."""

from __future__ import annotations

import dataclasses
import logging
import types

import torch

import comfy.model_sampling
import comfy.samplers

from ..coefficients import Coefficients

LOG = logging.getLogger("comfyui_dyweight")
SIGMA_MAX_TOLERANCE = 0.1  # relative; a Φ made for σ_max = 14.6 (SD) is refused on σ_max = 80 (EDM) or 1 (flow)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    family: str        # ComfyUI's model config class name: SD15, SDXL, SD3, Flux, …
    prediction: str    # eps, v or flow
    sigma_min: float
    sigma_max: float
    model_sampling: object


def prediction_of(model_sampling) -> str:
    """eps / v / flow from ComfyUI's model_sampling class (CONST is rectified flow: SD3, FLUX)."""
    const = getattr(comfy.model_sampling, "CONST", None)
    if const is not None and isinstance(model_sampling, const):
        return "flow"
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        return "v"
    return "eps"


def _facts(base_model, model_sampling) -> ModelFacts:
    return ModelFacts(
        family=type(getattr(base_model, "model_config", None)).__name__,
        prediction=prediction_of(model_sampling),
        sigma_min=float(model_sampling.sigma_min), sigma_max=float(model_sampling.sigma_max),
        model_sampling=model_sampling)


def facts_from_patcher(model_patcher) -> ModelFacts:
    """From a MODEL (ModelPatcher), with its model_sampling patches (ModelSamplingFlux/Discrete) applied."""
    if hasattr(model_patcher, "get_model_object"):
        model_sampling = model_patcher.get_model_object("model_sampling")
    else:  # 2024 hosts: patches are kept aside until sampling starts
        model_sampling = model_patcher.object_patches.get("model_sampling", model_patcher.model.model_sampling)
    return _facts(model_patcher.model, model_sampling)


def facts_from_sampler_model(model) -> ModelFacts:
    """From the denoiser a k-diffusion sampler function receives (KSamplerX0Inpaint around the guider)."""
    guider = model.inner_model
    patcher = getattr(guider, "model_patcher", None)
    base_model = guider.inner_model
    model_sampling = (patcher.get_model_object("model_sampling") if patcher is not None
                      else base_model.model_sampling)
    return _facts(base_model, model_sampling)


def check_scheduler(scheduler: str, what: str = "this Φ's scheduler") -> None:
    """``ValueError`` naming this ComfyUI's schedulers when ``scheduler`` is not one of them."""
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"{what} '{scheduler}' is not one of this ComfyUI's schedulers "
                         f"({', '.join(comfy.samplers.SCHEDULER_NAMES)}); update ComfyUI or choose another")


def comfy_sigmas(model_sampling, scheduler: str, steps: int):
    """ComfyUI's own schedule (so shift patches apply); 2024 hosts key their schedulers on the model."""
    check_scheduler(scheduler)
    if hasattr(comfy.samplers, "calculate_sigmas"):
        return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    return comfy.samplers.calculate_sigmas_scheduler(types.SimpleNamespace(model_sampling=model_sampling),
                                                     scheduler, steps)


def ddpm_time_sigmas(model_sampling, times) -> torch.Tensor:
    """The model's own σ at DDPM times t ∈ [0, 1]: timestep t·T of its T training steps (t = 0.999 → the
    last one), interpolated in log σ between steps as ComfyUI does for any σ."""
    timesteps = torch.tensor(times, dtype=torch.float32) * len(model_sampling.sigmas)
    return model_sampling.sigma(timesteps).float().cpu()


def bind_to_model(phi: Coefficients, facts: ModelFacts) -> Coefficients:
    """Refuse a Φ made for another prediction type or sigma range; warn on another family.

    A model-agnostic Φ takes the model's prediction type (it decides the analytical first step).
    """
    if phi.prediction is not None and phi.prediction != facts.prediction:
        raise ValueError(
            f"this DyWeight Φ was made for {phi.prediction}-prediction models, but the model ({facts.family}) "
            f"is {facts.prediction}-prediction; load a Φ for {facts.prediction} models or use the presets")
    if phi.sigma_max is not None and abs(phi.sigma_max - facts.sigma_max) > SIGMA_MAX_TOLERANCE * facts.sigma_max:
        raise ValueError(
            f"this DyWeight Φ was made for σ_max = {phi.sigma_max:g}, but the model's σ_max is "
            f"{facts.sigma_max:g} ({facts.family}); it cannot work on this model's noise range")
    if phi.model_family is not None and phi.model_family != facts.family:
        LOG.warning("DyWeight: this Φ was trained for %s, the model is %s; results may be worse than its presets",
                    phi.model_family, facts.family)
    if phi.prediction is None:
        phi = dataclasses.replace(phi, prediction=facts.prediction)
    return phi


def latent_channels(model_patcher) -> int:
    """Channels of the model's latent (2024 hosts' latent formats don't say; their UNet config does)."""
    latent_format = model_patcher.model.latent_format
    if hasattr(latent_format, "latent_channels"):
        return int(latent_format.latent_channels)
    return int(model_patcher.model.model_config.unet_config.get("in_channels", 4))
