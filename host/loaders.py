"""Load ComfyUI and its models outside a running ComfyUI (the command line's trainer).

:func:`import_comfyui` makes a ComfyUI folder the one ``import comfy`` finds, with its default settings;
:func:`load_model` loads a checkpoint or a diffusion model with its text encoders as ComfyUI's loader
nodes do. Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence


def import_comfyui(host: Path, cpu: bool = False) -> None:
    """Make ``host`` the ComfyUI that ``import comfy`` finds, with its default settings (``--cpu`` if asked
    for or when torch has no GPU). ComfyUI's own command line is not parsed (it is off unless main.py
    turns it on), so our options never reach it."""
    loaded = sys.modules.get("comfy")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", None) or list(loaded.__path__)[0]).resolve()
        if host not in where.parents:
            raise ValueError(f"another ComfyUI is already imported in this process (from {where})")
    if not sys.path or Path(sys.path[0] or ".").resolve() != host:
        sys.path.insert(0, str(host))
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules and (cpu or not _has_accelerator()):
        if not cpu:
            print("dyweight: no GPU found: running ComfyUI on the CPU (--cpu)", file=sys.stderr)
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads the device settings once, at import)


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def load_model(checkpoint: Optional[str] = None, diffusion_model: Optional[str] = None,
               text_encoders: Sequence[str] = (), clip_type: Optional[str] = None):
    """(MODEL, CLIP, model file) with ComfyUI's loaders, as its loader nodes call them: a ``checkpoint``
    as CheckpointLoaderSimple loads it, or a ``diffusion_model`` with its ``text_encoders`` combined as
    ``clip_type`` (CLIPType name, lower case) as UNETLoader + CLIPLoader/DualCLIPLoader do."""
    import comfy.sd
    import folder_paths

    embeddings = folder_paths.get_folder_paths("embeddings")
    if checkpoint is not None:
        path = model_path(checkpoint, "checkpoints")
        model, clip = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True,
                                                            embedding_directory=embeddings)[:2]
        return model, clip, path
    path = model_path(diffusion_model, "diffusion_models", "unet")
    load_diffusion_model = getattr(comfy.sd, "load_diffusion_model", None) or comfy.sd.load_unet  # 2024: load_unet
    model = load_diffusion_model(str(path))
    clip_type = getattr(comfy.sd.CLIPType, clip_type.upper(), None)
    if clip_type is None:
        names = ", ".join(member.name.lower() for member in comfy.sd.CLIPType)
        raise ValueError(f"--clip-type {clip_type} is not one of this ComfyUI's: {names}")
    encoders = [str(model_path(name, "text_encoders", "clip")) for name in text_encoders]
    clip = comfy.sd.load_clip(ckpt_paths=encoders, embedding_directory=embeddings, clip_type=clip_type)
    return model, clip, path


def model_path(name: str, *folders: str) -> Path:
    """``name`` as a file, else as a name in the host's model folders (``folder_paths``)."""
    import folder_paths

    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    for folder in folders:
        try:
            found = folder_paths.get_full_path(folder, name)
        except KeyError:  # a folder name this host does not know
            found = None
        if found:
            return Path(found)
    raise ValueError(f"model file {name} not found (as a path, or in ComfyUI's models/{folders[0]})")
