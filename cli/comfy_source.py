"""The ``train`` command's ComfyUI source: a model loaded by ComfyUI's own loaders, distilled through it.

    python -m comfyui_dyweight train --comfyui ~/ComfyUI --checkpoint sd15.safetensors \
        --prompts prompts.txt --cfg 7 --nfe 4 5 6
    python -m comfyui_dyweight train --comfyui ~/ComfyUI --diffusion-model flux1-dev.safetensors \
        --text-encoder clip_l.safetensors t5xxl_fp16.safetensors --clip-type flux --guidance 3.5 \
        --prompts prompts.txt --width 1024 --height 1024 --nfe 5 6

ComfyUI is imported from ``--comfyui`` (inserted first on ``sys.path``, as its ``main.py`` runs; this
package only uses relative imports, so ComfyUI's top-level ``nodes``/``utils`` shadow nothing of ours).
The checkpoint is loaded as CheckpointLoaderSimple loads it, a diffusion model with its text encoders as
UNETLoader + CLIPLoader/DualCLIPLoader do, and the prompts are encoded as CLIPTextEncode encodes them
(FLUX guidance is set on the positive conditioning as the FluxGuidance node sets it). Everything else —
noise, schedule, teacher, baselines, cache key, the Φ's fields — is
:func:`~comfyui_dyweight.trainer.training_target.open_comfy_source`, the same wiring as the Train node's.

Nothing here imports ComfyUI before the source is opened, so the command line parses (and refuses to
overwrite) without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from ..host.loaders import import_comfyui, load_model
from ..trainer.source import DeferredSource
from .sources import SourceSpec

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
                       help="training prompts: a .txt file, one per line (blank lines ignored), or a .jsonl file with a "
                            "\"prompt\" (or \"caption\"/\"text\") field per line; pairs take them in turn")
    group.add_argument("--negative", default="", metavar="TEXT", help="the negative prompt (default empty)")
    group.add_argument("--cfg", type=float,
                       help=f"the CFG you sample at (default {DEFAULT_CFG:g}; {DEFAULT_FLUX_CFG:g} for FLUX models)")
    group.add_argument("--guidance", type=float,
                       help="FLUX guidance, set on the prompts' conditioning as the FluxGuidance node does "
                            "(default: the model's, 3.5 for FLUX dev)")
    group.add_argument("--cfg-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="train one Φ for a CFG range: each pair draws its CFG from [LOW, HIGH] (instead of --cfg)")
    group.add_argument("--guidance-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="the same for FLUX guidance: each pair draws its guidance from [LOW, HIGH]")
    group.add_argument("--width", type=int, default=512, help="image width of the training latents (default 512)")
    group.add_argument("--height", type=int, default=512, help="image height of the training latents (default 512)")
    group.add_argument("--scheduler", metavar="NAME",
                       help="the ComfyUI scheduler the Φ is trained on (default karras, or simple for flow models)")
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
    if arguments.prompts is None:
        raise ValueError("--prompts FILE (one prompt per line) is required for a ComfyUI model")
    prompts = read_prompts(arguments.prompts)
    cfg_range = cfg_range_record(arguments)
    for side in ("width", "height"):
        if getattr(arguments, side) < 8 or getattr(arguments, side) % 8:
            raise ValueError(f"--{side} must be a positive multiple of 8, got {getattr(arguments, side)}")
    model_file = arguments.checkpoint or arguments.diffusion_model
    default_cache_dir = host / "user" / "dyweight" / "teacher-cache"
    cache_dir = arguments.cache_dir or default_cache_dir
    return DeferredSource(
        name=Path(model_file).stem,
        opener=lambda body: open_source(arguments, host, prompts, cfg_range, cache_dir, body),
        default_out=host / "models" / "dyweight", default_cache_dir=default_cache_dir)


def cfg_range_record(arguments: argparse.Namespace):
    """The Φ's ``cfg`` range record of ``--cfg-range``/``--guidance-range`` (``None`` without one)."""
    given = [(kind, getattr(arguments, f"{kind}_range")) for kind in ("cfg", "guidance")
             if getattr(arguments, f"{kind}_range") is not None]
    if len(given) > 1:
        raise ValueError("give --cfg-range or --guidance-range, not both")
    if arguments.cfg_range is not None and arguments.cfg is not None:
        raise ValueError("--cfg-range replaces --cfg: give one of them")
    if not given:
        return None
    kind, (low, high) = given[0]
    if not 0 <= low <= high:
        raise ValueError(f"--{kind}-range LOW HIGH needs 0 ≤ LOW ≤ HIGH, got {low:g} {high:g}")
    return {"kind": kind, "min": low, "max": high}


#: The caption field of a ``.jsonl`` prompt file, first found wins (the release's COCO files use ``prompt``).
CAPTION_FIELDS = ("prompt", "caption", "text")


def read_prompts(path: Path) -> list:
    """The prompts of a ``.txt`` file (one per line, blank lines ignored) or a ``.jsonl`` file (one JSON
    object per line with a :data:`CAPTION_FIELDS` string, as the release's ``train2014_N5000.jsonl``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read --prompts {path}: {getattr(error, 'strerror', None) or error}") from None
    if Path(path).suffix.lower() == ".jsonl":
        prompts = [_caption(line, number, path) for number, line in enumerate(lines, 1) if line.strip()]
    else:
        prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} has no prompts (one per line)")
    return prompts


def _caption(line: str, number: int, path: Path) -> str:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"--prompts {path}, line {number}: not JSON ({error.msg}); a .jsonl file holds one "
                         f'object per line, e.g. {{"prompt": "a photo of a cat"}}') from None
    fields = [entry.get(field) for field in CAPTION_FIELDS] if isinstance(entry, dict) else []
    caption = next((value for value in fields if isinstance(value, str) and value.strip()), None)
    if caption is None:
        raise ValueError(f"--prompts {path}, line {number}: no caption; each line needs a non-empty string "
                         f"field {' or '.join(repr(field) for field in CAPTION_FIELDS)}")
    return caption.strip()


def open_source(arguments: argparse.Namespace, host: Path, prompts: list, cfg_range: Optional[dict], cache_dir: Path,
                body):
    """Import ComfyUI, load and encode (the encodings cached in ``cache_dir`` with the teacher pairs), then
    ``body(live source)`` inside ComfyUI's sampling context; ``cfg_range``: :func:`cfg_range_record`."""
    import_comfyui(host, cpu=arguments.cpu)
    import torch

    from ..host import training_target  # imports comfy: only now that the host is importable
    from ..host.encodings import encode_prompts
    from ..host.model_facts import check_scheduler, facts_from_patcher

    with torch.inference_mode():  # as ComfyUI runs its loader and text-encode nodes (2024 loaders need it)
        model, clip, model_file = load_model(arguments.checkpoint, arguments.diffusion_model,
                                             arguments.text_encoder or (), arguments.clip_type)
        encoded = encode_prompts(clip, [arguments.negative, *prompts], cache_dir)
    negative, *positives = encoded.conditionings
    if encoded.reused:
        print(f"train: {encoded.reused} of {len(prompts) + 1} prompt encodings (the negative included) reused "
              f"from {cache_dir / 'encodings'}", file=sys.stderr)
    facts = facts_from_patcher(model)
    flux = facts.family.lower().startswith("flux")
    cfg = arguments.cfg if arguments.cfg is not None else (DEFAULT_FLUX_CFG if flux else DEFAULT_CFG)
    scheduler = arguments.scheduler
    if scheduler is not None:
        check_scheduler(scheduler, "--scheduler")
    if arguments.guidance is not None and facts.prediction != "flow":
        print(f"train: note: --guidance only affects guidance-distilled flow models (FLUX); "
              f"this is {facts.family} ({facts.prediction})", file=sys.stderr)

    if arguments.guidance is not None:
        positives = [training_target.with_guidance(positive, arguments.guidance) for positive in positives]
    target = training_target.ComfyTarget(model, [(positive, negative) for positive in positives], cfg,
                                       training_target.latent_shape(model, arguments.width, arguments.height), scheduler,
                                       cfg_range)
    defaults = training_target.COMFY_DEFAULTS
    teacher = arguments.teacher or defaults["teacher"]
    teacher_steps = arguments.teacher_steps or defaults["teacher_steps"]
    pairs = arguments.pairs or defaults["pairs"]
    described_cfg = f"CFG {cfg:g}" if cfg_range is None or cfg_range["kind"] != "cfg" else \
        f"CFG {cfg_range['min']:g}–{cfg_range['max']:g}"
    if cfg_range is not None and cfg_range["kind"] == "guidance":
        described_cfg += f", guidance {cfg_range['min']:g}–{cfg_range['max']:g}"
    print(f"train: {model_file.name}: {facts.family} ({facts.prediction}), {len(prompts)} prompt(s), {described_cfg}"
          f"{'' if arguments.guidance is None else f', guidance {arguments.guidance:g}'}, "
          f"{arguments.width}×{arguments.height}, scheduler {target.schedule_name()}, teacher {teacher} × "
          f"{teacher_steps} steps, {pairs} pairs", file=sys.stderr)
    record = {"negative": arguments.negative, "guidance": arguments.guidance,
              "image_size": [arguments.width, arguments.height]}
    return training_target.open_comfy_source(target, body, seed=arguments.seed, base_model=model_file.name,
                                             prompts=prompts, name=model_file.stem, record=record)


COMFYUI = SourceSpec(name="comfyui", add_arguments=add_arguments, chosen=chosen, build=build,
                     usage="--checkpoint/--diffusion-model (a ComfyUI model)")
