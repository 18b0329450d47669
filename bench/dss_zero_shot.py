"""The shipped DSS solvers zero-shot on Gaussian mixtures, against ComfyUI's hand-made solvers.

    python bench/dss_zero_shot.py [--out bench/results] [--samples 2048]

The DSS release's searched solvers (arXiv 2505.21114) run unchanged on data they never saw: Gaussian
mixtures whose denoiser E[x0 | x] is exact, so every error is the solver's own. Two parts, one run:

* **flow tables** (searched on SiT-XL/2 and FlowDCN-B/2) on their own unshifted grids, in flow form
  x = (1 − σ)·x0 + σ·ε, against ComfyUI's ``ipndm`` on its ``simple`` schedule of a flow model with shift 1
  (σ linear from 1 to 0) and shift 3 (SD3's default). Reference: the exact flow-ODE solution (RK4, 1000
  steps in σ from 1 to ½, then 2000 in log σ̂ in VE form); the ratio columns divide each table's RMSE by the
  better of the two iPNDM runs. The same comparison then runs on further random draws of each mixture
  (``--draws``, other seeds, same sizes): in how many draws each table loses, per NFE, so that a loss
  can be told from the luck of one draw.
* **DDPM tables** (searched on DiT-XL/2, ``combine = "denoised"``) on SD1.5's discrete DDPM schedule
  (ComfyUI's ``ModelSamplingDiscrete``: scaled-linear β from 0.00085 to 0.012, 1000 steps, σ_max ≈ 14.6),
  the grid mapped as on a ComfyUI model, the model's own σ at timestep 1000·t; the mixture answers as an
  ε-prediction network in VP form x = α·x0 + s·ε, wrapped by ComfyUI's own eps conversion. Against
  ComfyUI's ``ipndm``, ``euler`` (its ``ddim`` sampler is this Euler step), ``dpmpp_2m`` and ``uni_pc`` on
  the ``normal`` and ``karras`` schedules with the sigmas the stock KSampler gives them (``uni_pc`` drops
  the penultimate σ). All start from x̂ = √(1 + σ_max²)·ε, as KSampler scales the noise; reference: the
  exact probability-flow solution to σ = 0 (RK4 in log σ, 2000 steps). The DSS grid ends at the model's
  σ at timestep 1, as the release's does; the "floor" column is what that unfinished last interval alone
  costs (the exact solution at that σ against the one at 0). The table gives every RMSE as a ratio to the
  best hand-made solver's (< 1: better than all of them).

Model calls are counted and equal per row. Needs a ComfyUI host (``COMFYUI_PATH``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

from comfyui_dyweight.atomic import write_text_atomic
from comfyui_dyweight.coefficients import Coefficients, dyweight_sample
from comfyui_dyweight.release.dss_tables import DSS_PRESET_DIR, preset_name
from comfyui_dyweight.trainer.analytic import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
NFE = range(5, 11)
FLOW_TABLES = {"flow_sit": "DSS (SiT)", "flow_flowdcn": "DSS (FlowDCN)"}
SHIFTS = (1.0, 3.0)
DDPM_TABLE = "ddpm_dit"
DDPM_SOLVERS = {"ipndm": "iPNDM", "euler": "Euler (= DDIM)", "dpmpp_2m": "DPM-Solver++(2M)", "uni_pc": "UniPC"}
DDPM_SCHEDULERS = ("normal", "karras")
FLOAT32_ONLY = ("uni_pc",)  # ComfyUI's UniPC makes its order-2 coefficients in float32; it runs in float32
PROBLEMS = {
    "mixture d8 (4 modes, std 0.5)": dict(dim=8, components=4, std=0.5, seed=0),
    "mixture d16 (8 modes, std 0.3)": dict(dim=16, components=8, std=0.3, seed=1),
}
DRAW_SEEDS = 100  # the further draws of each mixture use seeds 100, 101, …


class ComfyTools:
    """What the benchmark takes from the ComfyUI host: its sampler functions, schedules and SD1.5 sampling."""

    def __init__(self):
        sys.path.insert(0, str(ROOT / "tests"))
        import comfy_host

        host = comfy_host.import_host()
        import comfy.model_sampling
        import comfy.samplers
        from comfyui_dyweight.host.model_facts import comfy_sigmas, ddpm_time_sigmas
        from comfyui_dyweight.host.training_target import comfy_sampler

        self.host = f"ComfyUI {host.version or '(unknown version)'}"
        self.sampler = comfy_sampler
        self.comfy_sigmas, self.ddpm_time_sigmas = comfy_sigmas, ddpm_time_sigmas
        self.discard_penultimate = comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        self.flow_sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
        # SD1.5's model sampling, built as ComfyUI's model_sampling() builds it for an eps model
        self.eps_sampling = type("EpsDiscrete", (comfy.model_sampling.EPS, comfy.model_sampling.ModelSamplingDiscrete),
                                 {})()

    def simple_flow_sigmas(self, shift: float, steps: int) -> torch.Tensor:
        self.flow_sampling.set_parameters(shift=shift)
        return self.comfy_sigmas(self.flow_sampling, "simple", steps).double()

    def ksampler_sigmas(self, sampler: str, scheduler: str, steps: int) -> torch.Tensor:
        """The sigmas the stock KSampler gives ``sampler`` on SD1.5 (``KSampler.calculate_sigmas``)."""
        if sampler in self.discard_penultimate:
            sigmas = self.comfy_sigmas(self.eps_sampling, scheduler, steps + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]]).double()
        return self.comfy_sigmas(self.eps_sampling, scheduler, steps).double()

    def eps_denoiser(self, mixture: GaussianMixture):
        """D(x̂, σ) of an ε-prediction model whose network is exact for ``mixture``: ComfyUI's EPS conversion
        feeds it x = x̂/√(1 + σ²) = α·x0 + s·ε with α = 1/√(1 + σ²), s = α·σ, and turns ε into x̂ − σ·ε."""
        def denoise(x_hat, sigma):
            sigma = torch.as_tensor(sigma, dtype=x_hat.dtype).reshape(1)
            alpha = 1 / torch.sqrt(1 + sigma ** 2)
            eps = mixture.eps_prediction(self.eps_sampling.calculate_input(sigma, x_hat), alpha, alpha * sigma)
            return self.eps_sampling.calculate_denoised(sigma, eps, x_hat)

        return denoise


def counted(denoise):
    def wrapped(x, sigma):
        wrapped.calls += 1
        return denoise(x, sigma)

    wrapped.calls = 0
    return wrapped


def rmse(estimate, reference) -> float:
    return (estimate - reference).pow(2).mean().sqrt().item()


def shipped(family: str, nfe: int) -> Coefficients:
    return Coefficients.load(DSS_PRESET_DIR / preset_name(family, nfe))


def flow_benchmark(mixture: GaussianMixture, noise: torch.Tensor, comfy: ComfyTools) -> list:
    exact = mixture.flow_ode_solution(noise)
    ipndm = comfy.sampler("ipndm", None)
    rows = []
    for nfe in NFE:
        row = {"nfe": nfe, "rmse": {}, "calls": {}}
        for family in FLOW_TABLES:
            phi = shipped(family, nfe)
            model = counted(mixture.flow_denoise)
            row["rmse"][family] = rmse(dyweight_sample(model, noise, phi.sigmas, phi), exact)
            row["calls"][family] = model.calls
        for shift in SHIFTS:
            model = counted(mixture.flow_denoise)
            name = f"ipndm_shift{shift:g}"
            row["rmse"][name] = rmse(ipndm(model, noise, comfy.simple_flow_sigmas(shift, nfe)), exact)
            row["calls"][name] = model.calls
        best = min(row["rmse"][f"ipndm_shift{shift:g}"] for shift in SHIFTS)
        row["ratio_to_best_ipndm"] = {family: row["rmse"][family] / best for family in FLOW_TABLES}
        rows.append(row)
    return rows


def ddpm_benchmark(mixture: GaussianMixture, noise: torch.Tensor, comfy: ComfyTools) -> list:
    denoise = comfy.eps_denoiser(mixture)
    sigma_max = float(comfy.eps_sampling.sigma_max)
    start = noise * math.sqrt(1 + sigma_max ** 2)
    exact = mixture.ode_solution(start, sigma_max, 0.0)
    solvers = {name: comfy.sampler(name, None) for name in DDPM_SOLVERS}
    floors = {}  # the exact solution stopped at each DSS end σ, against the one at 0
    rows = []
    for nfe in NFE:
        row = {"nfe": nfe, "rmse": {}, "calls": {}}
        phi = shipped(DDPM_TABLE, nfe)
        sigmas = comfy.ddpm_time_sigmas(comfy.eps_sampling, phi.schedule["t"]).double()
        model = counted(denoise)
        row["rmse"][DDPM_TABLE] = rmse(dyweight_sample(model, start, sigmas, phi), exact)
        row["calls"][DDPM_TABLE] = model.calls
        row["dss_end_sigma"] = end = float(sigmas[-1])
        if end not in floors:
            floors[end] = rmse(mixture.ode_solution(start, sigma_max, end), exact)
        row["dss_floor"] = floors[end]
        for name, solve in solvers.items():
            for scheduler in DDPM_SCHEDULERS:
                model = counted(denoise)
                key = f"{name}_{scheduler}"
                dtype = torch.float32 if name in FLOAT32_ONLY else start.dtype
                sample = solve(model, start.to(dtype), comfy.ksampler_sigmas(name, scheduler, nfe).to(dtype))
                row["rmse"][key] = rmse(sample.double(), exact)
                row["calls"][key] = model.calls
        hand_made = {key: value for key, value in row["rmse"].items() if key != DDPM_TABLE}
        row["best_hand_made"] = min(hand_made, key=hand_made.get)
        best = hand_made[row["best_hand_made"]]
        row["ratio_to_best_hand_made"] = {key: value / best for key, value in row["rmse"].items()}
        row["ratio_to_best_hand_made"]["dss_floor"] = row["dss_floor"] / best
        rows.append(row)
    return rows


def mixture_and_noise(spec: dict, samples: int) -> tuple:
    mixture = GaussianMixture.seeded(**spec)
    return mixture, torch.randn(samples, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2024))


def benchmark(spec: dict, samples: int, draws: int, comfy: ComfyTools) -> dict:
    mixture, noise = mixture_and_noise(spec, samples)
    further = [flow_benchmark(*mixture_and_noise(dict(spec, seed=DRAW_SEEDS + draw), samples), comfy)
               for draw in range(draws)]
    return {"flow": flow_benchmark(mixture, noise, comfy), "ddpm": ddpm_benchmark(mixture, noise, comfy),
            "flow_draws": [{"nfe": nfe, "ratio_to_best_ipndm": {family: [rows[index]["ratio_to_best_ipndm"][family]
                                                                        for rows in further]
                                                               for family in FLOW_TABLES}}
                           for index, nfe in enumerate(NFE)]}


def flow_markdown(problems: dict) -> list:
    lines = []
    for problem, parts in problems.items():
        lines += [f"#### {problem}", "",
                  "| NFE | DSS (SiT) | DSS (FlowDCN) | ipndm, simple, shift 1 | ipndm, simple, shift 3 "
                  "| SiT / best ipndm | FlowDCN / best ipndm |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in parts["flow"]:
            r, q = row["rmse"], row["ratio_to_best_ipndm"]
            lines.append(f"| {row['nfe']} | {r['flow_sit']:.4g} | {r['flow_flowdcn']:.4g} | {r['ipndm_shift1']:.4g} "
                         f"| {r['ipndm_shift3']:.4g} | {q['flow_sit']:.3f} | {q['flow_flowdcn']:.3f} |")
        lines.append("")
    misses = [f"{FLOW_TABLES[family]} NFE {row['nfe']} on {problem.split(' (')[0]} "
              f"({row['ratio_to_best_ipndm'][family]:.2f}×)"
              for problem, parts in problems.items() for row in parts["flow"] for family in FLOW_TABLES
              if row["ratio_to_best_ipndm"][family] >= 1]
    cells = sum(len(parts["flow"]) * len(FLOW_TABLES) for parts in problems.values())
    lines.append(f"Bar (each flow table beats the better ipndm at every NFE): met in {cells - len(misses)} of {cells} "
                 "cells" + (f"; not met: {', '.join(misses)}." if misses else "."))
    return lines + ["", *draws_markdown(problems)]


def draws_markdown(problems: dict) -> list:
    """Per (mixture, table, NFE): in how many further draws of the mixture the table loses, and the median ratio."""
    columns = [(problem, family) for problem in problems for family in FLOW_TABLES]
    draws = len(next(iter(problems.values()))["flow_draws"][0]["ratio_to_best_ipndm"][next(iter(FLOW_TABLES))])
    if not draws:
        return []
    lines = [f"#### Further draws of each mixture ({draws} each): draws in which the table loses to the better "
             "ipndm (median ratio)", "",
             "| NFE | " + " | ".join(f"{FLOW_TABLES[family]}, {problem.split(' (')[0]}" for problem, family in columns)
             + " |", "|---|" + "---:|" * len(columns)]
    for index, nfe in enumerate(NFE):
        cells = []
        for problem, family in columns:
            ratios = problems[problem]["flow_draws"][index]["ratio_to_best_ipndm"][family]
            cells.append(f"{sum(ratio >= 1 for ratio in ratios)}/{draws} ({statistics.median(ratios):.2f}×)")
        lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
    return lines


def ddpm_markdown(problems: dict) -> list:
    lines = []
    for problem, parts in problems.items():
        lines += [f"#### {problem}", "",
                  "| NFE | best hand-made (RMSE) | DSS (DiT) | floor (DSS end σ) | "
                  + " | ".join(DDPM_SOLVERS.values()) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(DDPM_SOLVERS)]
        for row in parts["ddpm"]:
            q = row["ratio_to_best_hand_made"]
            cells = []
            for name in DDPM_SOLVERS:
                scheduler = min(DDPM_SCHEDULERS, key=lambda s: q[f"{name}_{s}"])
                cells.append(f"{q[f'{name}_{scheduler}']:.3f} ({scheduler})")
            best = row["best_hand_made"]
            lines.append(f"| {row['nfe']} | {best.replace('_' + best.split('_')[-1], '')}, {best.split('_')[-1]} "
                         f"({row['rmse'][best]:.4g}) | **{q[DDPM_TABLE]:.3f}** | {q['dss_floor']:.3f} "
                         f"(σ {row['dss_end_sigma']:.3g}) | " + " | ".join(cells) + " |")
        lines.append("")
    wins = [row for parts in problems.values() for row in parts["ddpm"] if row["ratio_to_best_hand_made"][DDPM_TABLE] < 1]
    cells = sum(len(parts["ddpm"]) for parts in problems.values())
    lines.append(f"The DDPM table beats the best hand-made solver in {len(wins)} of {cells} (mixture, NFE) cells.")
    return lines


def markdown(document: dict) -> str:
    problems = document["problems"]
    return "\n".join([
        f"DSS tables zero-shot vs ComfyUI's samplers ({document['host']}), {document['samples']} samples per "
        "mixture; RMSE to the exact ODE solution; model calls counted (equal per row).", "",
        "### Flow tables (SiT, FlowDCN) on flow-form mixtures, against `ipndm`", "",
        *flow_markdown(problems), "",
        "### DDPM table (DiT) on SD1.5's discrete schedule, eps model in VP form", "",
        "Each figure is RMSE / the best hand-made solver's RMSE at that NFE (hand-made: the better of the `normal` "
        "and `karras` schedules, named). The floor is the error of stopping exactly at the DSS grid's last σ.", "",
        *ddpm_markdown(problems)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for dss_zero_shot.{md,json}")
    parser.add_argument("--samples", type=int, default=2048, help="noise samples per mixture")
    parser.add_argument("--draws", type=int, default=6, help="further random draws of each mixture (flow tables)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    comfy = ComfyTools()
    problems = {name: benchmark(spec, arguments.samples, arguments.draws, comfy) for name, spec in PROBLEMS.items()}
    for parts in problems.values():
        for row in parts["flow"] + parts["ddpm"]:
            assert len(set(row["calls"].values())) == 1, f"unequal model calls at NFE {row['nfe']}: {row['calls']}"
    document = {"host": comfy.host, "samples": arguments.samples, "problems": problems, "mixtures": PROBLEMS,
                "draw_seeds": list(range(DRAW_SEEDS, DRAW_SEEDS + arguments.draws)),
                "machine": f"{platform.platform()}, torch {torch.__version__}"}
    table = markdown(document)
    print(table)
    out = Path(arguments.out)
    write_text_atomic(out / "dss_zero_shot.md", table + "\n")
    write_text_atomic(out / "dss_zero_shot.json", json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
