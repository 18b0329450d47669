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
A run interrupted during generation leaves the finished pairs in the same file marked incomplete (one
process), or each rank's in a part file beside it (``torchrun``: a peer may be gone, so the ranks do not
gather first), and the next run, on any number of ranks, continues from all of them; the complete file
replaces the parts. Files are written atomically and never unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
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
    steps through k-diffusion's ``callback``). The pairs found at ``store`` (an incomplete file, and the
    parts an interrupted multi-rank run left beside it) are not run again; on any interruption the
    finished batches are saved before the exception propagates: into ``store`` by one process, into a
    part file of its own by each of several ranks (whose peers may be gone). On several ranks each runs
    its share of the batches and the results are gathered (:mod:`.distributed`); rank 0 writes ``store``.
    """
    count = noise.shape[0]
    known, target, trajectories, seconds = _cached(store, key, noise, len(sigmas) if path else None)
    path_sigmas = sigmas.double().cpu() if path else None
    if known.all():
        return TeacherRun(PairSet(seeds, noise, target, labels, trajectories, path_sigmas, guidance), True, seconds)
    inputs = PairSet(seeds, noise, None, labels, guidance=guidance)
    todo = (~known).nonzero().flatten()
    mine = torch.zeros(count, dtype=torch.bool)  # the pairs this process runs, as they finish
    ranks = distributed.ranks()
    reporter.begin("teacher pairs", int(known.sum()), count, unit="pair")
    started = time.monotonic()
    try:
        for batch_index in ranks.share(todo.split(batch_size)):  # every batch on one rank
            batch = inputs.subset(batch_index)
            with torch.no_grad():
                solved, trajectory = _solve(teacher, batch.bind(denoise), batch.noise, sigmas, path)
            _check_target(solved, batch, teacher)
            target[batch_index.to(target.device)] = solved.detach().to(target)
            if path:
                trajectories[batch_index] = trajectory
            mine[batch_index] = True
            reporter.teacher(min(int(known.sum()) + int(mine.sum()) * ranks.world, count), count)
        if ranks.world > 1 and len(todo):  # each row filled by one rank, zeros elsewhere: the sum is exact
            rows = todo.to(target.device)
            target[rows] = ranks.sum_rows(target[rows])
            if path:
                trajectories[todo] = ranks.sum_rows(trajectories[todo])
    except BaseException:  # an interruption, or a peer gone before the gather
        if store is not None and mine.any():
            elapsed = time.monotonic() - started
            with distributed.signals_ignored(ranks):
                if ranks.world == 1:
                    _store_pairs(store, key, known | mine, target, trajectories, seconds + elapsed, inputs)
                    _remove_parts(store)  # the store now holds their pairs too
                else:
                    _store_pairs(_part_path(store, ranks.rank), key, mine, target, trajectories, elapsed)
        raise
    finally:
        reporter.end()
    seconds += time.monotonic() - started
    if store is not None and ranks.main:
        _store_pairs(store, key, torch.ones(count, dtype=torch.bool), target, trajectories, seconds, inputs)
        _remove_parts(store)
    ranks.barrier()  # the cache is complete before any rank goes on
    return TeacherRun(PairSet(seeds, noise, target, labels, trajectories, path_sigmas, guidance), False, seconds)


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


def _cached(store: Optional[Path], key: dict, noise: torch.Tensor, path_points: Optional[int]):
    """What ``store`` and its part files hold for ``key``: ``(known [P] bool, targets [P, …], paths
    [P, M+1, …] on the CPU or ``None``, the teacher's seconds so far)``, zeros in the rows not known.
    A file that is unreadable or another key's is passed over (its pairs are run again)."""
    count = noise.shape[0]
    known = torch.zeros(count, dtype=torch.bool)
    target = torch.zeros_like(noise)
    paths = None if path_points is None else torch.zeros((count, path_points, *noise.shape[1:]))
    seconds = part_seconds = 0.0
    if store is None:
        return known, target, paths, seconds
    for index, file in enumerate([store, *sorted(store.parent.glob(f"{store.stem}.part-*.safetensors"))]):
        if not file.is_file():
            continue
        try:
            with safe_open(str(file), framework="pt", device="cpu") as stored:
                document = json.loads((stored.metadata() or {})[METADATA_KEY])
                if document.get("key") != key:
                    continue  # a hash collision or a hand-copied file: not ours
                rows = stored.get_tensor("target")
                done = stored.get_tensor("index") if "index" in stored.keys() else torch.arange(rows.shape[0])
                path = stored.get_tensor("path") if paths is not None else None
                target[done.to(target.device)] = rows.to(target)
                if path is not None:
                    paths[done] = path.to(paths)
                known[done] = True
                if index == 0:
                    seconds = float(document.get("teacher_seconds", 0.0))
                else:  # ranks run side by side: the slowest one's time
                    part_seconds = max(part_seconds, float(document.get("teacher_seconds", 0.0)))
        except (OSError, ValueError, KeyError, IndexError, RuntimeError, SafetensorError):
            continue  # unreadable: regenerate (and replace) its pairs
    return known, target, paths, seconds + part_seconds


def _part_path(store: Path, rank: int) -> Path:
    """Where rank ``rank`` of an interrupted run keeps the pairs it finished (unique to this process)."""
    return store.with_name(f"{store.stem}.part-{rank}-{os.getpid()}-{time.time_ns()}.safetensors")


def _remove_parts(store: Path) -> None:
    for part in store.parent.glob(f"{store.stem}.part-*.safetensors"):
        part.unlink(missing_ok=True)


def _store_pairs(store: Path, key: dict, done: torch.Tensor, target: torch.Tensor, path: Optional[torch.Tensor],
                 seconds: float, inputs: Optional[PairSet] = None) -> None:
    """The ``done`` rows of ``target`` (and ``path``) with their pair ``index``, and the pairs' inputs
    (noise, seeds, labels) when given."""
    index = done.nonzero().flatten()
    tensors = {"index": index, "target": target[index.to(target.device)]}
    if path is not None:
        tensors["path"] = path[index]
    if inputs is not None:
        tensors.update(noise=inputs.noise, seeds=inputs.seeds)
        if inputs.labels is not None:
            tensors["labels"] = inputs.labels
    document = {"key": key, "done": int(index.numel()), "complete": bool(done.all()), "teacher_seconds": seconds}
    with atomic_path(store) as temporary:
        save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(temporary),
                  metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})
