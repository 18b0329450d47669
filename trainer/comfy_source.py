"""The ``train`` command's ComfyUI source: a model loaded by ComfyUI's own loaders, distilled through it.

    python -m comfyui_dyweight.trainer train --comfyui ~/ComfyUI --checkpoint sd15.safetensors \
        --prompts prompts.txt --cfg 7 --nfe 4 5 6
    python -m comfyui_dyweight.trainer train --comfyui ~/ComfyUI --diffusion-model flux1-dev.safetensors \
        --text-encoder clip_l.safetensors t5xxl_fp16.safetensors --clip-type flux --guidance 3.5 \
        --prompts prompts.txt --width 1024 --height 1024 --nfe 5 6

ComfyUI is imported from ``--comfyui`` (inserted first on ``sys.path``, as its ``main.py`` runs; this
package only uses relative imports, so ComfyUI's top-level ``nodes``/``utils`` shadow nothing of ours).
The checkpoint is loaded as CheckpointLoaderSimple loads it, a diffusion model with its text encoders as
UNETLoader + CLIPLoader/DualCLIPLoader do, and the prompts are encoded as CLIPTextEncode encodes them
(FLUX guidance is set on the positive conditioning as the FluxGuidance node sets it). Everything else —
noise, schedule, teacher, baselines, cache key, the Φ's fields — is
:func:`~comfyui_dyweight.trainer.comfy_adapter.open_comfy_source`, the same wiring as the Train node's.

Nothing here imports ComfyUI before the source is opened, so the command line parses (and refuses to
overwrite) without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .sources import DeferredSource, SourceSpec

#: CFG when none is given: 7 for eps/v models; FLUX is guidance-distilled (1 = no negative pass; use --guidance).
DEFAULT_CFG, DEFAULT_FLUX_CFG = 7.0, 1.0


def add_arguments(group) -> None:
    group.add_argument("--comfyui", metavar="PATH", default=os.environ.get("COMFYUI_PATH") or None,
                       help="the ComfyUI folder to load the model with (default $COMFYUI_PATH)")
    group.add_argument("--checkpoint", metavar="FILE",
                       help="a ComfyUI checkpoint (SD1.5, SDXL, SD3, …): a path, or a name in models/checkpoints")
    group.add_argument("--diffusion-model", metavar="FILE",
                       help="a diffusion model without text encoders (FLUX-style): a path, or a name in "
                            "models/diffusion_models; needs --text-encoder and --clip-type")
    group.add_argument("--text-encoder", metavar="FILE", nargs="+",
                       help="the text encoder file(s) for --diffusion-model (FLUX: clip_l and t5xxl): paths, or "
                            "names in models/text_encoders")
    group.add_argument("--clip-type", metavar="TYPE",
                       help="how ComfyUI combines the text encoders, as in its CLIP loaders: flux, sd3, "
                            "stable_diffusion, … (any of the host's CLIPType names, lower case)")
    group.add_argument("--prompts", type=Path, metavar="FILE",
                       help="training prompts, one per line (blank lines ignored); pairs take them in turn")
    group.add_argument("--negative", default="", metavar="TEXT", help="the negative prompt (default empty)")
    group.add_argument("--cfg", type=float,
                       help=f"the CFG you sample at (default {DEFAULT_CFG:g}; {DEFAULT_FLUX_CFG:g} for FLUX models)")
    group.add_argument("--guidance", type=float,
                       help="FLUX guidance, set on the prompts' conditioning as the FluxGuidance node does "
                            "(default: the model's, 3.5 for FLUX dev)")
    group.add_argument("--width", type=int, default=512, help="image width of the training latents (default 512)")
    group.add_argument("--height", type=int, default=512, help="image height of the training latents (default 512)")
    group.add_argument("--scheduler", metavar="NAME",
                       help="the ComfyUI scheduler the Φ is trained on (default karras, or simple for flow models)")
    group.add_argument("--comfy-teacher", metavar="SAMPLER",
                       help="the ComfyUI sampler whose many-step result is learned (default dpmpp_2m)")
    group.add_argument("--cpu", action="store_true",
                       help="run ComfyUI on the CPU, as its --cpu flag (automatic when torch has no GPU)")


def chosen(arguments: argparse.Namespace) -> bool:
    return arguments.checkpoint is not None or arguments.diffusion_model is not None


def build(arguments: argparse.Namespace) -> DeferredSource:
    """Check the options (ValueError with what to change) and defer loading to ``open``."""
    if arguments.comfyui is None:
        raise ValueError("--comfyui PATH (or $COMFYUI_PATH) must name the ComfyUI folder to load the model with")
    host = Path(arguments.comfyui).expanduser().resolve()
    if not ((host / "comfy").is_dir() and (host / "folder_paths.py").is_file()):
        raise ValueError(f"--comfyui {arguments.comfyui} is not a ComfyUI folder "
                         f"(it has no comfy/ and folder_paths.py)")
    if arguments.checkpoint is not None and arguments.diffusion_model is not None:
        raise ValueError("give either --checkpoint or --diffusion-model, not both")
    if arguments.diffusion_model is not None and not (arguments.text_encoder and arguments.clip_type):
        raise ValueError("--diffusion-model needs its text encoders: --text-encoder FILE [FILE …] --clip-type TYPE")
    if arguments.checkpoint is not None and (arguments.text_encoder or arguments.clip_type):
        raise ValueError("--text-encoder/--clip-type go with --diffusion-model; a checkpoint brings its own")
    if arguments.teacher is not None:
        raise ValueError("--teacher picks a built-in solver for --toy; for a ComfyUI model use --comfy-teacher SAMPLER")
    if arguments.prompts is None:
        raise ValueError("--prompts FILE (one prompt per line) is required for a ComfyUI model")
    prompts = read_prompts(arguments.prompts)
    for side in ("width", "height"):
        if getattr(arguments, side) < 8 or getattr(arguments, side) % 8:
            raise ValueError(f"--{side} must be a positive multiple of 8, got {getattr(arguments, side)}")
    model_file = arguments.checkpoint or arguments.diffusion_model
    return DeferredSource(
        name=Path(model_file).stem, opener=lambda body: open_source(arguments, host, prompts, body),
        default_out=host / "models" / "dyweight", default_cache_dir=host / "user" / "dyweight" / "teacher-cache")


def read_prompts(path: Path) -> list:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"cannot read --prompts {path}: {error.strerror or error}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} has no prompts (one per line)")
    return prompts


def open_source(arguments: argparse.Namespace, host: Path, prompts: list, body):
    """Import ComfyUI, load and encode, then ``body(live source)`` inside ComfyUI's sampling context."""
    import_comfyui(host, cpu=arguments.cpu)
    from . import comfy_adapter  # imports comfy: only now that the host is importable
    import comfy.samplers
    import torch

    from ..host.model_facts import facts_from_patcher

    with torch.inference_mode():  # as ComfyUI runs its loader and text-encode nodes (2024 loaders need it)
        model, clip, model_file = load_model(arguments)
        negative = comfy_adapter.encode_prompt(clip, arguments.negative)
        positives = [comfy_adapter.encode_prompt(clip, text) for text in prompts]
    facts = facts_from_patcher(model)
    flux = facts.family.lower().startswith("flux")
    cfg = arguments.cfg if arguments.cfg is not None else (DEFAULT_FLUX_CFG if flux else DEFAULT_CFG)
    scheduler = arguments.scheduler
    if scheduler is not None and scheduler not in comfy.samplers.SCHEDULER_NAMES:
        names = ", ".join(comfy.samplers.SCHEDULER_NAMES)
        raise ValueError(f"--scheduler {scheduler} is not one of this ComfyUI's: {names}")
    if arguments.guidance is not None and facts.prediction != "flow":
        print(f"train: note: --guidance only affects guidance-distilled flow models (FLUX); "
              f"this is {facts.family} ({facts.prediction})", file=sys.stderr)

    if arguments.guidance is not None:
        positives = [comfy_adapter.with_guidance(positive, arguments.guidance) for positive in positives]
    target = comfy_adapter.ComfyTarget(model, [(positive, negative) for positive in positives], cfg,
                                       comfy_adapter.latent_shape(model, arguments.width, arguments.height), scheduler)
    teacher = arguments.comfy_teacher or comfy_adapter.DEFAULT_TEACHER
    teacher_steps = arguments.teacher_steps or comfy_adapter.DEFAULT_TEACHER_STEPS
    pairs = arguments.pairs or comfy_adapter.DEFAULT_PAIRS
    print(f"train: {model_file.name}: {facts.family} ({facts.prediction}), {len(prompts)} prompt(s), CFG {cfg:g}"
          f"{'' if arguments.guidance is None else f', guidance {arguments.guidance:g}'}, "
          f"{arguments.width}×{arguments.height}, scheduler {target.schedule_name()}, teacher {teacher} × "
          f"{teacher_steps} steps, {pairs} pairs", file=sys.stderr)
    record = {"negative": arguments.negative, "guidance": arguments.guidance,
              "image_size": [arguments.width, arguments.height]}
    return comfy_adapter.open_comfy_source(
        target, body, teacher=teacher, teacher_steps=teacher_steps, pairs=pairs, seed=arguments.seed,
        base_model=model_file.name, prompts=prompts, name=model_file.stem, record=record)


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
            print("train: no GPU found: running ComfyUI on the CPU (--cpu)", file=sys.stderr)
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads the device settings once, at import)


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def load_model(arguments: argparse.Namespace):
    """(MODEL, CLIP, model file) with ComfyUI's loaders, as its loader nodes call them."""
    import comfy.sd
    import folder_paths

    embeddings = folder_paths.get_folder_paths("embeddings")
    if arguments.checkpoint is not None:
        path = model_path(arguments.checkpoint, "checkpoints")
        model, clip = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True,
                                                            embedding_directory=embeddings)[:2]
        return model, clip, path
    path = model_path(arguments.diffusion_model, "diffusion_models", "unet")
    load_diffusion_model = getattr(comfy.sd, "load_diffusion_model", None) or comfy.sd.load_unet  # 2024: load_unet
    model = load_diffusion_model(str(path))
    clip_type = getattr(comfy.sd.CLIPType, arguments.clip_type.upper(), None)
    if clip_type is None:
        names = ", ".join(member.name.lower() for member in comfy.sd.CLIPType)
        raise ValueError(f"--clip-type {arguments.clip_type} is not one of this ComfyUI's: {names}")
    encoders = [str(model_path(name, "text_encoders", "clip")) for name in arguments.text_encoder]
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


COMFYUI = SourceSpec(name="comfyui", add_arguments=add_arguments, chosen=chosen, build=build,
                     usage="--checkpoint/--diffusion-model (a ComfyUI model)")
