"""Model sources: what to distil, and what the Φ files should record.

A :class:`ModelSource` holds the denoiser, the noise, the base schedule, the cache key and the
:class:`Coefficients` fields of one model, so whoever trains (the command line, the Train node) knows
nothing of the model behind it. The toy source (a seeded Gaussian mixture with an exact denoiser) makes the command
runnable end to end without a checkpoint. A model that only exists inside a context — ComfyUI's guided
denoiser lives inside nested sampling calls — is a :class:`DeferredSource`: ``open(body)`` loads it and
runs ``body`` with the live :class:`ModelSource`. Both are used as ``source.open(body)``, and
:func:`distill_source` is the one place a live source's fields become :func:`distill` arguments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..coefficients import edm_sigmas
from .analytic import GaussianMixture
from .distill import distill
from .pairs import NoiseSource


@dataclasses.dataclass
class ModelSource:
    """Everything :func:`~comfyui_dyweight.trainer.distill` needs about a model.

    ``teacher``/``teacher_steps``/``baselines`` of ``None`` mean the command-line teacher and the built-in
    baselines; ``divisor`` is the model family's (``net_sigma`` for FLUX). For neural models
    ``checkpointing`` is on and ``micro_batch_size``/``sampling_batch_size`` are small, so training
    needs about one sampling call's memory at a small batch. ``default_out``/``default_cache_dir`` are
    the command's folders when none are given.
    """

    name: str
    denoise: Callable
    noise: NoiseSource
    schedule: Callable[[int], torch.Tensor]
    cache_key: Optional[dict]
    phi_fields: dict
    conditions: Optional[Sequence[int]] = None
    teacher: Union[str, Callable, None] = None
    baselines: Optional[dict] = None
    divisor: str = "sigma"
    checkpointing: bool = False
    micro_batch_size: Optional[int] = None
    sampling_batch_size: Optional[int] = None
    teacher_steps: Optional[int] = None
    default_out: Optional[Path] = None
    default_cache_dir: Optional[Path] = None

    def open(self, body: Callable[["ModelSource"], Any]) -> Any:
        """``body(self)``: this source is live already."""
        return body(self)


@dataclasses.dataclass
class DeferredSource:
    """A source whose model exists only inside ``open``: ``opener(body)`` loads the model and returns
    ``body(live ModelSource)``. What the command needs before loading is known up front: the name (for
    the file names and the overwrite check) and the default folders."""

    name: str
    opener: Callable[[Callable[[ModelSource], Any]], Any]
    default_out: Optional[Path] = None
    default_cache_dir: Optional[Path] = None

    def open(self, body: Callable[[ModelSource], Any]) -> Any:
        return self.opener(body)


def distill_source(source: ModelSource, nfe, **options):
    """:func:`~comfyui_dyweight.trainer.distill` on a live source: its fields (``None`` ones left to
    ``distill``'s defaults), then ``options`` (iterations, cache_dir, state_dir, …), which win."""
    fields = {"teacher": source.teacher, "teacher_steps": source.teacher_steps, "baselines": source.baselines,
              "conditions": source.conditions, "divisor": source.divisor, "checkpointing": source.checkpointing,
              "micro_batch_size": source.micro_batch_size, "sampling_batch_size": source.sampling_batch_size,
              "cache_key": source.cache_key, "phi_fields": source.phi_fields}
    fields = {key: value for key, value in fields.items() if value is not None}
    return distill(source.denoise, source.noise, source.schedule, nfe, **{**fields, **options})


#: The toy problem: a Gaussian mixture in VE (EDM) form on ComfyUI's ``karras`` grid.
TOY_MIXTURE = {"dim": 8, "components": 4, "std": 0.5, "seed": 0}
TOY_SIGMA_MIN, TOY_SIGMA_MAX, TOY_RHO = 0.002, 80.0, 7.0


def toy_schedule(steps: int) -> torch.Tensor:
    """Karras et al. ρ = 7 on [0.002, 80], then a final step to σ = 0 (ComfyUI's ``karras``)."""
    return edm_sigmas(steps, TOY_SIGMA_MIN, TOY_SIGMA_MAX, TOY_RHO, to_zero=True)


def toy_gmm_source() -> ModelSource:
    """The seeded Gaussian mixture with its exact denoiser; noise seed k gives one latent σ_max·ε."""
    mixture = GaussianMixture.seeded(**TOY_MIXTURE)

    def noise(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return TOY_SIGMA_MAX * torch.randn(1, mixture.dim, dtype=torch.float64, generator=generator)

    description = ", ".join(f"{key} {value}" for key, value in TOY_MIXTURE.items())
    return ModelSource(
        name="toy-gmm", denoise=mixture.denoise, noise=noise, schedule=toy_schedule,
        cache_key={"model": "toy-gmm", **TOY_MIXTURE},
        phi_fields={"schedule": {"kind": "edm", "rho": TOY_RHO, "to_zero": True},
                    "sigma_min": TOY_SIGMA_MIN, "sigma_max": TOY_SIGMA_MAX,
                    "training": {"base_model": f"toy Gaussian mixture ({description})"}})


