"""Training on several processes (``torchrun``): one Φ, the work split by index, the result of one process.

Paper Algorithm 1 is a sum over pairs — the teacher's endpoints (line 2) are independent per pair and
the loss of a mini-batch (line 6) is a mean of per-pair terms — so it splits across ranks without
changing what is computed:

* teacher pairs: sampling batch b (the batches one process would run) goes to rank b mod K; the
  targets are then summed across ranks, each rank contributing its rows and zeros elsewhere, which
  is exact. Every rank keeps all pairs: each step's mini-batch is drawn from all of them and its
  micro-batches are dealt to the ranks afresh, so a pair may be needed on any rank. An interrupted
  rank saves the pairs it finished beside the cache before it stops (:mod:`.pairs`);
* optimisation: every rank draws the same seeded mini-batch (a function of (seed, NFE, iteration)),
  computes the loss and gradients of its share of the micro-batches (micro-batch m on rank m mod K),
  and every rank gathers them all (an all-reduce of rows, each filled by one rank) and sums them in
  micro-batch order before clipping and Adam — the same float additions as one process, so the same
  step;
* held-out RMSE: sampling batch b on rank b mod K, the per-batch squared errors gathered alike.

Only rank 0 writes files (the pairs cache, the resumable state, the Φ and the report) and reports
progress. A rank that fails or is interrupted makes the others' next collective fail (the peer's
connection closes, or the process group's timeout passes); they stop with a message, and rank 0
saves the last consistent state, which ``--resume`` continues.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; with
``WORLD_SIZE`` > 1 the first :func:`ranks` joins the process group (gloo on the CPU, nccl with CUDA).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import threading
from typing import Callable, Optional, Sequence

import torch

from .progress import Reporter

#: Seconds a collective waits for a silent peer before the run stops (``DYWEIGHT_DIST_TIMEOUT`` to change).
DEFAULT_TIMEOUT_S = 1800


class RankFailed(RuntimeError):
    """Another rank stopped (failed, interrupted or silent past the timeout): this one stops too."""


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` ranks and the collectives over them (no-ops for one)."""

    rank: int = 0
    world: int = 1
    device: Optional[torch.device] = None  # where collectives run (the CUDA device with nccl)

    @property
    def main(self) -> bool:
        """Whether this rank writes files and reports progress."""
        return self.rank == 0

    def share(self, items: Sequence) -> list:
        """The items of this rank: item i goes to rank i mod world."""
        return list(items)[self.rank::self.world]

    def ordered(self, mine: dict, count: int, template: Sequence[torch.Tensor]) -> list:
        """Items 0 … count − 1 of every rank, in order: ``mine`` maps this rank's item indices to lists
        of tensors shaped as ``template``; each item is computed on one rank, and the float64 rows
        carry it exactly, so whoever sums the items in order gets one process's sum bit for bit."""
        if self.world == 1:
            return [mine[index] for index in range(count)]
        rows = torch.zeros(count, sum(t.numel() for t in template), dtype=torch.float64)
        for index, tensors in mine.items():
            rows[index] = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors])
        items = []
        for row in self.sum_rows(rows):
            parts = row.split([t.numel() for t in template])
            items.append([part.reshape(t.shape).to(t) for part, t in zip(parts, template)])
        return items

    def sum_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks in its own dtype (rows filled by one rank each: exact)."""
        if self.world == 1:
            return tensor
        reduced = tensor.detach().contiguous().clone()
        self._all_reduce(reduced)
        return reduced

    def barrier(self) -> None:
        if self.world > 1:
            self._run(lambda: torch.distributed.barrier())

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        """In place, on the collective device and back."""
        moved = tensor if self.device is None else tensor.to(self.device)
        self._run(lambda: torch.distributed.all_reduce(moved))
        if moved is not tensor:
            tensor.copy_(moved.to(tensor.device))

    def _run(self, collective) -> None:
        try:
            collective()
        except RuntimeError as error:  # gloo/nccl: a peer closed its connection or the timeout passed
            detail = str(error).split(". ")[0].splitlines()[0]
            raise RankFailed(f"rank {self.rank} of {self.world}: another rank stopped ({detail})") from None


SINGLE = Ranks()
_JOINED: Optional[Ranks] = None


def ranks() -> Ranks:
    """The ranks of this run: :data:`SINGLE`, or the ``torchrun`` group (joined on the first call)."""
    global _JOINED
    if _JOINED is not None:
        return _JOINED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    timeout = datetime.timedelta(seconds=float(os.environ.get("DYWEIGHT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    device = None
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # ComfyUI loads on torch.cuda.current_device()
        device = torch.device("cuda", local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device is not None else "gloo", timeout=timeout)
    _JOINED = Ranks(rank=rank, world=world, device=device)
    return _JOINED


def reporter(progress: Optional[Callable[[dict], None]]) -> Reporter:
    """The run's :class:`Reporter`: ``progress`` (or the tqdm bars) on rank 0, silence on the others."""
    return Reporter(progress if ranks().main else _silent)


def _silent(event: dict) -> None:
    """Progress of a rank other than 0: not shown."""


def interrupt_on_terminate() -> None:
    """Make SIGTERM stop this rank as Ctrl-C does (``KeyboardInterrupt``: rank 0 saves the state).

    ``torchrun`` ends the other ranks with SIGTERM when one fails or is interrupted; without this,
    rank 0 could be ended before it noticed and saved the last consistent state."""
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if ranks().world > 1:
        signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def signals_ignored(among: Ranks):
    """Within it, SIGINT and SIGTERM are ignored when ``among`` has several ranks: a rank saving what it
    finished because a peer stopped is not cut short by the SIGTERM that ``torchrun`` sends the remaining
    ranks a moment later (the run is stopping anyway). One process, or a thread other than the main one
    (signals go to the main thread only): no change."""
    if among.world == 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.signal(stop, signal.SIG_IGN) for stop in stops]
    try:
        yield
    finally:
        for stop, handler in zip(stops, previous):
            signal.signal(stop, handler)
