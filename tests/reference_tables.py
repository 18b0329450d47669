"""Access to ../shared/reference/dyweight_official_tables.json and dss_searched_solvers.json (test data only).

The released tables list each row's weights oldest → newest over the full history; our compact
form keeps the K newest, column 0 = newest: compact[n, k] = full[n, n − k].
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE_FILE = Path(os.environ.get(
    "DYWEIGHT_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference" / "dyweight_official_tables.json"))


DSS_REFERENCE_FILE = Path(os.environ.get("DSS_REFERENCE", REFERENCE_FILE.parent / "dss_searched_solvers.json"))


def load_dss_tables() -> dict:
    """The DSS release's searched solvers as numbers: {family: {"step<N>": {"timedeltas", "coeffs"}}}."""
    if not DSS_REFERENCE_FILE.is_file():
        pytest.skip(f"DSS reference tables not present at {DSS_REFERENCE_FILE} (set DSS_REFERENCE to use them)")
    return json.loads(DSS_REFERENCE_FILE.read_text())["tables"]


def load_tables() -> dict:
    if not REFERENCE_FILE.is_file():
        pytest.skip(f"reference tables not present at {REFERENCE_FILE} (set DYWEIGHT_REFERENCE to use them)")
    return json.loads(REFERENCE_FILE.read_text())["tables"]


def compact_weights(full_rows, order: int) -> torch.Tensor:
    steps = len(full_rows)
    compact = torch.zeros(steps, order, dtype=torch.float64)
    for n in range(steps):
        for k in range(min(n + 1, order)):
            compact[n, k] = full_rows[n][n - k]
    return compact


def sd15_uniform_time_sigmas(points: int) -> torch.Tensor:
    """SD1.5's VP schedule (scaled-linear betas 0.00085…0.012, 1000 steps) at DDPM times uniform in [1e-3, 1].

    log α is interpolated linearly between the discrete steps (DPM-Solver's discrete schedule).
    """
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    log_alpha = 0.5 * torch.log(torch.cumprod(1 - betas, 0))
    times = np.linspace(1.0, 1e-3, points)
    grid = np.linspace(0, 1, 1001)[1:]
    interpolated = torch.tensor(np.interp(times, grid, log_alpha.numpy()), dtype=torch.float64)
    return torch.sqrt(torch.exp(-2 * interpolated) - 1)
