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

from ..coefficients import Coefficients, adams_bashforth, dyweight_sample
from ..host.model_facts import bind_to_model, facts_from_sampler_model, runs_on
from .constants import LOG, SAMPLER_NAME
from .folders import preset_registry
from .schedule import phi_sigmas


def coefficients_for_sigmas(facts, sigmas: torch.Tensor) -> tuple:
    """``(Φ, the sigmas it runs on)`` for the stock sampler path, which hands over ``len(sigmas) − 1`` steps
    of some scheduler's schedule; logs which Φ runs and on what.

    A learned Φ runs only on the schedule it was learned for: handed a whole schedule (from σ_max to the
    end), it runs on its own grid instead; handed a slice (KSamplerAdvanced's start/end steps, the two
    experts of Wan 2.2, a refiner), it runs the rows of the learned Φ whose grid holds that slice, else
    Adams–Bashforth on the slice.
    """
    steps = len(sigmas) - 1
    registry = preset_registry()
    if _whole_schedule(sigmas, facts):
        preset = registry.find(facts.family, facts.prediction, nfe=steps, steps=steps, runs=runs_on(facts))
        sigmas_used = sigmas
        if preset.learned:
            sigmas_used = phi_sigmas(bind_to_model(preset.coefficients, facts), facts).to(sigmas)
            if not torch.allclose(sigmas_used, sigmas, rtol=1e-4, atol=1e-6):
                LOG.info("DyWeight: %s runs on its own learned schedule instead of the scheduler's %d steps",
                         preset.describe(), steps)
        LOG.info("DyWeight: %s, %s, %d steps: using %s", facts.family, facts.prediction, steps, preset.describe())
        return preset.coefficients, sigmas_used
    for candidate in registry.candidates(facts.family, facts.prediction, runs_on(facts)):
        if candidate.learned and candidate.coefficients.steps >= steps:  # its whole grid holds itself too
            own = phi_sigmas(bind_to_model(candidate.coefficients, facts), facts).to(sigmas)
            start = _slice_start(own, sigmas)
            if start is not None:
                LOG.info("DyWeight: steps %d–%d of %s (a slice of the schedule it was learned for)",
                         start, start + steps - 1, candidate.describe())
                return candidate.coefficients.steps_slice(start, start + steps), sigmas
    LOG.info("DyWeight: %s, %s, %d steps: Adams–Bashforth (a slice of a schedule no learned Φ was made for)",
             facts.family, facts.prediction, steps)
    return adams_bashforth(steps, 4, final_denoise=float(sigmas[-1]) == 0.0,
                           prediction="flow" if facts.prediction == "flow" else None), sigmas


def _whole_schedule(sigmas: torch.Tensor, facts) -> bool:
    """From the model's σ_max down to its σ_min or 0 (not a slice of a schedule)."""
    return _starts_at_sigma_max(sigmas, facts) and float(sigmas[-1]) <= facts.sigma_min * (1 + 1e-3)


def _starts_at_sigma_max(sigmas: torch.Tensor, facts) -> bool:
    return abs(float(sigmas[0]) - facts.sigma_max) <= 1e-3 * facts.sigma_max


def _slice_start(grid: torch.Tensor, sigmas: torch.Tensor):
    """The index at which ``sigmas`` lie in ``grid`` as a contiguous run, or ``None``."""
    for start in range(len(grid) - len(sigmas) + 1):
        if torch.allclose(grid[start:start + len(sigmas)], sigmas, rtol=1e-4, atol=1e-6):
            return start
    return None


def without_afs_below_sigma_max(phi: Coefficients, sigmas, facts) -> Coefficients:
    """The analytical first step assumes pure noise at σ_max; part-way starts (img2img, denoise < 1)
    query the model instead (one more model call)."""
    if phi.afs and float(sigmas[0]) < (1 - 1e-3) * facts.sigma_max:
        LOG.info("DyWeight: starting below σ_max, the analytical first step becomes a model call")
        return dataclasses.replace(phi, afs=False)
    return phi


def warn_outside_cfg_range(phi: Coefficients, model, extra_args: dict) -> None:
    """A Φ trained for a CFG range (``cfg`` range record) warns when sampled at a CFG outside it.

    The CFG is the guider's (current hosts) or the ``cond_scale`` sampling argument (2024 hosts).
    """
    trained = phi.cfg
    if not isinstance(trained, dict) or trained["kind"] != "cfg":
        return
    cfg = getattr(getattr(model, "inner_model", None), "cfg", extra_args.get("cond_scale"))
    if isinstance(cfg, (int, float)) and not trained["min"] - 1e-6 <= cfg <= trained["max"] + 1e-6:
        LOG.warning("DyWeight: sampling at CFG %g, outside the range %g–%g this Φ was trained for; expect a "
                    "larger error (train for this CFG, or a range that holds it)", cfg, trained["min"], trained["max"])


@torch.no_grad()
def sample_dyweight(model, x, sigmas, extra_args=None, callback=None, disable=None, coefficients=None):
    """Sample with Φ = ``coefficients``, or with the preset for this model and ``len(sigmas) − 1`` steps."""
    extra_args = {} if extra_args is None else extra_args
    facts = facts_from_sampler_model(model)
    if coefficients is None:
        coefficients, sigmas = coefficients_for_sigmas(facts, sigmas)
    phi = without_afs_below_sigma_max(bind_to_model(coefficients, facts), sigmas, facts)
    warn_outside_cfg_range(phi, model, extra_args)
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
