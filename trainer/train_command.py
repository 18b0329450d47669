"""``train``: distil Φ files for a model source and write them with the validation report.

    python -m comfyui_dyweight.trainer train --toy gmm --out runs/toy --nfe 3 4 5

writes ``<name>-nfe<N>.safetensors`` per NFE, ``<name>-validation.md``/``.json`` and ``<name>-loss.png``
into ``--out``; it refuses to overwrite them without ``--force``. Ctrl-C saves a resumable state (in
``--state-dir``, by default ``<out>/.dyweight-state/<name>``) and ``--resume`` continues it.

Model sources are :class:`~comfyui_dyweight.trainer.sources.SourceSpec` entries of :data:`SOURCES`;
exactly one must be chosen on the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .distill import (DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS, DEFAULT_LR, DEFAULT_ORDER, DEFAULT_TEACHER_STEPS,
                      DEFAULT_VALIDATION_FRACTION, distill)
from .progress import TrainingInterrupted
from .report import validation_markdown, write_report
from .sources import TOY, ModelSource
from .teachers import TEACHERS

#: The model sources the command offers (the ComfyUI checkpoint source is appended here).
SOURCES = [TOY]
#: Exit status of an interrupted run (128 + SIGINT, as shells report Ctrl-C).
INTERRUPTED = 130


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="distil DyWeight coefficients for a model",
        description="Distil a DyWeight Φ per NFE from a many-step teacher (paper Algorithm 1) and write the "
                    "Φ files, the validation table (Markdown + JSON) and a loss plot.")
    sources = parser.add_argument_group("model source (choose one)")
    for spec in SOURCES:
        spec.add_arguments(sources)
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, required=True, help="folder for the Φ files and the report")
    output.add_argument("--name", help="file-name stem (default: the source's name, e.g. toy-gmm)")
    output.add_argument("--force", action="store_true", help="overwrite existing output files")
    output.add_argument("--state-dir", type=Path,
                        help="where Ctrl-C saves the resumable state (default <out>/.dyweight-state/<name>)")
    output.add_argument("--resume", action="store_true", help="continue the run saved in --state-dir")
    output.add_argument("--cache-dir", type=Path, help="cache teacher pairs here and reuse them in later runs")
    training = parser.add_argument_group("distillation")
    training.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5], help="NFE targets (default 3 4 5)")
    training.add_argument("--pairs", type=int, help="teacher pairs, held-out ones included (default 256)")
    training.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                          help="Adam steps per NFE (default %(default)s)")
    training.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                          help="pairs per step (default %(default)s)")
    training.add_argument("--lr", type=float, default=DEFAULT_LR,
                          help="peak learning rate (default %(default)s)")
    training.add_argument("--order", type=int, default=DEFAULT_ORDER,
                          help="gradient history K (default %(default)s)")
    training.add_argument("--afs", action="store_true", help="analytical first step (one model call fewer)")
    training.add_argument("--variable-step-init", action="store_true",
                          help="start from variable-step Adams–Bashforth instead of iPNDM rows")
    training.add_argument("--teacher", choices=sorted(TEACHERS), default="heun",
                          help="teacher solver (default %(default)s)")
    training.add_argument("--teacher-steps", type=int, default=DEFAULT_TEACHER_STEPS,
                          help="teacher steps (default %(default)s)")
    training.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION,
                          help="share of pairs held out (default %(default)s)")
    training.add_argument("--seed", type=int, default=0, help="seed of the split and mini-batches (default 0)")
    parser.set_defaults(run=run)
    return parser


def run(arguments: argparse.Namespace) -> int:
    chosen = [spec for spec in SOURCES if spec.chosen(arguments)]
    if len(chosen) != 1:
        print(f"train: choose exactly one model source ({', '.join('--' + spec.name for spec in SOURCES)})",
              file=sys.stderr)
        return 2
    source = chosen[0].build(arguments)
    name = arguments.name or source.name
    outputs = output_paths(arguments.out, name, arguments.nfe)
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not arguments.force:
        print(f"train: refusing to overwrite {', '.join(existing)} (use --force)", file=sys.stderr)
        return 2
    state_dir = arguments.state_dir or arguments.out / ".dyweight-state" / name
    try:
        result = _distill(source, arguments, state_dir)
    except TrainingInterrupted as stop:
        print(f"\ntrain: {stop}. Run the same command with --resume to continue.", file=sys.stderr)
        return INTERRUPTED
    for nfe, phi in result.coefficients.items():
        phi.save(arguments.out / f"{name}-nfe{nfe}.safetensors")
    written = write_report(result, arguments.out, name)
    print(validation_markdown(result.table), end="")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {len(result.coefficients)} Φ files and {', '.join(path.name for path in written)} to {arguments.out}")
    return 0


def output_paths(folder: Path, name: str, targets) -> list:
    """Every file the command writes (the PNG too, so ``--force`` covers a plot from an earlier run)."""
    return ([folder / f"{name}-nfe{nfe}.safetensors" for nfe in targets]
            + [folder / f"{name}-validation.md", folder / f"{name}-validation.json", folder / f"{name}-loss.png"])


def _distill(source: ModelSource, arguments: argparse.Namespace, state_dir: Path):
    return distill(
        source.denoise, source.noise, source.schedule, arguments.nfe,
        teacher=source.teacher or arguments.teacher, teacher_steps=arguments.teacher_steps,
        order=arguments.order, afs=arguments.afs, divisor=source.divisor, variable_step_init=arguments.variable_step_init,
        iterations=arguments.iterations, batch_size=arguments.batch_size, lr=arguments.lr,
        validation_fraction=arguments.validation_fraction, pairs=arguments.pairs, seed=arguments.seed,
        checkpointing=source.checkpointing, cache_dir=arguments.cache_dir, cache_key=source.cache_key,
        state_dir=state_dir, resume=arguments.resume, baselines=source.baselines, conditions=source.conditions,
        phi_fields=source.phi_fields)
