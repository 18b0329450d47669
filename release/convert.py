"""Convert the coefficients published with the DyWeight paper into ``dyweight/1`` files (see ``coefficients/io.py``).

The release (GitHub ``Westlake-AGI-Lab/DyWeight``) ships two kinds of files:

* ``exps/<run>/network-snapshot-*.pkl`` — pixel-space EDM models, the LSUN-Bedroom LDM and Stable Diffusion
  1.5 (``ms_coco``). A pickle of ``{"predictor": DyWeight_predictor, "loss_fn": DyWeight_loss}`` written
  with EDM's ``torch_utils.persistence``. The predictor holds ``hybrid_weights`` [N, N] (row n = step n,
  columns = gradients oldest → newest), the ``mask`` of the history window (``max_history_steps``),
  ``t_scale`` (N − 1 entries with the analytical first step, else N), ``num_steps`` (N + 1 grid points) and
  ``afs``; the loss object holds the schedule (``schedule_type``, ``schedule_rho``, ``sigma_min``,
  ``sigma_max`` and, once trained, ``t_steps``), the teacher (``solver_tea``, ``teacher_steps``), the loss
  type and the data set. The release's sampler (``solvers.dyweight_sampler``) uses the masked weights and
  queries the model at ``t_scale[n − afs] · t̃_n``; sampling (``sample.py``) takes σ_min/σ_max from the
  model, so the LDM tables are rebuilt on the model's own σ range.
* ``dyweight_flux/checkpoints/*.pt`` — FLUX.1-dev. A ``torch.save`` dict with ``window_size``,
  ``dyweight_weights_raw`` [N, N] (row i holds the weights of velocities ``start … i`` at columns
  ``start … i``, ``start = max(0, i − window_size + 1)``, zero elsewhere — the same oldest → newest layout)
  and ``dyweight_t_scales`` [N] (already ``low + (high − low)·sigmoid(φ)``). Its pipeline queries the
  transformer at ``t_scales[i] · t̃_i`` and steps with the raw velocity, i.e. ``divisor = "net_sigma"``.

Both become our compact form ``compact[n, k] = full[n, n − k]`` (column 0 = newest). Nothing from the
files is ever executed: see :mod:`.safe_unpickle`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..coefficients import Coefficients
from ..coefficients.errors import CoefficientError
from ..coefficients.presets import OFFICIAL_RELEASE
from ..coefficients.schedules import flux_sigmas
from ..version import __version__
from .safe_unpickle import ExternalReference, PersistentRecord, load_release_object

__all__ = ["ReleaseImportError", "import_release_file", "import_release_files", "release_sources", "file_sha256",
           "output_name", "flux_resolution_mu", "release_schedule", "DEFAULT_FLUX_RESOLUTION"]

RELEASE = OFFICIAL_RELEASE
F64 = torch.float64

#: FLUX.1-dev's scheduler config (base/max image sequence length and shift): μ = 0.63 at 512², 1.15 at 1024².
FLUX_SHIFT = {"base_seq_len": 256, "max_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
#: The released FLUX checkpoints were trained at 512×512 (the release's dyweight_flux/train_example.yaml).
DEFAULT_FLUX_RESOLUTION = (512, 512)
FLUX_GUIDANCE = 3.5
FLUX_TRAINING = {  # not stored in the .pt files; the release's documented settings
    "teacher": "euler", "teacher_steps": 28, "dataset": "MS-COCO train2014 captions (5k prompts)", "loss": "mse",
    "note": "teacher, steps, data set and loss are not stored in FLUX checkpoints; they are the release's "
            "training settings (dyweight_flux/train_example.yaml)",
}


class ReleaseImportError(ValueError):
    """A release file that cannot be converted; the message names the file and the problem."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        super().__init__(f"'{self.source}': {problem}")


# --- the models behind the release's tables -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VPModel:
    """A discrete-time VP model (LDM's "linear" betas: sqrt-spaced, ``steps`` of them), as the release wraps it.

    ``sigma(t)``/``sigma_inv(σ)`` interpolate log α linearly between the discrete steps at t = (i+1)/steps
    (DPM-Solver's discrete schedule), extrapolating linearly beyond them like the release's
    ``interpolate_fn``. The model's σ range is [σ(epsilon_t), σ(1)].
    """

    beta_start: float
    beta_end: float
    steps: int = 1000
    epsilon_t: float = 1e-3

    def _tables(self):
        betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.steps, dtype=np.float64) ** 2
        log_alpha = 0.5 * np.log(np.cumprod(1.0 - betas))
        times = np.linspace(0.0, 1.0, self.steps + 1)[1:]
        return times, log_alpha

    def sigma(self, t) -> np.ndarray:
        times, log_alpha = self._tables()
        value = _interpolate(np.asarray(t, dtype=np.float64), times, log_alpha)
        return np.sqrt(np.exp(-2.0 * value) - 1.0)

    def sigma_inv(self, sigma) -> np.ndarray:
        times, log_alpha = self._tables()
        value = -0.5 * np.log1p(np.asarray(sigma, dtype=np.float64) ** 2)
        return _interpolate(value, log_alpha[::-1], times[::-1])

    @property
    def sigma_range(self) -> tuple:
        return float(self.sigma(self.epsilon_t)), float(self.sigma(1.0))


def _interpolate(x: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """Piecewise-linear y(x) through increasing ``xp``, extended linearly beyond both ends."""
    index = np.clip(np.searchsorted(xp, x) - 1, 0, len(xp) - 2)
    x0, x1, y0, y1 = xp[index], xp[index + 1], yp[index], yp[index + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


@dataclasses.dataclass(frozen=True)
class ReleaseModel:
    family: Optional[str]   # ComfyUI model config class, or a name no ComfyUI model has (never auto-selected)
    base_model: str
    vp: Optional[VPModel] = None  # latent models: σ range and discrete schedule come from the model


#: ``model_family`` for the release's pixel-space EDM models: no ComfyUI model config has this name, so the
#: preset registry never picks these tables for a ComfyUI model on its own; load them explicitly.
PIXEL_FAMILY = "pixel"
RELEASE_MODELS = {
    "cifar10": ReleaseModel(PIXEL_FAMILY, "EDM CIFAR-10 32x32 (pixel space)"),
    "ffhq": ReleaseModel(PIXEL_FAMILY, "EDM FFHQ 64x64 (pixel space)"),
    "afhqv2": ReleaseModel(PIXEL_FAMILY, "EDM AFHQv2 64x64 (pixel space)"),
    "imagenet64": ReleaseModel(PIXEL_FAMILY, "EDM ImageNet 64x64 (pixel space)"),
    "lsun_bedroom_ldm": ReleaseModel("LDM-LSUN-Bedroom", "LDM LSUN-Bedroom 256x256 (VQ-f4)",
                                     VPModel(0.0015, 0.0195)),
    "ms_coco": ReleaseModel("SD15", "Stable Diffusion 1.5", VPModel(0.00085, 0.012)),
}


# --- schedules ------------------------------------------------------------------------------------------

def release_schedule(points: int, schedule_type: str, rho: float, sigma_min: float, sigma_max: float,
                     vp: Optional[VPModel] = None) -> torch.Tensor:
    """The release's ``solver_utils.get_schedule``: ``points`` σ values from σ_max down to σ_min (float64)."""
    if points < 2:
        raise ValueError(f"a schedule needs at least 2 points, got {points}")
    ramp = np.arange(points, dtype=np.float64) / (points - 1)
    if schedule_type == "polynomial":
        hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    elif schedule_type == "logsnr":
        sigmas = np.exp(-np.linspace(-math.log(sigma_max), -math.log(sigma_min), points))
    elif schedule_type == "time_uniform":
        epsilon = 1e-3
        beta_d = 2 * (math.log(sigma_min ** 2 + 1) / epsilon - math.log(sigma_max ** 2 + 1)) / (epsilon - 1)
        beta_min = math.log(sigma_max ** 2 + 1) - 0.5 * beta_d
        times = (1 + ramp * (epsilon ** (1 / rho) - 1)) ** rho
        sigmas = np.sqrt(np.exp(0.5 * beta_d * times ** 2 + beta_min * times) - 1)
    elif schedule_type == "discrete":
        if vp is None:
            raise ValueError("a 'discrete' schedule needs the model's noise schedule")
        t_max, t_min = float(vp.sigma_inv(sigma_max)), float(vp.sigma_inv(sigma_min))
        sigmas = vp.sigma((t_max + ramp * (t_min ** (1 / rho) - t_max)) ** rho)
    else:
        raise ValueError(f"unknown schedule type {schedule_type!r}")
    return torch.tensor(sigmas, dtype=F64)


def flux_resolution_mu(width: int, height: int) -> float:
    """FLUX.1-dev's resolution shift μ for an image of ``width`` × ``height`` pixels (16 px per token)."""
    tokens = (int(width) // 16) * (int(height) // 16)
    slope = (FLUX_SHIFT["max_shift"] - FLUX_SHIFT["base_shift"]) / (FLUX_SHIFT["max_seq_len"] - FLUX_SHIFT["base_seq_len"])
    return round(FLUX_SHIFT["base_shift"] + slope * (tokens - FLUX_SHIFT["base_seq_len"]), 6)


# --- helpers --------------------------------------------------------------------------------------------

def _compact(full: torch.Tensor, window: int, source) -> torch.Tensor:
    """``compact[n, k] = full[n, n − k]`` for k < K, K = the history window (widened if a weight lies outside)."""
    steps = full.shape[0]
    needed = 1
    for n in range(steps):
        nonzero = (full[n, :n + 1] != 0).nonzero()
        if nonzero.numel():
            needed = max(needed, n - int(nonzero[0]) + 1)
    if (full.triu(1) != 0).any():
        raise ReleaseImportError(source, "the weight matrix has weights for gradients that do not exist yet "
                                         "(above the diagonal); the file is not a DyWeight table")
    order = max(min(int(window), steps), needed)
    compact = torch.zeros(steps, order, dtype=F64)
    for n in range(steps):
        for k in range(min(n + 1, order)):
            compact[n, k] = full[n, n - k]
    return compact


def _tensor(value, source, what: str, ndim: int) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(value)
        except (TypeError, ValueError):  # dtypes torch has no tensor type for (long double, strings, records)
            raise ReleaseImportError(source, f"'{what}' is a numpy array of type {value.dtype}, not a float array")\
                from None
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.is_floating_point():
        raise ReleaseImportError(source, f"'{what}' must be a {ndim}-D floating-point tensor, found "
                                         f"{type(value).__name__}{tuple(getattr(value, 'shape', ()))}")
    value = value.detach().to("cpu", F64)
    if not torch.isfinite(value).all():
        raise ReleaseImportError(source, f"'{what}' holds NaN or Inf")
    return value


def _scalar(value, default=None):
    """A stored int or float (tensor and numpy scalars unwrapped), else ``default``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return value


def _finite(value) -> Optional[float]:
    """A finite float from a Python/numpy number or a one-element tensor; ``None`` for anything else."""
    number = _scalar(value)
    try:
        number = None if number is None else float(number)
    except OverflowError:  # an integer beyond float range
        return None
    return number if number is not None and math.isfinite(number) else None


def _positive(value, default: float, source, what: str) -> float:
    """A field that must be a positive finite number when present (``default`` when absent)."""
    if value is None:
        return default
    number = _finite(value)
    if number is None or number <= 0:
        raise ReleaseImportError(source, f"'{what}' must be a positive number, found {_describe(value)}")
    return number


def _count(value, default: int, minimum: int, source, what: str) -> int:
    """A whole-number field ≥ ``minimum`` (``default`` when absent)."""
    if value is None:
        return default
    number = _finite(value)
    if number is None or number != int(number) or number < minimum:
        raise ReleaseImportError(source, f"'{what}' must be a whole number ≥ {minimum}, found {_describe(value)}")
    return int(number)


def _flag(value, source, what: str) -> bool:
    """A true/false field: a bool, a number or a one-element tensor/array (as the release pickles them)."""
    if value is None:
        return False
    if isinstance(value, (torch.Tensor, np.ndarray)) and math.prod(value.shape) == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    number = _finite(value)
    if number is None:
        raise ReleaseImportError(source, f"'{what}' must be true or false, found {_describe(value)}")
    return bool(number)


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}{tuple(shape)}" if shape is not None else repr(value)[:60]


def _string(value) -> Optional[str]:
    """A stored string, else ``None``."""
    return value if isinstance(value, str) else None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), as recorded in ``training.source_sha256``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _provenance(path: Path, sha256: str) -> dict:
    return {
        "source": f"{RELEASE} (released coefficients, imported)",
        "source_file": _source_label(path),
        "source_sha256": sha256,
        "imported_with": f"ComfyUI-DyWeight {__version__}",
        "date": datetime.date.today().isoformat(),
    }


# --- EDM / LDM / SD1.5 pickles --------------------------------------------------------------------------

def _record(value, source, what: str) -> dict:
    if isinstance(value, PersistentRecord):
        return value.state
    if isinstance(value, dict):
        return value
    raise ReleaseImportError(source, f"'{what}' is missing or is not an object the release writes")


def _teacher_name(loss: dict) -> Optional[str]:
    kwargs = loss.get("_init_kwargs") if isinstance(loss.get("_init_kwargs"), dict) else {}
    if isinstance(kwargs.get("sampler_tea"), str):
        return kwargs["sampler_tea"]
    solver = loss.get("solver_tea")
    if isinstance(solver, ExternalReference):
        return solver.name[:-len("_sampler")] if solver.name.endswith("_sampler") else solver.name
    return None


def _convert_snapshot(data, path: Path, sha256: str) -> Coefficients:
    predictor = _record(data.get("predictor"), path, "predictor")
    loss = _record(data.get("loss_fn"), path, "loss_fn") if data.get("loss_fn") is not None else {}
    parameters = predictor.get("_parameters") if isinstance(predictor.get("_parameters"), dict) else {}
    buffers = predictor.get("_buffers") if isinstance(predictor.get("_buffers"), dict) else {}
    if "hybrid_weights" not in parameters:
        raise ReleaseImportError(path, "the predictor has no 'hybrid_weights': this is not a DyWeight predictor")
    hybrid = _tensor(parameters["hybrid_weights"], path, "hybrid_weights", 2)
    steps = hybrid.shape[0]
    if hybrid.shape != (steps, steps) or steps < 1:
        raise ReleaseImportError(path, f"'hybrid_weights' must be square, is {tuple(hybrid.shape)}")
    num_steps = _scalar(predictor.get("num_steps"), steps + 1)
    if num_steps != steps + 1:
        raise ReleaseImportError(path, f"num_steps = {num_steps} does not fit a {steps}x{steps} weight matrix")
    window = _count(predictor.get("max_history_steps"), steps, 1, path, "max_history_steps")
    if buffers.get("mask") is not None:
        mask = _tensor(buffers["mask"], path, "mask", 2)
        if mask.shape != hybrid.shape:
            raise ReleaseImportError(path, "the history mask does not match the weight matrix")
    else:
        offsets = torch.arange(steps)[:, None] - torch.arange(steps)[None, :]
        mask = ((offsets >= 0) & (offsets < window)).to(F64)
    weights = _compact(hybrid * mask, window, path)  # the release samples with the masked weights

    afs = _flag(predictor.get("afs", loss.get("afs", False)), path, "afs")
    scale = parameters.get("t_scale", predictor.get("t_scale"))
    expected = steps - int(afs)
    if scale is None:
        scale = torch.ones(expected, dtype=F64)
    scale = _tensor(scale, path, "t_scale", 1)
    if scale.numel() != expected:
        raise ReleaseImportError(path, f"t_scale has {scale.numel()} entries; {steps} steps"
                                       f"{' with the analytical first step' if afs else ''} need {expected}")
    scale = scale.abs()  # the release queries the model at |t_scale · t̃|
    time_scale = torch.cat([torch.ones(1, dtype=F64), scale]) if afs else scale  # s_0 is unused with AFS

    dataset = _string(loss.get("dataset_name")) or _string(predictor.get("dataset_name"))
    model = RELEASE_MODELS.get(dataset, ReleaseModel(None, dataset or "unknown model"))
    schedule_type = _string(loss.get("schedule_type")) or "polynomial"
    rho = _positive(loss.get("schedule_rho"), 7.0, path, "schedule_rho")
    stored_min, stored_max = _scalar(loss.get("sigma_min")), _scalar(loss.get("sigma_max"))
    sigmas = _release_sigmas(loss, path, steps + 1, schedule_type, rho, stored_min, stored_max, model)

    guidance_type = _string(predictor.get("guidance_type"))
    guidance_rate = _finite(predictor.get("guidance_rate"))
    training = {
        **_provenance(path, sha256),
        "teacher": _teacher_name(loss),
        "teacher_steps": _scalar(loss.get("teacher_steps")),
        "dataset": dataset,
        "loss": _string(loss.get("loss_type")),
        "base_model": model.base_model,
        "release_num_steps": int(num_steps),
        "release_history": window,
        "release_schedule": {"type": schedule_type, "rho": rho, "sigma_min": stored_min, "sigma_max": stored_max,
                             "t_steps_stored": isinstance(loss.get("t_steps"), torch.Tensor)},
        "guidance_type": guidance_type,
        "guidance_rate": guidance_rate,
    }
    try:
        return Coefficients(
            weights=weights, time_scale=time_scale, afs=afs, divisor="sigma", schedule={"kind": "explicit"},
            sigmas=sigmas, prediction="eps", model_family=model.family,
            sigma_min=float(sigmas[-1]), sigma_max=float(sigmas[0]),
            cfg=float(guidance_rate) if guidance_type == "cfg" and guidance_rate is not None else None,
            training=training)
    except CoefficientError as error:
        raise ReleaseImportError(path, f"the converted coefficients are not usable ({error})") from None


def _release_sigmas(loss: dict, path: Path, points: int, schedule_type: str, rho: float, stored_min,
                    stored_max, model: ReleaseModel) -> torch.Tensor:
    """The N+1 base sigmas the table samples on: stored ``t_steps``, else the release's schedule rebuilt."""
    stored = loss.get("t_steps")
    if stored is not None:
        sigmas = _tensor(stored, path, "t_steps", 1)
        if sigmas.numel() != points:
            raise ReleaseImportError(path, f"the stored t_steps has {sigmas.numel()} points, the table needs {points}")
    else:
        if model.vp is not None:
            sigma_min, sigma_max = model.vp.sigma_range  # sample.py uses the model's own σ range
        else:
            sigma_min = _positive(stored_min, 0.002, path, "sigma_min")
            sigma_max = _positive(stored_max, 80.0, path, "sigma_max")
        try:
            sigmas = release_schedule(points, schedule_type, rho, sigma_min, sigma_max, model.vp)
        except (ValueError, ArithmeticError) as error:
            raise ReleaseImportError(path, f"cannot rebuild its time grid ({error}) and the file stores none") from None
    if not torch.isfinite(sigmas).all() or (sigmas <= 0).any() or not (sigmas[1:] < sigmas[:-1]).all():
        raise ReleaseImportError(path, f"its time grid is not positive and strictly decreasing: {sigmas.tolist()}")
    return sigmas


# --- FLUX torch.save archives ---------------------------------------------------------------------------

def _convert_flux(data: dict, path: Path, sha256: str, mu: float) -> Coefficients:
    params = data.get("dyweight_params") if isinstance(data.get("dyweight_params"), dict) else {}
    meta = data.get("dyweight_meta") if isinstance(data.get("dyweight_meta"), dict) else {}
    stored_window = _count(data.get("window_size"), 0, 0, path, "window_size")
    if data.get("dyweight_weights_raw") is not None:
        raw = _tensor(data["dyweight_weights_raw"], path, "dyweight_weights_raw", 2)
    elif params.get("theta") is not None:
        raw = _tensor(params["theta"], path, "dyweight_params.theta", 2)
        if params.get("win_mask") is not None:
            raw = raw * _tensor(params["win_mask"], path, "dyweight_params.win_mask", 2)
    else:
        raise ReleaseImportError(path, "it has no 'dyweight_weights_raw': this is not a DyWeight FLUX checkpoint")
    steps = raw.shape[0]
    if raw.shape != (steps, steps) or steps < 1:
        raise ReleaseImportError(path, f"'dyweight_weights_raw' must be square, is {tuple(raw.shape)}")
    if data.get("dyweight_t_scales") is not None:
        scales = _tensor(data["dyweight_t_scales"], path, "dyweight_t_scales", 1)
    elif params.get("phi") is not None:
        low, high = _finite(meta.get("tscale_low")), _finite(meta.get("tscale_high"))
        low, high = 0.5 if low is None else low, 1.5 if high is None else high
        scales = low + (high - low) * torch.sigmoid(_tensor(params["phi"], path, "dyweight_params.phi", 1))
    else:
        scales = torch.ones(steps, dtype=F64)
    if scales.numel() != steps:
        raise ReleaseImportError(path, f"dyweight_t_scales has {scales.numel()} entries, the weights {steps} rows")
    window = stored_window if stored_window > 0 else steps  # window_size 0: the full history
    weights = _compact(raw, window, path)
    sigmas = flux_sigmas(steps, mu)
    training = {**_provenance(path, sha256), **FLUX_TRAINING, "base_model": "FLUX.1-dev",
                "release_window_size": stored_window, "mu": mu,
                "tscale_range": [_scalar(meta.get("tscale_low")), _scalar(meta.get("tscale_high"))]}
    try:
        return Coefficients(
            weights=weights, time_scale=scales, afs=False, divisor="net_sigma", schedule={"kind": "flux", "mu": mu},
            sigmas=sigmas, prediction="flow", model_family="Flux", sigma_min=float(sigmas[-1]),
            sigma_max=float(sigmas[0]), cfg=FLUX_GUIDANCE, training=training)
    except CoefficientError as error:
        raise ReleaseImportError(path, f"the converted coefficients are not usable ({error})") from None


# --- public API -----------------------------------------------------------------------------------------

def import_release_file(path, *, flux_mu: Optional[float] = None) -> Coefficients:
    """Convert one release file (``network-snapshot-*.pkl`` or a FLUX ``.pt``) into a :class:`Coefficients`.

    Args:
        path: the release file. It is read without running any code from it.
        flux_mu: FLUX resolution shift μ for FLUX checkpoints; default that of 512×512 (0.63), the resolution
            the released FLUX tables were trained at (1024×1024: 1.15, see :func:`flux_resolution_mu`).

    Raises:
        UnsafePickleError: the file asks to run code (or is not a pickle / torch.save archive).
        ReleaseImportError: the file is readable but is not a DyWeight table this importer understands.
    """
    path = Path(path)
    data = load_release_object(path)
    sha256 = file_sha256(path)
    if isinstance(data, dict) and "predictor" in data:
        return _convert_snapshot(data, path, sha256)
    if isinstance(data, dict) and ("dyweight_weights_raw" in data or "dyweight_params" in data):
        mu = float(flux_mu) if flux_mu is not None else flux_resolution_mu(*DEFAULT_FLUX_RESOLUTION)
        return _convert_flux(data, path, sha256, mu)
    keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
    raise ReleaseImportError(
        path, f"it is not a DyWeight release file (expected a 'predictor' snapshot or a FLUX checkpoint with "
              f"'dyweight_weights_raw'; found {keys})")


_SNAPSHOT = re.compile(r"network-snapshot-(\d+)\.pkl")
_RUN_FOLDER = re.compile(r"\d{5}-[A-Za-z0-9_.-]+")


def release_sources(paths: Iterable) -> list:
    """Expand folders into release files: per folder the newest ``network-snapshot-*.pkl``, and ``dyweight*.pt``."""
    found = []
    for item in map(Path, paths):
        if not item.is_dir():
            found.append(item)
            continue
        snapshots = {}
        for snapshot in sorted(item.rglob("network-snapshot-*.pkl")):
            match = _SNAPSHOT.fullmatch(snapshot.name)
            if match:
                best = snapshots.get(snapshot.parent)
                if best is None or int(match.group(1)) > int(_SNAPSHOT.fullmatch(best.name).group(1)):
                    snapshots[snapshot.parent] = snapshot
        found.extend(snapshots[folder] for folder in sorted(snapshots))
        found.extend(sorted(item.rglob("dyweight*.pt")))
    return found


def output_name(phi: Coefficients, source) -> str:
    """``dyweight-<run folder>.safetensors`` (e.g. ``dyweight-00036-mscoco-nfe8``) or, for FLUX,
    ``dyweight-flux-<file stem>`` (``-mu<μ>`` added for a non-default resolution); a short content hash keeps
    otherwise generic names apart."""
    source = Path(source)
    tag = phi.training.get("source_sha256", "")[:8]
    if phi.model_family == "Flux":
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.stem)
        base = f"flux-{stem}" if re.search(r"nfe\d+", stem) else f"flux-nfe{phi.nfe}-{tag}"
        mu = phi.schedule.get("mu")
        if mu is not None and abs(mu - flux_resolution_mu(*DEFAULT_FLUX_RESOLUTION)) > 1e-9:
            base += f"-mu{mu:g}"  # tables for another resolution sit next to the default ones
    elif _RUN_FOLDER.fullmatch(source.parent.name):
        base = source.parent.name
    else:
        dataset = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(phi.training.get("dataset") or "release"))
        base = f"{dataset}-nfe{phi.nfe}-{tag}"
    return f"dyweight-{base}.safetensors"


def import_release_files(paths, out_dir, force: bool = False, *, flux_mu: Optional[float] = None) -> list:
    """Convert release files (or folders holding them) and write ``dyweight/1`` files into ``out_dir``.

    Everything is converted and checked before anything is written: an unreadable or unsafe file, two
    sources that would get the same name, or an existing output file (without ``force``) write nothing.
    Returns the written paths, in the order of the sources.
    """
    sources = release_sources([paths] if isinstance(paths, (str, Path)) else paths)
    if not sources:
        raise ReleaseImportError(", ".join(map(str, paths)) if not isinstance(paths, (str, Path)) else paths,
                                 "no release files found (network-snapshot-*.pkl or dyweight*.pt)")
    out_dir = Path(out_dir)
    converted = []
    targets: dict = {}
    for source in sources:
        phi = import_release_file(source, flux_mu=flux_mu)
        target = out_dir / output_name(phi, source)
        if target in targets:
            raise ReleaseImportError(source, f"would be written to '{target}', like '{targets[target]}'")
        targets[target] = source
        converted.append((phi, target))
    existing = [str(target) for _, target in converted if target.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use --force / force=True to replace)")
    for phi, target in converted:
        phi.save(target)
    return [target for _, target in converted]
