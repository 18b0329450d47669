"""Model sources for the ``train`` command: what to distil, and what the Φ files should record.

A source turns command-line options into a :class:`ModelSource` — the denoiser, the noise, the base
schedule, the cache key and the :class:`Coefficients` fields — so the command itself knows nothing of
the model behind it. The toy source (a seeded Gaussian mixture with an exact denoiser) makes the command
runnable end to end without a checkpoint; the ComfyUI source plugs in the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Optional, Sequence, Union

import torch

from ..coefficients import edm_sigmas
from .analytic import GaussianMixture
from .pairs import NoiseSource


@dataclasses.dataclass
class ModelSource:
    """Everything :func:`~comfyui_dyweight.trainer.distill` needs about a model.

    ``teacher``/``baselines`` of ``None`` mean the command-line teacher and the built-in baselines;
    ``divisor`` is the model family's (``net_sigma`` for FLUX); ``checkpointing`` is on for neural models.
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


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A kind of model source: its command-line options, whether they were given, and the builder."""

    name: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    chosen: Callable[[argparse.Namespace], bool]
    build: Callable[[argparse.Namespace], ModelSource]


#: The toy problem: a Gaussian mixture in VE (EDM) form on ComfyUI's ``karras`` grid.
TOY_MIXTURE = {"dim": 8, "components": 4, "std": 0.5, "seed": 0}
TOY_SIGMA_MIN, TOY_SIGMA_MAX, TOY_RHO = 0.002, 80.0, 7.0


def toy_schedule(steps: int) -> torch.Tensor:
    """Karras et al. ρ = 7 on [0.002, 80], then a final step to σ = 0 (ComfyUI's ``karras``)."""
    return edm_sigmas(steps, TOY_SIGMA_MIN, TOY_SIGMA_MAX, TOY_RHO, to_zero=True)


def toy_gmm_source(arguments: argparse.Namespace) -> ModelSource:
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


TOY = SourceSpec(
    name="toy",
    add_arguments=lambda group: group.add_argument(
        "--toy", choices=["gmm"], help="distil on a built-in toy model: 'gmm' = a seeded Gaussian mixture "
                                       "with an exact denoiser (no checkpoint needed)"),
    chosen=lambda arguments: arguments.toy is not None,
    build=toy_gmm_source,
)
