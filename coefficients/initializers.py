"""Initial Φ: Euler, fixed Adams–Bashforth (iPNDM) rows, and variable-step Adams–Bashforth (paper App. A).

All return rows that sum to one (no implicit time shift) and s = 1, so sampling with them is the
classical multistep method on the base grid.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .errors import CoefficientError
from .phi import Coefficients

#: Adams–Bashforth weights by number of available gradients, newest first (iPNDM, Zhang & Chen 2023).
ADAMS_BASHFORTH_ROWS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
MAX_ORDER = max(ADAMS_BASHFORTH_ROWS)


def _steps_for(nfe: int, afs: bool) -> int:
    if nfe < 1:
        raise CoefficientError(f"NFE must be ≥ 1, got {nfe}")
    return nfe + int(afs)


def _check_order(order: int) -> None:
    if not 1 <= order <= MAX_ORDER:
        raise CoefficientError(f"Adams–Bashforth order must be 1…{MAX_ORDER}, got {order}")


def _coefficients(rows: list, order: int, afs: bool, final_denoise: bool, **metadata) -> Coefficients:
    weights = torch.zeros(len(rows), order, dtype=torch.float64)
    for n, row in enumerate(rows):
        weights[n, :len(row)] = torch.as_tensor(row, dtype=torch.float64)
    if final_denoise:
        weights[-1] = 0
        weights[-1, 0] = 1  # Euler to σ = 0: x_N = D(x_{N−1}), as ComfyUI's ipndm does
    return Coefficients(weights=weights, time_scale=torch.ones(len(rows), dtype=torch.float64), afs=afs, **metadata)


def euler(nfe: int, *, order: int = 1, afs: bool = False, **metadata) -> Coefficients:
    """W = e_0 in every row: the Euler method (DDIM for ε-models), with a history window of ``order``
    columns (zero beyond the newest; DSS starts from Euler with the full history, K = N)."""
    if order < 1:
        raise CoefficientError(f"order must be ≥ 1, got {order}")
    metadata.setdefault("training", {"initialiser": "euler"})
    steps = _steps_for(nfe, afs)
    return _coefficients([(1.0,)] * steps, order, afs, False, **metadata)


def adams_bashforth(nfe: int, order: int = MAX_ORDER, *, afs: bool = False, final_denoise: bool = True,
                    **metadata) -> Coefficients:
    """Fixed-coefficient Adams–Bashforth rows by available history (iPNDM).

    Args:
        nfe: model calls; N = nfe (+1 with ``afs``).
        order: K, the history window (1–4).
        final_denoise: make the last row Euler, for grids that end at σ = 0 (ComfyUI's schedulers).
            With ``order=4`` and no AFS this reproduces ComfyUI's ``sample_ipndm`` on the same sigmas.
        metadata: any other :class:`Coefficients` field (schedule, prediction, …).
    """
    _check_order(order)
    metadata.setdefault("training", {"initialiser": f"adams_bashforth(order={order})"})
    steps = _steps_for(nfe, afs)
    rows = [ADAMS_BASHFORTH_ROWS[min(n + 1, order)] for n in range(steps)]
    return _coefficients(rows, order, afs, final_denoise, **metadata)


def variable_step_rows(sigmas, order: int) -> list:
    """Adams–Bashforth weights on a non-uniform grid (paper App. A), float64, newest first.

    Row n integrates the Lagrange polynomial through the gradients at σ_n, σ_{n−1}, … (p = min(n+1, K)
    nodes) over [σ_n, σ_{n+1}] and divides by h_n, so Σ_k W[n,k]·g_{n−k} is the exact mean of any
    polynomial gradient of degree < p over the step.
    """
    _check_order(order)
    grid = np.asarray(torch.as_tensor(sigmas, dtype=torch.float64).cpu(), dtype=np.float64)
    rows = []
    for n in range(len(grid) - 1):
        step = grid[n + 1] - grid[n]
        # nodes in the step's own unit u = (σ − σ_n)/h_n, so the step is u ∈ [0, 1] (well conditioned)
        nodes = (grid[n - np.arange(min(n + 1, order))] - grid[n]) / step
        row = []
        for j, node in enumerate(nodes):
            others = np.delete(nodes, j)
            basis = np.polynomial.Polynomial([1.0])
            for other in others:
                basis = basis * np.polynomial.Polynomial([-other, 1.0]) / (node - other)
            antiderivative = basis.integ()
            row.append(float(antiderivative(1.0) - antiderivative(0.0)))
        rows.append(tuple(row))
    return rows


def variable_step_adams_bashforth(sigmas, order: int = MAX_ORDER, *, afs: bool = False,
                                  final_denoise: bool = True, **metadata) -> Coefficients:
    """Adams–Bashforth on the actual base grid ``sigmas`` (N+1 values); see :func:`variable_step_rows`.

    ``final_denoise`` makes the last row Euler when the grid ends at σ = 0.
    """
    grid = torch.as_tensor(sigmas, dtype=torch.float64)
    metadata.setdefault("training", {"initialiser": f"variable_step_adams_bashforth(order={order})"})
    rows = variable_step_rows(grid, order)
    if len(rows) - int(afs) < 1:
        raise CoefficientError("the grid is too short for this many steps")
    return _coefficients(rows, order, afs, bool(final_denoise and float(grid[-1]) == 0.0), **metadata)


def initial_coefficients(nfe: int, order: int, *, sigmas: Optional[torch.Tensor] = None,
                         variable_step: bool = False, **kwargs) -> Coefficients:
    """The trainer's starting point: fixed or (given ``sigmas``) variable-step Adams–Bashforth."""
    if variable_step:
        if sigmas is None:
            raise CoefficientError("variable-step Adams–Bashforth needs the base grid")
        return variable_step_adams_bashforth(sigmas, order, **kwargs)
    return adams_bashforth(nfe, order, **kwargs)
