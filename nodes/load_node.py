"""Load DyWeight Coefficients: a Φ file from models/dyweight/ or the shipped presets."""

from __future__ import annotations

from ..coefficients import CoefficientFileError
from .constants import CATEGORY, COEFFICIENTS, PHI_OUTPUT
from .folders import coefficient_names, preset_registry, resolve_coefficient_name
from .phi_json import phi_to_json


class DyWeightLoadCoefficients:
    DESCRIPTION = ("Loads DyWeight coefficients (Φ) — trained for your model, imported from the paper, or a "
                   "shipped preset — and shows what they are (NFE, order, model family, training record).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (COEFFICIENTS,)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("Connect to KSampler (DyWeight), DyWeight Sampler or DyWeight Sigmas.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"coefficients": (coefficient_names(), {
            "tooltip": "A .safetensors file in models/dyweight/ (or extra_model_paths), or a shipped preset."})}}

    @classmethod
    def IS_CHANGED(cls, coefficients):
        try:
            stat = resolve_coefficient_name(coefficients).stat()
        except (ValueError, OSError):
            return float("nan")  # never cached: the error is reported when the node runs
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def load(self, coefficients):
        path = resolve_coefficient_name(coefficients)
        try:
            phi = preset_registry().read(path)
        except CoefficientFileError as error:
            raise ValueError(str(error)) from None
        return {"ui": {"text": [phi.summary()], PHI_OUTPUT: [phi_to_json(phi, coefficients)]}, "result": (phi,)}
