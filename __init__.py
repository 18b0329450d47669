"""ComfyUI-DyWeight: learned few-step diffusion sampling (DyWeight, arXiv 2603.11607) for ComfyUI.

ComfyUI loads this folder as a custom-node package and reads ``NODE_CLASS_MAPPINGS``,
``NODE_DISPLAY_NAME_MAPPINGS`` and ``WEB_DIRECTORY``. The node mappings are resolved lazily (PEP 562)
so that ``comfyui_dyweight.coefficients`` and ``comfyui_dyweight.trainer`` import without ComfyUI; the
first time ComfyUI reads them, ``nodes`` is imported, which also registers the ``dyweight`` sampler.
"""

from .version import __version__

WEB_DIRECTORY = "./web"
_NODE_EXPORTS = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")

__all__ = ["__version__", "WEB_DIRECTORY", *_NODE_EXPORTS]


def __getattr__(name):
    if name in _NODE_EXPORTS:
        from . import nodes
        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
