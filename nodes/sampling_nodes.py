"""KSampler (DyWeight), DyWeight Sampler and DyWeight Sigmas."""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..coefficients import Coefficients
from ..host.model_facts import bind_to_model, facts_from_patcher, runs_on
from .constants import CATEGORY, COEFFICIENTS, LOG, PHI_OUTPUT
from .folders import preset_registry
from .phi_json import phi_to_json
from .sampler import sample_dyweight
from .schedule import phi_sigmas

COEFFICIENTS_TOOLTIP = ("Optional DyWeight coefficients (Φ) from Load DyWeight Coefficients or the trainer; "
                        "when connected they replace the preset and their NFE replaces `steps`.")


OPTIONAL_COEFFICIENTS = {"coefficients": (COEFFICIENTS, {"tooltip": COEFFICIENTS_TOOLTIP})}


def denoise_input(tooltip: str) -> tuple:
    return ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": tooltip})


#: How the NFE dropdown marks the NFE values that a learned Φ exists for.
LEARNED_MARK = " (learned)"
#: denoise at or above this is text-to-image (the whole schedule).
FULL_DENOISE = 0.9999


def nfe_choices() -> list:
    """Every NFE some Φ exists for, marked where a learned one (yours, official or shipped DSS) does."""
    registry = preset_registry()
    learned = set(registry.learned_nfe())
    return [f"{nfe}{LEARNED_MARK if nfe in learned else ''}" for nfe in registry.available_nfe()]


def nfe_of(choice) -> int:
    """The NFE of a dropdown entry ("5", "5 (learned)"; workflows saved before the marks hold plain numbers)."""
    try:
        return int(str(choice).split()[0])
    except (ValueError, IndexError):
        raise ValueError(f"steps must be a number of model calls, got {choice!r}") from None


def steps_input() -> tuple:
    choices = nfe_choices()
    default = next((choice for choice in choices if nfe_of(choice) == 5), choices[0])
    return (choices, {"default": default, "tooltip": "Model calls (NFE). '(learned)' marks the NFE values a "
                                                     "learned solver exists for (yours, the paper's or the shipped "
                                                     "DSS tables, if it fits your model); others run Adams–Bashforth."})


def validate_steps(steps) -> bool | str:
    """VALIDATE_INPUTS for ``steps``: any entry whose leading number is a listed NFE, so a workflow saved
    with "5" still runs once NFE 5 is marked "(learned)"."""
    try:
        nfe = nfe_of(steps)
    except ValueError as error:
        return str(error)
    return True if nfe in preset_registry().available_nfe() else f"no coefficients for NFE {nfe}"


def coefficients_for(model, steps, coefficients: Coefficients | None, denoise: float = 1.0):
    """(model facts, the Φ bound to the model, what it is) — the connected Φ, or the preset for (family,
    prediction, NFE); for img2img (denoise < 1) a preset that can run part of its schedule."""
    facts = facts_from_patcher(model)
    nfe = nfe_of(steps)
    if coefficients is None:
        preset = preset_registry().find(facts.family, facts.prediction, nfe, fixed_grid=denoise >= FULL_DENOISE,
                                        runs=runs_on(facts))
        what = preset.describe()
        coefficients = preset.coefficients
    else:
        what = f"connected coefficients ({coefficients.solver}, NFE {coefficients.nfe})"
        if coefficients.nfe != nfe:
            LOG.info("DyWeight: connected coefficients have NFE %d; `steps` (%s) is ignored", coefficients.nfe, steps)
    LOG.info("DyWeight: %s, %s, NFE %s: using %s", facts.family, facts.prediction, nfe, what)
    phi = bind_to_model(coefficients, facts)
    LOG.info("DyWeight: %s runs %s", facts.family, phi.summary().replace("\n", "; "))  # names the schedule
    return facts, phi, what


def dyweight_sampler_object(coefficients: Coefficients | None):
    options = {} if coefficients is None else {"coefficients": coefficients}
    return comfy.samplers.KSAMPLER(sample_dyweight, extra_options=options)


def sample_custom(model, seed, cfg, positive, negative, latent, sampler, sigmas):
    """What the stock SamplerCustom node does with add_noise on (same noise per seed, preview, progress)."""
    latent_image = latent["samples"]
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=latent.get("noise_mask"),
        callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return out


class KSamplerDyWeight:
    DESCRIPTION = ("Samples with DyWeight, a learned multistep solver: good images in 3–10 model calls. "
                   "Picks the best coefficients known for the model (or uses the connected ones) and the "
                   "sigma schedule they were made for. denoise < 1 runs the last part of that schedule, as "
                   "the stock KSampler does.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "The random seed used for creating the noise."}),
                "steps": steps_input(),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale (coefficients are best at the CFG "
                                             "they were trained with)."}),
                "positive": ("CONDITIONING", {"tooltip": "What to include in the image."}),
                "negative": ("CONDITIONING", {"tooltip": "What to exclude from the image."}),
                "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
                "denoise": denoise_input("1.0 for text-to-image; lower keeps more of the input latent "
                                         "(the last part of the schedule is run)."),
            },
            "optional": OPTIONAL_COEFFICIENTS,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps):
        return validate_steps(steps)

    def sample(self, model, seed, steps, cfg, positive, negative, latent_image, denoise=1.0, coefficients=None):
        facts, phi, what = coefficients_for(model, steps, coefficients, denoise)
        sigmas = phi_sigmas(phi, facts, denoise)
        latent = sample_custom(model, seed, cfg, positive, negative, latent_image, dyweight_sampler_object(phi), sigmas)
        return {"ui": {PHI_OUTPUT: [phi_to_json(phi)], "text": [f"DyWeight ran {what}"]}, "result": (latent,)}


class DyWeightSampler:
    DESCRIPTION = ("The DyWeight sampler for SamplerCustom / SamplerCustomAdvanced. Without coefficients it "
                   "uses the preset for the model and the number of sigmas it is given.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("A SAMPLER running the DyWeight update rule.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": OPTIONAL_COEFFICIENTS}

    def get_sampler(self, coefficients=None):
        return (dyweight_sampler_object(coefficients),)


class DyWeightSigmas:
    DESCRIPTION = "The sigmas a DyWeight Φ was made for, evaluated on this model (shift patches apply)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("N+1 sigmas for N steps, for SamplerCustom with DyWeight Sampler.",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose noise schedule (model_sampling) is used."}),
                "steps": steps_input(),
                "denoise": denoise_input("Below 1.0, the last part of the schedule (img2img)."),
            },
            "optional": OPTIONAL_COEFFICIENTS,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps):
        return validate_steps(steps)

    def get_sigmas(self, model, steps, denoise=1.0, coefficients=None):
        facts, phi, _ = coefficients_for(model, steps, coefficients, denoise)
        return (phi_sigmas(phi, facts, denoise),)
