"""The DyWeight update rule: equivalence with iPNDM, the released reference values, convergence, gradients."""

import dataclasses
import math

import pytest
import torch

from comfyui_dyweight.coefficients import (
    Coefficients, SamplingError, adams_bashforth, dyweight_sample, edm_sigmas, euler,
    variable_step_adams_bashforth)
from comfyui_dyweight.coefficients.initializers import variable_step_rows
from comfyui_dyweight.trainer.analytic import GaussianMixture, gaussian_denoiser
from reference_tables import compact_weights, load_tables, sd15_uniform_time_sigmas

F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=8, components=4, std=0.5, seed=0)


@pytest.fixture(scope="module")
def start(mixture):
    return 80.0 * torch.randn(32, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(1))


def plain_ipndm(denoise, x, sigmas):
    """iPNDM written out plainly (fourth-order Adams–Bashforth, Euler warm-up and final denoise)."""
    gradients = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma
        gradients.append(d)
        if sigma_next == 0:
            x = denoised
        elif len(gradients) == 1:
            x = x + (sigma_next - sigma) * d
        elif len(gradients) == 2:
            x = x + (sigma_next - sigma) * (3 * gradients[-1] - gradients[-2]) / 2
        elif len(gradients) == 3:
            x = x + (sigma_next - sigma) * (23 * gradients[-1] - 16 * gradients[-2] + 5 * gradients[-3]) / 12
        else:
            x = x + (sigma_next - sigma) * (55 * gradients[-1] - 59 * gradients[-2] + 37 * gradients[-3]
                                            - 9 * gradients[-4]) / 24
    return x


@pytest.mark.parametrize("nfe", [3, 5, 8, 10])
def test_adams_bashforth_preset_equals_plain_ipndm(mixture, start, nfe):
    sigmas = edm_sigmas(nfe, 0.002, 80.0, 7.0, to_zero=True)
    ours = dyweight_sample(mixture.denoise, start, sigmas, adams_bashforth(nfe))
    plain = plain_ipndm(mixture.denoise, start, sigmas)
    assert (ours - plain).abs().max().item() <= 1e-10


def test_reference_value_cifar_nfe3():
    table = load_tables()["00000-cifar-nfe3"]
    steps = table["num_steps"] - 1
    phi = Coefficients(weights=compact_weights(table["W"], table["max_history_steps"]),
                       time_scale=torch.tensor([1.0] + table["t_scale"], dtype=F64),  # s_0 unused with AFS
                       afs=True)
    sigmas = edm_sigmas(steps, 0.002, 80.0, 7.0)
    x = sigmas[:1].clone().reshape(1, 1)
    result = dyweight_sample(gaussian_denoiser(0.5), x, sigmas, phi)
    assert result.item() == pytest.approx(0.5147305, abs=5e-7)


def test_reference_value_sd15_mscoco_nfe8():
    table = load_tables()["00036-mscoco-nfe8"]
    phi = Coefficients(weights=compact_weights(table["W"], table["max_history_steps"]),
                       time_scale=torch.tensor(table["t_scale"], dtype=F64), afs=False)
    sigmas = sd15_uniform_time_sigmas(table["num_steps"])
    x = sigmas[:1].clone().reshape(1, 1)
    result = dyweight_sample(gaussian_denoiser(0.5), x, sigmas, phi)
    assert result.item() == pytest.approx(0.4192247, abs=5e-7)


def test_variable_step_rows_integrate_polynomial_solutions_exactly():
    """On a non-uniform grid, step n (p = min(n+1, K) gradients) is exact for dx/dσ = P(σ), deg P < p,

    i.e. for every ODE whose exact solution is a polynomial of degree ≤ p (≤ K once the history is full).
    """
    grid = torch.tensor([80.0, 31.0, 9.5, 4.0, 1.1, 0.35, 0.02], dtype=F64)  # deliberately non-uniform
    order = 4
    rows = variable_step_rows(grid, order)
    generator = torch.Generator().manual_seed(0)
    for n, row in enumerate(rows):
        p = len(row)
        assert p == min(n + 1, order)
        coefficients = torch.randn(p, dtype=F64, generator=generator)  # degree p − 1

        def gradient(sigma):
            return sum(c * sigma ** j for j, c in enumerate(coefficients))

        def antiderivative(sigma):
            return sum(c * sigma ** (j + 1) / (j + 1) for j, c in enumerate(coefficients))

        step = grid[n + 1] - grid[n]
        quadrature = step * sum(w * gradient(grid[n - k]) for k, w in enumerate(row))
        exact = antiderivative(grid[n + 1]) - antiderivative(grid[n])
        assert quadrature.item() == pytest.approx(exact.item(), rel=1e-9, abs=1e-9)


def test_variable_step_sampler_follows_a_linear_solution_exactly():
    """Through dyweight_sample on a non-uniform grid: x(σ) = x_0 + c·(σ − σ_0) is reproduced to rounding."""
    grid = torch.tensor([5.0, 4.0, 2.5, 1.7, 0.6, 0.1], dtype=F64)
    slope = 0.7

    def denoise(x, sigma):  # g = (x − D)/σ = slope  ⇒  D = x − σ·slope
        return x - sigma * slope

    x0 = torch.full((3, 2), 1.25, dtype=F64)
    result = dyweight_sample(denoise, x0, grid, variable_step_adams_bashforth(grid, order=4, final_denoise=False))
    assert torch.allclose(result, x0 + slope * (grid[-1] - grid[0]), atol=1e-12)


def test_variable_step_error_falls_with_nfe(mixture, start):
    exact = mixture.ode_solution(start, 80.0, 0.002)
    errors = []
    for nfe in range(3, 11):
        sigmas = edm_sigmas(nfe, 0.002, 80.0, 7.0)
        result = dyweight_sample(mixture.denoise, start, sigmas, variable_step_adams_bashforth(sigmas, final_denoise=False))
        errors.append((result - exact).pow(2).mean().sqrt().item())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_fixed_adams_bashforth_and_euler_errors_fall_with_nfe(mixture, start):
    """Fixed-coefficient AB (iPNDM) is not monotone on the non-uniform EDM grid at NFE 3–10, but converges."""
    exact = mixture.ode_solution(start, 80.0, 0.002)

    def error(phi, nfe):
        result = dyweight_sample(mixture.denoise, start, edm_sigmas(nfe, 0.002, 80.0, 7.0), phi)
        return (result - exact).pow(2).mean().sqrt().item()

    ab = [error(adams_bashforth(nfe, final_denoise=False), nfe) for nfe in range(3, 11)]
    eu = [error(euler(nfe), nfe) for nfe in range(3, 11)]
    assert all(later < earlier for earlier, later in zip(eu, eu[1:])), eu
    assert ab[-1] < ab[0] / 5 and max(ab[4:]) < min(ab[:3]), ab
    assert all(a < e for a, e in zip(ab, eu)), (ab, eu)


def _lower_triangle(steps, order):
    rows, cols = torch.tril_indices(steps, order)
    return rows, cols


def test_gradients_match_finite_differences(mixture):
    steps, order = 4, 3
    rows, cols = _lower_triangle(steps, order)
    base = adams_bashforth(steps, order, final_denoise=False)
    sigmas = edm_sigmas(steps, 0.002, 80.0, 7.0)
    x = 80.0 * torch.randn(3, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(2))

    def sample(free_weights, time_scale):
        weights = torch.zeros(steps, order, dtype=F64).index_put((rows, cols), free_weights)
        phi = Coefficients(weights=weights, time_scale=time_scale)
        return dyweight_sample(mixture.denoise, x, sigmas, phi)

    free = base.weights.to(F64)[rows, cols].clone().requires_grad_(True)
    scale = (1 + 0.05 * torch.randn(steps, dtype=F64, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    assert torch.autograd.gradcheck(sample, (free, scale), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_afs_skips_the_first_model_call_and_net_sigma_divides_by_query_time(mixture, start):
    calls = []

    def counting(x, sigma):
        calls.append(float(sigma))
        return mixture.denoise(x, sigma)

    phi = dataclasses.replace(adams_bashforth(4, 3, afs=True, final_denoise=False),
                              time_scale=torch.tensor([1.0, 0.9, 1.1, 1.0, 1.0]))
    sigmas = edm_sigmas(phi.steps, 0.002, 80.0, 7.0)
    dyweight_sample(counting, start, sigmas, phi)
    assert len(calls) == phi.nfe == 4
    assert calls[0] == pytest.approx(0.9 * float(sigmas[1]))  # rows sum to 1 ⇒ t̃ = σ, query = s·σ

    one_step = Coefficients(weights=torch.ones(1, 1), time_scale=torch.tensor([0.5]), divisor="net_sigma")
    x = start[:2]
    result = dyweight_sample(mixture.denoise, x, torch.tensor([2.0, 1.0], dtype=F64), one_step)
    expected = x + (1.0 - 2.0) * (x - mixture.denoise(x, torch.tensor(1.0, dtype=F64))) / 1.0
    assert torch.allclose(result, expected)


def test_callback_runs_once_per_step_and_half_precision_keeps_dtype(mixture):
    seen = []
    x = torch.randn(2, mixture.dim).half() * 10
    phi = adams_bashforth(5)

    def half_model(value, sigma):
        assert value.dtype == torch.float32  # Φ maths in float32 even for a half-precision batch
        return mixture.denoise(value.double(), sigma.double()).half()

    result = dyweight_sample(half_model, x, edm_sigmas(5, 0.03, 14.6, to_zero=True), phi,
                             callback=lambda info: seen.append(info["i"]))
    assert result.dtype == torch.float16 and torch.isfinite(result).all()
    assert seen == list(range(5))


def test_refuses_wrong_step_count(mixture, start):
    with pytest.raises(SamplingError, match=r"5 steps \(NFE 5\) and needs 6 sigmas, but the schedule has 7 steps"):
        dyweight_sample(mixture.denoise, start, edm_sigmas(7, 0.002, 80.0), adams_bashforth(5))
    with pytest.raises(SamplingError, match=r"needs 6 sigmas, but the schedule has a \(2, 3\)-shaped tensor steps"):
        dyweight_sample(mixture.denoise, start, edm_sigmas(5, 0.002, 80.0)[:6].reshape(2, 3), adams_bashforth(5))


def test_a_float64_phi_runs_in_float32_for_a_float32_batch(mixture, start):
    """The working dtype is the batch's (at least float32), whatever Φ's: the same numbers as a float32 Φ."""
    phi = dataclasses.replace(adams_bashforth(5, 3, divisor="net_sigma"),
                              time_scale=torch.linspace(1.1, 0.9, 5, dtype=F64))
    single = phi.detached(torch.float32)
    sigmas = edm_sigmas(5, 0.002, 80.0)
    asked = []

    def model(x, sigma):
        asked.append(sigma.dtype)
        return mixture.denoise(x.double(), sigma.double()).float()

    x = start.float()
    assert torch.equal(dyweight_sample(model, x, sigmas, phi), dyweight_sample(model, x, sigmas.float(), single))
    assert set(asked) == {torch.float32}


def test_refuses_phi_that_drives_time_negative(mixture, start):
    weights = adams_bashforth(4, 2).weights.clone()
    weights[1] = torch.tensor([3.0, 0.0])  # overshoots σ_2 by far: t̃_2 = σ_1 + 3(σ_2 − σ_1) < 0
    phi = Coefficients(weights=weights, time_scale=torch.ones(4))
    with pytest.raises(SamplingError, match="step 2 of 4"):
        dyweight_sample(mixture.denoise, start, torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0], dtype=F64), phi)


def test_non_finite_output_names_the_step(start):
    def breaks_at_third_call(x, sigma, calls=[]):
        calls.append(1)
        return x * math.nan if len(calls) == 3 else x * 0.5

    with pytest.raises(SamplingError, match="step 2 of 5 produced NaN"):
        dyweight_sample(breaks_at_third_call, start, edm_sigmas(5, 0.002, 80.0), adams_bashforth(5))
