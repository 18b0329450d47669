"""Distillation of Φ from a many-step teacher (paper Algorithm 1) over any denoiser — no ComfyUI here."""

from .config import DistillConfig
from .distill import distill, teacher_pairs_for
from .pairs import PairSet
from .progress import TrainingInterrupted
from .result import DistillResult
from .source import ModelSource
from .teachers import TEACHERS, default_baselines, resolve_teacher

__all__ = ["distill", "teacher_pairs_for", "DistillConfig", "ModelSource", "DistillResult", "TrainingInterrupted", "PairSet", "TEACHERS",
           "default_baselines", "resolve_teacher"]
