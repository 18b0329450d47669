"""``python -m comfyui_dyweight import SRC… --out DIR``: convert the paper's released coefficients.

See :mod:`comfyui_dyweight.release.convert` for what is converted and how; nothing in the release files is executed.
"""

from __future__ import annotations

import argparse
import sys

from ..coefficients.errors import CoefficientError
from ..release.convert import (DEFAULT_FLUX_RESOLUTION, ReleaseImportError, flux_resolution_mu,
                             import_release_files)
from ..release.safe_unpickle import UnsafePickleError


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``import`` subcommand to the command line's subparsers."""
    parser = subparsers.add_parser(
        "import", help="convert the coefficients published with the DyWeight paper into dyweight/1 files",
        description="Convert the DyWeight release's coefficient files (exps/*/network-snapshot-*.pkl for the "
                    "pixel-space, LSUN-Bedroom LDM and Stable Diffusion 1.5 tables; dyweight_flux/checkpoints/"
                    "*.pt for FLUX.1-dev) into .safetensors coefficient files for ComfyUI. The files are read "
                    "without running any code from them.")
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="release files, or folders to search for network-snapshot-*.pkl (newest per run "
                             "folder) and dyweight*.pt")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write into, normally ComfyUI/models/dyweight")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    flux = parser.add_mutually_exclusive_group()
    flux.add_argument("--flux-resolution", metavar="WxH", type=_resolution,
                      help="image size the FLUX tables are meant for, sets the shift μ "
                           f"(default {DEFAULT_FLUX_RESOLUTION[0]}x{DEFAULT_FLUX_RESOLUTION[1]}, the training "
                           "resolution of the released FLUX tables: μ = 0.63; 1024x1024: μ = 1.15)")
    flux.add_argument("--flux-mu", type=float, metavar="MU", help="FLUX shift μ, given directly")
    parser.set_defaults(run=run)
    return parser


def _resolution(text: str) -> tuple:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1024x1024, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is too small")
    return width, height


def run(arguments) -> int:
    """Convert, print one line per written file; exit 1 with the reason on any problem."""
    mu = arguments.flux_mu
    if mu is None and arguments.flux_resolution is not None:
        mu = flux_resolution_mu(*arguments.flux_resolution)
    try:
        written = import_release_files(arguments.sources, arguments.out, force=arguments.force, flux_mu=mu)
    except (UnsafePickleError, ReleaseImportError, CoefficientError, FileExistsError, OSError) as error:
        print(f"dyweight import: error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    print(f"dyweight import: wrote {len(written)} coefficient file{'s' if len(written) != 1 else ''} "
          f"to {arguments.out}")
    return 0
