"""The update rule against independent oracles (no reference data needed).

* a plain float64 loop over Eqs. 6–8 (tests/plain_dyweight.py) on random W and s, both divisors, both
  analytical first steps (VE and flow form), K < N and K = N, on exact Gaussian-mixture denoisers;
* exact solutions: Gaussian data has a closed-form probability-flow ODE in VE and flow form, so the
  order of convergence of Euler / Adams–Bashforth and the exactness of the flow-form first step show.
"""

import math

import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients, SamplingError, adams_bashforth, dyweight_sample, euler
from comfyui_dyweight.coefficients.update_rule import shifted_times
from comfyui_dyweight.trainer.analytic import GaussianMixture, gaussian_denoiser
from plain_dyweight import (
    F64, gaussian_flow_denoiser, gaussian_flow_solution, gaussian_mixture_flow_denoiser, gaussian_ve_solution,
    plain_dyweight)

STEPS = 5
VE_GRID = [8.0, 4.1, 2.2, 1.0, 0.45, 0.0]            # ends at 0, as ComfyUI's schedulers do
VE_GRID_TO_MIN = [6.0, 3.3, 1.6, 0.9, 0.31, 0.02]    # ends at σ_min, as the pixel-space tables do
FLOW_GRID = [1.0, 0.83, 0.62, 0.4, 0.17, 0.0]


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=6, components=3, std=0.4, seed=4)


def random_phi(order, *, afs, divisor, prediction, seed):
    """Adams–Bashforth rows moved by noise (rows no longer sum to 1: an implicit time shift) and s ≠ 1."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.zeros(STEPS, order, dtype=F64)
    base[:, :min(order, 4)] = adams_bashforth(STEPS - int(afs), min(order, 4), afs=afs, final_denoise=False).weights
    weights = (base + 0.15 * torch.randn(base.shape, generator=generator, dtype=F64)).tril()
    scales = 0.8 + 0.4 * torch.rand(STEPS, generator=generator, dtype=F64)
    return Coefficients(weights=weights, time_scale=scales, afs=afs, divisor=divisor, prediction=prediction)


def model_for(kind, mixture):
    if kind == "flow":
        return gaussian_mixture_flow_denoiser(mixture.means, mixture.weights.tolist(), mixture.std), FLOW_GRID
    return mixture.denoise, (VE_GRID if kind == "ve" else VE_GRID_TO_MIN)


@pytest.mark.parametrize("order", [2, STEPS], ids=["K<N", "K=N"])
@pytest.mark.parametrize("divisor", ["sigma", "net_sigma"])
@pytest.mark.parametrize("afs", [False, True], ids=["model-first-step", "afs"])
@pytest.mark.parametrize("kind", ["ve", "ve-to-sigma-min", "flow"])
def test_dyweight_sample_equals_the_plain_loop(mixture, kind, afs, divisor, order):
    seed = 10 * ["ve", "ve-to-sigma-min", "flow"].index(kind) + 4 * afs + 2 * (divisor == "sigma") + (order == 2)
    phi = random_phi(order, afs=afs, divisor=divisor, prediction="flow" if kind == "flow" else "eps", seed=seed)
    denoise, grid = model_for(kind, mixture)
    start = torch.randn(7, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(seed + 1)) * grid[0]
    calls, oracle_steps, reported = [], [], []

    def counting(x, sigma):
        calls.append(float(sigma))
        return denoise(x, sigma)

    result = dyweight_sample(counting, start, torch.tensor(grid, dtype=F64), phi, callback=reported.append)
    expected_calls = []
    expected = plain_dyweight(denoise, start, grid, phi.weights.tolist(), phi.time_scale.tolist(), afs=afs,
                              divisor=divisor, flow=kind == "flow", calls=expected_calls, steps_seen=oracle_steps)
    assert (result - expected).abs().max().item() <= 1e-10 * (1 + expected.abs().max().item())
    assert calls == pytest.approx(expected_calls, rel=1e-12) and len(calls) == phi.nfe
    assert [info["i"] for info in reported] == list(range(STEPS))
    for info, (x, sigma, denoised) in zip(reported, oracle_steps):
        assert float(info["sigma"]) == float(info["sigma_hat"]) == pytest.approx(sigma, rel=1e-12)
        assert torch.allclose(info["x"], x, rtol=1e-10, atol=1e-10)
        assert torch.allclose(info["denoised"], denoised, rtol=1e-10, atol=1e-10)


def test_plain_loop_differs_when_the_first_step_form_differs(mixture):
    """Guards the oracle itself: VE and flow first steps, and AFS vs a model call, give different results."""
    denoise, grid = model_for("ve", mixture)
    phi = random_phi(3, afs=True, divisor="sigma", prediction="eps", seed=3)
    start = torch.randn(4, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(0)) * grid[0]
    rows, scales = phi.weights.tolist(), phi.time_scale.tolist()
    ve = plain_dyweight(denoise, start, grid, rows, scales, afs=True)
    flow = plain_dyweight(denoise, start, grid, rows, scales, afs=True, flow=True)
    called = plain_dyweight(denoise, start, grid, rows, scales, afs=False)
    assert (ve - flow).abs().max() > 1e-2 and (ve - called).abs().max() > 1e-2


def test_shifted_times_follow_eq_8():
    """t̃_{n+1} = t̃_n + (Σ_{k ≤ n} W[n,k])·(σ_{n+1} − t̃_n), written out."""
    weights = torch.tensor([[0.9, 0.0, 0.0], [1.3, -0.2, 0.0], [0.7, 0.5, -0.1], [1.0, 0.2, 0.1]], dtype=F64)
    sigmas = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0], dtype=F64)
    running, expected = 10.0, [10.0]
    for n in range(3):
        running = running + sum(weights[n, : n + 1].tolist()) * (float(sigmas[n + 1]) - running)
        expected.append(running)
    assert shifted_times(weights, sigmas).tolist() == pytest.approx(expected, rel=1e-14)


def test_running_time_reaching_exactly_zero_is_refused():
    """t̃_2 = 2 + 2·(1 − 2) = 0 exactly: zero is not a usable time (the boundary of the check)."""
    phi = Coefficients(weights=torch.tensor([[1.0], [2.0], [1.0]], dtype=F64), time_scale=torch.ones(3, dtype=F64))
    with pytest.raises(SamplingError, match="t̃ to 0 at step 2 of 3"):
        dyweight_sample(lambda x, s: x * 0, torch.ones(1, 1, dtype=F64), torch.tensor([4.0, 2.0, 1.0, 0.0]), phi)


def test_last_step_may_end_at_zero_time():
    """t̃_N is never a query time: an Euler row into σ_N = 0 is fine (x_N = D(x_{N−1}))."""
    x = torch.full((2, 3), 3.0, dtype=F64)
    result = dyweight_sample(gaussian_denoiser(1.0), x, torch.tensor([2.0, 1.0, 0.0], dtype=F64), euler(2))
    after_first = x + (1.0 - 2.0) * (x - x / 5) / 2.0
    assert torch.allclose(result, after_first / 2, atol=1e-14)  # D(x, 1) = x/2 for unit-variance data


def observed_orders(phi_for, solve, exact):
    """log2 of the error ratio between uniform grids of N = 32, 64, 128 steps, Φ = phi_for(N)."""
    errors = [(solve(phi_for(steps), steps) - exact).abs().max().item() for steps in (32, 64, 128)]
    return [math.log2(earlier / later) for earlier, later in zip(errors, errors[1:])]


@pytest.mark.parametrize("order, expected", [(1, 1.0), (2, 2.0), (3, None), (4, None)])
def test_ve_gaussian_convergence_order(order, expected):
    """dx/dσ = xσ/(σ²+c²) from σ = 3 to 0.5, exact x ∝ √(σ²+c²): Euler converges at first order, AB2 at
    second, AB3/AB4 (with their lower-order start-up steps) faster than second."""
    c, start = 0.5, torch.tensor([[1.7, -0.4]], dtype=F64)
    exact = gaussian_ve_solution(start, 3.0, 0.5, c)

    def solve(phi, steps):
        return dyweight_sample(gaussian_denoiser(c), start, torch.linspace(3.0, 0.5, steps + 1, dtype=F64), phi)

    orders = observed_orders(lambda n: adams_bashforth(n, order, final_denoise=False), solve, exact)
    if expected is None:
        assert min(orders) > 2.5, orders
    else:
        assert all(abs(observed - expected) < 0.12 for observed in orders), orders


@pytest.mark.parametrize("afs", [False, True])
def test_flow_gaussian_convergence_order(afs):
    """Flow form, zero-mean Gaussian data, t = 1 → 0.05: Adams–Bashforth (K = 2) converges at second order,
    with the flow-form analytical first step as well."""
    c, start = 0.6, torch.tensor([[1.3, -0.8, 0.2]], dtype=F64)
    exact = gaussian_flow_solution(start, 1.0, 0.05, c)

    def solve(phi, steps):
        return dyweight_sample(gaussian_flow_denoiser(c), start, torch.linspace(1.0, 0.05, steps + 1, dtype=F64), phi)

    orders = observed_orders(
        lambda n: adams_bashforth(n - int(afs), 2, afs=afs, final_denoise=False, prediction="flow"), solve, exact)
    assert all(abs(observed - 2.0) < 0.12 for observed in orders), orders


def test_flow_first_step_is_the_true_velocity_at_t_1():
    """For zero-mean data D(x, 1) = 0, so the velocity at t = 1 is x: the flow-form analytical first step
    (g_0 = x) and a model call there give the same trajectory."""
    denoise = gaussian_flow_denoiser(0.6)
    start = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(8))
    grid = torch.tensor(FLOW_GRID, dtype=F64)
    with_afs = dyweight_sample(denoise, start, grid, adams_bashforth(4, 2, afs=True, prediction="flow"))
    called = dyweight_sample(denoise, start, grid, adams_bashforth(5, 2, prediction="flow"))
    assert torch.allclose(with_afs, called, rtol=1e-13, atol=1e-13)
    assert (with_afs - start).abs().max() > 0.1


def test_ve_first_step_is_x_over_sqrt_one_plus_sigma_squared():
    """One AFS step of Euler: x_1 = x_0 + (σ_1 − σ_0)·x_0/√(1 + σ_0²), the release's ε estimate."""
    phi = Coefficients(weights=torch.ones(2, 1, dtype=F64), time_scale=torch.ones(2, dtype=F64), afs=True)
    x = torch.tensor([[2.0, -1.0]], dtype=F64)
    seen = []
    dyweight_sample(lambda value, sigma: value * 0, x, torch.tensor([3.0, 1.0, 0.5], dtype=F64), phi,
                    callback=seen.append)
    assert torch.allclose(seen[1]["x"], x + (1.0 - 3.0) * x / math.sqrt(10.0), rtol=1e-14)
    assert torch.allclose(seen[0]["denoised"], x - 3.0 * x / math.sqrt(10.0), rtol=1e-14)
