"""Trainer quality benchmark: distilled Φ vs hand-made solvers on Gaussian mixtures (exact denoisers).

    python bench/trainer_quality.py [--out bench/results/trainer_quality.json]

For each mixture, :func:`distill` runs with its **defaults** (teacher, iterations, lr, order, AFS, …) and
``solver = "both"`` — DyWeight and DSS on the same pairs — on ComfyUI's ``karras`` grid (ρ = 7 on [0.002,
80], last step to 0). Each family's trained Φ is then scored on a
**test set** of fresh seeds that neither training nor the best-Φ selection saw (the trainer's own
held-out figure picks the best of ~20 checkpoints, so it is optimistic; it is shown for comparison).
The Markdown table gives the test RMSE to the same teacher at NFE 3, 4 and 5 for each trained family,
Adams–Bashforth/iPNDM, Euler and DPM-Solver++(2M), the ratios trained/iPNDM (the bar: ≤ 0.5), and the
teacher's generation time against the optimisation time per NFE. The teacher's own error against the
exact ODE solution (RK4 in log σ, 2000 steps) is printed too. Results also go to ``--out`` as JSON, and the
printed tables beside it as Markdown (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from comfyui_dyweight.coefficients import dyweight_sample, edm_sigmas
from comfyui_dyweight.atomic import write_text_atomic
from comfyui_dyweight.trainer import TEACHERS, DistillConfig, ModelSource, default_baselines, distill
from comfyui_dyweight.trainer.analytic import GaussianMixture

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NFE = (3, 4, 5)
BAR = 0.5  # trained RMSE ≤ BAR × iPNDM's
FAMILIES = ("dyweight", "dss")
PROBLEMS = {
    "mixture d8 (4 modes, std 0.5)": dict(dim=8, components=4, std=0.5, seed=0),
    "mixture d16 (8 modes, std 0.3)": dict(dim=16, components=8, std=0.3, seed=1),
}


def karras(steps: int) -> torch.Tensor:
    return edm_sigmas(steps, SIGMA_MIN, SIGMA_MAX, 7.0, to_zero=True)


def latents(count: int, dim: int, seed: int) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(count, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def rmse(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return (estimate - reference).pow(2).mean().sqrt().item()


def benchmark(name: str, spec: dict, pairs: int, test_size: int) -> dict:
    mixture = GaussianMixture.seeded(**spec)
    config = DistillConfig(nfe=NFE, solver="both")
    result = distill(ModelSource(mixture.denoise, latents(pairs, mixture.dim, 1234), karras), config)
    test = latents(test_size, mixture.dim, 4321)
    teacher = TEACHERS["heun"](mixture.denoise, test, karras(config.teacher_steps))
    exact = mixture.ode_solution(test, SIGMA_MAX, 0.0)
    baselines = default_baselines(karras)
    rows = []
    for row in result.table:
        nfe = row["nfe"]
        solvers = {family: rmse(dyweight_sample(mixture.denoise, test, phi.sigmas.double() if family == "dss"
                                                else karras(nfe), phi), teacher)
                   for family, phi in result.candidates[nfe].items()}
        solvers.update({name: rmse(baseline(mixture.denoise, test, nfe), teacher) for name, baseline in baselines.items()})
        rows.append({"nfe": nfe, "test_rmse": solvers,
                     "held_out_rmse": {family: row["families"][family]["rmse"] for family in FAMILIES},
                     "ratio_to_ipndm": {family: solvers[family] / solvers["ipndm"] for family in FAMILIES},
                     "kept": row["solver"], "optimisation_s": result.timings["optimisation_s"][nfe]})
    return {
        "problem": name, "mixture": spec, "pairs": pairs, "held_out": len(result.validation_pairs),
        "test_size": test_size, "teacher_rmse_to_exact": rmse(teacher, exact), "rows": rows,
        "teacher_s": result.timings["teacher_s"], "notes": result.notes,
    }


def markdown(outcome: dict) -> str:
    lines = [f"### {outcome['problem']}: {outcome['pairs']} pairs ({outcome['held_out']} held out), "
             f"{outcome['test_size']} test seeds; teacher heun×{DistillConfig().teacher_steps} "
             f"(RMSE to the exact ODE {outcome['teacher_rmse_to_exact']:.2g}) took {outcome['teacher_s']:.1f} s",
             "",
             "| NFE | DyWeight (trained) | DSS (trained) | AB / iPNDM | Euler | DPM-Solver++(2M) | DyWeight / iPNDM "
             "| DSS / iPNDM | kept (held-out) | optimisation s (both) | bar ≤ 0.5 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in outcome["rows"]:
        test, ratio = row["test_rmse"], row["ratio_to_ipndm"]
        met = all(value <= BAR for value in ratio.values())
        lines.append(f"| {row['nfe']} | {test['dyweight']:.4f} | {test['dss']:.4f} | {test['ipndm']:.4f} | "
                     f"{test['euler']:.4f} | {test['dpmpp_2m']:.4f} | {ratio['dyweight']:.3f} | {ratio['dss']:.3f} | "
                     f"{row['kept']} | {row['optimisation_s']:.1f} | {'yes' if met else 'NO'} |")
    return "\n".join(lines + [f"- {note}" for note in outcome["notes"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trainer_quality.json",
                        help="JSON results (the tables go beside it as .md)")
    parser.add_argument("--pairs", type=int, default=256, help="teacher pairs per problem (default 256)")
    parser.add_argument("--test", type=int, default=512, help="fresh test seeds per problem (default 512)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these tensors are tiny)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    outcomes = []
    for name, spec in PROBLEMS.items():
        outcomes.append(benchmark(name, spec, arguments.pairs, arguments.test))
        print(markdown(outcomes[-1]) + "\n", flush=True)
    met = all(value <= BAR for outcome in outcomes for row in outcome["rows"] for value in row["ratio_to_ipndm"].values())
    verdict = f"bar (trained ≤ {BAR} × iPNDM at NFE {', '.join(map(str, NFE))}): {'met' if met else 'NOT met'}"
    write_text_atomic(arguments.out, json.dumps({"nfe": list(NFE), "bar": BAR, "problems": outcomes}, indent=1) + "\n")
    write_text_atomic(arguments.out.with_suffix(".md"),
                      "\n\n".join(markdown(outcome) for outcome in outcomes) + f"\n\n{verdict}.\n")
    print(f"{verdict}; results in {arguments.out}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
