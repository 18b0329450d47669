"""Train DyWeight Coefficients: distil Φ for the connected model (LoRAs and patches included) in the graph."""

from __future__ import annotations

import re
from pathlib import Path

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths

from ..host.encodings import encode_prompts
from ..host.training_target import COMFY_DEFAULTS, ComfyTarget, distill_for_comfy, latent_shape
from ..trainer.progress import TrainingInterrupted
from ..trainer.report import validation_markdown
from .constants import COEFFICIENTS, FOLDER_NAME, LOG, PHI_OUTPUT, SAMPLER_NAME, TRAINING_CATEGORY
from .phi_json import phi_to_json
from .training_events import publish

FILE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


def teacher_choices() -> list:
    return [name for name in comfy.samplers.SAMPLER_NAMES if name != SAMPLER_NAME]


def cache_folder() -> Path:
    """Teacher pairs and prompt encodings are kept in the user directory (models/dyweight/ would list them
    as coefficients)."""
    base = folder_paths.get_user_directory() if hasattr(folder_paths, "get_user_directory") \
        else folder_paths.get_temp_directory()
    return Path(base) / "dyweight" / "teacher-cache"


def output_path(file_name: str, nfe: int) -> Path:
    if not FILE_STEM.match(file_name):
        raise ValueError(f"file name '{file_name}' must be a plain name (letters, digits, '.', '_', '-'), "
                         f"without folders; it is saved as <name>-nfe{nfe}.safetensors in models/{FOLDER_NAME}/")
    return Path(folder_paths.get_folder_paths(FOLDER_NAME)[0]) / f"{file_name}-nfe{nfe}.safetensors"


class TrainingProgress:
    """Trainer events → ComfyUI's progress bar, the front end (``dyweight.training``) and cancel."""

    def __init__(self, node_id, pairs: int, iterations: int):
        self.node_id, self.pairs, self.trained = node_id, pairs, 0
        self.bar = comfy.utils.ProgressBar(pairs + iterations)

    def __call__(self, event: dict) -> None:
        if self.node_id is not None:
            publish(self.node_id, event)
        if event["kind"] == "teacher":
            self.bar.update_absolute(event["done"])
        elif event["kind"] == "train":  # counted, as "both" trains one family after the other
            self.trained += 1
            self.bar.update_absolute(self.pairs + self.trained)
        if comfy.model_management.processing_interrupted():
            raise TrainingInterrupted("cancelled from ComfyUI")


class DyWeightTrain:
    DESCRIPTION = ("Distils DyWeight coefficients for the connected model (with its LoRAs and patches): runs a "
                   "many-step teacher on the prompts, then learns the few-step solver that matches it. Saves "
                   "models/dyweight/<file_name>-nfe<steps>.safetensors and outputs the coefficients for "
                   "KSampler (DyWeight). Cancel keeps the best coefficients found so far.")
    CATEGORY = TRAINING_CATEGORY
    RETURN_TYPES = (COEFFICIENTS,)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("The trained coefficients (also saved to models/dyweight/).",)
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to train for, as you sample it (LoRAs, shifts applied)."}),
                "clip": ("CLIP", {"tooltip": "The text encoder for the prompts."}),
                "prompts": ("STRING", {"multiline": True, "default": "a photo of a cat\na watercolour landscape",
                                       "tooltip": "Training prompts, one per line (typical of what you generate)."}),
                "negative": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "The negative prompt used with every training prompt."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "The CFG (or FLUX guidance via the conditioning) you will sample at."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Image width of the training latents."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Image height of the training latents."}),
                "steps": ("INT", {"default": 5, "min": 2, "max": 20,
                                  "tooltip": "NFE: model calls per image of the trained solver."}),
                "pairs": ("INT", {"default": COMFY_DEFAULTS["pairs"], "min": 8, "max": 4096,
                                  "tooltip": "Teacher samples to learn from (20% are held out for validation). "
                                             "Cached and reused for other NFE and later runs."}),
                "iterations": ("INT", {"default": 300, "min": 1, "max": 100000,
                                       "tooltip": "Optimisation steps (Adam, cosine schedule)."}),
                "teacher_sampler": (teacher_choices(), {"default": COMFY_DEFAULTS["teacher"],
                                                        "tooltip": "The sampler whose many-step result is learned."}),
                "teacher_steps": ("INT", {"default": COMFY_DEFAULTS["teacher_steps"], "min": 10, "max": 1000,
                                          "tooltip": "Steps of the teacher (more is more accurate and slower)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                 "tooltip": "Seeds the training noise, the split and the mini-batches."}),
                "file_name": ("STRING", {"default": "dyweight",
                                         "tooltip": "Saved as models/dyweight/<file_name>-nfe<steps>.safetensors."}),
            },
            "optional": {
                "cfg_max": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                      "tooltip": "Above `cfg`: each training sample draws its CFG between `cfg` "
                                                 "and this, so one solver serves that range (0: off)."}),
                "solver": (["dyweight", "dss", "both"], {
                    "default": "dyweight",
                    "tooltip": "The solver family to learn: DyWeight (weights and time scales on the model's "
                               "schedule), DSS (a learned schedule and full-history coefficients), or both "
                               "(keeps the one with the lower held-out error)."}),
                "micro_batch": ("INT", {"default": COMFY_DEFAULTS["micro_batch_size"], "min": 1, "max": 256,
                                        "tooltip": "Images per training forward/backward pass. Gradients are "
                                                   "summed over each step, so the result is the same; larger is "
                                                   "faster on a big GPU and needs more memory."}),
                "sampling_batch": ("INT", {"default": COMFY_DEFAULTS["sampling_batch_size"], "min": 1, "max": 256,
                                           "tooltip": "Images per teacher or validation sampling call (as a "
                                                      "KSampler batch): raise it on a big GPU for speed."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, prompts, negative, cfg, width, height, steps, pairs, iterations, teacher_sampler,
              teacher_steps, seed, file_name, cfg_max=0.0, solver="dyweight", micro_batch=None,
              sampling_batch=None, unique_id=None):
        prompt_list = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not prompt_list:
            raise ValueError("DyWeight training needs at least one prompt (one per line)")
        path = output_path(file_name, steps)
        negative_conditioning, *positives = encode_prompts(clip, [negative, *prompt_list], cache_folder()).conditionings
        cfg_range = {"kind": "cfg", "min": cfg, "max": cfg_max} if cfg_max > cfg else None
        target = ComfyTarget(model, [(positive, negative_conditioning) for positive in positives], cfg,
                             latent_shape(model, width, height), cfg_range=cfg_range)
        try:
            result = distill_for_comfy(
                target, seed=seed, prompts=prompt_list, cache_dir=cache_folder(),
                progress=TrainingProgress(unique_id, pairs, iterations * (2 if solver == "both" else 1)),
                nfe=[steps], solver=solver, teacher=teacher_sampler,
                teacher_steps=teacher_steps, pairs=pairs, iterations=iterations, micro_batch_size=micro_batch,
                sampling_batch_size=sampling_batch)
        except TrainingInterrupted as stop:
            self._keep_best(stop, steps, path, unique_id)
            raise comfy.model_management.InterruptProcessingException() from None
        phi = result.coefficients[steps]
        phi.save(path)
        report = validation_markdown(result.table) + "".join(f"\nnote: {note}" for note in result.notes)
        LOG.info("DyWeight: saved %s\n%s", path, report)
        return {"ui": {"text": [f"saved {path.name}\n{phi.summary()}\n\n{report}"],
                       PHI_OUTPUT: [phi_to_json(phi, path.name)]},
                "result": (phi,)}

    @staticmethod
    def _keep_best(stop: TrainingInterrupted, nfe: int, path: Path, node_id) -> None:
        best = stop.result.coefficients.get(nfe) if stop.result is not None else None
        if best is not None:
            best.save(path)
            message = f"cancelled; the best coefficients so far are saved as {path.name}"
        else:
            message = "cancelled before any coefficients were trained; nothing saved"
        LOG.info("DyWeight: %s", message)
        if node_id is not None:
            publish(node_id, {"kind": "error", "message": message})
