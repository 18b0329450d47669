"""Φ, the DyWeight coefficients: format, update rule, schedules, initialisers and presets.

This package needs only torch, safetensors and numpy — never ComfyUI.
"""

from .errors import CoefficientError, CoefficientFileError, SamplingError
from .initializers import adams_bashforth, euler, initial_coefficients, variable_step_adams_bashforth
from .phi import Coefficients
from .presets import Preset, PresetRegistry, adams_bashforth_preset
from .schedules import base_sigmas, edm_sigmas, flux_sigmas
from .update_rule import dyweight_sample, shifted_times

__all__ = [
    "Coefficients", "CoefficientError", "CoefficientFileError", "SamplingError",
    "dyweight_sample", "shifted_times",
    "adams_bashforth", "variable_step_adams_bashforth", "euler", "initial_coefficients",
    "edm_sigmas", "flux_sigmas", "base_sigmas",
    "Preset", "PresetRegistry", "adams_bashforth_preset",
]
