"""``sample_dyweight``: the DyWeight update rule as a k-diffusion sampler function, and its registration.

Contract (k-diffusion / ComfyUI): ``sample_dyweight(model, x, sigmas, extra_args, callback, disable,
coefficients=None)``; ``model(x, sigma * s_in, **extra_args)`` returns the CFG-guided x0, and
``callback`` is called once per step, which drives ComfyUI's progress bar, latent preview and cancel.
"""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

import comfy.k_diffusion.sampling
import comfy.samplers

from ..coefficients import Coefficients, dyweight_sample
from ..host.model_facts import bind_to_model, facts_from_sampler_model
from .constants import LOG, SAMPLER_NAME
from .folders import preset_registry


def preset_for_steps(facts, steps: int) -> Coefficients:
    """The registry's Φ for (family, prediction) with exactly ``steps`` steps; logs which one."""
    preset = preset_registry().find(facts.family, facts.prediction, nfe=steps, steps=steps)
    LOG.info("DyWeight: %s, %s, %d steps: using %s", facts.family, facts.prediction, steps, preset.label)
    return preset.coefficients


def without_afs_below_sigma_max(phi: Coefficients, sigmas, facts) -> Coefficients:
    """The analytical first step assumes pure noise at σ_max; part-way starts (img2img, denoise < 1)
    query the model instead (one more model call)."""
    if phi.afs and float(sigmas[0]) < (1 - 1e-3) * facts.sigma_max:
        LOG.info("DyWeight: starting below σ_max, the analytical first step becomes a model call")
        return dataclasses.replace(phi, afs=False)
    return phi


@torch.no_grad()
def sample_dyweight(model, x, sigmas, extra_args=None, callback=None, disable=None, coefficients=None):
    """Sample with Φ = ``coefficients``, or with the preset for this model and ``len(sigmas) − 1`` steps."""
    extra_args = {} if extra_args is None else extra_args
    facts = facts_from_sampler_model(model)
    phi = coefficients if coefficients is not None else preset_for_steps(facts, len(sigmas) - 1)
    phi = without_afs_below_sigma_max(bind_to_model(phi, facts), sigmas, facts)
    s_in = x.new_ones([x.shape[0]])

    def denoise(latent, sigma):
        return model(latent, sigma * s_in, **extra_args)

    with tqdm(total=phi.steps, disable=disable) as progress:
        def on_step(info):
            progress.update(1)
            if callback is not None:
                callback(info)

        return dyweight_sample(denoise, x, sigmas, phi, callback=on_step)


def register_sampler() -> None:
    """Add ``dyweight`` to the stock sampler dropdowns, in place and idempotently."""
    comfy.k_diffusion.sampling.sample_dyweight = sample_dyweight
    for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
        if SAMPLER_NAME not in names:
            names.append(SAMPLER_NAME)
