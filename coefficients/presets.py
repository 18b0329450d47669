"""The preset registry: find Φ by (model family, prediction type, NFE) among user and shipped files.

Lookup order, most specific first (the first that exists wins):

1. the user's own Φ for this model family (``models/dyweight/`` and any extra paths), then the user's
   model-agnostic Φ for this prediction type;
2. an imported official DyWeight Φ (arXiv 2603.11607, converted from the authors' release) for this family;
3. a shipped learned table: the DSS solvers searched by Differentiable Solver Search (arXiv 2505.21114,
   ``presets/dss/``, MIT): the rectified-flow table searched on SiT-XL/2 for flow models, as the release
   applies it to FLUX and SD3, and the DDPM table searched on DiT-XL/2 for ε-prediction models;
4. Adams–Bashforth (iPNDM, K = 4) on the default scheduler: the shipped files, else built on the fly.

A Φ whose prediction type differs from the model's never matches. :attr:`Preset.origin` says which of
these a Φ is, and :meth:`Preset.describe` names it for the node's output and the log.

Run ``python -m comfyui_dyweight.coefficients.presets`` to regenerate the shipped Adams–Bashforth files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import CoefficientFileError
from .initializers import adams_bashforth
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


#: The repository of the DyWeight paper's released coefficients (what an imported official Φ records).
OFFICIAL_RELEASE = "Westlake-AGI-Lab/DyWeight"
#: The shipped DSS tables (file-name stems up to the NFE) each prediction type gets (see the module docstring).
DSS_TABLE_FOR = {"flow": "dss-flow-sit-nfe", "eps": "dss-ddpm-dit-nfe"}
#: Schedules that fix the grid itself (it cannot be stretched for img2img).
FIXED_GRIDS = ("explicit", "ddpm_time")
#: Where a Φ comes from, most specific first: the order of the lookup.
ORIGINS = ("user", "official", "shipped DSS", "Adams–Bashforth")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A Φ the registry knows: where it lives and what it is."""

    path: Optional[Path]  # None for the built-in fallback
    coefficients: Coefficients

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"built-in Adams–Bashforth (NFE {self.coefficients.nfe})"

    @property
    def origin(self) -> str:
        """One of :data:`ORIGINS`."""
        phi = self.coefficients
        if self.path is None or (self.path.is_relative_to(SHIPPED_DIR) and phi.solver != "dss"):
            return "Adams–Bashforth"
        if self.path.is_relative_to(SHIPPED_DIR):
            return "shipped DSS"
        return "official" if str(phi.training.get("source", "")).startswith(OFFICIAL_RELEASE) else "user"

    @property
    def learned(self) -> bool:
        return self.origin != "Adams–Bashforth"

    def describe(self) -> str:
        """What ran, for the node's output and the log: name, family, where it comes from."""
        name = self.path.name if self.path else "built-in adams-bashforth"
        return f"{name} ({self.coefficients.solver}, {self.origin}, NFE {self.coefficients.nfe})"


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
            entry = (stamp, Coefficients.load(path), None)
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

    def learned_nfe(self, model_family: Optional[str] = None, prediction: Optional[str] = None) -> list:
        """The NFE values a learned Φ exists for (for this model, or for any model when not given)."""
        presets = self.presets() if prediction is None else self.candidates(model_family, prediction)
        return sorted({preset.coefficients.nfe for preset in presets if preset.learned})

    def candidates(self, model_family: Optional[str], prediction: Optional[str],
                   runs: Optional[Callable[[Coefficients], bool]] = None) -> list:
        """Every Φ that may run on this model, most specific first (the lookup order); ``runs`` is the
        host's check that a Φ fits the model (its σ range, σ_data, …)."""
        serving = [preset for preset in self.presets() if _serves(preset, model_family, prediction)
                   and (runs is None or runs(preset.coefficients))]
        return sorted(serving, key=lambda p: (ORIGINS.index(p.origin), p.coefficients.model_family is None,
                                              p.coefficients.prediction is None))

    def find(self, model_family: Optional[str], prediction: Optional[str], nfe: int,
             steps: Optional[int] = None, fixed_grid: bool = True,
             runs: Optional[Callable[[Coefficients], bool]] = None) -> Preset:
        """The best Φ for this model and NFE (see the module docstring for the order).

        ``steps`` additionally requires N = steps (the stock KSampler path, whose sigmas fix N);
        ``fixed_grid=False`` passes over Φ that only run on their own grid (img2img runs part of one).
        """
        for preset in self.candidates(model_family, prediction, runs):
            phi = preset.coefficients
            if phi.nfe == nfe and (steps is None or phi.steps == steps) and (
                    fixed_grid or phi.schedule["kind"] not in FIXED_GRIDS):
                return preset
        return Preset(None, adams_bashforth_preset(nfe, prediction))


def _serves(preset: Preset, model_family: Optional[str], prediction: Optional[str]) -> bool:
    """Whether ``preset`` may run on this model at all: its prediction type fits; a shipped DSS table only
    on the prediction type it was searched for; an official Φ only on its own family."""
    phi = preset.coefficients
    if phi.prediction is not None and phi.prediction != prediction:
        return False
    if preset.origin == "shipped DSS":
        return preset.path.stem.startswith(DSS_TABLE_FOR.get(prediction, "/"))
    if preset.origin == "official":
        return phi.model_family == model_family
    return phi.model_family in (None, model_family)


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
