"""Φ as JSON: the one shape the routes, the nodes' UI output (``{"ui": {"dyweight_phi": [...]}}``) and
the front end (``web/lib/phi_view.js``) share.

Pure Python over :mod:`..coefficients` (no ComfyUI). The result is strict JSON: every non-finite
number becomes ``null`` and anything that is not a plain JSON value becomes a string.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..coefficients import Coefficients, adams_bashforth
from ..coefficients.initializers import MAX_ORDER

#: Bumped when the shape changes in a way the front end must know about.
SCHEMA = "dyweight-phi/1"


def phi_to_json(phi: Coefficients, name: Optional[str] = None) -> dict:
    """Describe ``phi`` for the front end.

    Keys: ``name, nfe, steps, order, afs, divisor, schedule, prediction, model_family, sigma_min,
    sigma_max, cfg, training, solver, combine, source, summary, weights`` ([N][K], column 0 = newest gradient, 0 above the
    diagonal), ``time_scale`` [N], ``sigmas`` ([N+1] or ``null``), ``weight_sums`` [N] (Σ_k W[n,k],
    the implicit time shift), ``reference_weights`` (the Adams–Bashforth rows of the same N, K and
    AFS: the untrained iPNDM reference), ``reference_label``, ``schema``.
    """
    weights = phi.weights.detach().to("cpu").double()
    time_scale = phi.time_scale.detach().to("cpu").double()
    sigmas = None if phi.sigmas is None else phi.sigmas.detach().to("cpu").double().tolist()
    reference = reference_weights(phi)
    return _clean({
        "schema": SCHEMA,
        "name": name,
        "nfe": phi.nfe,
        "steps": phi.steps,
        "order": phi.order,
        "afs": bool(phi.afs),
        "divisor": phi.divisor,
        "schedule": phi.schedule,
        "prediction": phi.prediction,
        "model_family": phi.model_family,
        "sigma_min": phi.sigma_min,
        "sigma_max": phi.sigma_max,
        "cfg": phi.cfg,
        "training": phi.training,
        "solver": phi.solver,
        "combine": phi.combine,
        "source": phi.source,
        "summary": phi.summary(),
        "weights": weights.tolist(),
        "time_scale": time_scale.tolist(),
        "sigmas": sigmas,
        "weight_sums": weights.sum(dim=1).tolist(),
        "reference_weights": reference,
        "reference_label": f"Adams–Bashforth (iPNDM, order {min(phi.order, MAX_ORDER)})",
    })


def reference_weights(phi: Coefficients) -> list:
    """Adams–Bashforth rows shaped like ``phi.weights`` (K > 4 is padded with zeros).

    The last row is Euler when ``phi``'s grid ends at σ = 0 (ComfyUI's schedulers, FLUX, EDM ``to_zero``,
    an explicit grid ending at 0), as the shipped Adams–Bashforth presets and ComfyUI's iPNDM do.
    """
    order = min(phi.order, MAX_ORDER)
    ab = adams_bashforth(phi.nfe, order, afs=bool(phi.afs), final_denoise=_ends_at_zero(phi))
    rows = ab.weights.double().tolist()
    return _clean([row + [0.0] * (phi.order - order) for row in rows])


def _ends_at_zero(phi: Coefficients) -> bool:
    if phi.sigmas is not None:
        return float(phi.sigmas[-1]) == 0.0
    kind = phi.schedule.get("kind")
    if kind == "edm":
        return bool(phi.schedule.get("to_zero", False))
    return kind in ("comfy", "flux")


def _clean(value: Any) -> Any:
    """A strict-JSON copy: non-finite floats → ``None``; tensors/numpy scalars → numbers; the rest → str."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        try:
            return _clean(tolist())
        except Exception:  # noqa: BLE001 - fall through to str()
            pass
    return str(value)


def to_strict_json(value: Any) -> Any:
    """Public form of the cleaner, for other payloads (training events, route errors)."""
    return _clean(value)
