"""``python -m comfyui_dyweight.trainer …``: see :mod:`comfyui_dyweight.trainer.cli`."""

from .cli import main

raise SystemExit(main())
