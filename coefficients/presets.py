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
    """Φ files in ``folders`` (user folders first) plus the shipped presets.

    Every file is read through :meth:`read`, which keeps each file's Φ (or its error) until the file's
    modification time or size changes, so a rewritten file is read again and a corrupt one is not
    re-parsed on every lookup.
    """

    MAX_CACHED = 512

    def __init__(self, folders: Iterable = (), include_shipped: bool = True):
        self.folders = [Path(folder) for folder in folders]
        if include_shipped:
            self.folders.append(SHIPPED_DIR)
        self._loaded: dict = {}  # path -> ((mtime_ns, size), Φ or None, CoefficientFileError or None)
        self._warned: dict = {}  # path -> the (mtime_ns, size) whose error was logged

    def files(self) -> list:
        """Every ``.safetensors`` under the folders, user folders first."""
        found = []
        for folder in self.folders:
            if folder.is_dir():
                found.extend(sorted(folder.rglob("*.safetensors")))
        return found

    def read(self, path) -> Coefficients:
        """The Φ in ``path``, read again only when the file changed; ``CoefficientFileError`` when unreadable."""
        _, phi, error = self._entry(Path(path))
        if error is not None:
            raise error
        return phi

    def presets(self) -> list:
        """Every readable Φ; an unreadable file is logged (once per change of the file) and skipped."""
        loaded = []
        for path in self.files():
            stamp, phi, error = self._entry(path)
            if phi is not None:
                loaded.append(Preset(path, phi))
            elif self._warned.get(path) != stamp:
                LOG.warning("DyWeight: skipping %s", error)
                self._warned[path] = stamp
        return loaded

    def _entry(self, path: Path) -> tuple:
        """``((mtime_ns, size), Φ or None, CoefficientFileError or None)`` for ``path``, cached while unchanged."""
        try:
            stat = path.stat()
        except OSError as error:
            return None, None, CoefficientFileError(path, "missing", f"cannot be read ({error.strerror or error})")
        stamp = (stat.st_mtime_ns, stat.st_size)
        entry = self._loaded.get(path)
        if entry is not None and entry[0] == stamp:
            return entry
        try:
            entry = (stamp, load_coefficients(path), None)
        except CoefficientFileError as error:
            entry = (stamp, None, error)
        except OSError as error:
            entry = (stamp, None, CoefficientFileError(path, "invalid", f"cannot be read ({error})"))
        if len(self._loaded) >= self.MAX_CACHED:
            self._loaded.clear()
            self._warned.clear()
        self._loaded[path] = entry
        return entry

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
