"""``python -m comfyui_dyweight.trainer …``, the command's name before 0.2: the same command line as
``python -m comfyui_dyweight`` (kept so that existing scripts keep working)."""

from ..cli import main

raise SystemExit(main(prog="python -m comfyui_dyweight.trainer"))
