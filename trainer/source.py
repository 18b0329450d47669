"""Model sources: what to distil, and what the Φ files should record.

A :class:`ModelSource` holds the denoiser, the noise, the base schedule, the cache key and the
:class:`Coefficients` fields of one model, so whoever trains (the command line, the Train node) knows
nothing of the model behind it. The toy source (a seeded Gaussian mixture with an exact denoiser) makes
the command runnable end to end without a checkpoint. A model that only exists inside a context — ComfyUI's guided
denoiser lives inside a sampling call — is a :class:`DeferredSource`: ``open(body)`` loads it and runs
``body`` with the live :class:`ModelSource`. Both are used as ``source.open(body)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..coefficients import edm_sigmas
from .analytic import GaussianMixture
from .config import DistillConfig
from .pairs import NoiseSource


@dataclasses.dataclass
class ModelSource:
    """Everything :func:`~comfyui_dyweight.trainer.distill` needs to know about a model.

    Attributes:
        denoise: ``denoise(x, sigma) -> x0`` for a batch and a 0-d ``sigma`` (CFG applied); with
            ``conditions``, ``denoise(x, sigma, condition=labels)`` with the batch's labels [B].
        noise: the initial latents at σ_max (already scaled): a tensor [P, …], or a callable
            ``noise(seed) -> tensor [B, …]`` called with seeds 0, 1, 2, … until enough are drawn.
        schedule: ``schedule(n)`` → the n+1 decreasing base sigmas of an n-step grid; every grid must
            start at the same σ_max.
        name: the stem of the files written for it.
        cache_key: what identifies the teacher pairs (JSON-able: model identity, patches, prompts, size,
            CFG, …); without it the pairs are not cached across runs.
        phi_fields: further :class:`Coefficients` fields of the result (``schedule``, ``prediction``,
            ``model_family``, ``sigma_min``, ``sigma_max``, ``cfg``; a ``training`` dict is merged into
            the record). Default schedule: ``{"kind": "explicit"}``; ``sigmas`` is always the grid.
        conditions: one integer label per pair (e.g. a prompt index), passed to ``denoise``.
        guidance: ``(low, high)``: each pair draws its guidance (CFG, or FLUX guidance) uniformly from
            this range and ``denoise`` gets it as ``guidance=values`` [B]; the report evaluates the Φ at
            both ends and the middle (see :mod:`.guidance`). Part of the pairs' cache key.
        teachers: ``teachers(name) -> solver`` for this model's teacher names (ComfyUI's samplers);
            default: the trainer's built-in solvers.
        baselines: name → ``(denoise, x, nfe) -> x0`` for the validation table; default Euler, iPNDM
            and DPM-Solver++(2M) on ``schedule(nfe)``; ``{}`` for none.
        defaults: the :class:`DistillConfig` settings that suit this model (e.g. checkpointing, small
            micro-batches and the ``net_sigma`` divisor for a large flow model); see :meth:`config`.
        default_out, default_cache_dir: where a command writes when it is told nowhere else.
    """

    denoise: Callable
    noise: NoiseSource
    schedule: Callable[[int], torch.Tensor]
    name: str = "model"
    cache_key: Optional[dict] = None
    phi_fields: dict = dataclasses.field(default_factory=dict)
    conditions: Optional[Sequence[int]] = None
    guidance: Optional[tuple] = None
    teachers: Optional[Callable[[str], Callable]] = None
    baselines: Optional[dict] = None
    defaults: dict = dataclasses.field(default_factory=dict)
    default_out: Optional[Path] = None
    default_cache_dir: Optional[Path] = None

    def config(self, **given) -> DistillConfig:
        """The run's settings: this model's :attr:`defaults`, then ``given`` (``None`` = not given)."""
        return DistillConfig(**self.defaults).with_given(**given)

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
        mixture.denoise, noise, toy_schedule, name="toy-gmm",
        cache_key={"model": "toy-gmm", **TOY_MIXTURE},
        phi_fields={"schedule": {"kind": "edm", "rho": TOY_RHO, "to_zero": True},
                    "sigma_min": TOY_SIGMA_MIN, "sigma_max": TOY_SIGMA_MAX,
                    "training": {"base_model": f"toy Gaussian mixture ({description})"}})


