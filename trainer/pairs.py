"""Teacher pairs (paper Algorithm 1, line 2) and their on-disk cache.

A pair is (seed, label, x_T, x0_teacher): the initial latent at σ_max, the condition label it was
denoised under, and the many-step teacher's endpoint from it. Pairs are generated once per (model,
teacher, noise, labels) and reused for every NFE target and by later runs.

The cache is one safetensors file per key, named by the SHA-256 of the key; the key itself is stored in
the file's metadata and checked on load, so a changed model, teacher, noise or prompt set never hits.
A run interrupted during generation leaves the finished pairs in the same file marked incomplete, and
the next run continues from there. Files are written atomically and never unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from .progress import Reporter
from .teachers import Teacher

FORMAT = "dyweight-pairs/1"
METADATA_KEY = "dyweight_pairs"
NoiseSource = Union[torch.Tensor, Callable[[int], torch.Tensor]]
#: Pairs drawn from a noise generator when neither ``pairs`` nor ``conditions`` says how many.
DEFAULT_PAIRS = 256


@dataclasses.dataclass
class PairSet:
    """Teacher pairs: per-pair ``seeds`` [P], ``noise`` [P, …] at σ_max, ``target`` [P, …] the teacher's x0
    (``None`` while it is being generated) and optional condition ``labels`` [P] (int64)."""

    seeds: torch.Tensor
    noise: torch.Tensor
    target: Optional[torch.Tensor]
    labels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def subset(self, index) -> "PairSet":
        """The pairs at ``index`` (a slice or an index tensor)."""
        def pick(tensor):
            return None if tensor is None else tensor[index]

        return PairSet(self.seeds[index], self.noise[index], pick(self.target), pick(self.labels))

    def bind(self, denoise: Callable) -> Callable:
        """``denoise`` for these pairs: ``denoise(x, σ)``, or ``denoise(x, σ, condition=labels)`` with labels."""
        return denoise if self.labels is None else functools.partial(denoise, condition=self.labels)


def draw_noise(noise: NoiseSource, count: Optional[int], conditions: Optional[Sequence[int]]):
    """The initial latents, their seeds and labels: ``(noise [P, …], seeds [P], labels [P] | None)``.

    ``noise`` is a tensor [P, …] (the seed of a pair is its row index; ``count`` may take the first
    rows), or a callable ``noise(seed) -> tensor [B, …]`` called with seeds 0, 1, 2, … until ``count``
    latents are drawn (every row of a batch records the seed that made it). ``count`` defaults to
    ``len(conditions)``, else all rows of a tensor, else :data:`DEFAULT_PAIRS`. The pairs take the
    ``conditions`` labels in turn (pair i gets ``conditions[i % len(conditions)]``).
    """
    if count is None and conditions is not None:
        count = len(conditions)
    if isinstance(noise, torch.Tensor):
        count = noise.shape[0] if count is None else count
        if not 0 < count <= noise.shape[0]:
            raise ValueError(f"asked for {count} pairs but the noise tensor holds {noise.shape[0]}")
        latents, seeds = noise[:count].clone(), torch.arange(count)
    elif callable(noise):
        latents, seeds = _draw_from_generator(noise, DEFAULT_PAIRS if count is None else count)
    else:
        raise TypeError("noise must be a tensor [P, …] or a callable noise(seed) -> tensor [B, …]")
    labels = None
    if conditions is not None:
        cycle = torch.as_tensor(list(conditions), dtype=torch.int64)
        if cycle.ndim != 1 or not len(cycle):
            raise ValueError(f"conditions must be a non-empty sequence of integer labels, got {list(conditions)!r}")
        labels = cycle[torch.arange(count) % len(cycle)]
    if not torch.isfinite(latents).all():
        raise ValueError("the initial noise holds NaN or Inf")
    return latents, seeds, labels


def _draw_from_generator(noise: Callable[[int], torch.Tensor], count: int):
    batches, seeds, drawn, seed = [], [], 0, 0
    while drawn < count:
        batch = noise(seed)
        if not isinstance(batch, torch.Tensor) or batch.ndim < 2 or batch.shape[0] < 1:
            raise ValueError(f"noise({seed}) must return a batch tensor [B, …], got {getattr(batch, 'shape', batch)!r}")
        batch = batch[:count - drawn]
        batches.append(batch)
        seeds.append(torch.full((batch.shape[0],), seed, dtype=torch.int64))
        drawn += batch.shape[0]
        seed += 1
    return torch.cat(batches).clone(), torch.cat(seeds)


def pairs_key(user_key, teacher: Teacher, sigmas: torch.Tensor, noise: torch.Tensor,
              labels: Optional[torch.Tensor]) -> dict:
    """The full cache key: the caller's key plus what the trainer itself knows about the pairs."""
    return {
        "format": FORMAT,
        "key": user_key,
        "teacher": teacher.name,
        "teacher_sigmas": [float(s) for s in sigmas],
        "pairs": int(noise.shape[0]),
        "noise": _digest(noise),
        "labels": None if labels is None else labels.tolist(),
    }


def _digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().to("cpu").contiguous()
    header = f"{flat.dtype}{tuple(flat.shape)}".encode()
    return hashlib.sha256(header + flat.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def cache_path(folder, key: dict) -> Path:
    """``folder/pairs-<hash of key>.safetensors``."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(folder) / f"pairs-{name}.safetensors"


@dataclasses.dataclass
class TeacherRun:
    """Pairs and how they were obtained: ``cache_hit`` (no teacher call at all) and the teacher's
    total generation time, earlier interrupted parts included."""

    pairs: PairSet
    cache_hit: bool
    seconds: float


def teacher_pairs(denoise: Callable, noise: torch.Tensor, seeds: torch.Tensor, labels: Optional[torch.Tensor],
                  teacher: Teacher, sigmas: torch.Tensor, batch_size: int, key: dict,
                  store: Optional[Path], reporter: Reporter) -> TeacherRun:
    """Run ``teacher`` from each latent on ``sigmas`` in batches, or read the finished pairs from ``store``.

    An incomplete file at ``store`` is continued; on any interruption the finished batches are saved
    there before the exception propagates.
    """
    done, seconds = _cached(store, key, noise.device)
    if done is not None and done.shape[0] == noise.shape[0]:
        return TeacherRun(PairSet(seeds, noise, done, labels), True, seconds)
    inputs = PairSet(seeds, noise, None, labels)
    targets = [] if done is None else [done]
    count = 0 if done is None else done.shape[0]
    reporter.begin("teacher pairs", count, noise.shape[0], unit="pair")
    started = time.monotonic()
    try:
        while count < noise.shape[0]:
            batch = inputs.subset(slice(count, count + batch_size))
            with torch.no_grad():
                target = teacher.solve(batch.bind(denoise), batch.noise, sigmas)
            _check_target(target, batch, teacher)
            targets.append(target.detach())
            count += batch.noise.shape[0]
            reporter.teacher(count, noise.shape[0])
    except BaseException:
        if store is not None and count:
            _store_pairs(store, key, noise, seeds, labels, torch.cat(targets), seconds + time.monotonic() - started)
        raise
    finally:
        reporter.end()
    seconds += time.monotonic() - started
    target = torch.cat(targets)
    if store is not None:
        _store_pairs(store, key, noise, seeds, labels, target, seconds)
    return TeacherRun(PairSet(seeds, noise, target, labels), False, seconds)


def _check_target(target: torch.Tensor, batch: PairSet, teacher: Teacher) -> None:
    if target.shape != batch.noise.shape:
        raise ValueError(f"teacher '{teacher.name}' returned shape {tuple(target.shape)} for a batch of "
                         f"shape {tuple(batch.noise.shape)}")
    if not torch.isfinite(target).all():
        bad = batch.seeds[~torch.isfinite(target).reshape(target.shape[0], -1).all(1)].tolist()
        raise ValueError(f"teacher '{teacher.name}' produced NaN/Inf for seeds {bad}: check the model, "
                         "its settings (CFG, dtype) and the teacher's schedule")


def _cached(store: Optional[Path], key: dict, device: torch.device):
    """The teacher targets already stored for ``key`` (all, or the first ones of an interrupted run)."""
    if store is None or not store.is_file():
        return None, 0.0
    try:
        with safe_open(str(store), framework="pt", device=str(device)) as stored:
            document = json.loads((stored.metadata() or {})[METADATA_KEY])
            if document.get("key") != key:
                return None, 0.0  # a hash collision or a hand-copied file: not ours
            return stored.get_tensor("target"), float(document.get("teacher_seconds", 0.0))
    except (OSError, ValueError, KeyError, SafetensorError):
        return None, 0.0  # unreadable: regenerate and replace it


def _store_pairs(store: Path, key: dict, noise, seeds, labels, target, seconds: float) -> None:
    tensors = {"noise": noise, "seeds": seeds, "target": target}
    if labels is not None:
        tensors["labels"] = labels
    document = {"key": key, "done": int(target.shape[0]), "complete": target.shape[0] == noise.shape[0],
                "teacher_seconds": seconds}
    with atomic_path(store) as temporary:
        save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(temporary),
                  metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})
