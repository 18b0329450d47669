"""``train``: distil Φ files for a model source and write them with the validation report.

    python -m comfyui_dyweight train --toy gmm --out runs/toy --nfe 3 4 5
    python -m comfyui_dyweight train --comfyui ~/ComfyUI --checkpoint sd15.safetensors \
        --prompts prompts.txt --cfg 7 --nfe 4 5 6

writes ``<name>-nfe<N>.safetensors`` per NFE, ``<name>-validation.md``/``.json`` and ``<name>-loss.png``
into ``--out`` (a source may give a default: ``<ComfyUI>/models/dyweight`` for a ComfyUI model); it
refuses to overwrite them without ``--force``. Ctrl-C saves a resumable state (in ``--state-dir``, by
default ``<out>/.dyweight-state/<name>``) and ``--resume`` continues it.

    torchrun --nproc-per-node 2 -m comfyui_dyweight train --toy gmm --out runs/toy

runs one distillation on several processes (:mod:`~comfyui_dyweight.trainer.distributed`): the same Φ
as one process, up to float rounding; rank 0 writes the files.

Model sources are :class:`~comfyui_dyweight.cli.sources.SourceSpec` entries of :data:`SOURCES`;
exactly one must be chosen on the command line. A source is opened (``source.open(body)``) around the
distillation, so a model that only exists inside a context (ComfyUI's) is trained the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..trainer import distributed
from ..trainer.config import DistillConfig
from ..trainer.distill import distill
from ..trainer.progress import TrainingInterrupted
from ..trainer.report import validation_markdown, write_report
from ..trainer.source import ModelSource
from ..trainer.teachers import TEACHERS
from .comfy_source import COMFYUI
from .sources import TOY

#: The model sources the command offers.
SOURCES = [TOY, COMFYUI]
#: The defaults the help texts quote (a model source may suggest others, e.g. for a ComfyUI model).
DEFAULTS = DistillConfig()
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
    output.add_argument("--out", type=Path, help="folder for the Φ files and the report (default for a ComfyUI "
                                                 "model: <ComfyUI>/models/dyweight; required for --toy)")
    output.add_argument("--name", help="file-name stem (default: the source's name, e.g. toy-gmm or the "
                                       "checkpoint's file name without extension)")
    output.add_argument("--force", action="store_true", help="overwrite existing output files")
    output.add_argument("--state-dir", type=Path,
                        help="where Ctrl-C saves the resumable state (default <out>/.dyweight-state/<name>)")
    output.add_argument("--resume", action="store_true", help="continue the run saved in --state-dir")
    output.add_argument("--cache-dir", type=Path,
                        help="cache teacher pairs here and reuse them in later runs (default for a ComfyUI model: "
                             "<ComfyUI>/user/dyweight/teacher-cache, where the Train node keeps its pairs)")
    training = parser.add_argument_group(
        "distillation", "settings left out take the model's defaults (shown; a ComfyUI model's differ where said)")
    training.add_argument("--nfe", type=int, nargs="+", help=f"NFE targets (default {' '.join(map(str, DEFAULTS.nfe))})")
    training.add_argument("--solver", help="the solver family to learn: dyweight (default), dss (Differentiable "
                                           "Solver Search: learned grid and full-history coefficients) or both "
                                           "(keeps the better per NFE)")
    training.add_argument("--pairs", type=int,
                          help="teacher pairs, held-out ones included (default 256; 64 for a ComfyUI model)")
    training.add_argument("--iterations", type=int, help=f"Adam steps per NFE (default {DEFAULTS.iterations})")
    training.add_argument("--batch-size", type=int, help=f"pairs per step (default {DEFAULTS.batch_size})")
    training.add_argument("--micro-batch-size", type=int,
                          help="pairs per forward/backward pass; gradients are summed over the step's batch, so "
                               "smaller values save memory at the same result (default: 1 for a ComfyUI model, "
                               "else the whole batch)")
    training.add_argument("--sampling-batch-size", type=int,
                          help="pairs per model call without gradients: the teacher, the held-out checks and the "
                               "baselines (default: 4 for a ComfyUI model, else --batch-size)")
    training.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS.lr:g})")
    training.add_argument("--dss-lr", type=float, help="peak learning rate of the DSS family (default 3 × --lr)")
    training.add_argument("--dss-init", metavar="FILE",
                          help="start DSS from this DSS Φ (e.g. a shipped flow table, for a flow model) instead of "
                               "Euler on the model's grid")
    training.add_argument("--order", type=int, help=f"gradient history K (default {DEFAULTS.order})")
    training.add_argument("--afs", action="store_true", default=None,
                          help="analytical first step (one model call fewer)")
    training.add_argument("--variable-step-init", action="store_true", default=None,
                          help="start from variable-step Adams–Bashforth instead of iPNDM rows")
    training.add_argument("--teacher", "--comfy-teacher", metavar="SOLVER",
                          help=f"the solver whose many-step result is learned: {', '.join(sorted(TEACHERS))} "
                               f"(default {DEFAULTS.teacher}), or any of ComfyUI's samplers for a ComfyUI model "
                               f"(default dpmpp_2m)")
    training.add_argument("--teacher-steps", type=int,
                          help=f"teacher steps (default {DEFAULTS.teacher_steps}; 35 for a ComfyUI model)")
    training.add_argument("--validation-fraction", type=float,
                          help=f"share of pairs held out (default {DEFAULTS.validation_fraction:g})")
    training.add_argument("--seed", type=int, default=0, help="seed of the noise, the split and mini-batches (default 0)")
    parser.set_defaults(run=run)
    return parser


def run(arguments: argparse.Namespace) -> int:
    chosen = [spec for spec in SOURCES if spec.chosen(arguments)]
    if len(chosen) != 1:
        names = ", or ".join(spec.usage or "--" + spec.name for spec in SOURCES)
        print(f"train: choose exactly one model source ({names})", file=sys.stderr)
        return 2
    try:
        DEFAULTS.with_given(**given_settings(arguments))  # refuse bad settings before a model is loaded
        source = chosen[0].build(arguments)
    except ValueError as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    name = arguments.name or source.name
    out = arguments.out or source.default_out
    if out is None:
        print(f"train: --out is required for {chosen[0].usage or '--' + chosen[0].name}", file=sys.stderr)
        return 2
    outputs = output_paths(out, name, arguments.nfe or DEFAULTS.nfe)
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not arguments.force:
        print(f"train: refusing to overwrite {', '.join(existing)} (use --force)", file=sys.stderr)
        return 2
    state_dir = arguments.state_dir or out / ".dyweight-state" / name
    cache_dir = arguments.cache_dir or source.default_cache_dir
    distributed.ranks()  # under torchrun: join the group (and take this rank's GPU) before a model loads
    distributed.interrupt_on_terminate()
    try:
        result = source.open(lambda live: _distill(live, arguments, state_dir, cache_dir))
    except TrainingInterrupted as stop:
        print(f"\ntrain: {stop}. Run the same command with --resume to continue.", file=sys.stderr)
        return INTERRUPTED
    except ValueError as error:  # options that only the loaded model can check (scheduler, files, …)
        print(f"train: {error}", file=sys.stderr)
        return 2
    if not distributed.ranks().main:  # torchrun: rank 0 writes the files and the report
        return 0
    if result.timings.get("teacher_cache_hit"):
        print(f"teacher pairs: reused from the cache in {cache_dir or state_dir}")
    for nfe, phi in result.coefficients.items():
        phi.save(out / f"{name}-nfe{nfe}.safetensors")
    written = write_report(result, out, name)
    print(validation_markdown(result.table), end="")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {len(result.coefficients)} Φ files and {', '.join(path.name for path in written)} to {out}")
    return 0


def output_paths(folder: Path, name: str, targets) -> list:
    """Every file the command writes (the PNG too, so ``--force`` covers a plot from an earlier run)."""
    return ([folder / f"{name}-nfe{nfe}.safetensors" for nfe in targets]
            + [folder / f"{name}-validation.md", folder / f"{name}-validation.json", folder / f"{name}-loss.png"])


def _distill(source: ModelSource, arguments: argparse.Namespace, state_dir: Path, cache_dir):
    """The live source's distillation with the settings given on the command line."""
    return distill(source, source.config(**given_settings(arguments)), cache_dir=cache_dir, state_dir=state_dir,
                   resume=arguments.resume)


#: The command's options that are :class:`DistillConfig` settings (same names).
SETTINGS = ("nfe", "solver", "pairs", "iterations", "batch_size", "micro_batch_size", "sampling_batch_size", "lr",
            "dss_lr", "dss_init", "order",
            "afs", "variable_step_init", "teacher", "teacher_steps", "validation_fraction", "seed")


def given_settings(arguments: argparse.Namespace) -> dict:
    """The :class:`DistillConfig` settings on the command line (``None``: not given)."""
    return {name: getattr(arguments, name) for name in SETTINGS}
