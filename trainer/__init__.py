"""Distillation of Φ from a many-step teacher (paper Algorithm 1)."""

from .distill import distill
from .pairs import PairSet
from .progress import TrainingInterrupted
from .result import DistillResult
from .teachers import TEACHERS, default_baselines, resolve_teacher

__all__ = ["distill", "DistillResult", "TrainingInterrupted", "PairSet", "TEACHERS", "default_baselines",
           "resolve_teacher"]
