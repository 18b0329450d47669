"""Where coefficient files live: ``models/dyweight/`` (registered with ``folder_paths``) and the shipped presets.

Names shown in the UI are the ``folder_paths`` names of user files plus ``shipped/<path>`` for the
presets inside the pack. A name resolves only if it is one of the listed names, so nothing outside the
registered folders can be reached (no ``..``, no absolute paths).
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..coefficients import PresetRegistry
from ..coefficients.presets import SHIPPED_DIR
from .constants import FOLDER_NAME

EXTENSIONS = {".safetensors"}
SHIPPED_PREFIX = "shipped/"


def register_folder() -> None:
    """Register ``models/dyweight`` (idempotent; keeps paths that extra_model_paths.yaml added first)."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER_NAME, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(EXTENSIONS))


def user_folders() -> list:
    return [Path(path) for path in folder_paths.get_folder_paths(FOLDER_NAME)]


def forget_listing() -> None:
    """Drop ``folder_paths``' cached file list of ``models/dyweight`` so files written just now are listed.

    ComfyUI re-reads a folder when its modification time changes, but a rename within the same clock tick
    of a coarse file system can leave the old list; the next ``get_filename_list`` call rebuilds it.
    """
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(FOLDER_NAME, None)


def coefficient_names() -> list:
    """Every selectable coefficient file: user files first, then the shipped presets."""
    user = sorted(folder_paths.get_filename_list(FOLDER_NAME))
    shipped = sorted(SHIPPED_PREFIX + path.relative_to(SHIPPED_DIR).as_posix()
                     for path in SHIPPED_DIR.rglob("*.safetensors"))
    return user + shipped


def resolve_coefficient_name(name: str) -> Path:
    """The file behind a listed name; ``ValueError`` for anything that is not a listed name."""
    if not isinstance(name, str) or name not in coefficient_names():
        raise ValueError(f"'{name}' is not a DyWeight coefficient file in models/{FOLDER_NAME}/ or the shipped presets")
    if name.startswith(SHIPPED_PREFIX):
        path = (SHIPPED_DIR / name[len(SHIPPED_PREFIX):]).resolve()
        if path.is_relative_to(SHIPPED_DIR) and path.is_file():
            return path
    full = folder_paths.get_full_path(FOLDER_NAME, name)
    if full is None:
        raise ValueError(f"'{name}' is no longer in models/{FOLDER_NAME}/")
    return Path(full)


_registry: dict = {"folders": None, "registry": None}


def preset_registry() -> PresetRegistry:
    """The one registry over the user's folders and the shipped presets: every load of a coefficient file
    (presets, the Load node, the routes) goes through its cache. A new one when the folders change."""
    user = tuple(user_folders())
    if _registry["registry"] is None or _registry["folders"] != user:
        _registry.update(folders=user, registry=PresetRegistry(user))
    return _registry["registry"]
