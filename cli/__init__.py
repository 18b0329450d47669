"""The command line: ``python -m comfyui_dyweight {train,import,fetch-official} …`` (argparse front ends only)."""

from __future__ import annotations

import argparse

from . import fetch_official, import_release, train


def main(argv=None, prog: str = "python -m comfyui_dyweight") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Distil, import or fetch DyWeight coefficients (Φ).")
    commands = parser.add_subparsers(dest="command", required=True)
    train.register(commands)
    import_release.register(commands)
    fetch_official.register(commands)
    arguments = parser.parse_args(argv)
    return arguments.run(arguments)
