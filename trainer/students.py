"""The two parameterisations of Φ the trainer optimises — one update rule, two families.

* :class:`DyWeightStudent` (arXiv 2603.11607, Algorithm 1): W trained in full below its diagonal (rows
  need not sum to one: the implicit time shift of Eq. 8) and the time scales as log s, on the model's
  own N-step grid; endpoint loss. After each step a projection keeps the running time above
  ``TIME_FLOOR``·σ_n (the update rule needs t̃ > 0, and a few-step grid that ends at σ_min then 0 leaves
  almost no room before its penultimate point).
* :class:`DSSStudent` (Differentiable Solver Search, arXiv 2505.21114, §3–4): the grid itself is
  learned — the schedule's time u ∈ [0, 1] at each grid point is the cumulative softmax of free deltas,
  so the grid stays monotone, starts at σ_max and ends where the schedule ends — and full-history
  coefficients whose rows sum to one (the newest weight is implied: W[n,0] = 1 − Σ_{k≥1} W[n,k]); s = 1.
  Path loss (the student's states against the teacher's at the nearest teacher time) plus the release's
  endpoint Huber term. Initialised at Euler on the model's own N-step grid.

Both answer to the same loop (:mod:`.optimise`): ``parameters`` (the leaves Adam steps), ``phi()`` (the
current Φ, differentiable in them), ``loss(calls, batch)`` (``calls``: the model's differentiable calls,
:mod:`.model_calls`), ``after_step()``, ``evaluation_grid(phi)`` (the grid a saved Φ runs on) and
``state()`` for the saved run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..coefficients import Coefficients, dyweight_sample, shifted_times
from .pairs import PairSet

#: The running time is kept at t̃_n ≥ TIME_FLOOR·σ_n (n ≥ 1) by projecting the DyWeight weight rows.
TIME_FLOOR = 0.1
#: The endpoint term of DSS's loss (the release's trainer): weight × Huber(δ) of the final state.
DSS_ENDPOINT_WEIGHT, DSS_HUBER_DELTA = 1000.0, 1e-3
FAMILIES = ("dyweight", "dss")


def endpoint_loss(calls: Callable, batch: PairSet, sigmas: torch.Tensor, phi: Coefficients) -> torch.Tensor:
    """DyWeight's Algorithm 1, line 6: mean squared distance of the student's endpoint to the teacher's.
    ``calls``: the denoiser's differentiable model calls (:func:`.model_calls.differentiable_calls`)."""
    endpoint = dyweight_sample(batch.bind(calls), batch.noise, sigmas, phi)
    return (endpoint - batch.target).pow(2).mean()


def path_loss(calls: Callable, batch: PairSet, phi: Coefficients) -> torch.Tensor:
    """DSS's loss: Σ_i MSE(x_i, teacher's x at the teacher time nearest σ_i) over the student's inner
    states x_1 … x_{N−1}, plus 1000 · Huber_δ=10⁻³(x_N, teacher's x0).

    The release trains rectified-flow models, whose states stay of unit scale; a VE state at σ has the
    scale √(1 + σ²) (unit-variance data), so each path term compares the states divided by that, which
    leaves flow states (σ ≤ 1) nearly as they are and keeps the early, large-σ states of a VE model from
    drowning the endpoint."""
    states = []
    endpoint = dyweight_sample(batch.bind(calls), batch.noise, phi.sigmas, phi,
                               callback=lambda step: states.append(step["x"]) if step["i"] > 0 else None)
    nearest = (phi.sigmas.detach()[1:-1, None].to(batch.path_sigmas) - batch.path_sigmas[None]).abs().argmin(1)
    loss = DSS_ENDPOINT_WEIGHT * torch.nn.functional.huber_loss(endpoint, batch.target, delta=DSS_HUBER_DELTA)
    for state, index, sigma in zip(states, nearest.tolist(), phi.sigmas[1:-1].unbind()):
        loss = loss + (state - batch.path[:, index].to(state)).pow(2).mean() / (1 + sigma.detach() ** 2)
    return loss


class DyWeightStudent:
    """The trainable DyWeight Φ of one NFE: W (masked to the available history) and log s, on top of
    ``template``, on the fixed grid ``sigmas`` (float64)."""

    family = "dyweight"
    needs_path = False

    def __init__(self, template: Coefficients, state: dict, sigmas: torch.Tensor):
        self.template, self.sigmas = template, sigmas.double()
        self.weights = state["weights"].detach().clone().requires_grad_(True)
        self.log_scale = state["log_scale"].detach().clone().requires_grad_(True)
        self.mask = torch.ones_like(self.weights).tril()  # column k ≤ row n: gradients that exist

    @staticmethod
    def initial_state(template: Coefficients) -> dict:
        """float32 (W, log s) of the initial Φ: the exact values the init is evaluated and returned with."""
        return {"weights": template.weights.detach().float(), "log_scale": template.time_scale.detach().float().log()}

    @property
    def parameters(self) -> list:
        return [self.weights, self.log_scale]

    def state(self) -> dict:
        return {"weights": self.weights.detach(), "log_scale": self.log_scale.detach()}

    def phi(self) -> Coefficients:
        """The current Φ (differentiable in the parameters)."""
        return dataclasses.replace(self.template, weights=self.weights * self.mask, time_scale=self.log_scale.exp())

    def loss(self, calls: Callable, batch: PairSet) -> torch.Tensor:
        return endpoint_loss(calls, batch, self.sigmas, self.phi())

    def evaluation_grid(self, phi: Coefficients) -> torch.Tensor:
        """The grid a (saved) Φ of this student runs on: the fixed float64 grid."""
        return self.sigmas

    @torch.no_grad()
    def after_step(self) -> None:
        """Project W so that t̃_n ≥ TIME_FLOOR·σ_n (up to rounding) for every queried step.

        t̃_n is linear in the row sum of row n − 1 (Eq. 8): front to back, a row that overshoots gets
        the newest-gradient weight that puts t̃_n on the floor (later rows do not move earlier times).
        """
        grid = self.sigmas
        floor = TIME_FLOOR * grid
        for n in range(1, self.weights.shape[0]):
            times = shifted_times((self.weights * self.mask).double(), grid)
            if times[n] >= floor[n]:
                continue
            needed = (floor[n] - times[n - 1]) / (grid[n] - times[n - 1])
            self.weights[n - 1, 0] += float(needed - (self.weights[n - 1] * self.mask[n - 1]).double().sum())


class ScheduleTime:
    """The model's schedule as a function of its own time u ∈ [0, 1], from a fine grid of it.

    u = j / M at the j-th point of the fine grid (M intervals), log-linear in σ in between; a grid that
    ends at σ = 0 has that final interval linear in σ. Differentiable in u and monotone, with σ(0) = σ_max
    and σ(1) = the grid's end (σ_min, or 0).
    """

    def __init__(self, fine_sigmas: torch.Tensor):
        fine = fine_sigmas.double()
        self.to_zero = float(fine[-1]) == 0.0
        self.log_sigmas = fine[fine > 0].log()
        if len(self.log_sigmas) < 2:
            raise ValueError("the teacher's grid needs at least two positive sigmas to place a DSS grid on")
        self.intervals = len(self.log_sigmas) - 1 + int(self.to_zero)

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        position = u * self.intervals
        index = position.detach().floor().clamp(0, self.intervals - 1).long()
        fraction = position - index
        inner = index.clamp(max=len(self.log_sigmas) - 2)
        log_sigma = torch.lerp(self.log_sigmas[inner], self.log_sigmas[inner + 1], fraction)
        if not self.to_zero:
            return log_sigma.exp()
        last = self.log_sigmas[-1].exp()
        to_zero = last * (1 - fraction)  # the final interval, from the last positive σ down to 0
        return torch.where(index == len(self.log_sigmas) - 1, to_zero, log_sigma.exp())

    def times(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The inverse: u of each sigma (the fine grid's own points come out exactly)."""
        sigmas = sigmas.double()
        last = float(self.log_sigmas[-1].exp())
        log_sigma = sigmas.clamp_min(last).log().clamp(self.log_sigmas[-1], self.log_sigmas[0])
        positive = len(self.log_sigmas) - 1
        index = (torch.searchsorted(-self.log_sigmas, -log_sigma, right=True) - 1).clamp(0, positive - 1)
        fraction = (self.log_sigmas[index] - log_sigma) / (self.log_sigmas[index] - self.log_sigmas[index + 1])
        position = index + fraction
        if self.to_zero:  # below the last positive σ: the final, linear interval
            position = torch.where(sigmas < last, positive + (last - sigmas) / last, position)
        return position / self.intervals


class DSSStudent:
    """The trainable DSS Φ of one NFE: grid logits (its time steps) and the older-history coefficients.

    ``template`` is a DSS Φ (K = N, s = 1) whose ``sigmas`` the learned grid replaces; ``schedule_time``
    maps the schedule's time to sigmas.
    """

    family = "dss"
    needs_path = True

    def __init__(self, template: Coefficients, state: dict, schedule_time: ScheduleTime):
        self.template, self.schedule_time = template, schedule_time
        self.grid_logits = state["grid_logits"].detach().clone().requires_grad_(True)
        self.older = state["older"].detach().clone().requires_grad_(True)
        self.mask = torch.ones_like(self.older).tril()  # W[n,k], 1 ≤ k ≤ n: the older gradients
        self.mask[:, 0] = 0

    @staticmethod
    def initial_state(template: Coefficients, schedule_time: ScheduleTime, start: Coefficients = None) -> dict:
        """Euler on the template's grid (the grid's time steps as logits, no older-history weight), or the
        grid and older-history weights of ``start`` (a DSS Φ with the same steps), its grid placed on this
        schedule by σ. Rows sum to one here, so a ``start`` row that does not (a flow table's last one,
        scaled to end at σ = 0) keeps its older weights and an implied newest one."""
        steps = template.steps
        if start is None:
            u, older = schedule_time.times(template.sigmas), torch.zeros(steps, steps)
        else:
            u, older = schedule_time.times(start.sigmas), start.weights.detach().float().clone()
            older[:, 0] = 0
        if len(u) != steps + 1 or older.shape != (steps, steps):
            raise ValueError(f"the starting DSS Φ ({start.steps} steps) does not fit this {steps}-step grid")
        return {"grid_logits": (u[1:] - u[:-1]).clamp_min(1e-6).log().float(), "older": older}

    @property
    def parameters(self) -> list:
        return [self.grid_logits, self.older]

    def state(self) -> dict:
        return {"grid_logits": self.grid_logits.detach(), "older": self.older.detach()}

    def grid(self) -> torch.Tensor:
        """σ_0 … σ_N: the schedule at u = cumulative softmax of the logits (u_0 = 0, u_N = 1)."""
        steps = torch.softmax(self.grid_logits.double(), 0)
        u = torch.cat([steps.new_zeros(1), steps.cumsum(0)]).clamp(max=1.0)
        return self.schedule_time.sigmas(u)

    def phi(self) -> Coefficients:
        """The current Φ (differentiable in the parameters); rows sum to one (DSS §3)."""
        older = self.older * self.mask
        newest = 1 - older.sum(1, keepdim=True)
        weights = torch.cat([newest, older[:, 1:]], 1)
        return dataclasses.replace(self.template, weights=weights, sigmas=self.grid())

    def loss(self, calls: Callable, batch: PairSet) -> torch.Tensor:
        return path_loss(calls, batch, self.phi())

    @staticmethod
    def evaluation_grid(phi: Coefficients) -> torch.Tensor:
        """The grid a (saved) Φ of this student runs on: its own, as stored."""
        return phi.sigmas.double()

    def after_step(self) -> None:
        """Nothing to project: the grid is monotone and t̃ = σ > 0 by construction."""


def student_class(family: str):
    """The parameterisation of a solver family."""
    if family not in FAMILIES:
        raise ValueError(f"solver family must be one of {FAMILIES}, got {family!r}")
    return DyWeightStudent if family == "dyweight" else DSSStudent
