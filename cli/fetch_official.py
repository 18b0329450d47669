"""``python -m comfyui_dyweight fetch-official [--out DIR]``: download and convert the paper's coefficients.

See :mod:`comfyui_dyweight.release.fetch` for what is fetched (the release's SD1.5 and FLUX.1-dev tables
at a pinned commit) and how it is checked; nothing in the release files is executed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..coefficients.errors import CoefficientError
from ..release.convert import ReleaseImportError
from ..release.fetch import BASE_URL_VARIABLE, DEFAULT_TIMEOUT, FetchError, fetch_official
from ..release.safe_unpickle import UnsafePickleError
from .train import INTERRUPTED


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``fetch-official`` subcommand to the command line's subparsers."""
    parser = subparsers.add_parser(
        "fetch-official", help="download the DyWeight paper's SD1.5 and FLUX coefficients and convert them",
        description="Download the DyWeight release's Stable Diffusion 1.5 (MS-COCO, CFG 7.5, NFE 8/12/16/20) and "
                    "FLUX.1-dev (NFE 3/5/7) coefficient files at a pinned commit, check each against its pinned "
                    "SHA-256 and convert them into .safetensors coefficient files for ComfyUI. An interrupted "
                    "run continues where it stopped; files already converted are not downloaded again.")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder to write into (default <ComfyUI>/models/dyweight)")
    parser.add_argument("--comfyui", metavar="PATH", default=os.environ.get("COMFYUI_PATH") or None,
                        help="the ComfyUI folder whose models/dyweight is the default --out (default $COMFYUI_PATH)")
    parser.add_argument("--base-url", metavar="URL",
                        help=f"download from this base URL instead (a mirror with the release's paths; default "
                             f"${BASE_URL_VARIABLE}, else the pinned commit on raw.githubusercontent.com); the "
                             f"pinned SHA-256 digests are checked all the same")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up on a connection that sends nothing for this long (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing files of the same names converted from other sources")
    parser.set_defaults(run=run)
    return parser


class _Progress:
    """A byte bar per download (tqdm when installed, else one line per file) and a line per other event."""

    def __init__(self):
        self.stream = sys.stderr
        self.bar = None
        self.file = None

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "download":
            if event["file"] != self.file:
                self.close()
                self.file = event["file"]
                self.bar = self._open(event)
            if self.bar is not None:
                self.bar.update(event["done"] - self.bar.n)
        elif kind == "present":
            self.close()
            print(f"{event['file']}: already converted as {event['output']}", file=self.stream)
        elif kind == "convert":
            self.close()
            print(f"converting {event['count']} file{'s' if event['count'] != 1 else ''}", file=self.stream)

    def _open(self, event: dict):
        label = f"[{event['index'] + 1}/{event['count']}] {event['file']}"
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional
            resumed = f", continuing at {event['done']}" if event["done"] else ""
            print(f"downloading {label} ({event['total']} bytes{resumed})", file=self.stream)
            return None
        return tqdm(total=event["total"], initial=event["done"], desc=label, unit="B", unit_scale=True,
                    dynamic_ncols=True, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = self.file = None


def run(arguments) -> int:
    """Fetch and convert, print one line per written file; exit 1 with the reason (and the manual steps)."""
    out = arguments.out
    if out is None:
        if not arguments.comfyui:
            print("dyweight fetch-official: error: give --out DIR (normally ComfyUI/models/dyweight), or --comfyui "
                  "PATH / $COMFYUI_PATH", file=sys.stderr)
            return 2
        out = Path(arguments.comfyui) / "models" / "dyweight"
    progress = _Progress()
    try:
        result = fetch_official(out, base_url=arguments.base_url, force=arguments.force, timeout=arguments.timeout,
                                progress=progress)
    except KeyboardInterrupt:
        progress.close()
        print("dyweight fetch-official: interrupted; run the same command again to continue", file=sys.stderr)
        return INTERRUPTED
    except (FetchError, UnsafePickleError, ReleaseImportError, CoefficientError, FileExistsError, OSError) as error:
        progress.close()
        print(f"dyweight fetch-official: error: {error}", file=sys.stderr)
        return 1
    progress.close()
    for path in result.written:
        print(path)
    print(f"dyweight fetch-official: wrote {len(result.written)} coefficient file"
          f"{'s' if len(result.written) != 1 else ''} to {out}"
          f"{f'; {len(result.present)} already there' if result.present else ''}")
    return 0
