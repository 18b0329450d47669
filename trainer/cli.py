"""The trainer's command line: ``python -m comfyui_dyweight.trainer {train,import} …``."""

from __future__ import annotations

import argparse

from . import import_command, train_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_dyweight.trainer",
                                     description="Distil or import DyWeight coefficients (Φ).")
    commands = parser.add_subparsers(dest="command", required=True)
    train_command.register(commands)
    import_command.register(commands)
    arguments = parser.parse_args(argv)
    return arguments.run(arguments)
