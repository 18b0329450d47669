"""Distil Φ for a ComfyUI model, through ComfyUI's own sampling path.

Every model call the trainer makes — student, teacher and baselines — goes through the same code a
KSampler runs: the guider with CFG, LoRAs and model patches, and the ModelSamplingFlux/Discrete shift.
Each guided model call is one real sampling call (``comfy.sample.sample_custom``) for the prompt
of those rows, whose sampler function makes that one call: only the current batch's prompts are
live in ComfyUI at a time, so the prompt count costs no more than the prompts' encodings.
The teacher and baselines are ComfyUI's own sampler functions, looked up by name.

The trainer core never imports ``comfy``; this module is its one door into ComfyUI.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import types
from typing import Callable, Optional, Sequence

import torch

import comfy.k_diffusion.sampling
import comfy.sample
import comfy.samplers

from ..trainer.distill import distill
from ..trainer.source import ModelSource
from .model_facts import ModelFacts, comfy_sigmas, facts_from_patcher, latent_channels, model_scheduler

LOG = logging.getLogger("comfyui_dyweight")
#: The :class:`DistillConfig` settings for a ComfyUI model (the Train node's and the command's defaults):
#: the teacher is a multistep solver at 35 steps (70 CFG'd model calls); 64 pairs (20% held out);
#: checkpointing with micro-batches of 1, so training needs about one CFG'd model call with its backward
#: pass; and sampling calls without gradients (teacher, held-out checks, baselines) of 4, a batch that
#: fits wherever ComfyUI samples a batch of 4 images.
COMFY_DEFAULTS = {"teacher": "dpmpp_2m", "teacher_steps": 35, "pairs": 64, "checkpointing": True,
                  "micro_batch_size": 1, "sampling_batch_size": 4}
#: ComfyUI samplers compared with the trained Φ, when the host has them (one model call per step each).
BASELINES = ("euler", "ipndm", "ipndm_v", "dpmpp_2m", "deis", "uni_pc")


@dataclasses.dataclass
class ComfyTarget:
    """What to distil for: a MODEL, one (positive, negative) conditioning per prompt, CFG, latent size."""

    model: object
    conditionings: Sequence[tuple]
    cfg: float
    latent_shape: tuple  # (channels, height, width) of one latent
    scheduler: Optional[str] = None  # default: the model's (model_scheduler: karras, simple for flow, …)
    #: ``{"kind": "cfg" | "guidance", "min": a, "max": b}``: each pair draws its CFG (or FLUX guidance,
    #: set on the positive conditioning) from [a, b] instead of using ``cfg`` (a Φ's ``cfg`` range record).
    cfg_range: Optional[dict] = None

    def facts(self) -> ModelFacts:
        return facts_from_patcher(self.model)

    def schedule_name(self) -> str:
        return self.scheduler or model_scheduler(self.facts())


class SamplerModel:
    """What a k-diffusion sampler function expects as ``model``: ``model(x, σ·s_in, **extra)`` → x0.

    It routes to ``denoise(x, σ)`` and carries ``inner_model`` for samplers that read the model
    sampling from it.
    """

    def __init__(self, denoise: Callable, inner_model):
        self.denoise, self.inner_model = denoise, inner_model

    def __call__(self, x, sigma, **extra_args):
        return self.denoise(x, sigma.reshape(-1)[0])


class GroupedDenoiser:
    """``denoise(x, σ, condition=labels, guidance=values)``: the rows of each (label, guidance) through
    ``denoise_prompt(label, rows, σ, guidance)`` (guidance ``None`` when the pairs carry none)."""

    def __init__(self, denoise_prompt: Callable, prompts: int):
        self.denoise_prompt, self.prompts = denoise_prompt, prompts

    def __call__(self, x, sigma, condition=None, guidance=None):
        if condition is None and self.prompts != 1:
            raise ValueError("several prompts need the condition labels of the batch")
        labels = [0] * x.shape[0] if condition is None else condition.tolist()
        values = [None] * x.shape[0] if guidance is None else guidance.tolist()
        groups: dict = {}
        for row, key in enumerate(zip(labels, values)):
            groups.setdefault(key, []).append(row)
        if len(groups) == 1:
            return self.denoise_prompt(labels[0], x, sigma, values[0])
        out = None
        for (label, value), rows in groups.items():
            rows = torch.tensor(rows, device=x.device)
            denoised = self.denoise_prompt(label, x.index_select(0, rows), sigma, value)
            out = denoised.new_zeros(x.shape) if out is None else out
            out = out.index_copy(0, rows, denoised)
        return out


def guided_call(target: "ComfyTarget", index: int, x: torch.Tensor, sigma: torch.Tensor,
                guidance: Optional[float] = None) -> torch.Tensor:
    """x0 of prompt ``index`` at σ for the batch ``x``: one real ComfyUI sampling call
    (``comfy.sample.sample_custom``) whose sampler function makes exactly one guided model call.

    Only this prompt's conditioning is live in ComfyUI, and only during the call; the output keeps
    its autograd graph to ``x`` (the sampler returns its own noise untouched). ``guidance`` replaces
    the CFG, or sets FLUX guidance on the positive conditioning, as ``target.cfg_range`` says.
    """
    positive, negative = target.conditionings[index]
    cfg = target.cfg
    if guidance is not None and target.cfg_range["kind"] == "cfg":
        cfg = guidance
    elif guidance is not None:
        positive = with_guidance(positive, guidance)
    denoised = []

    def call_once(model, noise, sigmas, extra_args=None, callback=None, disable=None):
        denoised.append(model(x.to(noise.device), sigma * noise.new_ones([x.shape[0]]), **(extra_args or {})))
        return noise

    empty = torch.zeros(x.shape, dtype=torch.float32)
    sigmas = torch.stack([torch.as_tensor(sigma).detach().float().cpu().reshape(()), torch.tensor(0.0)])
    comfy.sample.sample_custom(target.model, empty, cfg, comfy.samplers.KSAMPLER(call_once), sigmas,
                               positive, negative, empty, disable_pbar=True)
    return denoised[0]


class SamplerHost:
    """The ``inner_model`` that ComfyUI's sampler functions look into for the model sampling (the
    CONST check, ``noise_scaling`` of the ancestral ones, ``model_patcher.get_model_object``), without a
    live sampling call: its patched ``model_sampling`` and its ModelPatcher."""

    def __init__(self, model_patcher, model_sampling):
        self.model_patcher = model_patcher
        self.inner_model = types.SimpleNamespace(model_sampling=model_sampling)


def with_comfy_denoisers(target: ComfyTarget, body: Callable):
    """``body(denoise, inner_model)`` with the guided denoiser of every prompt.

    ``denoise(x, σ, condition=labels)`` routes the rows of each prompt to one ComfyUI sampling call
    for that prompt (:func:`guided_call`), so any number of prompts costs only their encodings;
    ``inner_model`` is what ComfyUI's sampler functions may look into (:class:`SamplerHost`).
    """
    denoise = GroupedDenoiser(functools.partial(guided_call, target), len(target.conditionings))
    with torch.inference_mode(False), torch.enable_grad():
        return body(denoise, SamplerHost(target.model, target.facts().model_sampling))


def make_weights_differentiable(module: torch.nn.Module) -> int:
    """Replace inference-mode tensors (what ComfyUI's loader nodes create) by normal copies, in place.

    Back-propagation to W and s goes through the model's input, and autograd must keep its weights for
    that; tensors made under ``torch.inference_mode`` cannot be kept. Returns how many were replaced.
    """
    replaced = 0
    with torch.inference_mode(False):
        for submodule in module.modules():
            for store in (submodule._parameters, submodule._buffers):
                for name, tensor in list(store.items()):
                    if tensor is not None and tensor.is_inference():
                        copy = tensor.detach().clone()
                        store[name] = torch.nn.Parameter(copy, requires_grad=False) \
                            if isinstance(tensor, torch.nn.Parameter) else copy
                        replaced += 1
    return replaced


def with_guidance(conditioning: list, guidance: float) -> list:
    """The conditioning with ``guidance`` set on every entry, as ComfyUI's FluxGuidance node sets it."""
    return [[tensor, {**extra, "guidance": guidance}] for tensor, extra in conditioning]


def latent_shape(model, width: int, height: int) -> tuple:
    """(C, H, W) of one latent of a ``width`` × ``height`` image, as the host's empty-latent nodes size it."""
    ratio = getattr(model.model.latent_format, "spacial_downscale_ratio", 8)
    return latent_channels(model), height // ratio, width // ratio


def comfy_sampler(name: str, inner_model) -> Callable:
    """ComfyUI's sampler ``name`` as a trainer solver ``(denoise, x, sigmas) -> x0``."""
    if name not in comfy.samplers.SAMPLER_NAMES:
        raise ValueError(f"teacher sampler '{name}' is not one of this ComfyUI's samplers")
    sampler = comfy.samplers.sampler_object(name)

    def solve(denoise, x, sigmas, callback=None):
        with torch.no_grad():
            return sampler.sampler_function(SamplerModel(denoise, inner_model), x, sigmas.to(x), extra_args={},
                                            callback=callback, disable=True, **sampler.extra_options)

    solve.__name__ = f"comfyui:{name}"
    return solve


def comfy_baselines(facts: ModelFacts, scheduler: str, inner_model) -> dict:
    """name → ``(denoise, x, nfe) -> x0`` for the host's :data:`BASELINES`, on the Φ's scheduler."""
    def baseline(name):
        solve = comfy_sampler(name, inner_model)
        return lambda denoise, x, nfe: solve(denoise, x, comfy_sigmas(facts.model_sampling, scheduler, nfe))

    return {name: baseline(name) for name in BASELINES if name in comfy.samplers.SAMPLER_NAMES}


def fingerprint(value) -> str:
    """A short, stable hash of tensors, containers and scalars (the cache key's model/prompt identity)."""
    digest = hashlib.sha256()

    def feed(item):
        if isinstance(item, torch.Tensor):
            flat = item.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
            digest.update(f"tensor{tuple(item.shape)}{item.dtype}".encode())
            digest.update(sample.numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                digest.update(str(key).encode())
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            digest.update(f"seq{len(item)}".encode())
            for element in item:
                feed(element)
        elif hasattr(item, "__dict__") and not callable(item):  # e.g. a LoRA adapter object
            digest.update(type(item).__name__.encode())
            feed(vars(item))
        else:
            digest.update(repr(item).encode() if not callable(item) else getattr(item, "__name__", "fn").encode())

    feed(value)
    return digest.hexdigest()[:16]


def model_identity(model) -> dict:
    """The cache key's model part: config, sampling (with shift patches), weights, LoRA/patches."""
    facts = facts_from_patcher(model)
    parameters = list(model.model.state_dict().items())
    sampled = [(name, tensor) for index, (name, tensor) in enumerate(parameters) if index % 16 == 0]
    patches = getattr(model, "patches", {})
    return {
        "family": facts.family, "prediction": facts.prediction,
        "sampling": [type(facts.model_sampling).__name__, round(facts.sigma_min, 6), round(facts.sigma_max, 6)],
        "weights": fingerprint(sampled),
        "patches": fingerprint(patches),
        "model_options": fingerprint(json.dumps(sorted(model.model_options.get("transformer_options", {}).keys()))),
    }


def conditioning_identity(conditionings: Sequence[tuple]) -> str:
    """The prompts' part of the cache key: the encoded conditioning itself (text encoder and prompt)."""
    return fingerprint([[[entry[0], {k: v for k, v in entry[1].items() if isinstance(v, (torch.Tensor, float, int))}]
                         for entry in side] for pair in conditionings for side in pair])


def comfy_noise(target: ComfyTarget, facts: ModelFacts, seed: int) -> Callable[[int], torch.Tensor]:
    """``noise(k)``: ComfyUI's seeded noise for seed + k (drawn on the CPU, as ComfyUI draws it), scaled to
    σ_max as its KSAMPLER does, on the model's device (where ComfyUI keeps the model while sampling)."""
    device = target.model.load_device
    empty = torch.zeros((1, *target.latent_shape))

    def noise(index: int) -> torch.Tensor:
        unit = comfy.sample.prepare_noise(empty, seed + index).to(device)
        return facts.model_sampling.noise_scaling(torch.tensor(facts.sigma_max), unit, empty.to(device), True)

    return noise


def open_comfy_source(target: ComfyTarget, body: Callable, *, seed: int = 0, base_model: Optional[str] = None,
                      prompts: Optional[Sequence[str]] = None, name: str = "comfyui", record: Optional[dict] = None):
    """``body(source)`` with the live :class:`~comfyui_dyweight.trainer.source.ModelSource` of ``target``.

    This is the one wiring of a ComfyUI model into the trainer (:func:`distill_for_comfy` and the
    ``train`` command's ComfyUI source both use it). Pairs take the prompts in turn and ComfyUI's noise
    for ``seed`` + k; teachers are ComfyUI's samplers by name on the Φ's scheduler; the baselines are
    the host's :data:`BASELINES`; the source's defaults are :data:`COMFY_DEFAULTS`, with the
    ``net_sigma`` divisor for flow models. The Φ records the sampler-side facts: family, prediction,
    schedule, σ range and CFG; ``record`` adds entries (not ``None``) to its ``training`` record.
    """
    facts, scheduler = target.facts(), target.schedule_name()
    cache_key = {
        "model": model_identity(target.model), "conditioning": conditioning_identity(target.conditionings),
        "cfg": target.cfg, "latent_shape": list(target.latent_shape), "scheduler": scheduler, "seed": seed,
        **({} if target.cfg_range is None else {"cfg_range": target.cfg_range}),
    }
    training = {"base_model": base_model or f"{facts.family} {cache_key['model']['weights']}",
                "base_model_hash": cache_key["model"]["weights"], "patches_hash": cache_key["model"]["patches"],
                "prompts": list(prompts) if prompts is not None else None,
                "size": list(target.latent_shape), "sigma_data": facts.sigma_data,  # read by bind_to_model
                **{key: value for key, value in (record or {}).items() if value is not None}}
    phi_fields = {"schedule": {"kind": "comfy", "scheduler": scheduler}, "prediction": facts.prediction,
                  "model_family": facts.family, "sigma_min": facts.sigma_min, "sigma_max": facts.sigma_max,
                  "cfg": target.cfg if target.cfg_range is None else dict(target.cfg_range), "training": training}

    def live(denoise, inner_model):
        replaced = make_weights_differentiable(target.model.model)
        if replaced:
            LOG.info("DyWeight: %d inference-mode weight tensors copied so gradients can flow", replaced)
        return body(ModelSource(
            denoise, comfy_noise(target, facts, seed), lambda steps: comfy_sigmas(facts.model_sampling, scheduler, steps),
            name=name, cache_key=cache_key, phi_fields=phi_fields, conditions=range(len(target.conditionings)),
            guidance=None if target.cfg_range is None else (target.cfg_range["min"], target.cfg_range["max"]),
            teachers=lambda teacher: comfy_sampler(teacher, inner_model),
            baselines=comfy_baselines(facts, scheduler, inner_model),
            defaults={**COMFY_DEFAULTS, "divisor": "net_sigma" if facts.prediction == "flow" else "sigma"}))

    return with_comfy_denoisers(target, live)


def distill_for_comfy(target: ComfyTarget, *, seed: int = 0, base_model: Optional[str] = None,
                      prompts: Optional[Sequence[str]] = None, cache_dir=None, state_dir=None, resume: bool = False,
                      progress=None, **settings):
    """:func:`~comfyui_dyweight.trainer.distill` for a ComfyUI model (see :func:`open_comfy_source`).

    ``settings`` are :class:`~comfyui_dyweight.trainer.DistillConfig` fields (``nfe``, ``iterations``,
    ``teacher``, …; ``None`` = the ComfyUI default); ``seed`` seeds the noise, the split and the batches.
    """
    def run(source: ModelSource):
        return distill(source, source.config(seed=seed, **settings), cache_dir=cache_dir, state_dir=state_dir,
                       resume=resume, progress=progress)

    return open_comfy_source(target, run, seed=seed, base_model=base_model, prompts=prompts)
