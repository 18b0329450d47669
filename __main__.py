"""``python -m comfyui_dyweight …``: the command line (:mod:`comfyui_dyweight.cli`)."""

from .cli import main

raise SystemExit(main())
