"""The ``train`` command's model sources: the command-line options of each kind of model.

A :class:`SourceSpec` turns options into a :class:`~comfyui_dyweight.trainer.source.ModelSource` (or a
:class:`~comfyui_dyweight.trainer.source.DeferredSource` for a model that exists only inside ComfyUI's
sampling context).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Optional, Union

from ..trainer.source import DeferredSource, ModelSource, toy_gmm_source


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A kind of model source: its command-line options, whether they were given, and the builder
    (``ValueError`` for options that do not fit together)."""

    name: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    chosen: Callable[[argparse.Namespace], bool]
    build: Callable[[argparse.Namespace], Union[ModelSource, DeferredSource]]
    usage: Optional[str] = None  # how the command's errors name the source (default --<name>)


TOY = SourceSpec(
    name="toy",
    add_arguments=lambda group: group.add_argument(
        "--toy", choices=["gmm"], help="distil on a built-in toy model: 'gmm' = a seeded Gaussian mixture "
                                       "with an exact denoiser (no checkpoint needed)"),
    chosen=lambda arguments: arguments.toy is not None,
    build=lambda arguments: toy_gmm_source(),
)
