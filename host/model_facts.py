"""What the sampler needs to know about a ComfyUI model, read the same way on current and 2024 hosts."""

from __future__ import annotations

import dataclasses
import logging
import types

import torch

import comfy.model_sampling
import comfy.samplers

from ..coefficients import Coefficients
from ..coefficients.presets import default_scheduler

LOG = logging.getLogger("comfyui_dyweight")
ONE_STEP_PREDICTOR = (
    "DyWeight cannot sample this model: it is an image-to-image predictor (ComfyUI's IMG_TO_IMG sampling, as "
    "Lotus-D), which maps the encoded image to its prediction in one model call at a fixed timestep, not a "
    "diffusion model that a multistep solver integrates; run it as its workflow does: SamplerCustomAdvanced "
    "with DisableNoise, the euler sampler and one step (BasicScheduler, steps 1)")
SIGMA_MAX_TOLERANCE = 0.1  # relative; a Φ made for σ_max = 14.6 (SD) is refused on σ_max = 80 (EDM) or 1 (flow)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    family: str        # ComfyUI's model config class name: SD15, SDXL, SD3, Flux, …
    prediction: str    # eps, v or flow
    sigma_min: float
    sigma_max: float
    model_sampling: object
    sigma_data: float = 1.0  # EDM-preconditioned models (Cosmos T2V, EDM-SDXL such as Playground 2.5): 0.5
    noise_form: str = "ve"   # "ve": x = x0 + σ·n; "interpolation": x = (1 − σ)·x0 + σ·n (CONST: SD3, FLUX, …)

    def analytical_first_step_problem(self) -> str | None:
        """Why the analytical first step (AFS) does not hold on this model, or None when it does.

        The AFS replaces the first model call by the gradient of pure noise at σ_max: g_0 = x/√(1 + σ²)
        in VE form, which is the noise estimate x/√(σ_data² + σ²) with σ_data = 1, or g_0 = x when x is
        the flow interpolation at σ = 1 (DyWeight, arXiv 2603.11607, taking it from Zhou et al.'s AMED-Solver, CVPR 2024).
        """
        if self.prediction == "flow" and self.noise_form != "interpolation":
            return (f"{self.family} is a rectified-flow model sampled in VE form (x = x0 + σ·noise up to "
                    f"σ = {self.sigma_max:g}), but the analytical first step for flow models assumes x = noise at σ = 1")
        if self.prediction != "flow" and self.noise_form != "ve":
            return f"{self.family} is sampled as a flow interpolation, but this is a {self.prediction} model"
        if abs(self.sigma_data - 1.0) > 1e-6:
            return (f"the analytical first step assumes σ_data = 1, but {self.family} has σ_data = "
                    f"{self.sigma_data:g} (EDM preconditioning)")
        return None


def prediction_of(model_sampling) -> str:
    """eps / v / flow from ComfyUI's model_sampling class.

    CONST (SD3, FLUX, …) and COSMOS_RFLOW (Cosmos Predict2, not a CONST subclass) are rectified flow.
    EDM (Cosmos T2V, EDM-SDXL) subclasses V_PREDICTION and is v-prediction with its own σ_data (Karras
    et al. 2022, Table 1: F's target is a v scaled by σ_data); the σ_data is carried in ModelFacts.
    A model sampled as IMG_TO_IMG (Lotus-D) has none of these: ``ValueError`` saying how to run it.
    """
    img_to_img = getattr(comfy.model_sampling, "IMG_TO_IMG", None)
    if img_to_img is not None and isinstance(model_sampling, img_to_img):
        raise ValueError(ONE_STEP_PREDICTOR)
    flow_classes = tuple(getattr(comfy.model_sampling, name) for name in ("CONST", "COSMOS_RFLOW")
                         if hasattr(comfy.model_sampling, name))
    if isinstance(model_sampling, flow_classes):
        return "flow"
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        return "v"
    return "eps"


def _facts(base_model, model_sampling) -> ModelFacts:
    const = getattr(comfy.model_sampling, "CONST", None)
    return ModelFacts(
        family=type(getattr(base_model, "model_config", None)).__name__,
        prediction=prediction_of(model_sampling),
        sigma_min=float(model_sampling.sigma_min), sigma_max=float(model_sampling.sigma_max),
        model_sampling=model_sampling,
        sigma_data=float(getattr(model_sampling, "sigma_data", 1.0)),
        noise_form="interpolation" if const is not None and isinstance(model_sampling, const) else "ve")


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


def model_scheduler(facts: ModelFacts) -> str:
    """The ComfyUI scheduler that Φ made for no particular model (the Adams–Bashforth presets) and the
    trainer use on this model: ``karras`` (eps/v) or ``simple`` (flow), except where the model's own
    sigma range makes ``karras`` a poor fit.

    * Zero terminal SNR (SD 2.x/SDXL zsnr, ``zsnr`` in ComfyUI's discrete sampling): σ_max ≈ 4500, and
      ``karras`` (Karras et al. 2022, eq. 5, ρ = 7) puts two of five steps above σ = 100, where the
      image is still pure noise; ``normal`` (uniform in the model's training timesteps, from σ_max to
      σ_min) spends them where the image forms.
    * Stable Cascade (stage C): trained on its own cosine schedule uniform in t (Würstchen, Pernias
      et al. 2024); ``simple`` is uniform over that schedule, as its reference workflows sample.
    """
    stable_cascade = getattr(comfy.model_sampling, "StableCascadeSampling", None)
    if stable_cascade is not None and isinstance(facts.model_sampling, stable_cascade):
        return "simple"
    if getattr(facts.model_sampling, "zsnr", False):
        return "normal"
    return default_scheduler(facts.prediction)


def binding_problem(phi: Coefficients, facts: ModelFacts) -> str | None:
    """Why ``phi`` cannot run on this model (another prediction type, σ_data or sigma range, an analytical
    first step that does not hold, a DDPM-time grid on a model without DDPM timesteps), or None.

    A Φ made for a model records that model's σ_data in its training record (absent: σ_data = 1), so a
    v-prediction Φ from SD 2.x is refused on an EDM model (σ_data = 0.5), whose denoiser weighs x and the
    network output differently.
    """
    if phi.prediction is not None and phi.prediction != facts.prediction:
        return (f"this DyWeight Φ was made for {phi.prediction}-prediction models, but the model ({facts.family}) "
                f"is {facts.prediction}-prediction; load a Φ for {facts.prediction} models or use the presets")
    phi_sigma_data = float(phi.training.get("sigma_data", 1.0))
    if phi.prediction is not None and abs(phi_sigma_data - facts.sigma_data) > 1e-6:
        return (f"this DyWeight Φ was made for a model with σ_data = {phi_sigma_data:g}, but the model "
                f"({facts.family}) has σ_data = {facts.sigma_data:g}; train a Φ on this model or use the presets")
    if phi.sigma_max is not None and abs(phi.sigma_max - facts.sigma_max) > SIGMA_MAX_TOLERANCE * facts.sigma_max:
        return (f"this DyWeight Φ was made for σ_max = {phi.sigma_max:g}, but the model's σ_max is "
                f"{facts.sigma_max:g} ({facts.family}); it cannot work on this model's noise range")
    afs_problem = facts.analytical_first_step_problem() if phi.afs else None
    if afs_problem is not None:
        return (f"this DyWeight Φ uses the analytical first step, which is wrong here: {afs_problem}; "
                "use a Φ without it (the presets, or train with the analytical first step off)")
    if phi.schedule["kind"] == "ddpm_time" and not has_ddpm_timesteps(facts.model_sampling):
        return (f"this DyWeight Φ runs at DDPM timesteps, which {facts.family} does not have "
                f"({type(facts.model_sampling).__name__}); use a Φ on a ComfyUI schedule")
    return None


def has_ddpm_timesteps(model_sampling) -> bool:
    """Whether σ(t) is indexed by the T training timesteps (:func:`ddpm_time_sigmas`): ComfyUI's discrete
    DDPM sampling, not Stable Cascade's continuous cosine schedule that subclasses it."""
    stable_cascade = getattr(comfy.model_sampling, "StableCascadeSampling", ())
    return (isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete)
            and not isinstance(model_sampling, stable_cascade))


def runs_on(facts: ModelFacts):
    """The preset registry's ``runs`` check for this model: Φ that :func:`bind_to_model` accepts."""
    return lambda phi: binding_problem(phi, facts) is None


def bind_to_model(phi: Coefficients, facts: ModelFacts) -> Coefficients:
    """``phi`` ready for this model: ``ValueError`` with :func:`binding_problem`'s message when it cannot
    run there; a warning on another family.

    A model-agnostic Φ takes the model's prediction type (and records its σ_data) and, when it carries the
    generic default schedule, the model's own (:func:`model_scheduler`).
    """
    problem = binding_problem(phi, facts)
    if problem is not None:
        raise ValueError(problem)
    if phi.model_family is not None and phi.model_family != facts.family:
        LOG.warning("DyWeight: this Φ was trained for %s, the model is %s; results may be worse than its presets",
                    phi.model_family, facts.family)
    model_agnostic = phi.model_family is None and phi.sigma_max is None
    generic_schedule = {"kind": "comfy", "scheduler": default_scheduler(phi.prediction or facts.prediction)}
    if model_agnostic and phi.schedule == generic_schedule:
        phi = dataclasses.replace(phi, schedule={"kind": "comfy", "scheduler": model_scheduler(facts)})
    if phi.prediction is None:
        phi = dataclasses.replace(phi, prediction=facts.prediction,
                                  training={**phi.training, "sigma_data": facts.sigma_data})
    return phi


def latent_channels(model_patcher) -> int:
    """Channels of the model's latent (2024 hosts' latent formats don't say; their UNet config does)."""
    latent_format = model_patcher.model.latent_format
    if hasattr(latent_format, "latent_channels"):
        return int(latent_format.latent_channels)
    return int(model_patcher.model.model_config.unet_config.get("in_channels", 4))
