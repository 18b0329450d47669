"""Teacher pairs (paper Algorithm 1, line 2) and their on-disk cache.

A pair is (seed, label, x_T, x0_teacher): the initial latent at σ_max, the condition label it was
denoised under, and the many-step teacher's endpoint from it. Pairs are generated once per (model,
teacher, noise, labels) and reused for every NFE target and by later runs.

DSS's path supervision (arXiv 2505.21114, §4) compares the student's inner states with the teacher's
at the nearest teacher time; as the student's grid is learned, that time moves during training, so
for DSS the pairs also keep the teacher's whole trajectory (its state at every grid point, on the CPU:
P × (teacher steps + 1) latents, e.g. 64 pairs × 36 SD latents of 64×64 = 150 MB) rather than samples
at fixed times. A DyWeight run needs no path and keeps only the endpoints.

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
from . import distributed
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
    (``None`` while it is being generated), optional condition ``labels`` [P] (int64), for path
    supervision the teacher's states ``path`` [P, M+1, …] (CPU) at its grid ``path_sigmas`` [M+1], and
    optional ``guidance`` [P] (float64: the CFG or FLUX guidance of each pair, drawn from a range)."""

    seeds: torch.Tensor
    noise: torch.Tensor
    target: Optional[torch.Tensor]
    labels: Optional[torch.Tensor] = None
    path: Optional[torch.Tensor] = None
    path_sigmas: Optional[torch.Tensor] = None
    guidance: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.noise.shape[0]

    def subset(self, index) -> "PairSet":
        """The pairs at ``index`` (a slice or an index tensor)."""
        def pick(tensor):
            if tensor is None:
                return None
            return tensor[index.to(tensor.device) if isinstance(index, torch.Tensor) else index]

        return PairSet(self.seeds[index], self.noise[index], pick(self.target), pick(self.labels), pick(self.path),
                       self.path_sigmas, pick(self.guidance))

    def bind(self, denoise: Callable) -> Callable:
        """``denoise`` for these pairs: ``denoise(x, σ)``, with ``condition=labels`` when they have labels
        and ``guidance=values`` when they have guidance."""
        given = {name: value for name, value in (("condition", self.labels), ("guidance", self.guidance))
                 if value is not None}
        return functools.partial(denoise, **given) if given else denoise


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
              labels: Optional[torch.Tensor], path: bool = False, guidance: Optional[torch.Tensor] = None) -> dict:
    """The full cache key: the caller's key plus what the trainer itself knows about the pairs (and
    whether they keep the teacher's path, and their guidance draws)."""
    key = {
        "format": FORMAT,
        "key": user_key,
        "teacher": teacher.name,
        "teacher_sigmas": [float(s) for s in sigmas],
        "pairs": int(noise.shape[0]),
        "noise": _digest(noise),
        "labels": None if labels is None else labels.tolist(),
    }
    key.update({} if guidance is None else {"guidance": _digest(guidance)})
    return {**key, "path": True} if path else key


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
                  store: Optional[Path], reporter: Reporter, path: bool = False,
                  guidance: Optional[torch.Tensor] = None) -> TeacherRun:
    """Run ``teacher`` from each latent on ``sigmas`` in batches, or read the finished pairs from ``store``.

    With ``path``, the teacher's state at every grid point is kept too (the teacher must report its
    steps through k-diffusion's ``callback``). An incomplete file at ``store`` is continued; on any
    interruption the finished batches are saved there before the exception propagates (one process
    only). On several ranks each runs its share of the batches and the results are gathered
    (:mod:`.distributed`); rank 0 writes ``store``.
    """
    done, done_path, seconds = _cached(store, key, noise.device)
    path_sigmas = sigmas.double().cpu() if path else None
    if done is not None and done.shape[0] == noise.shape[0]:
        return TeacherRun(PairSet(seeds, noise, done, labels, done_path, path_sigmas, guidance), True, seconds)
    inputs = PairSet(seeds, noise, None, labels, guidance=guidance)
    targets = [] if done is None else [done]
    paths = [] if done_path is None else [done_path]
    first = count = 0 if done is None else done.shape[0]
    ranks = distributed.ranks()
    reporter.begin("teacher pairs", count, noise.shape[0], unit="pair")
    started = time.monotonic()

    def save(elapsed: float) -> None:
        _store_pairs(store, key, inputs, torch.cat(targets), torch.cat(paths) if path else None, elapsed)

    try:
        for start in ranks.share(range(first, noise.shape[0], batch_size)):  # every batch on one rank
            batch = inputs.subset(slice(start, start + batch_size))
            with torch.no_grad():
                target, trajectory = _solve(teacher, batch.bind(denoise), batch.noise, sigmas, path)
            _check_target(target, batch, teacher)
            targets.append(target.detach())
            paths.extend([] if trajectory is None else [trajectory])
            count += batch.noise.shape[0]
            reporter.teacher(min(first + (count - first) * ranks.world, noise.shape[0]), noise.shape[0])
    except BaseException:
        if store is not None and count > first and ranks.world == 1:
            save(seconds + time.monotonic() - started)
        raise
    finally:
        reporter.end()
    seconds += time.monotonic() - started
    if ranks.world > 1:
        targets = [_gathered(ranks, targets, done, noise.shape[0], batch_size, noise[0])]
        if path:  # the teacher's states at its M + 1 grid points, on the CPU
            row = torch.zeros((len(sigmas), *noise.shape[1:]), dtype=torch.float32)
            paths = [_gathered(ranks, paths, done_path, noise.shape[0], batch_size, row)]
    if store is not None and ranks.main:
        save(seconds)
    ranks.barrier()  # the cache is complete before any rank goes on
    return TeacherRun(PairSet(seeds, noise, torch.cat(targets), labels, torch.cat(paths) if path else None,
                              path_sigmas, guidance), False, seconds)


def _gathered(ranks, parts: list, done: Optional[torch.Tensor], count: int, batch_size: int, like: torch.Tensor):
    """Every rank's teacher results (``parts``: ``done`` first, if any, then this rank's batches) in pair
    order, one row shaped and typed as ``like``: each rank fills its batches' rows of a zero tensor and
    the tensors are summed across ranks (x + 0 = x: exact)."""
    first = 0 if done is None else done.shape[0]
    rows = torch.zeros((count - first, *like.shape), dtype=like.dtype, device=like.device)
    for start, part in zip(ranks.share(range(first, count, batch_size)), parts[int(done is not None):]):
        rows[start - first:start - first + part.shape[0]] = part
    rows = ranks.sum_rows(rows)
    return rows if done is None else torch.cat([done.to(rows), rows])


def _solve(teacher: Teacher, denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, path: bool):
    """The teacher's x0 and, with ``path``, its states at every grid point [B, M+1, …] on the CPU."""
    if not path:
        return teacher.solve(denoise, x, sigmas), None
    states = {}

    def record(step: dict) -> None:
        states[int(step["i"])] = step["x"].detach().to("cpu", torch.float32)

    target = teacher.solve(denoise, x, sigmas, callback=record)
    steps = len(sigmas) - 1
    if sorted(states) != list(range(steps)):
        raise ValueError(f"teacher '{teacher.name}' reported {len(states)} of its {steps} steps through its "
                         "callback; path supervision (DSS) needs every one: choose another teacher")
    return target, torch.stack([states[i] for i in range(steps)] + [target.detach().to("cpu", torch.float32)], 1)


def _check_target(target: torch.Tensor, batch: PairSet, teacher: Teacher) -> None:
    if target.shape != batch.noise.shape:
        raise ValueError(f"teacher '{teacher.name}' returned shape {tuple(target.shape)} for a batch of "
                         f"shape {tuple(batch.noise.shape)}")
    if not torch.isfinite(target).all():
        bad = batch.seeds[~torch.isfinite(target).reshape(target.shape[0], -1).all(1)].tolist()
        raise ValueError(f"teacher '{teacher.name}' produced NaN/Inf for seeds {bad}: check the model, "
                         "its settings (CFG, dtype) and the teacher's schedule")


def _cached(store: Optional[Path], key: dict, device: torch.device):
    """The teacher targets (and paths) already stored for ``key`` (all, or the first ones of an
    interrupted run), and the teacher's seconds so far."""
    if store is None or not store.is_file():
        return None, None, 0.0
    try:
        with safe_open(str(store), framework="pt", device=str(device)) as stored:
            document = json.loads((stored.metadata() or {})[METADATA_KEY])
            if document.get("key") != key:
                return None, None, 0.0  # a hash collision or a hand-copied file: not ours
            path = stored.get_tensor("path").cpu() if "path" in stored.keys() else None
            return stored.get_tensor("target"), path, float(document.get("teacher_seconds", 0.0))
    except (OSError, ValueError, KeyError, SafetensorError):
        return None, None, 0.0  # unreadable: regenerate and replace it


def _store_pairs(store: Path, key: dict, inputs: PairSet, target, path, seconds: float) -> None:
    tensors = {"noise": inputs.noise, "seeds": inputs.seeds, "target": target}
    if inputs.labels is not None:
        tensors["labels"] = inputs.labels
    if path is not None:
        tensors["path"] = path
    document = {"key": key, "done": int(target.shape[0]), "complete": target.shape[0] == inputs.noise.shape[0],
                "teacher_seconds": seconds}
    with atomic_path(store) as temporary:
        save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(temporary),
                  metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})
