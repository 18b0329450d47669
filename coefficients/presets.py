"""The preset registry: find Φ by (model family, prediction type, NFE) among shipped and user files.

Lookup order (first match wins):

1. the user's folders (``models/dyweight/`` and any extra paths), then the shipped ``presets/`` folder;
2. within each, a Φ made for this exact family and prediction, then one for this prediction and any
   family, then a model-agnostic one (``prediction`` and ``model_family`` both unset);
3. if nothing matches, Adams–Bashforth (iPNDM, K=4) built on the fly — the documented fallback, which
   is what the shipped Adams–Bashforth presets hold as well.

A Φ whose prediction type differs from the model's never matches. The shipped DSS solvers
(``presets/dss/``, arXiv 2505.21114) are offered by name (Load DyWeight Coefficients) but not picked by
this lookup: for a model without its own Φ, Adams–Bashforth stays the default. A DSS file in the user's
folders is picked like any other Φ.

Run ``python -m comfyui_dyweight.coefficients.presets`` to regenerate the shipped Adams–Bashforth files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Optional

from .errors import CoefficientFileError
from .initializers import adams_bashforth
from .io import load_coefficients
from .phi import Coefficients

LOG = logging.getLogger(__name__)
SHIPPED_DIR = Path(__file__).resolve().parent / "presets"
SHIPPED_NFE = range(3, 11)


def default_scheduler(prediction: Optional[str]) -> str:
    """The ComfyUI scheduler the Adams–Bashforth presets use: ``simple`` for flow models, else ``karras``."""
    return "simple" if prediction == "flow" else "karras"


def adams_bashforth_preset(nfe: int, prediction: Optional[str] = None) -> Coefficients:
    """The fallback Φ: iPNDM rows (K=4), last step Euler to σ = 0, on the default scheduler."""
    return adams_bashforth(
        nfe, 4, prediction="flow" if prediction == "flow" else None,
        schedule={"kind": "comfy", "scheduler": default_scheduler(prediction)},
        training={"initialiser": "adams_bashforth(order=4)", "note": "untrained fallback (iPNDM)"})


@dataclasses.dataclass(frozen=True)
class Preset:
    """A Φ the registry knows: where it lives and what it is."""

    path: Optional[Path]  # None for the built-in fallback
    coefficients: Coefficients

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"built-in Adams–Bashforth (NFE {self.coefficients.nfe})"


class PresetRegistry:
    """Φ files in ``folders`` (user folders first) plus the shipped presets, cached by modification time."""

    def __init__(self, folders: Iterable = (), include_shipped: bool = True):
        self.folders = [Path(folder) for folder in folders]
        if include_shipped:
            self.folders.append(SHIPPED_DIR)
        self._cache: dict = {}

    def files(self) -> list:
        """Every ``.safetensors`` under the folders, user folders first."""
        found = []
        for folder in self.folders:
            if folder.is_dir():
                found.extend(sorted(folder.rglob("*.safetensors")))
        return found

    def presets(self) -> list:
        """Every readable Φ; unreadable files are logged and skipped."""
        loaded = []
        for path in self.files():
            stamp = path.stat().st_mtime_ns
            cached = self._cache.get(path)
            if cached is None or cached[0] != stamp:
                try:
                    cached = (stamp, load_coefficients(path))
                except CoefficientFileError as error:
                    LOG.warning("DyWeight: skipping %s", error)
                    cached = (stamp, None)
                self._cache[path] = cached
            if cached[1] is not None:
                loaded.append(Preset(path, cached[1]))
        return loaded

    def available_nfe(self) -> list:
        """The NFE values some Φ exists for (the KSampler (DyWeight) dropdown)."""
        return sorted({preset.coefficients.nfe for preset in self.presets()} | set(SHIPPED_NFE))

    def find(self, model_family: Optional[str], prediction: Optional[str], nfe: int,
             steps: Optional[int] = None) -> Preset:
        """The best Φ for this model and NFE, or the Adams–Bashforth fallback (see module docstring).

        ``steps`` additionally requires N = steps (the stock KSampler path, whose sigmas fix N).
        """
        candidates = [p for p in self.presets()
                      if p.coefficients.nfe == nfe and (steps is None or p.coefficients.steps == steps)
                      and not _shipped_dss(p)]
        for wanted in ((model_family, prediction), (None, prediction), (None, None)):
            for preset in candidates:
                if (preset.coefficients.model_family, preset.coefficients.prediction) == wanted:
                    return preset
        return Preset(None, adams_bashforth_preset(nfe, prediction))


def _shipped_dss(preset: Preset) -> bool:
    return preset.coefficients.solver == "dss" and preset.path.is_relative_to(SHIPPED_DIR)


def write_shipped_presets(folder: Path = SHIPPED_DIR) -> list:
    """(Re)write the shipped Adams–Bashforth presets: eps/v (``karras``) and flow (``simple``), NFE 3–10."""
    written = []
    for prediction, prefix in ((None, "ab"), ("flow", "ab-flow")):
        for nfe in SHIPPED_NFE:
            path = Path(folder) / "adams_bashforth" / f"{prefix}-nfe{nfe}.safetensors"
            adams_bashforth_preset(nfe, prediction).save(path)
            written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_shipped_presets():
        print(written_path)
