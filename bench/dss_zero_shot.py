"""The shipped DSS flow solvers zero-shot on rectified-flow Gaussian mixtures, against ComfyUI's iPNDM.

    python bench/dss_zero_shot.py [--out bench/results] [--samples 2048]

The DSS release's rectified-flow solvers (searched on SiT-XL/2 and FlowDCN-B/2, arXiv 2505.21114) run
unchanged, on their own grids, on data they never saw: Gaussian mixtures in flow form x = (1 − σ)·x0 + σ·ε,
whose denoiser E[x0 | x] is exact. ComfyUI's own ``ipndm`` sampler function runs on ComfyUI's ``simple``
schedule of a flow model with shift 1 (σ linear from 1 to 0) and shift 3 (SD3's default) at the same
number of model calls (counted). The score is the RMSE to the exact ODE solution (RK4, 1000 steps in σ
from 1 to ½, then 2000 in log σ̂ in VE form); the ratio column divides each DSS table's RMSE by the
better of the two iPNDM runs (< 1: DSS is better). Needs a ComfyUI host (``COMFYUI_PATH``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from comfyui_dyweight.atomic import write_text_atomic
from comfyui_dyweight.coefficients import Coefficients, dyweight_sample
from comfyui_dyweight.release.dss_tables import DSS_PRESET_DIR, preset_name
from comfyui_dyweight.trainer.analytic import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
NFE = range(5, 11)
TABLES = {"flow_sit": "DSS (SiT)", "flow_flowdcn": "DSS (FlowDCN)"}
SHIFTS = (1.0, 3.0)
PROBLEMS = {
    "mixture d8 (4 modes, std 0.5)": dict(dim=8, components=4, std=0.5, seed=0),
    "mixture d16 (8 modes, std 0.3)": dict(dim=16, components=8, std=0.3, seed=1),
}


def comfy_ipndm():
    """(solve(denoise, x, sigmas), simple_sigmas(shift, steps), host line) from the ComfyUI host."""
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    host = comfy_host.import_host()
    import comfy.model_sampling
    import comfy.samplers
    from comfyui_dyweight.host.training_target import comfy_sampler

    def simple_sigmas(shift: float, steps: int) -> torch.Tensor:
        model_sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
        model_sampling.set_parameters(shift=shift)
        return comfy.samplers.calculate_sigmas(model_sampling, "simple", steps).double()

    return comfy_sampler("ipndm", None), simple_sigmas, f"ComfyUI {host.version or '(unknown version)'}"


def counted(denoise):
    def wrapped(x, sigma):
        wrapped.calls += 1
        return denoise(x, sigma)

    wrapped.calls = 0
    return wrapped


def rmse(estimate, reference) -> float:
    return (estimate - reference).pow(2).mean().sqrt().item()


def benchmark(spec: dict, samples: int, ipndm, simple_sigmas) -> list:
    mixture = GaussianMixture.seeded(**spec)
    noise = torch.randn(samples, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2024))
    exact = mixture.flow_ode_solution(noise)
    rows = []
    for nfe in NFE:
        row = {"nfe": nfe, "rmse": {}, "calls": {}}
        for family in TABLES:
            phi = Coefficients.load(DSS_PRESET_DIR / preset_name(family, nfe))
            model = counted(mixture.flow_denoise)
            row["rmse"][family] = rmse(dyweight_sample(model, noise, phi.sigmas, phi), exact)
            row["calls"][family] = model.calls
        for shift in SHIFTS:
            model = counted(mixture.flow_denoise)
            name = f"ipndm_shift{shift:g}"
            row["rmse"][name] = rmse(ipndm(model, noise, simple_sigmas(shift, nfe)), exact)
            row["calls"][name] = model.calls
        best = min(row["rmse"][f"ipndm_shift{shift:g}"] for shift in SHIFTS)
        row["ratio_to_best_ipndm"] = {family: row["rmse"][family] / best for family in TABLES}
        rows.append(row)
    return rows


def markdown(document: dict) -> str:
    lines = [f"DSS flow tables zero-shot vs ComfyUI's `ipndm` ({document['host']}), {document['samples']} "
             "samples per mixture; RMSE to the exact flow-ODE solution; model calls counted (equal per row).", ""]
    for problem, rows in document["problems"].items():
        lines += [f"### {problem}", "",
                  "| NFE | DSS (SiT) | DSS (FlowDCN) | ipndm, simple, shift 1 | ipndm, simple, shift 3 "
                  "| SiT / best ipndm | FlowDCN / best ipndm |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            r, q = row["rmse"], row["ratio_to_best_ipndm"]
            lines.append(f"| {row['nfe']} | {r['flow_sit']:.4g} | {r['flow_flowdcn']:.4g} | {r['ipndm_shift1']:.4g} "
                         f"| {r['ipndm_shift3']:.4g} | {q['flow_sit']:.3f} | {q['flow_flowdcn']:.3f} |")
        lines.append("")
    misses = [f"{TABLES[family]} NFE {row['nfe']} on {problem.split(' (')[0]} ({row['ratio_to_best_ipndm'][family]:.2f}×)"
              for problem, rows in document["problems"].items() for row in rows for family in TABLES
              if row["ratio_to_best_ipndm"][family] >= 1]
    cells = sum(len(rows) * len(TABLES) for rows in document["problems"].values())
    lines.append(f"Bar (each flow table beats the better ipndm at every NFE): met in {cells - len(misses)} of {cells} "
                 "cells" + (f"; not met: {', '.join(misses)}." if misses else "."))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for dss_zero_shot.{md,json}")
    parser.add_argument("--samples", type=int, default=2048, help="noise samples per mixture")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    ipndm, simple_sigmas, host = comfy_ipndm()
    problems = {name: benchmark(spec, arguments.samples, ipndm, simple_sigmas) for name, spec in PROBLEMS.items()}
    for rows in problems.values():
        for row in rows:
            assert len(set(row["calls"].values())) == 1, f"unequal model calls at NFE {row['nfe']}: {row['calls']}"
    document = {"host": host, "samples": arguments.samples, "problems": problems, "mixtures": PROBLEMS,
                "machine": f"{platform.platform()}, torch {torch.__version__}"}
    table = markdown(document)
    print(table)
    out = Path(arguments.out)
    write_text_atomic(out / "dss_zero_shot.md", table + "\n")
    write_text_atomic(out / "dss_zero_shot.json", json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
