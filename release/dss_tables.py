"""The searched solvers published with DSS (Differentiable Solver Search, arXiv 2505.21114) as Φ presets.

The release (GitHub ``MCG-NJU/NeuralSolver``, MIT) prints each searched solver as two tables per number of
steps N: ``timedeltas`` dt_0 … dt_{N−1} (a softmax in the search, so they sum to one up to the 4 printed
decimals) and ``coeffs`` c[i][j], j < i, the weights of the older model outputs at step i; the newest output
gets 1 − Σ_j c[i][j] (DSS §3: every row sums to one). Three families:

* ``flow_sit`` / ``flow_flowdcn`` (rectified flow, searched on SiT-XL/2 and FlowDCN-B/2, ImageNet 256²):
  the release steps ``x ← x − dt_i · Σ_j c̄[i][j]·v_j`` from σ_0 = 1 with velocities v = (x − D)/σ. That is
  the gradient form of the DyWeight rule (arXiv 2603.11607, Eq. 6) on the grid σ_i = 1 − Σ_{j<i} dt_j with
  W[n, 0] = 1 − Σ_j c[n][j] and W[n, k] = c[n][n − k]. Its diffusers schedulers feed these σ to FLUX and
  SD3 as they are (no resolution shift), so the grid is stored explicitly. The printed deltas miss one by
  up to 2·10⁻⁴; the grid here ends at σ_N = 0 (ComfyUI's end of a text-to-image schedule) and the last row
  is scaled by dt_{N−1}/σ_{N−1}, so the last step is exactly the release's −dt_{N−1}·Σ c̄ v and its
  running time t̃_N (Eq. 8) is the release's end point 1 − Σ dt.
* ``ddpm_dit`` (DDPM / eps, searched on DiT-XL/2): the release's clean scheduler steps in DDPM time t from
  0.999 down by the deltas with σ, α of the continuous VP schedule β ∈ [0.1, 20] (t clamped to
  [10⁻³, 1]); in VE coordinates x̂ = x/α, σ̂ = σ/α its step is DDIM on the combined data prediction,
  x̂' = x̂ + (σ̂' − σ̂)/σ̂ · (x̂ − Σ_j c̄[i][j]·D_j): ``combine = "denoised"``. The Φ stores the t grid
  (``ddpm_time`` schedule: on ComfyUI the model's own σ(t) is used) and, as ``sigmas``, the VP σ̂(t) it was
  searched on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..coefficients import Coefficients
from ..coefficients.presets import SHIPPED_DIR

__all__ = ["DSS_FAMILIES", "DSS_PRESET_DIR", "dss_coefficients", "flow_grid", "ddpm_times", "vp_sigma_hat",
           "write_dss_presets"]

REPOSITORY = "MCG-NJU/NeuralSolver"
DSS_PRESET_DIR = SHIPPED_DIR / "dss"
F64 = torch.float64

#: Per table family: the release file it is printed in, what it was searched on, and how it samples.
DSS_FAMILIES = {
    "flow_sit": {"file": "t2i_vis/fm_scheduling.py (FM_DATA_SIT)", "searched_on": "SiT-XL/2, ImageNet 256²",
                 "prediction": "flow"},
    "flow_flowdcn": {"file": "t2i_vis/fm_scheduling.py (FM_DATA_DCN)", "searched_on": "FlowDCN-B/2, ImageNet 256²",
                     "prediction": "flow"},
    "ddpm_dit": {"file": "t2i_vis/vp_scheduling.py and src/diffusion/ddpm/ns_sampling.py (DDPM_DATA)",
                 "searched_on": "DiT-XL/2, ImageNet 256²", "prediction": "eps"},
}
DDPM_START = 0.999      # the release's first DDPM time
DDPM_END = 1e-3         # its VP σ(t), α(t) clamp t to [1e-3, 1]
VP_BETA = (0.1, 20.0)   # DiT's linear β schedule, continuous


def full_history_weights(coeffs) -> torch.Tensor:
    """W [N, N] (column 0 = newest) from the release's c[i][j] (j < i, oldest first; newest implied)."""
    table = torch.as_tensor(coeffs, dtype=F64)
    steps = table.shape[0]
    weights = torch.zeros(steps, steps, dtype=F64)
    for n in range(steps):
        weights[n, 0] = 1 - table[n, :n].sum()
        for k in range(1, n + 1):
            weights[n, k] = table[n, n - k]
    return weights


def flow_grid(timedeltas) -> torch.Tensor:
    """σ_0 = 1, σ_i = 1 − Σ_{j<i} dt_j for i < N, and σ_N = 0."""
    deltas = torch.as_tensor(timedeltas, dtype=F64)
    grid = 1 - torch.cat([deltas.new_zeros(1), deltas[:-1].cumsum(0)])
    return torch.cat([grid, grid.new_zeros(1)])


def ddpm_times(timedeltas) -> list:
    """t_0 = 0.999, t_{i+1} = t_i − dt_i, each clamped to [1e-3, 1] as the release's σ(t), α(t) clamp it."""
    times = [DDPM_START]
    for delta in timedeltas:
        times.append(times[-1] - float(delta))
    return [min(max(t, DDPM_END), 1.0) for t in times]


def vp_sigma_hat(times) -> torch.Tensor:
    """σ̂(t) = σ(t)/α(t) = √(e^{B(t)} − 1), B(t) = ½(β_max − β_min)t² + β_min·t (the continuous VP schedule)."""
    t = torch.as_tensor(times, dtype=F64)
    beta_min, beta_max = VP_BETA
    return torch.sqrt(torch.expm1(0.5 * (beta_max - beta_min) * t ** 2 + beta_min * t))


def dss_coefficients(family: str, table: dict, commit: str) -> Coefficients:
    """One release table (``{"timedeltas": [...], "coeffs": [[...]]}``) of ``family`` as a DSS Φ (float64)."""
    facts = DSS_FAMILIES[family]
    timedeltas = [float(delta) for delta in table["timedeltas"]]
    weights = full_history_weights(table["coeffs"])
    steps = weights.shape[0]
    if len(timedeltas) != steps:
        raise ValueError(f"{family}: {len(timedeltas)} timedeltas for {steps} coefficient rows")
    record = {"method": "DSS searched solver (arXiv 2505.21114)", "base_model": facts["searched_on"]}
    source = {"repository": REPOSITORY, "commit": commit, "file": facts["file"], "licence": "MIT"}
    common = dict(time_scale=torch.ones(steps, dtype=F64), afs=False, divisor="sigma", solver="dss",
                  prediction=facts["prediction"], training=record, source=source)
    if facts["prediction"] == "flow":
        sigmas = flow_grid(timedeltas)
        weights[-1] *= timedeltas[-1] / sigmas[-2]  # the release's last step, −dt_{N−1}, onto σ_N = 0
        return Coefficients(weights=weights, sigmas=sigmas, schedule={"kind": "explicit"}, combine="gradient",
                            sigma_min=0.0, sigma_max=1.0, **common)
    times = ddpm_times(timedeltas)
    return Coefficients(weights=weights, sigmas=vp_sigma_hat(times), schedule={"kind": "ddpm_time", "t": times},
                        combine="denoised", **common)


def preset_name(family: str, steps: int) -> str:
    return f"dss-{family.replace('_', '-')}-nfe{steps}.safetensors"


def write_dss_presets(source_json, folder=DSS_PRESET_DIR) -> list:
    """Convert every table of the release's numbers (a JSON document ``{"source": "... commit <sha> ...",
    "tables": {family: {"step<N>": table}}}``) into ``folder``; returns the paths written."""
    document = json.loads(Path(source_json).read_text())
    commit = re.search(r"\b[0-9a-f]{40}\b", document.get("source", ""))
    if commit is None:
        raise ValueError(f"{source_json}: its 'source' must name the release commit (40 hex digits)")
    written = []
    for family, tables in document["tables"].items():
        if family not in DSS_FAMILIES:
            raise ValueError(f"{source_json}: unknown table family {family!r} (known: {', '.join(DSS_FAMILIES)})")
        for key in sorted(tables, key=lambda name: int(name.removeprefix("step"))):
            phi = dss_coefficients(family, tables[key], commit.group(0))
            path = Path(folder) / preset_name(family, phi.steps)
            phi.save(path, dtype=F64)
            written.append(path)
    return written

