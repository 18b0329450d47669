"""Sampler cost: DyWeight vs Euler at equal steps on the embedded digits model, as a ratio in one run.

    python bench/sampler_cost.py [--steps 4 8 16] [--batch 1 32] [--rounds 40] [--out bench/results]

The update rule must cost nothing beyond the model calls. For each batch size and step count this
times, interleaved round by round (median of ``--rounds``; one torch thread):

* ``model calls``: the same N calls of the denoiser alone (the floor);
* ``euler``: the pack's Euler (``trainer.teachers.sample_euler``), N calls;
* ``dyweight``: :func:`dyweight_sample` with a K = 3 Φ without the analytical first step, so it makes the
  same N calls (Φ's values do not change the cost);
* ``comfyui euler``: ComfyUI's ``sample_euler`` on the same denoiser, when a host imports.

It reports the ratio dyweight / euler and each sampler's overhead per step over the bare model calls,
and, with a denoiser that costs ~nothing, each sampler's own arithmetic per step (on a shared machine
the first is noisy at the level of a few hundred µs; the second is not).
Writes ``sampler_cost.md`` and ``sampler_cost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from comfyui_dyweight.coefficients import adams_bashforth, dyweight_sample
from comfyui_dyweight.atomic import write_text_atomic
from comfyui_dyweight.demo import pipeline
from comfyui_dyweight.trainer.teachers import sample_euler

ROOT = Path(__file__).resolve().parents[1]


def host_euler():
    """ComfyUI's ``sample_euler`` as ``solve(denoise, x, sigmas)``, or None (with the reason printed)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import comfy_host

        if comfy_host.find_comfyui() is None:
            raise RuntimeError(comfy_host.NO_HOST_REASON)
        comfy_host.import_host()
        import comfy.k_diffusion.sampling as sampling
        from comfyui_dyweight.host.training_target import SamplerModel
    except BaseException as error:  # pytest's skip/fail are BaseExceptions too
        if isinstance(error, KeyboardInterrupt):
            raise
        print(f"(no ComfyUI host, so no 'comfyui euler' row: {type(error).__name__}: {error})")
        return None

    def solve(denoise, x, sigmas):
        return sampling.sample_euler(SamplerModel(denoise, None), x, sigmas.to(x), disable=True)

    return solve


def contenders(model, include_host: bool) -> dict:
    def model_only(denoise, x, sigmas):
        for sigma in sigmas[:-1]:
            x = denoise(x, sigma)
        return x

    def dyweight(denoise, x, sigmas):
        phi = adams_bashforth(len(sigmas) - 1, 3, final_denoise=False)
        return dyweight_sample(denoise, x, sigmas, phi)

    found = {"model calls": model_only, "euler": sample_euler, "dyweight": dyweight}
    comfy = host_euler() if include_host else None
    if comfy is not None:
        found["comfyui euler"] = comfy
    return found


def trivial_denoiser(x, sigma):
    """A denoiser that costs almost nothing: what is left of a sampler's time is its own arithmetic."""
    return x * 0.5


@torch.no_grad()
def measure(denoise, model, solvers: dict, steps: int, batch: int, rounds: int) -> dict:
    sigmas = model.schedule(7.0)(steps).float()
    x = model.noise(batch, 0)
    for solve in solvers.values():  # warm-up
        solve(denoise, x, sigmas)
    times = {name: [] for name in solvers}
    for index in range(rounds):
        order = list(solvers.items())
        order = order[index % len(order):] + order[:index % len(order)]  # rotate: no fixed position in a round
        for name, solve in order:
            start = time.perf_counter()
            solve(denoise, x, sigmas)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians["model calls"]
    return {"steps": steps, "batch": batch, "median_s": medians, "min_s": {n: min(v) for n, v in times.items()},
            "ratio_dyweight_to_euler": medians["dyweight"] / medians["euler"],
            "overhead_per_step_us": {name: (value - floor) / steps * 1e6 for name, value in medians.items()
                                     if name != "model calls"}}


def markdown(rows: list, arithmetic: list, rounds: int) -> str:
    names = list(rows[0]["median_s"])
    header = ["batch", "steps", *[f"{name} (ms)" for name in names], "**dyweight / euler**",
              "dyweight / euler, fastest runs"]
    lines = [f"Median of {rounds} interleaved rounds, demo model, one torch thread; the last column compares "
             f"the fastest run of each (less exposed to other load). On a shared machine these ratios carry a "
             f"few % of noise, so the samplers' own arithmetic is measured on its own below.", "",
             "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for row in rows:
        cells = [str(row["batch"]), str(row["steps"]), *[f"{row['median_s'][n] * 1e3:.2f}" for n in names],
                 f"**{row['ratio_dyweight_to_euler']:.3f}**",
                 f"{row['min_s']['dyweight'] / row['min_s']['euler']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    solvers = [name for name in names if name != "model calls"]
    lines += ["", "The samplers' own arithmetic, with a denoiser that costs ~nothing (x ↦ 0.5·x), µs per step:", "",
              "| batch | steps | " + " | ".join(solvers) + " |", "|" + "---:|" * (2 + len(solvers))]
    for row in arithmetic:
        lines.append(f"| {row['batch']} | {row['steps']} | "
                     + " | ".join(f"{row['median_s'][name] / row['steps'] * 1e6:.0f}" for name in solvers) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--no-host", action="store_true", help="skip the ComfyUI euler row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    model = pipeline.demo_model()
    solvers = contenders(model, not arguments.no_host)
    rows, arithmetic = [], []
    for batch in arguments.batch:
        for steps in arguments.steps:
            rows.append(measure(model.denoise, model, solvers, steps, batch, arguments.rounds))
            arithmetic.append(measure(trivial_denoiser, model, solvers, steps, batch, arguments.rounds))
            print(f"batch {batch}, {steps} steps: dyweight / euler = {rows[-1]['ratio_dyweight_to_euler']:.3f}; "
                  f"arithmetic per step: euler {arithmetic[-1]['median_s']['euler'] / steps * 1e6:.0f} µs, "
                  f"dyweight {arithmetic[-1]['median_s']['dyweight'] / steps * 1e6:.0f} µs", flush=True)
    table = markdown(rows, arithmetic, arguments.rounds)
    print("\n" + table)
    machine = pipeline.machine()
    document = {"what": "wall time of DyWeight vs Euler at equal steps on the demo model; see bench/sampler_cost.py",
                "rounds": arguments.rounds, "machine": machine, "rows": rows, "arithmetic_only": arithmetic}
    write_text_atomic(arguments.out / "sampler_cost.md",
                      "# Sampler cost: DyWeight vs Euler at equal steps (bench/sampler_cost.py)\n\n"
                      f"Measured on {machine['platform']}, {machine['cpu_count']} CPU cores (shared), torch "
                      f"{machine['torch']}, {machine['date']}.\n\n" + table)
    write_text_atomic(arguments.out / "sampler_cost.json", json.dumps(document, indent=1) + "\n")
    worst = max(row["ratio_dyweight_to_euler"] for row in rows)
    print(f"largest dyweight / euler ratio: {worst:.3f}; results in {arguments.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
