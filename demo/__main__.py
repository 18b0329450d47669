"""``python -m comfyui_dyweight.demo``: the pack's main job on the embedded digits model.

Distils DyWeight coefficients Φ for NFE 3–6 from a many-step teacher, then samples fresh seeds with
Euler, iPNDM, DPM-Solver++(2M) and DyWeight at the same number of model calls, and writes:

    <out>/grid.png              teacher vs each solver, same seeds, one row per NFE
    <out>/error_vs_nfe.png      RMSE and PSNR to the teacher, and FD, against NFE (needs matplotlib)
    <out>/table.md              the printed tables: RMSE/PSNR to the teacher, and the Fréchet distance
                                to held-out real digits (a digits classifier's features, as FID does)
    <out>/results.json          table, settings, timings (teacher cache hit or not), machine
    <out>/phi/*.safetensors     the distilled Φ files (loadable by the ComfyUI nodes)
    <out>/training-*            the trainer's own held-out report and loss curves

The teacher pairs are cached (``--cache-dir``, default ``$XDG_CACHE_HOME/comfyui-dyweight`` or
``~/.cache/comfyui-dyweight``), so a second run skips the teacher. See ``demo/pipeline.py`` for what
is measured and how.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before torch is imported: the wall time includes the imports

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ..atomic import write_text_atomic  # noqa: E402
from ..trainer.report import write_report  # noqa: E402
from . import figures, pipeline  # noqa: E402
from .classifier import load_classifier  # noqa: E402
from .pipeline import LABELS, SOLVERS  # noqa: E402


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m comfyui_dyweight.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-sized run (NFE 3–4, a few pairs and iterations): checks the pipeline in seconds")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="teacher-pair cache (default $COMFYUI_DYWEIGHT_CACHE, else "
                             "$XDG_CACHE_HOME/comfyui-dyweight, else ~/.cache/comfyui-dyweight)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on 2 cores, 2 threads were only ~1.3× faster when "
                             "idle and up to 30× slower when anything else was running)")
    parser.add_argument("--nfe", type=int, nargs="+", help="NFE targets (default 3 4 5 6)")
    parser.add_argument("--iterations", type=int, help="Adam steps per NFE (default 200)")
    parser.add_argument("--pairs", type=int, help="teacher pairs for training (default 256)")
    parser.add_argument("--test-pairs", type=int, help="fresh test seeds for the table (default 256)")
    parser.add_argument("--seed", type=int, help="training seed (default 0)")
    return parser.parse_args(argv)


def settings_from(arguments) -> pipeline.DemoSettings:
    settings = pipeline.QUICK if arguments.quick else pipeline.FULL
    return settings.replace(nfe=arguments.nfe, iterations=arguments.iterations, pairs=arguments.pairs,
                            test_pairs=arguments.test_pairs, seed=arguments.seed)


def describe_teacher(run, cache_dir: Path, what: str) -> str:
    if run.cache_hit:
        return f"{what}: reused from the cache in {cache_dir} (the teacher took {run.seconds:.1f} s when it ran)"
    return f"{what}: generated in {run.seconds:.1f} s and cached in {cache_dir}"


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(max(1, arguments.threads))
    settings = settings_from(arguments)
    cache_dir = (arguments.cache_dir or pipeline.default_cache_dir()) / "demo"
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}

    clock = time.monotonic()
    model = pipeline.demo_model()
    space = load_classifier()
    timings["load_s"] = time.monotonic() - clock
    config = settings.distill
    teacher_nfe = 2 * config.teacher_steps  # Heun on a grid that ends at σ_min: two calls per step
    print(f"DyWeight demo{' (--quick)' if arguments.quick else ''}: digits EDM model "
          f"({sum(p.numel() for p in model.module.parameters()) / 1e6:.1f} M parameters, "
          f"{'×'.join(map(str, model.image_shape[1:]))} px), {torch.get_num_threads()} torch thread(s)")
    print(f"  distilling Φ for NFE {', '.join(map(str, config.nfe))} from {config.pairs} teacher pairs "
          f"(Heun, {config.teacher_steps} steps = {teacher_nfe} model calls per image), "
          f"{config.iterations} iterations each; then {settings.test_pairs} fresh test seeds", flush=True)

    clock = time.monotonic()
    train_run = pipeline.teacher_set(model, settings, cache_dir, "train")
    print(describe_teacher(train_run, cache_dir, "training teacher pairs"), flush=True)
    test = pipeline.teacher_set(model, settings, cache_dir, "test")
    print(describe_teacher(test, cache_dir, "test-set teacher images"), flush=True)
    timings["teacher_s"] = time.monotonic() - clock

    clock = time.monotonic()
    result = pipeline.distil(model, settings, cache_dir)
    timings["distil_s"] = time.monotonic() - clock

    clock = time.monotonic()
    rows, images = pipeline.evaluate(model, result.candidates, test, settings, space)
    teacher_fd = space.frechet_distance(test.pairs.target)
    timings["evaluation_s"] = time.monotonic() - clock

    clock = time.monotonic()
    outputs = write_outputs(out, settings, model, result, rows, images, test, teacher_nfe, teacher_fd)
    timings["outputs_s"] = time.monotonic() - clock
    timings.update(teacher={"train": {"cache_hit": train_run.cache_hit, "generation_s": train_run.seconds},
                            "test": {"cache_hit": test.cache_hit, "generation_s": test.seconds}},
                   optimisation_s={str(n): s for n, s in result.timings["optimisation_s"].items()})
    timings["total_s"] = time.monotonic() - STARTED

    verdict = pipeline.bar_verdict(rows)
    notes = list(result.notes) + pipeline.nfe_check(rows, settings)
    if not result.timings["teacher_cache_hit"]:
        notes.append("the trainer ran the teacher again instead of using the pairs generated for it "
                     "(their cache keys differ): the run took longer than it should")
    fd_reference = {"teacher_fd": teacher_fd, "heldout_digits": len(space.heldout_labels),
                    "features": int(space.reference_features.shape[1]),
                    "classifier_sha256": pipeline.file_sha256(space.path)}
    document = {"settings": settings.as_dict(), "quick": arguments.quick, "model": pipeline.model_facts(model),
                "machine": pipeline.machine(), "cache_dir": str(cache_dir), "timings": timings, "table": rows,
                "fd_reference": fd_reference, "bar": verdict, "notes": notes,
                "outputs": [str(path) for path in outputs]}
    tables = (f"Test RMSE (PSNR) to the teacher over {settings.test_pairs} fresh seeds; lower RMSE is better. "
              f"DyWeight's first step is analytical (no model call), so it gets the same model calls.\n\n"
              + pipeline.markdown_table(rows)
              + f"\nFréchet distance (FD) of the same {settings.test_pairs} images to {fd_reference['heldout_digits']} "
              f"held-out real digits, in the {fd_reference['features']}-d features of the demo's digits classifier; "
              f"lower is better; the teacher's is the reference, and with {settings.test_pairs} images differences "
              f"of about 10 are sampling noise.\n\n"
              + pipeline.fd_table(rows, LABELS, f"Teacher (Heun, {teacher_nfe} NFE)", teacher_fd))
    write_text_atomic(out / "table.md", tables)
    write_text_atomic(out / "results.json", json.dumps(document, indent=1) + "\n")

    print()
    print(tables)
    if not arguments.quick:
        print(f"bar (DyWeight ≤ {pipeline.BAR:g} × the best hand-made solver's RMSE at NFE "
              f"{', '.join(map(str, verdict['nfe']))}): {'met' if verdict['met'] else 'NOT met'}")
        for row in rows:
            versus_ipndm = ", ".join(f"{label} {row['solvers'][family]['rmse'] / row['solvers']['ipndm']['rmse']:.2f}"
                                     for family, label in pipeline.TRAINED.items() if family in row["solvers"])
            print(f"NFE {row['nfe']}: test RMSE / iPNDM's: {versus_ipndm}; {pipeline.TRAINED[row['winner']]} wins")
    for note in notes:
        print(f"note: {note}")
    print(f"time: {timings['total_s']:.0f} s in all (teacher pairs {'cached' if train_run.cache_hit else 'generated'}, "
          f"optimisation {sum(result.timings['optimisation_s'].values()):.0f} s, "
          f"evaluation {timings['evaluation_s']:.0f} s)")
    print("wrote " + ", ".join(str(path) for path in [*outputs, out / "table.md", out / "results.json"]))
    return 0


def write_outputs(out: Path, settings, model, result, rows, images, test, teacher_nfe: int,
                  teacher_fd: float) -> list:
    written = []
    for nfe, trained in result.candidates.items():
        for family, phi in trained.items():
            path = out / "phi" / f"digits-edm-{family}-nfe{nfe}.safetensors"
            phi.save(path)
            written.append(path)
    written += write_report(result, out, "training")

    names = [*SOLVERS, *(family for family in pipeline.TRAINED if family in rows[0]["solvers"])]
    columns = [f"Teacher (Heun, {teacher_nfe} NFE)", *SOLVERS.values(),
               *(f"{pipeline.TRAINED[family]} (distilled)" for family in names[len(SOLVERS):])]
    teacher_images = test.pairs.target[:settings.grid_seeds]
    cells, captions = [], []
    for row in rows:
        nfe = row["nfe"]
        cells.append([teacher_images] + [images[nfe][name] for name in names])
        captions.append(["reference"] + [f"RMSE {row['solvers'][name]['rmse']:.3f}  {row['solvers'][name]['psnr']:.1f} dB"
                                         for name in names])
    grid = figures.comparison_grid(
        out / "grid.png",
        title=[f"DyWeight and DSS vs hand-made solvers on the embedded digits model: the same {settings.grid_seeds} "
               f"test seeds in every cell",
               f"RMSE / PSNR to the teacher over {settings.test_pairs} test seeds; each row: NFE = model calls "
               f"per image (DyWeight's first step is analytical)"],
        columns=columns, rows=[f"NFE {row['nfe']}" for row in rows], cells=cells, captions=captions,
        accent_column=len(columns) - 1)
    written.append(grid)

    nfes = [row["nfe"] for row in rows]
    labels = {**LABELS, **{family: f"{label} (distilled)" for family, label in pipeline.TRAINED.items()}}
    plotted = pipeline.column_names(rows)

    def series(name: str, figure: str) -> list:  # NaN where a solver has no entry at that NFE (not drawn)
        return [row["solvers"][name][figure] if name in row["solvers"] else math.nan for row in rows]

    rmse = {name: series(name, "rmse") for name in plotted}
    psnr = {name: series(name, "psnr") for name in plotted}
    fd = {name: series(name, "fd") for name in plotted}
    plot = out / "error_vs_nfe.png"
    if figures.error_plot(plot, nfes, rmse, psnr, labels,
                          title=f"Digits EDM model: error to the teacher (Heun, {teacher_nfe} NFE) and Fréchet "
                                f"distance to real digits on {settings.test_pairs} test seeds",
                          fd=fd, fd_teacher=teacher_fd):
        written.append(plot)
    return written


if __name__ == "__main__":
    sys.exit(main())
